"""Errors-in-variables training: reference labels as latent variables.

The training labels are observed with noise, ``ℓ_obs,n ~ N(ℓ_n, diag(e_n²))``, and the
spectra depend on the *true* labels ``ℓ_n``. Ignoring the label noise attenuates θ
(regression dilution). Two fits are offered:

**MAP for the full training set** (:func:`fit_latent_labels`, used by
``CannonModel.fit(..., label_errors=...)``): block-coordinate iteration between the latent
labels and (θ, s²):

* θ, s² step (labels fixed): per-pixel weighted least squares (packed normal equations,
  the compiled Cholesky of :mod:`bayescannon.core.train`), all pixels at once, then s² by the
  maximiser at fixed residuals (first step) or one Newton step (later steps: exact at the
  fixed point, one pass over memory);
* label step (θ, s² fixed), in one of two forms (``spectral_information``):

  - ``"formal"``, the exact joint MAP of
    ``ln p = Σ_λ ln L_λ(θ_λ, s²_λ | ℓ) − ½ Σ_n Σ_k (ℓ_nk − ℓ_obs,nk)²/e_nk²``: each star's
    χ² is ``vᵀAv − 2bᵀv + c`` with its sufficient statistics; the Gaussian label term is
    *also* a quadratic form in v (the linear terms of v are the labels themselves), so it
    is added to (A, b, c) exactly and all stars are solved at once by the batched
    Levenberg–Marquardt of :mod:`bayescannon.core.labelfit`;
  - ``"calibrated"`` (default): the spectrum enters through its spectroscopic labels
    ``x̂_n`` (the test step at the current θ) with the *calibrated* covariance
    ``Σ_n = D Σ^formal_n D + diag(exp(β·[1, x̂_n]))`` of :mod:`bayescannon.core.uncertainty`
    (``D``, ``β`` fitted once, on the training stars, to ``x̂ − ℓ_obs`` with the label errors
    as known reference variance), minus its systematic part, and the latent labels are the
    Gaussian combination ``(Σ_n⁻¹ + E_n⁻²)⁻¹ (Σ_n⁻¹ (x̂_n − b(ℓ_n)) + E_n⁻² ℓ_obs,n)``
    (:func:`calibrated_combination`). ``b`` is the weighted least-squares fit of
    ``x̂ − ℓ_obs`` by a polynomial (the model's vectorizer) of the current latent labels:
    the *reference labels define the label scale*, the spectra only say which individual
    reference labels are off. Regressing on the latent labels (the inverse-variance
    weighted mean of x̂ and ℓ_obs) rather than on ℓ_obs matters: for two independent
    Gaussian measurements the weighted mean is uncorrelated with their difference, so
    the star-specific label noise is not mistaken for a trend (regressing on ℓ_obs would
    remove the fraction ``e²/Var(ℓ)`` of it, i.e. re-introduce regression dilution).

  Why not the exact joint MAP by default, measured: the formal Fisher information
  overstates what a spectrum says about its labels when the model is imperfect (on
  emulator spectra formal errors are ~3× too small), and the systematic part of the
  misfit, a smooth function of the labels, is absorbed by the latent labels with a gain
  ``K/(1 − K)`` (K: the spectrum's weight in the combination) — the latent labels drift
  *away* from the truth (emulator, 5,000 stars, label errors 3 % of the range: median 1.5
  label errors vs 0.7 observed; the model trained on them infers held-out [Fe/H] twice as
  badly) and the iteration needs ~20 steps. With calibrated information and the trend
  removed the latent labels are closer to the truth than the observed ones (0.35–0.53 vs
  0.67) in 5 iterations. When the model is adequate (quadratic truth) both forms agree;
* after each label step the labels are moved to the affine image closest to the
  observed labels (:func:`affine_alignment`, closed form): the spectral term is exactly
  invariant under affine maps of the labels (a full polynomial in ``Mℓ + c`` spans the
  same functions; θ follows), the ridge of "label spread vs θ amplitude" along which
  plain alternation crawls. With censoring or an L1 penalty the invariance is broken and
  the alignment is skipped (slower to converge: raise ``max_iter``);
* the remaining slow directions are handled by Anderson acceleration of the fixed-point
  map (x, θ) → (x', θ(x'));
* after the labels converge, one full θ + s² fit (:func:`bayescannon.core.train.fit_pixels`,
  warm-started at the last s²).

**NUTS on subsets** (:func:`sample_latent_labels`): θ is linear-Gaussian given the labels
and s, so it is integrated out in closed form per pixel. A flat prior on θ makes that
marginal *improper* in the labels: the quadratic design spans the same space after any
affine map of the labels, so the fit is unchanged while ``−½ ln det G_λ`` grows without bound
as the latent labels shrink (``det G ∝ a^{2Σdeg}`` for ``ℓ → aℓ``) — the sampler drifts into
the collapse and its step size goes to zero. We therefore use Zellner's g-prior,
``θ_λ ~ N(μ_λ, g G_λ⁻¹)`` with ``G_λ = Σ_n w_nλ v_n v_nᵀ``, the unit-information choice
``g = N`` and ``μ_λ`` the weighted mean flux of the pixel on the constant term, which gives

    ln p(f_λ | ℓ, s_λ) = −½ [Σ_n w_nλ f̃_nλ² − g/(1+g) b_λᵀ G_λ⁻¹ b_λ] − (T/2) ln(1+g) + ½ Σ_n ln w_nλ + const,

(``f̃ = f − μ``, ``b_λ = Σ_n w f̃ v``): it depends on the labels only through the fitted
values, is exactly invariant under affine maps of the labels (those directions are then
fixed by the reference labels alone, ``ℓ_obs ~ N(ℓ, e²)``) and is proper. The sampler
faces only the labels (non-centred: ``ℓ = ℓ_obs + e z``, ``z ~ N(0, 1)``) and s_λ; θ draws
follow from ``N(μ + g/(1+g) G⁻¹b, g/(1+g) G⁻¹)`` for each posterior draw when needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from bayescannon.core._kernels import weights
from bayescannon.core.labelfit import fit_labels, test_statistics
from bayescannon.core.train import fit_pixels, lasso_step, scatter_update, theta_step
from bayescannon.core.uncertainty import check_label_errors, error_model_covariance, fit_error_model
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InsufficientDataError, InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "LatentLabelResult",
    "affine_alignment",
    "calibrated_combination",
    "fit_latent_labels",
    "label_prior_statistics",
    "spectral_error_model",
]


@dataclass
class LatentLabelResult:
    """Output of :func:`fit_latent_labels` (the fields of ``TrainingResult`` and more)."""

    theta: np.ndarray
    s2: np.ndarray
    pixel_flags: np.ndarray
    log_likelihood: np.ndarray
    n_stars_used: np.ndarray
    labels_scaled: np.ndarray  # (N, K) MAP latent labels
    design: np.ndarray  # (N, T) design of the latent labels
    n_iter: int
    converged: bool
    extra_state: dict = field(default_factory=dict)


def label_prior_statistics(vectorizer, x_obs, precision):
    """The Gaussian label term ``Σ_k P_k (x_k − o_k)²`` as ``vᵀ A v − 2 bᵀ v + c``.

    Parameters
    ----------
    vectorizer : PolynomialVectorizer
    x_obs : ndarray, shape (N, K)
        Observed labels (scaled).
    precision : ndarray, shape (N, K)
        ``1/e²`` (scaled units).

    Returns
    -------
    A (N, T, T), b (N, T), c (N,)
    """
    n, k = x_obs.shape
    t = vectorizer.n_terms
    lin = np.array([vectorizer.terms.index((j,)) for j in range(k)])
    A = np.zeros((n, t, t))
    A[:, lin, lin] = precision
    b = np.zeros((n, t))
    b[:, lin] = precision * x_obs
    c = np.sum(precision * x_obs * x_obs, axis=1)
    return A, b, c


def fit_latent_labels(
    model,
    flux,
    ivar,
    x_obs,
    label_errors,
    *,
    term_mask=None,
    label_scale=None,
    max_iter: int = 30,
    tol: float = 0.01,
    lm_iter: int = 10,
    anderson: int = 5,
    spectral_information: str = "calibrated",
    trend_order: int | None = None,
    progressbar: bool = False,
) -> LatentLabelResult:
    """Latent true labels, θ and s² of a training set with noisy labels (errors in variables).

    With ``spectral_information="formal"`` the joint MAP; with ``"calibrated"`` (default)
    the fixed point of θ, s² at their MAP given the latent labels and latent labels that
    combine the observed labels with the calibrated, de-trended spectroscopic ones (module
    notes).

    Parameters
    ----------
    model : CannonModel
        Supplies the vectorizer, regularisation and search bounds.
    flux, ivar : ndarray, shape (N, P)
        Validated training spectra.
    x_obs : ndarray, shape (N, K)
        Observed labels in scaled units.
    label_errors : ndarray, shape (N, K)
        1σ errors of the observed labels in *physical* units (finite, > 0).
    term_mask : ndarray of bool, shape (P, T), optional
        Censoring of terms.
    label_scale : ndarray, shape (K,)
        Physical size of one scaled unit (``model`` scaling of the observed labels).
    max_iter : int
        Label/θ iterations at most (each costs about a third of a plain training).
    tol : float
        Converged when, in an iteration, the latent labels of 99 % of the stars move by
        less than ``tol`` of their errors (a percentile rather than the maximum: a few stars
        whose spectroscopic fit switches between two χ² minima as θ changes would otherwise
        keep the whole fit iterating without any effect on θ; their number is logged).
    lm_iter : int
        Levenberg–Marquardt iterations per label step (warm-started).
    anderson : int
        Memory of the Anderson acceleration (0: plain alternation).
    spectral_information : {"calibrated", "formal"}
        How much the spectrum of a training star says about its labels in the label step.
        ``"formal"``: the model's own likelihood (the exact joint MAP). ``"calibrated"``
        (default): the spectroscopic labels with their *calibrated* errors (error model
        fitted once, on the training stars, against the observed labels and their errors;
        :func:`spectral_error_model`), combined with the observed labels
        (:func:`calibrated_combination`). See the module notes for why.
    trend_order : int, optional
        Order of the polynomial in the latent labels by which the systematic part of the
        spectroscopic labels is removed (``"calibrated"`` only; default: the model's order).
        Higher orders remove more of a misspecified model's bias (on emulator spectra
        order 4 gives held-out labels as good as training on the true labels) at the cost
        of more iterations (see ``docs/guides/bayes.md``).
    progressbar : bool

    Returns
    -------
    LatentLabelResult

    Raises
    ------
    LabelError, ShapeMismatchError
        Label errors with zeros, negatives, non-finite values or the wrong shape.
    """
    n = x_obs.shape[0]
    err = check_label_errors(label_errors, n, model.label_names)
    if label_scale is None:
        raise InvalidInputError("label_scale (physical size of a scaled unit) is required")
    err_s = err / np.asarray(label_scale)[None, :]
    prec = 1.0 / err_s**2
    vec = model.vectorizer
    if spectral_information not in ("calibrated", "formal"):
        raise InvalidInputError(f"spectral_information must be 'calibrated' or 'formal'; got {spectral_information!r}")
    order = vec.order if trend_order is None else trend_order
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise InvalidInputError(f"trend_order must be an integer >= 1; got {trend_order!r}")
    trend = PolynomialVectorizer(list(model.label_names), int(order))
    A0, b0, c0 = label_prior_statistics(vec, x_obs, prec)
    tm = None if term_mask is None or term_mask.all() else term_mask
    reg = float(model.regularization)
    t = vec.n_terms
    # pixel-major working copies (no copy when given as transposed views of (P, N) arrays)
    flux_t = np.ascontiguousarray(np.asarray(flux, dtype=np.float64).T)
    ivar_t = np.ascontiguousarray(np.asarray(ivar, dtype=np.float64).T)
    p = flux_t.shape[0]
    active = np.flatnonzero(np.count_nonzero(ivar_t > 0, axis=1) > t)  # the final fit flags the rest
    m = active.size
    allowed = np.ones((m, t), dtype=bool) if tm is None else np.ascontiguousarray(tm[active])
    zero_c = np.zeros(n)
    w, wf, buf = np.empty((m, n)), np.empty((m, n)), np.empty((m, n))  # reused every step
    iu, ju = np.triu_indices(t)
    s2 = np.zeros(p)
    first_scatter = True
    width = np.ptp(x_obs, axis=0)
    bounds = np.column_stack([x_obs.min(0) - model.bounds_margin * width, x_obs.max(0) + model.bounds_margin * width])

    def theta_at(x):
        """θ by weighted least squares at labels x (weights w), then s² at fixed residuals."""
        nonlocal first_scatter
        design = vec(x)
        th, _, packed, bp = theta_step(w, wf, design, allowed)  # singular pixels: flagged by the final fit
        if reg > 0:
            th = lasso_step(packed, bp, th, reg, allowed)
        model_t = np.matmul(th, design.T, out=buf)
        # from s² = 0 the maximiser at fixed residuals, then one Newton step per iteration
        scatter_update(ivar_t, flux_t, model_t, s2, active, buf, fixed_residuals=first_scatter)
        first_scatter = False
        return th

    def spectral_statistics(th):
        """The test step's (A, b) of every training star at θ, s² (weights refreshed), and
        ``c = 0``: the label fits use only χ² differences, so ``Σ w f²`` is not needed."""
        weights(ivar_t, flux_t, s2, active, w, wf)
        A, b = test_statistics(w.T, wf.T, th, th[:, iu] * th[:, ju])
        return A, b, zero_c

    def labels_at(x, th, spec=None):
        """Label step at fixed θ, s² (``spec``: the spectroscopic fit at θ, when known)."""
        nonlocal x_spec
        if calib is None:
            # exact: χ² + Gaussian label term, both quadratic forms in v
            A, b, c = spectral_statistics(th)
            return fit_labels(
                A + A0, b + b0, c + c0, vec, x[:, None, :], bounds=bounds, max_iter=lm_iter, chi2_tol=1e-6
            ).labels
        if spec is None:
            A, b, c = spectral_statistics(th)
            spec = fit_labels(A, b, c, vec, x_spec[:, None, :], bounds=bounds, max_iter=lm_iter, chi2_tol=1e-6)
        x_spec = spec.labels
        return calibrated_combination(spec, calib, x_obs, prec, bias_basis=trend(x))

    invariant = tm is None and reg == 0.0  # PolynomialVectorizer: every monomial up to its order

    def label_step(x, th, spec=None):
        """One label step, then the affine alignment when the spectral term is invariant."""
        x_new = labels_at(x, th, spec)
        if invariant:
            # the spectral term is invariant under affine maps of the labels (θ follows):
            # the slow "label spread vs θ amplitude" direction is solved in closed form
            x_new = np.clip(affine_alignment(x_new, x_obs, prec), bounds[:, 0], bounds[:, 1])
        return x_new

    x = x_obs.copy()
    weights(ivar_t, flux_t, s2, active, w, wf)
    theta = theta_at(x)
    calib, spec, x_spec = None, None, None
    if spectral_information == "calibrated":
        spec = fit_labels(
            *spectral_statistics(theta), vec, x[:, None, :], bounds=bounds, max_iter=max(lm_iter, 20), chi2_tol=1e-6
        )
        calib = spectral_error_model(model, spec, x_obs, err_s)
        x_spec = spec.labels
    iterator = range(max_iter)
    if progressbar:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="latent labels", unit="iter")
    converged = False
    it = 0
    move = np.inf
    # Anderson acceleration (type II, Walker & Ni 2011) of the fixed-point map
    # (x, θ) → (x', θ(x')): the remaining slow directions are a few collective deformations
    # of the label space that the alternation shrinks by only ~10 % per step
    hist_z, hist_g = [], []
    last_norm = np.inf
    scale_x = err_s.ravel()
    for it in iterator:
        x_new = label_step(x, theta, spec)
        spec = None
        moves = np.max(np.abs(x_new - x) / err_s, axis=1)
        move = float(np.quantile(moves, 0.99))
        logger.debug(
            "latent-label iteration %d: 99th percentile move %.3g label errors (largest %.3g)", it, move, moves.max()
        )
        if move < tol:  # the final fit below gives θ, s² at these labels
            x = x_new
            converged = True
            unsettled = int(np.count_nonzero(moves >= tol))
            if unsettled:
                logger.info(
                    "%d stars' latent labels still moved by >= %.3g label errors in the last iteration", unsettled, tol
                )
            break
        th_new = theta_at(x_new)
        z = np.concatenate([x.ravel() / scale_x, theta.ravel()])
        g = np.concatenate([x_new.ravel() / scale_x, th_new.ravel()])
        res_norm = float(np.linalg.norm(g - z))
        if res_norm > last_norm:
            # safeguard: the extrapolation did not lower the fixed-point residual (a map that
            # is not smooth enough, e.g. a star switching χ² minima): restart the memory
            hist_z.clear()
            hist_g.clear()
        last_norm = res_norm
        hist_z.append(z)
        hist_g.append(g)
        if len(hist_z) > anderson + 1:
            hist_z.pop(0)
            hist_g.pop(0)
        if anderson and len(hist_z) > 1:
            f = np.array(hist_g) - np.array(hist_z)  # residuals (m+1, D)
            df = np.diff(f, axis=0)
            dg = np.diff(np.array(hist_g), axis=0)
            gamma, *_ = np.linalg.lstsq(df.T, f[-1], rcond=None)
            z_next = hist_g[-1] - gamma @ dg
            x = np.clip((z_next[: x.size] * scale_x).reshape(x.shape), bounds[:, 0], bounds[:, 1])
            theta = z_next[x.size :].reshape(theta.shape)
        else:
            x, theta = x_new, th_new
    if not converged:
        logger.warning(
            "latent labels not converged: 1%% of the stars still moved by >= %.3g label errors in the last of %d "
            "iterations (recorded in extra_latent_converged; raise max_iter)",
            move,
            max_iter,
        )
    design = vec(x)
    res = fit_pixels(flux_t, ivar_t, design, term_mask=tm, regularization=reg, pixel_major=True, s2_start=s2)
    logger.info(
        "errors-in-variables MAP: %d iterations; latent labels moved by %.3g (median, in label errors) from the observed",
        it + 1,
        float(np.median(np.abs(x - x_obs) / err_s)),
    )
    return LatentLabelResult(
        res.theta,
        res.s2,
        res.pixel_flags,
        res.log_likelihood,
        res.n_stars_used,
        x,
        design,
        it + 1,
        converged,
        extra_state={
            "extra_latent_labels_scaled": (("training_star", "label"), x),
            "extra_latent_iterations": ((), it + 1),
            "extra_latent_converged": ((), int(converged)),
            "extra_latent_calibrated": ((), int(calib is not None)),
            "extra_latent_trend_order": ((), int(order) if calib is not None else 0),
        },
    )


def spectral_error_model(model, spec, x_obs, err_s):
    """Error model of the spectroscopic labels of the training stars (scaled units).

    Fits :func:`bayescannon.core.uncertainty.fit_error_model` to the residuals of the
    spectroscopic labels ``spec`` (test step at the θ trained on the observed labels)
    against the observed labels, with the observed-label variances as known reference
    variance: ``σ²_nk = a_k² Σ^formal_n,kk + exp(β_k·[1, x̂_n])``.

    Parameters
    ----------
    model : CannonModel
    spec : LabelFit
        Spectroscopic labels of the training stars.
    x_obs, err_s : ndarray, shape (N, K)
        Observed labels and their errors (scaled units).

    Returns
    -------
    tuple of ndarray or None
        ``(a, β)`` with shapes (K,), (K, K+1); None (use the formal information) when the
        training set is too small to fit it.
    """

    formal = np.einsum("nkk->nk", spec.covariance)
    ok = np.all(np.isfinite(formal) & (formal > 0), axis=1)
    try:
        cal = fit_error_model(
            np.where(ok[:, None], spec.labels - x_obs, np.nan),
            np.where(ok[:, None], formal, np.nan),
            None,
            spec.labels,
            list(model.label_names),
            ref_var=err_s**2,
        )
    except InsufficientDataError as exc:
        logger.warning("spectroscopic error model not fitted (%s): formal spectral information used", exc)
        return None
    return np.asarray(cal["noise_scale"]), np.asarray(cal["floor_coefficients"])


def calibrated_combination(spec, calib, x_obs, precision, bias_basis=None):
    """Latent labels from the spectroscopic labels (calibrated errors) and the observed ones.

    ``x = (Σ_n⁻¹ + P_n)⁻¹ (Σ_n⁻¹ (x̂_n − b_n) + P_n o_n)`` with
    ``Σ_n = D Σ^formal_n D + diag(floor_n)`` (:func:`spectral_error_model`); stars without a
    finite spectroscopic covariance keep their observed labels.

    Parameters
    ----------
    spec : LabelFit
        Spectroscopic labels ``x̂`` and formal covariances.
    calib : tuple of ndarray
        ``(a, β)`` of :func:`spectral_error_model`.
    x_obs, precision : ndarray, shape (N, K)
        Observed labels and ``1/e²`` (scaled units).
    bias_basis : ndarray, shape (N, T), optional
        Basis of the systematic part ``b`` of ``x̂ − o`` (a polynomial of the current latent
        labels): ``b`` is its weighted least-squares fit, weights ``1/(Σ_n,kk + e²_nk)``.
        None: ``b = 0``.

    Returns
    -------
    ndarray, shape (N, K)
    """
    k = x_obs.shape[1]
    cov = error_model_covariance(spec.covariance, spec.labels, *calib)
    good = np.all(np.isfinite(cov), axis=(1, 2)) & np.all(np.isfinite(spec.labels), axis=1)
    icov = np.zeros_like(cov)
    icov[good] = np.linalg.inv(cov[good])
    xs = np.where(good[:, None], spec.labels, 0.0)
    if bias_basis is not None:
        # systematic spectroscopic bias: WLS of x̂ − o on a polynomial of the current labels
        var = np.einsum("nkk->nk", cov) + 1.0 / precision
        wgt = np.where(good[:, None], 1.0 / var, 0.0)
        r = xs - x_obs
        gram = np.einsum("nk,nt,nu->ktu", wgt, bias_basis, bias_basis)
        rhs = np.einsum("nk,nt,nk->kt", wgt, bias_basis, r)
        # a relative ridge of 1e-12 keeps degenerate bases (few stars, collinear labels) solvable
        ridge = 1e-12 * np.einsum("ktt->k", gram)[:, None, None] * np.eye(gram.shape[1])[None]
        coef = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]  # (K, T)
        xs = xs - bias_basis @ coef.T
    lhs = icov + precision[:, :, None] * np.eye(k)[None]
    rhs = np.einsum("nij,nj->ni", icov, xs) + precision * x_obs
    return np.linalg.solve(lhs, rhs[..., None])[..., 0]


def affine_alignment(x, x_obs, precision):
    """The affine image ``M x + c`` of the labels closest to the observed labels.

    Minimises ``Σ_n Σ_k P_nk ((M x_n + c)_k − o_nk)²`` over ``M`` (K×K) and ``c`` (K): one
    weighted least-squares problem of size K+1 per label, all solved at once. A full
    polynomial model fits ``M x + c`` exactly as well as ``x`` (θ transforms with it), so
    this is the exact optimum of the joint MAP objective along the affine directions.

    Parameters
    ----------
    x : ndarray, shape (N, K)
        Current latent labels (scaled).
    x_obs : ndarray, shape (N, K)
        Observed labels (scaled).
    precision : ndarray, shape (N, K)
        ``1/e²`` of the observed labels.

    Returns
    -------
    ndarray, shape (N, K)
    """
    x1 = np.column_stack([x, np.ones(x.shape[0])])  # (N, K+1)
    gram = np.einsum("nk,na,nb->kab", precision, x1, x1)
    rhs = np.einsum("nk,na,nk->ka", precision, x1, x_obs)
    try:
        coef = np.linalg.solve(gram, rhs[..., None])[..., 0]  # (K, K+1): row k = [M_k, c_k]
    except np.linalg.LinAlgError:
        return x
    return x1 @ coef.T
