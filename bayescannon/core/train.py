"""Vectorised maximum-likelihood training of θ_λ and s²_λ for every pixel.

For each pixel the exact likelihood ``ln p = -½ Σ_n [w r² − ln w]`` with
``w = ivar/(1 + ivar s²)`` is maximised over θ (T terms) and s² ≥ 0.

Algorithm (all pixels at once, no loop over pixels):

* θ-step: at fixed s², θ is the weighted least-squares solution of the normal
  equations ``G θ = b`` with ``G = Σ_n w_n v_n v_nᵀ`` and ``b = Σ_n w_n f_n v_n``. All
  G are formed by one matrix product ``Wᵀ (v ⊗ v)`` over stars; with an L1 penalty the
  θ-step is a lasso on (G, b), solved by compiled coordinate descent parallel over pixels
  and finished exactly on its support (:func:`lasso_step`), warm-started from the previous
  pass. The θ–s² coupling of the s-step is then taken on the support of θ (where the lasso
  solution moves with s²), which keeps the s-step's quadratic convergence.
* s-step: the profile likelihood ``max_θ ln p(θ, s²)`` is maximised over s² ≥ 0. While
  s² is far from its optimum (first two passes) the compiled kernel maximises the
  likelihood with the residuals held fixed (Newton in ``x = ln(s² + <σ²>)`` on residuals
  kept in cache) and a coupling correction ``c = qᵀG⁻¹q`` accounts for θ following s²;
  afterwards a Newton step with the exact profile curvature (fixed-θ curvature + c)
  converges quadratically.

Iteration stops per pixel when the profile score per star ``|∂ ln p/∂x| / N`` falls
below ``tol`` or s² sits at the boundary 0 with a non-positive score (about four passes
over the data, fewer pixels each time). Work arrays are allocated once and reused.

Pixels with fewer usable stars than terms (+1), or with a singular design, get a
neutral model (θ = [weighted mean flux, 0, …], s² = 0) and a flag instead of NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bayescannon.core._kernels import log_likelihood_terms, score_terms, solve_packed, weights
from bayescannon.core._lasso import lasso_packed
from bayescannon.core.likelihood import adjusted_ivar, log_likelihood
from bayescannon.errors import InvalidInputError, LabelError
from bayescannon.flags import PixelFlag

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingResult",
    "check_identifiable",
    "fit_pixels",
    "normal_equations",
    "profile_log_likelihood",
    "theta_step",
    "lasso_step",
    "scatter_update",
]


@dataclass
class TrainingResult:
    """Per-pixel output of :func:`fit_pixels`."""

    theta: np.ndarray  # (P, T)
    s2: np.ndarray  # (P,)
    log_likelihood: np.ndarray  # (P,) at the optimum (without the ln 2π constant)
    score: np.ndarray  # (P,) ∂ ln p / ∂ s² at the optimum
    pixel_flags: np.ndarray  # (P,) PixelFlag bits
    n_stars_used: np.ndarray  # (P,)
    n_iter: int


def _pair_index(t):
    iu, ju = np.triu_indices(t)
    return iu, ju


def _products(design):
    """Column products v_t v_u for t ≤ u: (N, T(T+1)/2)."""
    iu, ju = _pair_index(design.shape[1])
    return design[:, iu] * design[:, ju]


def _unpack(packed, t):
    """(P, T(T+1)/2) → symmetric (P, T, T)."""
    iu, ju = _pair_index(t)
    where = np.empty((t, t), dtype=np.int64)
    where[iu, ju] = np.arange(iu.size)
    where[ju, iu] = np.arange(iu.size)
    return np.take(packed, where.ravel(), axis=-1).reshape(packed.shape[:-1] + (t, t))


#: smallest admissible singular value of the design with unit-norm columns: its square is
#: the smallest eigenvalue of the Jacobi-scaled normal equations, and a Cholesky pivot of
#: those below 1e-10 marks a pixel singular (:func:`~bayescannon.core._kernels.solve_packed`)
_RANK_TOL = 1e-5


def check_identifiable(design, exponents, label_names):
    """Refuse training labels that cannot all be model labels (collinear labels).

    A label that is an exact linear function of others (or, through the polynomial terms,
    a polynomial of them) makes the normal equations singular at every pixel: training
    would return a "fitted" model with every pixel flagged. One SVD of the (N, T) design.

    Parameters
    ----------
    design : ndarray, shape (N, T)
        Design matrix of the scaled training labels (first column the constant term).
    exponents : ndarray of int, shape (T, K)
        Exponents of each term in each label (the vectorizer's ``exponents``).
    label_names : sequence of str

    Raises
    ------
    LabelError
        Naming the labels involved in the dependence.
    """
    design = np.asarray(design, dtype=np.float64)
    norms = np.linalg.norm(design, axis=0)
    if not np.all(norms > 0):
        t = int(np.flatnonzero(~(norms > 0))[0])
        involved = np.flatnonzero(np.asarray(exponents)[t] > 0)
        names = [label_names[k] for k in involved] or list(label_names)
        raise LabelError(f"training labels {names} give a model term that is zero for every star")
    k = len(label_names)
    # linear dependences first (names exactly the labels involved), then polynomial ones
    linear = np.flatnonzero(np.asarray(exponents).sum(axis=1) <= 1)
    # eigenvalues of the Jacobi-scaled Gram matrix are the squared singular values of the
    # normalised design, resolved to ~1e-16 absolute: enough for the 1e-10 threshold, and a
    # T×T problem instead of an SVD of the (N, T) design (which costs 0.1–0.3 s)
    gram = design.T @ design / np.outer(norms, norms)
    for cols, kind in ((linear, "linearly dependent"), (np.arange(design.shape[1]), "polynomially dependent")):
        ev, vecs = np.linalg.eigh(gram[np.ix_(cols, cols)])
        sv = np.sqrt(np.maximum(ev, 0.0))
        null = vecs[:, sv < _RANK_TOL].T
        if null.size == 0:
            continue
        weight = np.abs(null).max(axis=0)
        terms = cols[weight > 1e-3 * weight.max()]
        involved = np.flatnonzero((np.asarray(exponents)[terms] > 0).any(axis=0))
        names = [label_names[j] for j in involved[involved < k]]
        raise LabelError(
            f"training labels {names} are {kind} (collinear: smallest singular value of the normalised "
            f"design {sv.min():.3g}); the model cannot tell them apart at any pixel. Drop or replace one of them"
        )


def normal_equations(flux, w, design, vv=None):
    """Sufficient statistics of the per-pixel weighted least-squares problems.

    Parameters
    ----------
    flux, w : ndarray, shape (N, P)
        Flux (0 where unused) and weights (adjusted ivar).
    design : ndarray, shape (N, T)
    vv : ndarray, shape (N, T(T+1)/2), optional
        Precomputed column products.

    Returns
    -------
    G : ndarray, shape (P, T, T)
    b : ndarray, shape (P, T)
    """
    if vv is None:
        vv = _products(design)
    G = _unpack(w.T @ vv, design.shape[1])
    b = (w * flux).T @ design
    return G, b


def _solve_masked(G, b, term_mask):
    """Solve G θ = b per pixel with censored terms forced to zero."""
    if term_mask is not None:
        off = ~term_mask  # (P, T)
        G = G.copy()
        b = np.where(off, 0.0, b)
        both = off[:, :, None] | off[:, None, :]
        G[both] = 0.0
        p_idx, t_idx = np.nonzero(off)
        G[p_idx, t_idx, t_idx] = 1.0
    return np.linalg.solve(G, b[..., None])[..., 0]


def _lasso(G, b, theta0, lam, term_mask, tol=1e-12, max_sweeps=1000):
    """min ½θᵀGθ − bᵀθ + lam Σ_{t≥1}|θ_t| per pixel (G (P, T, T) full): see :func:`lasso_step`."""
    t = G.shape[-1]
    iu, ju = _pair_index(t)
    allowed = np.ones(theta0.shape, dtype=bool) if term_mask is None else np.asarray(term_mask, dtype=bool)
    theta, _ = lasso_packed(
        np.ascontiguousarray(G[:, iu, ju]),
        np.ascontiguousarray(b, dtype=np.float64),
        np.ascontiguousarray(theta0, dtype=np.float64),
        float(lam),
        np.ascontiguousarray(allowed),
        float(tol),
        int(max_sweeps),
    )
    return theta


def theta_step(w, wf, design, allowed, vv=None):
    """θ at fixed s² for the pixels in the rows of ``w``: weighted least squares.

    Parameters
    ----------
    w, wf : ndarray, shape (M, N)
        Adjusted inverse variances and ``w·f`` of M pixels (pixel-major, as written by
        :func:`bayescannon.core._kernels.weights`).
    design : ndarray, shape (N, T)
    allowed : ndarray of bool, shape (M, T)
        False where a term is censored (fixed at 0).
    vv : ndarray, shape (N, T(T+1)/2), optional
        Precomputed column products of ``design``.

    Returns
    -------
    theta : ndarray, shape (M, T)
        0 for pixels whose normal equations are singular.
    ok : ndarray of bool, shape (M,)
        False where singular.
    packed, b : ndarray
        The normal equations ``G`` (packed upper triangle, (M, T(T+1)/2)) and ``b`` (M, T).
    """
    packed = w @ (_products(design) if vv is None else vv)
    b = wf @ design
    theta, ok = solve_packed(packed, b, allowed, 1e-10)
    return theta, ok, packed, b


def lasso_step(packed, b, start, regularization, allowed, *, tol=1e-12, max_sweeps=1000):
    """θ with the L1 penalty ``Λ Σ_{t≥1}|θ_t|`` (``regularization`` = Λ, the convention of
    :func:`fit_pixels`) on the normal equations of :func:`theta_step`, from ``start``.

    Compiled coordinate descent parallel over pixels, finished by the exact solution on the
    support once the support and signs stop changing
    (:func:`bayescannon.core._lasso.lasso_packed`): exact to rounding, not to a sweep
    tolerance. Pixels that still moved after ``max_sweeps`` sweeps are logged.

    Returns
    -------
    ndarray, shape (M, T)
    """
    theta, sweeps = lasso_packed(
        np.ascontiguousarray(packed),
        np.ascontiguousarray(b),
        np.ascontiguousarray(start, dtype=np.float64),
        0.5 * float(regularization),
        np.ascontiguousarray(allowed, dtype=bool),
        float(tol),
        int(max_sweeps),
    )
    slow = sweeps > max_sweeps
    if slow.any():
        logger.debug("lasso: %d of %d pixels still moving after %d sweeps", int(slow.sum()), slow.size, max_sweeps)
    return theta


def scatter_update(ivar_t, flux_t, model_t, s2, idx, w2r, *, fixed_residuals: bool):
    """Update s² of the pixels ``idx`` in place after a θ step (θ held at its new value).

    ``fixed_residuals``: the maximiser over s² ≥ 0 with the residuals held fixed (Newton on
    the residuals kept in cache; the move to make from s² = 0); otherwise one Newton step
    of the likelihood in ``ln(s² + <σ²>)`` with the fixed-θ curvature (exact at the fixed
    point, one pass over memory). ``model_t`` (≥ M, N) holds θ·v of the pixels ``idx``
    and ``w2r`` is a work array of the same shape (it may be ``model_t`` itself).
    """
    if fixed_residuals:
        _, s_fixed, _, _ = score_terms(ivar_t, flux_t, model_t, s2, idx, w2r, True)
        s2[idx] = s_fixed
    else:
        g1, _, g2, noise = score_terms(ivar_t, flux_t, model_t, s2, idx, w2r, False)
        s2[idx] = _profile_newton(s2[idx], g1, g2, noise)


def profile_log_likelihood(flux, ivar, design, s2, term_mask=None, regularization=0.0):
    """Profile log-likelihood ``max_θ ln p(θ, s²)`` per pixel at given s².

    Parameters
    ----------
    flux, ivar : ndarray, shape (N, P)
    design : ndarray, shape (N, T)
    s2 : ndarray, shape (P,)
    term_mask : ndarray of bool, shape (P, T), optional
    regularization : float
        L1 strength Λ (objective ``Σ_n [w r² − ln w] + Λ Σ_{t≥1} |θ_t|``).

    Returns
    -------
    ndarray, shape (P,)
        ``-½ Σ_n [w r² − ln w]`` minus the penalty ``½Λ‖θ‖₁`` (no 2π constant).
    """
    w = adjusted_ivar(ivar, s2[None, :])
    G, b = normal_equations(flux, w, design)
    theta = _solve_masked(G, b, term_mask)
    if regularization > 0:
        theta = _lasso(G, b, theta, 0.5 * regularization, term_mask)
    lnp = log_likelihood(flux, ivar, design @ theta.T, s2[None, :], axis=0, constant=False)
    if regularization > 0:
        lnp -= 0.5 * regularization * np.abs(theta[:, 1:]).sum(axis=1)
    return lnp


def fit_pixels(
    flux,
    ivar,
    design,
    *,
    term_mask=None,
    regularization: float = 0.0,
    tol: float = 1e-8,
    max_iter: int = 100,
    pixel_major: bool = False,
    s2_start=None,
    progressbar: bool = False,
) -> TrainingResult:
    """Maximum-likelihood θ and s² for every pixel.

    Parameters
    ----------
    flux, ivar : ndarray, shape (N, P) (or (P, N) with ``pixel_major=True``)
        Validated training fluxes (0 where ivar = 0) and inverse variances.
    design : ndarray, shape (N, T)
        Design matrix v(ℓ_n) of the scaled training labels.
    term_mask : ndarray of bool, shape (P, T), optional
        False where a term is censored (forced to zero) at a pixel.
    regularization : float, default 0
        L1 strength Λ on the non-constant terms (Casey+2016 convention: the penalty
        ``Λ Σ_{t≥1}|θ_t|`` is added to ``Σ_n [w r² − ln w]``).
    tol : float
        Convergence tolerance on ``|∂ ln p/∂x| / N`` with ``x = ln(s² + <σ²>)``: the
        profile score per star, in units that mean the same whether s² is far below or
        far above the noise (1e-8 puts s² within ~1e-6 of its maximum; its statistical
        uncertainty is ≳ 3% of s² + σ²).
    max_iter : int
        Maximum number of block-coordinate iterations.
    pixel_major : bool
        ``flux`` and ``ivar`` are given transposed, (P, N), C-contiguous (saves a copy).
    s2_start : ndarray, shape (P,), optional
        Starting values of s² (default 0), e.g. from a fit on nearly the same labels;
        the maximum found does not depend on it, only the number of iterations.
    progressbar : bool
        Show a tqdm progress bar over pixels: it advances as pixels converge (or leave the
        iteration for the neutral model), so it measures real progress; the iteration
        count is shown beside it.

    Returns
    -------
    TrainingResult
    """

    if pixel_major:
        flux_t = np.ascontiguousarray(flux, dtype=np.float64)
        ivar_t = np.ascontiguousarray(ivar, dtype=np.float64)
    else:
        flux_t = np.ascontiguousarray(np.asarray(flux, dtype=np.float64).T)
        ivar_t = np.ascontiguousarray(np.asarray(ivar, dtype=np.float64).T)
    p, n = flux_t.shape
    design = np.ascontiguousarray(design, dtype=np.float64)
    t = design.shape[1]
    n_used = np.count_nonzero(ivar_t > 0, axis=1)
    allowed = np.ones((p, t), dtype=bool) if term_mask is None else np.asarray(term_mask, dtype=bool)
    n_terms_px = allowed.sum(axis=1)
    flags = np.zeros(p, dtype=np.int64)
    few = n_used < n_terms_px + 1
    flags[few] |= PixelFlag.FEW_STARS

    vv = _products(design)
    if s2_start is None:
        s2 = np.zeros(p)
    else:
        s2 = np.array(s2_start, dtype=np.float64)
        if s2.shape != (p,) or not np.all(np.isfinite(s2) & (s2 >= 0)):
            raise InvalidInputError(f"s2_start must be {p} finite values >= 0")
    theta = np.zeros((p, t))
    score = np.zeros(p)
    lam = 0.5 * regularization
    converged = np.zeros(p, dtype=bool)
    bad = few.copy()
    active = np.flatnonzero(~few)
    buf_a = np.empty((p, n))  # reused: weights, then θ·v (also for the final likelihood)
    buf_b = np.empty((active.size, n))
    bar = None
    if progressbar:
        from tqdm.auto import tqdm  # lazy: only with a progress bar

        bar = tqdm(total=p, desc="training pixels", unit="px")
    it = 0
    for it in range(max_iter + 1):
        if active.size == 0:
            break
        m = active.size
        w, wf = buf_a[:m], buf_b[:m]  # reused buffers: no page faults after the first pass
        weights(ivar_t, flux_t, s2, active, w, wf)
        th, ok, packed, ba = theta_step(w, wf, design, allowed[active], vv)
        ok &= np.isfinite(th).all(axis=1)
        if not ok.all():
            # singular (or numerically singular) normal equations: mostly found at s² = 0,
            # but the weights change with s², so a pixel can also become ill-conditioned
            # at a later pass; either way it leaves the iteration for the neutral model
            _drop(flags, bad, active[~ok], later=it > 0)
            active, th, packed, ba = active[ok], th[ok], packed[ok], ba[ok]
            m = active.size  # the work buffers below are sliced to the pixels still active
            if m == 0:
                break
        if regularization > 0:
            start = th if it == 0 else theta[active]
            th = lasso_step(packed, ba, start, regularization, allowed[active])
        theta[active] = th
        model_t = np.matmul(th, design.T, out=buf_a[:m])
        # the fixed-residual solve pays off while s² is far from its optimum (first two
        # passes); afterwards a Newton step with the exact profile curvature suffices
        solve_fixed = it < 2
        g1, s_fixed, g2_fixed, noise = score_terms(ivar_t, flux_t, model_t, s2, active, buf_b[:m], solve_fixed)
        q = buf_b[:m] @ design
        score[active] = g1
        s = s2[active]
        ng = np.maximum(n_used[active], 1)
        dlnp_dx = (s + noise) * g1  # derivative with respect to x = ln(s² + <σ²>)
        done = ((s == 0) & (g1 <= 0)) | ((s > 0) & (np.abs(dlnp_dx) / ng < tol))
        converged[active[done]] = True
        if bar is not None:  # pixels finished: converged now, or dropped (neutral model) so far
            bar.update(int(np.count_nonzero(converged | bad)) - bar.n)
            bar.set_postfix(iteration=it, active=int((~done).sum()))
        if it == max_iter:
            break
        # coupling of θ and s² in the profile likelihood: c = qᵀG⁻¹q; with the L1 penalty θ
        # moves with s² only on its support (θ_S = G_SS⁻¹(b_S − λ sign θ_S)): c = q_Sᵀ G_SS⁻¹ q_S
        support = allowed[active]
        if regularization > 0:
            support = support & ((th != 0) | (np.arange(t) == 0))
        ginv_q, _ = solve_packed(packed, q, support, 1e-10)
        coupling = np.einsum("at,at->a", q, ginv_q)
        if solve_fixed:
            s_new = _scatter_step(s, s_fixed, g2_fixed, coupling)
        else:
            s_new = _profile_newton(s, g1, g2_fixed + coupling, noise)
        broken = ~(np.isfinite(s_new) & np.isfinite(g1))
        if broken.any():  # overflow in the scatter step (absurd flux or ivar): neutral model
            _drop(flags, bad, active[broken], later=True)
            converged[active[broken]] = False
        keep = ~done & ~broken
        s2[active[keep]] = s_new[keep]
        active = active[keep]
    n_iter = it
    if bar is not None:  # pixels still active at max_iter end here too (flagged NOT_CONVERGED)
        bar.update(p - bar.n)
        bar.close()
    del buf_b
    empty = n_used == 0
    if empty.any():
        logger.info("%d of %d pixels are masked in every training star: neutral model", int(empty.sum()), p)
    partial = bad & ~empty
    if partial.any():
        logger.warning(
            "%d of %d pixels have too little information (fewer usable stars than terms + 1, "
            "or a singular design): they get a neutral model and a flag",
            int(partial.sum()),
            p,
        )
    lnp = log_likelihood_terms(ivar_t, flux_t, np.matmul(theta, design.T, out=buf_a), s2)
    del buf_a
    notconv = ~converged & ~bad
    if notconv.any():
        flags[notconv] |= PixelFlag.NOT_CONVERGED
        logger.warning("s² did not converge for %d pixels in %d iterations", int(notconv.sum()), max_iter)
    if regularization > 0:
        lnp -= lam * np.abs(theta[:, 1:]).sum(axis=1)
    # neutral model for pixels without enough information
    if bad.any():
        ivb, fb = ivar_t[bad], flux_t[bad]
        wsum = ivb.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_flux = np.where(wsum > 0, (ivb * fb).sum(axis=1) / np.where(wsum > 0, wsum, 1.0), 1.0)
        theta[bad] = 0.0
        theta[bad, 0] = mean_flux
        s2[bad] = 0.0
        score[bad] = 0.0
        lnp[bad] = 0.0
    return TrainingResult(theta, s2, lnp, score, flags, n_used, n_iter)


def _drop(flags, bad, pixels, *, later):
    """Mark ``pixels`` singular (neutral model): ``SINGULAR`` always (every consumer of the
    flags leaves such pixels out), ``ILL_CONDITIONED`` too when found after the first pass
    or through non-finite values, so that the two causes can be told apart."""
    flags[pixels] |= PixelFlag.SINGULAR | (PixelFlag.ILL_CONDITIONED if later else 0)
    bad[pixels] = True


def _profile_newton(s, g1, curv, noise):
    """Newton step on the profile likelihood in ``x = ln(s² + <σ²>)`` with the exact
    profile curvature ``curv`` (∂²/∂(s²)²); at most a factor 10 in ``s² + <σ²>``."""
    q = s + noise
    d1 = q * g1
    d2 = d1 + q * q * curv
    dx = np.where(d2 < 0, -d1 / np.where(d2 < 0, d2, -1.0), np.sign(g1) * np.log(3.0))
    dx = np.clip(dx, -np.log(10.0), np.log(10.0))
    new = q * np.exp(dx) - noise
    # a proposal below 0 shrinks s² tenfold; once negligible against the noise it is set to
    # the boundary, where the convergence test (score ≤ 0 at s² = 0) can stop it
    shrunk = 0.1 * s
    return np.where(new > 0, new, np.where(shrunk > 1e-6 * noise, shrunk, 0.0))


def _scatter_step(s, s_fixed, g2_fixed, coupling):
    """Next s² for each pixel (vectorised).

    ``s_fixed`` maximises the likelihood with θ held at θ(s²) (found in the kernel on the
    cached residuals). Letting θ follow s² moves the profile score at ``s_fixed`` by about
    ``c (s_fixed − s)`` with ``c = qᵀG⁻¹q ≥ 0``; one Newton step with the profile curvature
    ``g2_fixed + c`` corrects for it. Far from the optimum this is already close, near it
    the iteration converges quadratically. From s² = 0 the first move is to ``s_fixed``.
    """
    curv = g2_fixed + coupling
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(curv < 0, -coupling * (s_fixed - s) / curv, 0.0)
    # from s² = 0 the coupling (evaluated with the weights at 0) is a poor guide: take s_fixed
    corr = np.where(s > 0, corr, 0.0)
    new = s_fixed + corr
    # the maximiser at fixed residuals on the boundary (s² = 0) is taken as it is: the
    # convergence test at s² = 0 then decides (from a warm start s² would otherwise only
    # decay geometrically towards 0)
    return np.where(new > 0, new, s_fixed)
