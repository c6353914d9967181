"""Batched test step: labels of new spectra by Levenberg–Marquardt, many stars at once.

Each star is first reduced to its sufficient statistics under the fitted model,

    A = Σ_λ w_λ θ_λ θ_λᵀ,   b = Σ_λ w_λ f_λ θ_λ,   c = Σ_λ w_λ f_λ²,

with ``w = ivar/(1 + ivar s²)``, so that ``χ²(ℓ) = vᵀAv − 2bᵀv + c`` exactly for a
polynomial model (v = v(ℓ)). All A for a chunk of stars come from one matrix product
``W (θ ⊗ θ)``. Levenberg–Marquardt then runs on (stars × starts) small problems at once,
with the analytic Jacobian of v: gradient ``Jᵀ(Av − b)`` and Gauss–Newton matrix ``JᵀAJ``
(what a per-star least-squares solver on the pixel residuals ``√w (f − θ·v)`` would use),
plus the residual-weighted curvature of v where the exact Hessian is positive definite.
A second round restarts from the other dips of χ² scans along each label (``restart``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bayescannon.core._kernels import levenberg_marquardt, test_weights
from bayescannon.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "LabelFit",
    "axis_profiles",
    "chi2_at",
    "fit_labels",
    "invert_fisher",
    "profile_restarts",
    "restarts_from_profiles",
    "scan_grid",
    "spectrum_statistics",
    "sufficient_statistics",
    "test_statistics",
]


def _pairs(t):
    return np.triu_indices(t)


def test_statistics(w, wf, theta, theta_pairs=None):
    """A (N,T,T) and b (N,T) from weights ``w`` and ``w·f`` (N, P): the one place they are formed.

    ``A = Σ_λ w_λ θ_λ θ_λᵀ`` from one matrix product ``W (θ ⊗ θ)`` over the packed upper
    triangle, ``b = Σ_λ w_λ f_λ θ_λ``.

    Parameters
    ----------
    w, wf : ndarray, shape (N, P)
        Adjusted inverse variances (0 for unusable pixels) and ``w·f``.
    theta : ndarray, shape (P, T)
    theta_pairs : ndarray, shape (P, T(T+1)/2), optional
        Precomputed ``θ_t θ_u`` products (t ≤ u).
    """
    t = theta.shape[1]
    iu, ju = _pairs(t)
    if theta_pairs is None:
        theta_pairs = theta[:, iu] * theta[:, ju]
    packed = w @ theta_pairs
    A = np.empty((w.shape[0], t, t))
    A[:, iu, ju] = packed
    A[:, ju, iu] = packed
    return A, wf @ theta


def sufficient_statistics(flux, w, theta, theta_pairs=None):
    """A (N,T,T), b (N,T), c (N,) and the number of used pixels per star.

    Parameters
    ----------
    flux : ndarray, shape (N, P)
        Flux (any finite value where ``w == 0``: it is ignored).
    w : ndarray, shape (N, P)
        Adjusted inverse variances (0 for unusable pixels).
    theta : ndarray, shape (P, T)
    theta_pairs : ndarray, shape (P, T(T+1)/2), optional
        Precomputed ``θ_t θ_u`` products (t ≤ u).
    """
    wf = w * flux
    A, b = test_statistics(w, wf, theta, theta_pairs)
    c = np.einsum("np,np->n", wf, flux)
    n_pix = np.count_nonzero(w > 0, axis=1)
    return A, b, c, n_pix


def spectrum_statistics(flux, ivar, s2, theta, pixel_ok, inv_wbar=None, theta_pairs=None):
    """Weights and sufficient statistics of spectra in one compiled pass (as the test step).

    Unusable pixels (``ivar`` 0, negative or not finite, flux not finite where ``ivar > 0``,
    pixels without a model) get weight 0; they are reported in ``bad``, not raised.

    Parameters
    ----------
    flux, ivar : ndarray, shape (N, P)
    s2 : ndarray, shape (P,)
    theta : ndarray, shape (P, T)
    pixel_ok : ndarray of bool, shape (P,)
        Pixels with a fitted model.
    inv_wbar : ndarray, shape (P,), optional
        ``1/w̄`` of the training weights for κ (default: no θ-uncertainty, κ = 0).
    theta_pairs : ndarray, shape (P, T(T+1)/2), optional

    Returns
    -------
    A, b, c, n_pix, kappa, bad : ndarray
        (N, T, T), (N, T), (N,), (N,), (N,) and (N, 3): the first pixel of each star with
        non-finite ivar, negative ivar, non-finite flux where ivar > 0 (−1 where none).
    """
    flux = np.ascontiguousarray(np.atleast_2d(flux), dtype=np.float64)
    ivar = np.ascontiguousarray(np.atleast_2d(ivar), dtype=np.float64)
    n, p = flux.shape
    inv_wbar = np.zeros(p) if inv_wbar is None else np.ascontiguousarray(inv_wbar, dtype=np.float64)
    w, wf = np.empty((n, p)), np.empty((n, p))
    c, n_pix, bad, kappa = test_weights(
        flux,
        ivar,
        np.ascontiguousarray(s2, dtype=np.float64),
        np.ascontiguousarray(pixel_ok, dtype=bool),
        inv_wbar,
        w,
        wf,
    )
    A, b = test_statistics(w, wf, theta, theta_pairs)
    return A, b, c, n_pix, kappa, bad


def chi2_at(A, b, c, v):
    """χ² = vᵀAv − 2bᵀv + c for design vectors of the stars in A, b, c.

    Parameters
    ----------
    A, b, c : ndarray, shapes (N, T, T), (N, T), (N,)
    v : ndarray, shape (N, S, T) or (S, T)
        S design vectors per star, or the same S for every star.

    Returns
    -------
    ndarray, shape (N, S)
    """
    if v.ndim == 2:
        Av = np.swapaxes(A @ v.T, 1, 2)  # (N, S, T)
        return np.einsum("st,nst->ns", v, Av) - 2.0 * (b @ v.T) + c[:, None]
    Av = np.swapaxes(A @ np.swapaxes(v, 1, 2), 1, 2)
    return np.einsum("nst,nst->ns", v, Av - 2.0 * b[:, None, :]) + c[:, None]


@dataclass
class LabelFit:
    """Best fits of :func:`fit_labels` (scaled units)."""

    labels: np.ndarray  # (N, K)
    covariance: np.ndarray  # (N, K, K), inverse of JᵀAJ
    chi2: np.ndarray  # (N,)
    converged: np.ndarray  # (N,) bool
    at_bound: np.ndarray  # (N,) bool
    n_iter: np.ndarray  # (N,) iterations of the best start
    best_start: np.ndarray  # (N,) index of the start that won (S: the restart of the second round)


def fit_labels(
    A,
    b,
    c,
    vectorizer,
    starts,
    *,
    bounds=None,
    max_iter: int = 100,
    chi2_tol: float = 1e-9,
    restart: bool = False,
    n_grid: int = 64,
) -> LabelFit:
    """Levenberg–Marquardt for many stars and starting points at once.

    Parameters
    ----------
    A, b, c : ndarray
        Sufficient statistics from :func:`sufficient_statistics` (N stars).
    vectorizer : PolynomialVectorizer
    starts : ndarray, shape (N, S, K)
        Starting points in scaled units (S per star).
    bounds : ndarray, shape (K, 2), optional
        Lower and upper search bounds in scaled units; steps are projected onto them.
    max_iter : int
        Maximum number of LM iterations.
    chi2_tol : float
        Convergence when the Gauss–Newton decrement ``gᵀ(JᵀAJ)⁻¹g`` (the χ² decrease
        a full step would bring) falls below this value, in χ² units, or when an accepted
        step lowers χ² by less than it.
    restart : bool
        Second round (requires ``bounds``): χ² is scanned along each label through every
        star's best fit (:func:`profile_restarts`) and Levenberg–Marquardt restarts from the
        lowest other local minimum of those scans, for the stars that have one; the
        restart wins where it lowers χ² by more than ``chi2_tol``.
    n_grid : int
        Grid points per label of the second-round scans, across the bounds.

    Returns
    -------
    LabelFit
        The start with the lowest χ² for each star.

    Notes
    -----
    The iterations run in a compiled kernel (:func:`bayescannon.core._kernels.levenberg_marquardt`)
    parallel over stars × starts; v and its Jacobian come from the vectorizer's own term
    recursion (``vectorizer.parent``, ``vectorizer.last``).

    Candidate starts ranked by χ² can all lie in the basin of a wrong minimum when the χ²
    of a candidate is dominated by the labels that are easy to fit: a label that acts
    mostly through its square then leaves its mirror image as a wrong local minimum that
    the ranking does not tell apart. The scans of the second round hold the other labels
    at their best values, where such a minimum shows as a second dip.
    """
    n, s, k = starts.shape
    if bounds is None:
        if restart:
            raise InvalidInputError("restart=True needs finite bounds for its scans")
        lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
    else:
        lo, hi = np.ascontiguousarray(bounds[:, 0]), np.ascontiguousarray(bounds[:, 1])
    x, chi2, done, iters = _run_lm(A, b, c, vectorizer, starts, lo, hi, max_iter, chi2_tol)
    best = np.argmin(np.where(np.isfinite(chi2), chi2, np.inf), axis=1)
    rows = np.arange(n)
    xb = x[rows, best]
    chi2b, doneb, itb = chi2[rows, best], done[rows, best], iters[rows, best]
    if restart and n:
        start2, has = profile_restarts(A, b, c, vectorizer, xb, np.column_stack([lo, hi]), n_grid=n_grid)
        if has.any():
            idx = np.flatnonzero(has)
            x2, chi22, done2, iters2 = _run_lm(
                A[idx], b[idx], c[idx], vectorizer, start2[idx][:, None, :], lo, hi, max_iter, chi2_tol
            )
            win = chi22[:, 0] < chi2b[idx] - chi2_tol
            idx, w = idx[win], np.flatnonzero(win)
            xb[idx], chi2b[idx], doneb[idx], itb[idx], best[idx] = x2[w, 0], chi22[w, 0], done2[w, 0], iters2[w, 0], s
            if idx.size:
                logger.debug("second-round restarts lowered χ² for %d of %d stars", idx.size, n)
    Jb = vectorizer.jacobian(xb)
    H = np.swapaxes(Jb, 1, 2) @ (A @ Jb)
    cov = invert_fisher(H)
    at_bound = np.zeros(n, dtype=bool)
    if bounds is not None:
        tol = 1e-9 * (hi - lo)
        at_bound = np.any((xb <= lo + tol) | (xb >= hi - tol), axis=1)
    return LabelFit(xb, cov, chi2b, doneb, at_bound, itb, best)


def _run_lm(A, b, c, vectorizer, starts, lo, hi, max_iter, chi2_tol):

    return levenberg_marquardt(
        np.ascontiguousarray(A),
        np.ascontiguousarray(b),
        np.ascontiguousarray(c),
        np.ascontiguousarray(starts, dtype=np.float64),
        vectorizer.parent,
        vectorizer.last,
        lo,
        hi,
        int(max_iter),
        float(chi2_tol),
    )


def axis_profiles(A, b, c, vectorizer, x, grid):
    """χ² along each label axis through ``x``, at the values of ``grid``.

    Parameters
    ----------
    A, b, c : ndarray, shapes (N, T, T), (N, T), (N,)
        Sufficient statistics of N stars.
    vectorizer : PolynomialVectorizer
    x : ndarray, shape (N, K)
        Points the scans pass through (scaled units).
    grid : ndarray, shape (K, G)
        Values taken by label k along its scan.

    Returns
    -------
    ndarray, shape (N, K, G)
        ``χ²`` at ``x`` with label k replaced by ``grid[k, g]``.

    Notes
    -----
    Along an axis the design vector is a polynomial of degree ``order`` in the shift t of
    the label, so χ² is one of degree ``2 order``: its coefficients come from v at
    ``order + 1`` points per axis and the grid costs a polynomial evaluation per point.
    """
    n, k = x.shape
    d = vectorizer.order + 1
    nodes = np.linspace(-1.0, 1.0, d)
    to_coef = np.linalg.inv(np.vander(nodes, d, increasing=True))
    pts = np.repeat(x[:, None, None, :], k, axis=1).repeat(d, axis=2)  # (N, K, D, K)
    ax = np.arange(k)
    pts[:, ax, :, ax] += nodes
    t = vectorizer.n_terms
    coef = to_coef @ vectorizer(pts.reshape(-1, k)).reshape(n, k, d, t)  # v = Σ_e coef_e sᵉ
    acoef = (coef.reshape(n, k * d, t) @ A).reshape(n, k, d, t)  # A is symmetric
    quad = coef @ np.swapaxes(acoef, 2, 3)  # (N, K, D, D)
    poly = np.zeros((n, k, 2 * d - 1))
    for e in range(d):
        poly[:, :, e : e + d] += quad[:, :, :, e]
    poly[:, :, :d] -= 2.0 * (coef @ b[:, None, :, None])[..., 0]
    poly[:, :, 0] += c[:, None]
    shift = grid[None, :, :] - x[:, :, None]
    out = np.broadcast_to(poly[:, :, -1:], shift.shape).copy()
    for m in range(2 * d - 3, -1, -1):  # Horner
        out *= shift
        out += poly[:, :, m : m + 1]
    return out


def profile_restarts(A, b, c, vectorizer, x, bounds, *, n_grid: int = 64):
    """Second-round starting points: the lowest other dip of χ² along a label axis.

    For each star, χ² is scanned along each label through its fit ``x`` on ``n_grid``
    points across the bounds (:func:`axis_profiles`). Local minima of a scan (a bound
    included) more than 1.5 grid steps from ``x`` are dips of another basin; the lowest of
    them over all labels is the restart.

    Parameters
    ----------
    A, b, c : ndarray, shapes (N, T, T), (N, T), (N,)
    vectorizer : PolynomialVectorizer
    x : ndarray, shape (N, K)
        Best fits of the first round (scaled units).
    bounds : ndarray, shape (K, 2)
        Finite search bounds (scaled units).
    n_grid : int
        Scan points per label (>= 3).

    Returns
    -------
    starts : ndarray, shape (N, K)
        ``x`` with one label moved to the bottom of the lowest other dip.
    has_dip : ndarray, shape (N,) bool
        Stars with such a dip; ``starts`` of the others are their ``x``.
    """
    grid = scan_grid(bounds, n_grid)
    return restarts_from_profiles(axis_profiles(A, b, c, vectorizer, x, grid), grid, x)


def scan_grid(bounds, n_grid):
    """``n_grid`` equally spaced values per label across finite ``bounds`` (K, 2): (K, G)."""
    if n_grid < 3:
        raise InvalidInputError(f"n_grid must be >= 3; got {n_grid}")
    bounds = np.asarray(bounds, dtype=np.float64)
    if not np.all(np.isfinite(bounds)):
        raise InvalidInputError("profile_restarts needs finite bounds")
    return bounds[:, :1] + (bounds[:, 1:] - bounds[:, :1]) * np.linspace(0.0, 1.0, n_grid)


def restarts_from_profiles(prof, grid, x):
    """Starts at the lowest other dip of the χ² scans ``prof`` (N, K, G) on ``grid`` (K, G)
    through ``x`` (N, K); see :func:`profile_restarts`."""
    n, k = x.shape
    n_grid = grid.shape[1]
    low = np.zeros(prof.shape, dtype=bool)
    low[:, :, 1:-1] = (prof[:, :, 1:-1] < prof[:, :, :-2]) & (prof[:, :, 1:-1] <= prof[:, :, 2:])
    low[:, :, 0] = prof[:, :, 0] < prof[:, :, 1]
    low[:, :, -1] = prof[:, :, -1] < prof[:, :, -2]
    far = np.abs(grid[None, :, :] - x[:, :, None]) > 1.5 * (grid[:, 1] - grid[:, 0])[None, :, None]
    dip = np.where(low & far, prof, np.inf).reshape(n, k * n_grid)
    pick = np.argmin(dip, axis=1)
    rows = np.arange(n)
    has = np.isfinite(dip[rows, pick])
    lab, g = np.divmod(pick, n_grid)
    starts = x.copy()
    starts[rows[has], lab[has]] = grid[lab[has], g[has]]
    return starts, has


def invert_fisher(H):
    """Batched inverse; NaN for stars whose Fisher matrix is singular."""
    out = np.full_like(H, np.nan)
    d = np.sqrt(np.abs(np.einsum("njj->nj", H)))
    ok = np.all(d > 0, axis=1) & np.all(np.isfinite(H), axis=(1, 2))
    if ok.any():
        Hn = H[ok] / (d[ok][:, :, None] * d[ok][:, None, :])
        ev = np.linalg.eigvalsh(Hn)
        good = ev[:, 0] > 1e-12 * ev[:, -1]
        idx = np.flatnonzero(ok)[good]
        inv = np.linalg.inv(Hn[good])
        out[idx] = inv / (d[idx][:, :, None] * d[idx][:, None, :])
    return out
