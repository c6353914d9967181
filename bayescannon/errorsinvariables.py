"""Errors-in-variables training: reference labels as latent variables.

The training labels are observed with noise, ``ℓ_obs,n ~ N(ℓ_n, diag(e_n²))``, and the
spectra depend on the *true* labels ``ℓ_n``. Ignoring the label noise attenuates θ
(regression dilution). Two fits are offered:

**MAP for the full training set** (:func:`fit_latent_labels`, used by
``CannonModel.fit(..., label_errors=...)``): block-coordinate ascent on
``ln p = Σ_λ ln L_λ(θ_λ, s²_λ | ℓ) − ½ Σ_n Σ_k (ℓ_nk − ℓ_obs,nk)²/e_nk²``:

* label step (θ, s² fixed): each star's χ² is ``vᵀAv − 2bᵀv + c`` with its sufficient
  statistics; the Gaussian label term is *also* a quadratic form in v because the linear
  terms of v are the labels themselves, so it is added to (A, b, c) exactly and all stars
  are solved at once by the batched Levenberg–Marquardt of :mod:`bayescannon.infer`;
* θ step (labels, s² fixed): per-pixel weighted least squares (normal equations of
  :mod:`bayescannon.train`), all pixels at once;
* the alternation is accelerated by SQUAREM extrapolation on the latent labels (plain
  alternation crawls along the ridge of label spread vs θ amplitude);
* after the labels converge, one full θ + s² fit (:func:`bayescannon.train.fit_pixels`).

**NUTS on subsets** (:func:`sample_latent_labels`): θ is linear-Gaussian given the labels
and s, so with a flat prior it is integrated out in closed form per pixel,

    ln p(f_λ | ℓ, s_λ) = −½ [Σ_n w_nλ f_nλ² − b_λᵀ G_λ⁻¹ b_λ] − ½ ln det G_λ + ½ Σ_n ln w_nλ + const,

with ``G_λ = Σ_n w v vᵀ`` and ``b_λ = Σ_n w f v``. The sampler then only faces the
labels (non-centred: ``ℓ = ℓ_obs + e z``, ``z ~ N(0, 1)``) and s_λ; θ draws follow from
``N(G⁻¹b, G⁻¹)`` for each posterior draw when needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .calibration import check_label_errors
from .errors import InvalidInputError, ShapeMismatchError
from .infer import fit_labels, sufficient_statistics
from .likelihood import adjusted_ivar
from .train import _lasso, _solve_masked, fit_pixels, normal_equations

logger = logging.getLogger(__name__)

__all__ = ["LatentLabelResult", "fit_latent_labels", "sample_latent_labels", "label_prior_statistics"]


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
    max_iter: int = 3,
    tol: float = 1e-3,
    lm_iter: int = 10,
    progressbar: bool = False,
) -> LatentLabelResult:
    """Joint MAP of latent true labels, θ and s² (errors-in-variables training).

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
        SQUAREM-accelerated label/θ iterations at most (each is three label + θ steps,
        about one plain training at survey scale). Strongly informative spectra with noisy
        labels need ~10 to converge; the default bounds the cost.
    tol : float
        Convergence when no latent label moves by more than ``tol`` of its error.
    lm_iter : int
        Levenberg–Marquardt iterations per label step (warm-started).
    progressbar : bool

    Returns
    -------
    LatentLabelResult

    Raises
    ------
    LabelError, ShapeMismatchError
        Label errors with zeros, negatives, non-finite values or the wrong shape.
    """
    n, k = x_obs.shape
    err = check_label_errors(label_errors, n, model.label_names)
    if label_scale is None:
        raise InvalidInputError("label_scale (physical size of a scaled unit) is required")
    err_s = err / np.asarray(label_scale)[None, :]
    prec = 1.0 / err_s**2
    vec = model.vectorizer
    A0, b0, c0 = label_prior_statistics(vec, x_obs, prec)
    tm = None if term_mask is None or term_mask.all() else term_mask
    reg = float(model.regularization)
    x = x_obs.copy()
    used = ivar > 0
    fz = np.where(used, flux, 0.0)
    t = vec.n_terms
    good = used.sum(axis=0) > t  # pixels with enough stars; the final fit flags the rest
    fz_g, iv_g = fz[:, good], ivar[:, good]
    tm_g = None if tm is None else tm[good]
    width = np.ptp(x_obs, axis=0)
    bounds = np.column_stack([x_obs.min(0) - model.bounds_margin * width, x_obs.max(0) + model.bounds_margin * width])
    w = iv_g
    theta = _theta_step(fz_g, w, vec(x), tm_g, reg)
    iterator = range(max_iter)
    if progressbar:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="latent labels", unit="iter")
    converged = False
    it = 0
    move = np.inf
    def step(x, theta):
        """One label step and one θ step (s² by moments at the current fit)."""
        r = fz_g - vec(x) @ theta.T
        with np.errstate(divide="ignore"):
            excess = np.where(ug, r * r - 1.0 / np.where(ug, iv_g, 1.0), 0.0).sum(axis=0) / np.maximum(ug.sum(axis=0), 1)
        w = adjusted_ivar(iv_g, np.maximum(excess, 0.0)[None, :])
        # label step: χ² + Gaussian label term, both quadratic forms in v
        A, b, c, _ = sufficient_statistics(fz_g, w, theta)
        x_new = fit_labels(A + A0, b + b0, c + c0, vec, x[:, None, :], bounds=bounds, max_iter=lm_iter, chi2_tol=1e-6).labels
        return x_new, _theta_step(fz_g, w, vec(x_new), tm_g, reg)

    ug = used[:, good]
    for it in iterator:
        # SQUAREM (Varadhan & Roland 2008) on the latent labels: the joint MAP moves along
        # a ridge (label spread vs θ amplitude) where plain alternation crawls
        x1, th1 = step(x, theta)
        x2, th2 = step(x1, th1)
        r1, v1 = x1 - x, x2 - 2 * x1 + x
        alpha = -np.sqrt(np.sum(r1 * r1) / max(np.sum(v1 * v1), 1e-300))
        alpha = min(alpha, -1.0)
        x_acc = np.clip(x - 2 * alpha * r1 + alpha * alpha * v1, bounds[:, 0], bounds[:, 1])
        x_new, theta = step(x_acc, _theta_step(fz_g, adjusted_ivar(iv_g, 0.0), vec(x_acc), tm_g, reg))
        move = float(np.max(np.abs(x_new - x) / err_s))
        x = x_new
        logger.debug("latent-label iteration %d: largest move %.3g label errors (step length %.3g)", it, move, -alpha)
        if move < tol:
            converged = True
            break
    if not converged:
        logger.info("latent labels still moved by %.3g label errors in the last of %d iterations", move, max_iter)
    design = vec(x)
    res = fit_pixels(flux.T, ivar.T, design, term_mask=tm, regularization=reg, pixel_major=True)
    logger.info(
        "errors-in-variables MAP: %d iterations; latent labels moved by %.3g (median, in label errors) from the observed",
        it + 1,
        float(np.median(np.abs(x - x_obs) / err_s)),
    )
    return LatentLabelResult(
        res.theta, res.s2, res.pixel_flags, res.log_likelihood, res.n_stars_used, x, design, it + 1, converged,
        extra_state={"extra_latent_labels_scaled": (("training_star", "label"), x)},
    )


def _theta_step(flux, w, design, term_mask, reg):
    """Per-pixel weighted least squares (lasso when ``reg > 0``) at fixed labels and weights."""
    G, b = normal_equations(flux, w, design)
    try:
        theta = _solve_masked(G, b, term_mask)
    except np.linalg.LinAlgError:
        theta = (np.linalg.pinv(G) @ b[..., None])[..., 0]
    if reg > 0:
        theta = _lasso(G, b, theta, 0.5 * reg, term_mask)
    return theta


def _marginal_model(model, flux, ivar, x_obs, err_s, s_scale):
    """PyMC model of latent labels and s with θ integrated out (flat prior)."""
    import pymc as pm
    import pytensor.tensor as pt

    n, p = flux.shape
    vec = model.vectorizer
    t = vec.n_terms
    coords = {"training_star": np.arange(n), "label_name": list(model.label_names), "pixel": np.arange(p)}
    used = (ivar > 0).astype(float)
    fz = np.where(ivar > 0, flux, 0.0)
    iu, ju = np.triu_indices(t)
    with pm.Model(coords=coords) as pmm:
        z = pm.Normal("z", 0.0, 1.0, dims=("training_star", "label_name"))
        x = pt.as_tensor(x_obs) + pt.as_tensor(err_s) * z
        s = pm.HalfNormal("s", sigma=s_scale, dims="pixel")
        w = pt.as_tensor(ivar) / (1.0 + pt.as_tensor(ivar) * (s**2)[None, :])  # adjusted ivar
        v = vec(x, xp=pt)  # (N, T)
        vv = v[:, iu] * v[:, ju]  # (N, T(T+1)/2)
        packed = w.T @ vv  # (P, T(T+1)/2)
        G = pt.zeros((p, t, t))
        G = pt.set_subtensor(G[:, iu, ju], packed)
        G = pt.set_subtensor(G[:, ju, iu], packed)
        wf = w * pt.as_tensor(fz)
        bvec = wf.T @ v  # (P, T)
        L = pt.linalg.cholesky(G)
        y = pt.linalg.solve_triangular(L, bvec[..., None], lower=True)[..., 0]
        logdet = 2.0 * pt.log(pt.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
        logw = pt.log(w + (1.0 - pt.as_tensor(used)))
        ll = -0.5 * ((wf * pt.as_tensor(fz)).sum(axis=0) - (y**2).sum(axis=-1)) - 0.5 * logdet + 0.5 * (used * logw).sum(axis=0)
        pm.Potential("marginal_likelihood", ll.sum())
        pm.Deterministic(
            "labels", x * pt.as_tensor(model.label_scale_) + pt.as_tensor(model.label_offset_), dims=("training_star", "label_name")
        )
    return pmm


def sample_latent_labels(
    model,
    flux,
    ivar,
    labels,
    label_errors,
    *,
    stars=None,
    pixels=None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
) -> xr.DataTree:
    """NUTS for the latent labels and per-pixel scatter of a subset, θ marginalised.

    Parameters
    ----------
    model : CannonModel
        A fitted model (for the label scaling, vectorizer and a scale for the s prior).
    flux, ivar : ndarray, shape (N, P)
        Training spectra.
    labels, label_errors : ndarray, shape (N, K)
        Observed labels and their 1σ errors (physical units).
    stars, pixels : array_like of int, optional
        Subset of rows and columns (default all; keep it to ~100 × 50).
    draws, tune, chains, seed
        Sampler settings (nutpie).

    Returns
    -------
    xarray.DataTree
        ``posterior`` with ``labels`` (chain, draw, training_star, label_name) and
        ``s`` (chain, draw, pixel); ``diagnostics`` with R-hat and ESS per variable.
    """
    import arviz as az
    import nutpie

    from .model import _as_label_array

    model._check_fitted()
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.shape != ivar.shape:
        raise ShapeMismatchError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape}")
    n = flux.shape[0]
    y = _as_label_array(labels, model.label_names, n)
    err = check_label_errors(label_errors, n, model.label_names)
    rows = np.arange(n) if stars is None else np.asarray(stars)
    cols = np.arange(flux.shape[1]) if pixels is None else np.asarray(pixels)
    f, iv = flux[np.ix_(rows, cols)], ivar[np.ix_(rows, cols)]
    x_obs = (y[rows] - model.label_offset_) / model.label_scale_
    err_s = err[rows] / model.label_scale_
    noise = np.sqrt(np.median(1.0 / iv[iv > 0])) if (iv > 0).any() else 0.01
    s_scale = float(max(5.0 * noise, 3.0 * np.sqrt(np.max(model.s2_[cols])), 1e-4))
    pmm = _marginal_model(model, f, iv, x_obs, err_s, s_scale)
    cm = nutpie.compile_pymc_model(pmm, var_names=["labels", "s"])
    trace = nutpie.sample(cm, draws=draws, tune=tune, chains=chains, cores=min(chains, 2), seed=seed,
                          progress_bar=False, save_warmup=False)
    post = trace["posterior"].to_dataset()[["labels", "s"]]
    post = post.assign_coords(training_star=rows, pixel=cols)
    stats = trace["sample_stats"].to_dataset()[["diverging"]]
    tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats})
    rh = az.rhat(tree)
    es = az.ess(tree, method="bulk")
    rh = rh["posterior"] if "posterior" in rh.children else rh
    es = es["posterior"] if "posterior" in es.children else es
    diag = xr.Dataset(
        {
            "r_hat_labels": rh.to_dataset()["labels"],
            "r_hat_s": rh.to_dataset()["s"],
            "ess_bulk_labels": es.to_dataset()["labels"],
            "ess_bulk_s": es.to_dataset()["s"],
            "n_divergent": int(np.asarray(stats["diverging"].values).sum()),
        }
    )
    tree["diagnostics"] = xr.DataTree(diag)
    tree.attrs = {"model": "latent labels + per-pixel scatter, theta integrated out (flat prior)"}
    return tree
