"""Compiled inner loops of training and the test step (numba, cached on disk).

* training: fused passes over pixel-major (P, N) arrays (validation + transpose, adjusted
  weights, score statistics, log-likelihood) and small per-pixel Cholesky solves;
* test step: validation + weights of star-major (N, P) spectra, and Levenberg–Marquardt
  on each star's sufficient statistics, with v(ℓ) from the vectorizer's own term
  recursion (``parent``, ``last``).

The maths is the one in :mod:`bayescannon.core.likelihood` and :mod:`bayescannon.core.vectorizer`:
the adjusted inverse variance ``w = ivar/(1 + ivar s²)`` is
:func:`bayescannon.core.likelihood.adjusted_ivar` itself, compiled and inlined
(:data:`_adjusted_ivar`), and the θ-uncertainty weight κ has one compiled definition
(:func:`_kappa_sums`, :func:`_kappa_ratio`) shared by :func:`test_weights` and
:func:`kappa_kernel`. ``tests/test_kernels.py`` checks every kernel against the numpy core;
the test step is also checked against per-star ``scipy.optimize.least_squares``.

Compiled code is cached on disk; ``python -m bayescannon._warmup`` (``make setup``) fills
the cache. A kernel of the package that has to be compiled all the same (cold cache, new
argument types) is announced by one log line per step (:data:`KERNEL_STEPS`).
"""

from __future__ import annotations

import logging

import numba
import numpy as np
from numba.core import event

from bayescannon.core.likelihood import adjusted_ivar

__all__ = ["weights", "score_terms", "log_likelihood_terms", "test_weights", "kappa_kernel"]

logger = logging.getLogger(__name__)

#: The step each compiled kernel of the package serves (by function name, wherever it is
#: defined) and its typical first-use compile time in seconds on one core, for the notice
#: logged when it has to be compiled; ``python -m bayescannon._warmup`` compiles them all.
KERNEL_STEPS = {
    **dict.fromkeys(
        [
            "adjusted_ivar",
            "prepare_training",
            "weights",
            "score_terms",
            "_fixed_residual_maximum",
            "log_likelihood_terms",
            "solve_packed",
            "lasso_packed",
            "_support_solve",
            "fingerprint",
            "weight_sums",
        ],
        ("training", 20),
    ),
    **dict.fromkeys(
        [
            "test_weights",
            "_kappa_sums",
            "_kappa_ratio",
            "levenberg_marquardt",
            "_design",
            "_chi2_and_grad",
            "_chi2_only",
            "_damped_solve",
            "poly_levenberg_marquardt",
            "_poly_value",
            "_poly_chi2",
            "_poly_derivatives",
            "_newton_solve",
            "_damping_scale",
        ],
        ("test-step", 15),
    ),
    "kappa_kernel": ("calibration", 2),
    "_interp_kernel": ("resampling", 4),
    **dict.fromkeys(["_ho_prepare", "_ho_finish"], ("continuum-normalisation", 4)),
}


class _CompileNotice(event.Listener):
    """Log one line when a kernel of the package has to be compiled (a numba cache miss:
    the ``numba:compile`` event fires only then), once per step and process."""

    def __init__(self):
        self.announced = set()

    def on_start(self, ev):
        # a listener sees every numba compile of the process (PyTensor's and the user's too,
        # whose functions may have __module__ None): it must never raise into numba
        try:
            py_func = getattr((ev.data or {}).get("dispatcher"), "py_func", None)
            if not str(getattr(py_func, "__module__", None) or "").startswith("bayescannon"):
                return
            step, seconds = KERNEL_STEPS.get(py_func.__name__, ("numerical", 10))
        except Exception:  # pragma: no cover - defensive: a notice is not worth a failed compile
            return
        if step not in self.announced:
            self.announced.add(step)
            logger.warning("compiling the %s kernels (first use, ~%d s; cached afterwards)", step, seconds)

    def on_end(self, ev):
        pass


event.register("numba:compile", _CompileNotice())

#: :func:`bayescannon.core.likelihood.adjusted_ivar` compiled for the kernels (inlined: the
#: same arithmetic, the same rounding, no call overhead). Numba's disk cache of a kernel is
#: keyed on this file: after changing ``adjusted_ivar`` clear ``__pycache__``.
_adjusted_ivar = numba.njit(cache=True, inline="always")(adjusted_ivar)


@numba.njit(cache=True, inline="always")
def _kappa_sums(num, den, w, inv_wbar_j):  # pragma: no cover - compiled
    """One pixel's contribution to κ = Σ w²/w̄ / Σ w (pixels with ``1/w̄ > 0`` only)."""
    if inv_wbar_j > 0.0:
        return num + w * w * inv_wbar_j, den + w
    return num, den


@numba.njit(cache=True, inline="always")
def _kappa_ratio(num, den):  # pragma: no cover - compiled
    """κ from its sums: 0 for a star without a usable pixel."""
    return num / den if den > 0.0 else 0.0


@numba.njit(parallel=True, cache=True, fastmath=False)
def weights(ivar_t, flux_t, s2, idx, w, wf):  # pragma: no cover - compiled
    """Adjusted ivar and ivar·flux for the pixels ``idx``, written into the first
    len(idx) rows of the preallocated (≥ len(idx), N) arrays ``w`` and ``wf``."""
    m = idx.shape[0]
    n = ivar_t.shape[1]
    for a in numba.prange(m):
        p = idx[a]
        s = s2[p]
        for j in range(n):
            iv = ivar_t[p, j]
            x = _adjusted_ivar(iv, s)
            w[a, j] = x
            wf[a, j] = x * flux_t[p, j]
    return w, wf


@numba.njit(cache=True, fastmath=True)
def _fixed_residual_maximum(iv_row, r2, x, noise):  # pragma: no cover - compiled
    """Maximiser over s² ≥ 0 of −½Σ[w r² − ln w] with the squared residuals ``r2`` fixed
    (``r2 = 0`` where ivar = 0, which then contributes nothing), by Newton iterations in
    ``x = ln(s² + noise)``; returns s² and the curvature ∂²/∂(s²)² there."""
    n = iv_row.shape[0]
    f2 = 0.0
    for _ in range(60):
        f1 = 0.0
        f2 = 0.0
        for j in range(n):
            iv = iv_row[j]
            w = _adjusted_ivar(iv, x)
            wr2 = w * r2[j]
            f1 += w * (wr2 - 1.0)
            f2 += w * w * (0.5 - wr2)
        f1 *= 0.5
        if x == 0.0 and f1 <= 0.0:
            break
        qq = x + noise
        d1 = qq * f1
        d2 = d1 + qq * qq * f2
        if d2 < 0.0:
            dx = -d1 / d2
        elif f1 > 0.0:
            dx = 1.0986122886681098  # ln 3
        else:
            dx = -1.0986122886681098
        dx = min(max(dx, -2.302585092994046), 2.302585092994046)  # at most a factor 10
        xn = qq * np.exp(dx) - noise
        if xn <= 0.0:
            xn = 0.1 * x
        if abs(xn - x) <= 1e-11 * (x + noise):
            return xn, f2
        x = xn
    return x, f2


@numba.njit(parallel=True, cache=True, fastmath=False)
def score_terms(ivar_t, flux_t, model_t, s2, idx, w2r, solve_fixed):  # pragma: no cover - compiled
    """Score statistics of the pixels ``idx`` at their current s² and θ (via ``model_t``).

    Returns, per pixel:

    * ``g1`` — the score ∂lnp/∂s² (with θ = θ(s²) this is the exact profile score);
    * ``w2r`` — ``w² r`` written into the first len(idx) rows of the preallocated array;
      ``q = w2r @ design`` then gives the θ–s² coupling ``c = qᵀG⁻¹q`` of the profile
      curvature;
    * ``s_fixed``, ``g2_fixed`` — with ``solve_fixed``: the maximiser over s² ≥ 0 of the
      likelihood with the residuals held fixed, and the curvature there (Newton iterations
      on the residuals kept in cache: no extra pass over memory); without it:
      ``s_fixed`` = current s² and ``g2_fixed`` the fixed-θ curvature at the current s²;
    * ``noise`` — the mean noise variance ``<σ²>``.
    """
    m = idx.shape[0]
    n = ivar_t.shape[1]
    g1 = np.zeros(m)
    s_fixed = np.zeros(m)
    g2_fixed = np.zeros(m)
    noise = np.zeros(m)
    for a in numba.prange(m):
        p = idx[a]
        s = s2[p]
        acc1 = 0.0
        acc2 = 0.0
        acc4 = 0.0
        acc5 = 0.0
        cnt = 0
        r2 = np.empty(n)
        for j in range(n):
            iv = ivar_t[p, j]
            r = flux_t[p, j] - model_t[a, j]
            w = _adjusted_ivar(iv, s)
            wr2 = w * r * r
            acc1 += w * (wr2 - 1.0)
            acc2 += w * w * (0.5 - wr2)
            w2r[a, j] = w * w * r
            if iv > 0.0:
                r2[j] = r * r
                acc4 += r * r
                acc5 += 1.0 / iv
                cnt += 1
            else:
                r2[j] = 0.0
        g1[a] = 0.5 * acc1
        c = max(cnt, 1)
        nz = acc5 / c
        noise[a] = nz
        # start the fixed-residual solve from the current s², or from the moments
        # estimate <r² − σ²> when s² = 0 (Newton from 0 needs many more steps)
        if not solve_fixed:
            s_fixed[a] = s
            g2_fixed[a] = acc2
            continue
        x0 = s
        if s == 0.0 and acc4 / c > nz and g1[a] > 0.0:
            x0 = acc4 / c - nz
        s_fixed[a], g2_fixed[a] = _fixed_residual_maximum(ivar_t[p], r2, x0, nz)
    return g1, s_fixed, g2_fixed, noise


@numba.njit(parallel=True, cache=True, fastmath=False)
def log_likelihood_terms(ivar_t, flux_t, model_t, s2):  # pragma: no cover - compiled
    """``-½ Σ_n [w r² − ln w]`` per pixel (all pixels; no 2π constant)."""
    m, n = ivar_t.shape
    out = np.zeros(m)
    for p in numba.prange(m):
        s = s2[p]
        acc = 0.0
        for j in range(n):
            iv = ivar_t[p, j]
            if iv > 0.0:
                r = flux_t[p, j] - model_t[p, j]
                w = _adjusted_ivar(iv, s)
                acc += w * r * r - np.log(w)
        out[p] = -0.5 * acc
    return out


@numba.njit(parallel=True, cache=True, fastmath=False)
def test_weights(flux, ivar, s2, pixel_ok, inv_wbar, w, wf):  # pragma: no cover - compiled
    """Validate and weight test spectra in one pass (star-major arrays).

    ``w`` and ``wf`` are preallocated (≥ N, P) arrays reused across chunks; their first N
    rows receive the adjusted ivar and adjusted ivar × flux (0 where unusable).
    ``inv_wbar`` (P,) is ``1/w̄`` of the training weights (0 where unknown or unusable).

    Returns
    -------
    c : (N,) Σ w f²
    n_pix : (N,) number of usable pixels
    bad : (N, 3) first pixel per star with non-finite ivar, negative ivar, non-finite
        flux where ivar > 0 (−1 where none)
    kappa : (N,) ``Σ w²/w̄ / Σ w`` over pixels with ``inv_wbar > 0`` (the θ-uncertainty
        weight of :func:`kappa_kernel`, at no extra pass)
    """
    n, p = flux.shape
    kappa = np.zeros(n)
    c = np.zeros(n)
    n_pix = np.zeros(n, dtype=np.int64)
    bad = np.full((n, 3), -1, dtype=np.int64)
    for i in numba.prange(n):
        acc = 0.0
        cnt = 0
        knum = 0.0
        kden = 0.0
        for j in range(p):
            iv = ivar[i, j]
            f = flux[i, j]
            x = 0.0
            if not np.isfinite(iv):
                if bad[i, 0] < 0:
                    bad[i, 0] = j
            elif iv < 0.0:
                if bad[i, 1] < 0:
                    bad[i, 1] = j
            elif iv > 0.0:
                if not np.isfinite(f):
                    if bad[i, 2] < 0:
                        bad[i, 2] = j
                elif pixel_ok[j]:
                    x = _adjusted_ivar(iv, s2[j])
                    cnt += 1
                    knum, kden = _kappa_sums(knum, kden, x, inv_wbar[j])
            w[i, j] = x
            if x > 0.0:
                y = x * f
                wf[i, j] = y
                acc += y * f
            else:
                wf[i, j] = 0.0
        c[i] = acc
        n_pix[i] = cnt
        kappa[i] = _kappa_ratio(knum, kden)
    return c, n_pix, bad, kappa


@numba.njit(parallel=True, cache=True)
def kappa_kernel(ivar, s2, inv_wbar):  # pragma: no cover - compiled
    """κ per star in one fused pass: ``Σ w²/w̄ / Σ w`` over pixels with ``inv_wbar > 0``
    and a finite ``ivar > 0`` (w = adjusted ivar; the same sums as :func:`test_weights`)."""
    n, p = ivar.shape
    out = np.zeros(n)
    for i in numba.prange(n):
        num = 0.0
        den = 0.0
        for j in range(p):
            iv = ivar[i, j]
            if iv > 0.0 and np.isfinite(iv):
                num, den = _kappa_sums(num, den, _adjusted_ivar(iv, s2[j]), inv_wbar[j])
        out[i] = _kappa_ratio(num, den)
    return out


@numba.njit(parallel=True, cache=True)
def prepare_training(flux, ivar):  # pragma: no cover - compiled
    """Validate (N, P) flux/ivar and return pixel-major clean copies in one pass.

    Returns
    -------
    flux_t, ivar_t : (P, N) arrays; flux is 0 where ivar == 0.
    bad : (3, 2) first (star, pixel) with non-finite ivar, negative ivar, non-finite flux
        where ivar > 0; (−1, −1) where none.
    """
    n, p = flux.shape
    flux_t = np.empty((p, n))
    ivar_t = np.empty((p, n))
    block = 64
    nb = (p + block - 1) // block
    badb = np.full((nb, 3, 2), -1, dtype=np.int64)
    for bidx in numba.prange(nb):
        p0 = bidx * block
        p1 = min(p0 + block, p)
        for i in range(n):
            for j in range(p0, p1):
                iv = ivar[i, j]
                f = flux[i, j]
                if not np.isfinite(iv):
                    if badb[bidx, 0, 0] < 0:
                        badb[bidx, 0, 0] = i
                        badb[bidx, 0, 1] = j
                    iv = 0.0
                elif iv < 0.0:
                    if badb[bidx, 1, 0] < 0:
                        badb[bidx, 1, 0] = i
                        badb[bidx, 1, 1] = j
                    iv = 0.0
                elif iv > 0.0 and not np.isfinite(f):
                    if badb[bidx, 2, 0] < 0:
                        badb[bidx, 2, 0] = i
                        badb[bidx, 2, 1] = j
                    iv = 0.0
                ivar_t[j, i] = iv
                flux_t[j, i] = f if iv > 0.0 else 0.0
    bad = np.full((3, 2), -1, dtype=np.int64)
    for k in range(3):  # report the lowest star index among blocks
        for bidx in range(nb):
            s = badb[bidx, k, 0]
            if s >= 0 and (bad[k, 0] < 0 or s < bad[k, 0]):
                bad[k, 0] = s
                bad[k, 1] = badb[bidx, k, 1]
    return flux_t, ivar_t, bad


@numba.njit(parallel=True, cache=True)
def solve_packed(packed, b, allowed, rel_tol):  # pragma: no cover - compiled
    """Solve G θ = b per row, G given packed (upper triangle, row-major t ≤ u).

    Censored terms (``allowed`` False) are fixed at 0. The system is Jacobi-scaled to a
    unit diagonal and factored by Cholesky; a pivot below ``rel_tol`` marks the row
    singular (θ = 0, ok = False).
    """
    m, t = b.shape
    theta = np.zeros((m, t))
    ok = np.ones(m, dtype=np.bool_)
    for a in numba.prange(m):
        G = np.zeros((t, t))
        k = 0
        for i in range(t):
            for j in range(i, t):
                G[i, j] = packed[a, k]
                G[j, i] = packed[a, k]
                k += 1
        rhs = np.zeros(t)
        d = np.ones(t)
        for i in range(t):
            if allowed[a, i]:
                if G[i, i] > 0.0:
                    d[i] = 1.0 / np.sqrt(G[i, i])
                else:
                    ok[a] = False
        if not ok[a]:
            continue
        for i in range(t):
            for j in range(t):
                if allowed[a, i] and allowed[a, j]:
                    G[i, j] *= d[i] * d[j]
                elif i == j:
                    G[i, j] = 1.0
                else:
                    G[i, j] = 0.0
            rhs[i] = b[a, i] * d[i] if allowed[a, i] else 0.0
        # Cholesky in place (lower)
        for j in range(t):
            s = G[j, j]
            for q in range(j):
                s -= G[j, q] * G[j, q]
            if s <= rel_tol:
                ok[a] = False
                break
            G[j, j] = np.sqrt(s)
            for i in range(j + 1, t):
                s2 = G[i, j]
                for q in range(j):
                    s2 -= G[i, q] * G[j, q]
                G[i, j] = s2 / G[j, j]
        if not ok[a]:
            continue
        y = np.zeros(t)
        for i in range(t):
            s = rhs[i]
            for q in range(i):
                s -= G[i, q] * y[q]
            y[i] = s / G[i, i]
        x = np.zeros(t)
        for i in range(t - 1, -1, -1):
            s = y[i]
            for q in range(i + 1, t):
                s -= G[q, i] * x[q]
            x[i] = s / G[i, i]
        for i in range(t):
            theta[a, i] = x[i] * d[i] if allowed[a, i] else 0.0
    return theta, ok


@numba.njit(cache=True, inline="always")
def _design(x, parent, last, v, J):  # pragma: no cover - compiled
    """v(x) and its Jacobian from the vectorizer's term recursion (term = parent·x[last])."""
    t_n = v.shape[0]
    k_n = x.shape[0]
    v[0] = 1.0
    for k in range(k_n):
        J[0, k] = 0.0
    for t in range(1, t_n):
        pa = parent[t]
        j = last[t]
        v[t] = v[pa] * x[j]
        for k in range(k_n):
            J[t, k] = J[pa, k] * x[j]
        J[t, j] += v[pa]


@numba.njit(cache=True, inline="always")
def _chi2_and_grad(A, b, c, v, J, Av, g, H, AJ):  # pragma: no cover - compiled
    t_n, k_n = J.shape
    chi2 = c
    for t in range(t_n):
        s = 0.0
        for u in range(t_n):
            s += A[t, u] * v[u]
        Av[t] = s
        chi2 += v[t] * (s - 2.0 * b[t])
    for k in range(k_n):
        s = 0.0
        for t in range(t_n):
            s += J[t, k] * (Av[t] - b[t])
        g[k] = s
    for t in range(t_n):
        for k in range(k_n):
            s = 0.0
            for u in range(t_n):
                s += A[t, u] * J[u, k]
            AJ[t, k] = s
    for i in range(k_n):
        for k in range(i, k_n):
            s = 0.0
            for t in range(t_n):
                s += J[t, i] * AJ[t, k]
            H[i, k] = s
            H[k, i] = s
    return chi2


@numba.njit(cache=True, inline="always")
def _newton_matrix(x, parent, last, b, J, Av, H, D2, Hn):  # pragma: no cover - compiled
    """Hn = JᵀAJ + Σ_t (Av − b)_t ∇²v_t: half the exact Hessian of χ² (D2: work (T, K, K))."""
    t_n, k_n = J.shape
    for k in range(k_n):
        for q in range(k_n):
            D2[0, k, q] = 0.0
            Hn[k, q] = H[k, q]
    for t in range(1, t_n):
        pa = parent[t]
        j = last[t]
        r = Av[t] - b[t]
        for k in range(k_n):
            for q in range(k_n):
                d = D2[pa, k, q] * x[j]
                if k == j:
                    d += J[pa, q]
                if q == j:
                    d += J[pa, k]
                D2[t, k, q] = d
                Hn[k, q] += r * d


@numba.njit(cache=True, inline="always")
def _chi2_only(A, b, c, v):  # pragma: no cover - compiled
    t_n = v.shape[0]
    chi2 = c
    for t in range(t_n):
        s = 0.0
        for u in range(t_n):
            s += A[t, u] * v[u]
        chi2 += v[t] * (s - 2.0 * b[t])
    return chi2


@numba.njit(cache=True, inline="always")
def _damped_solve(H, G, lam, g, step, M, free):  # pragma: no cover - compiled
    """step = −(H + λ diag G)⁻¹ g by Cholesky on the free variables (0 for the others);
    returns False if not positive definite."""
    k_n = g.shape[0]
    for i in range(k_n):
        for k in range(k_n):
            M[i, k] = H[i, k] if free[i] and free[k] else 0.0
        M[i, i] = M[i, i] + lam * max(G[i, i], 1e-300) if free[i] else 1.0
    return cholesky_solve(M, g, step, free)


@numba.njit(cache=True, inline="always")
def cholesky_solve(M, g, step, free):  # pragma: no cover - compiled
    """step = −M⁻¹ g for a symmetric M (overwritten by its Cholesky factor), 0 for the
    variables that are not free (their rows of M must be the identity); returns False if M
    is not positive definite. The one Cholesky solve of the damped Newton steps."""
    k_n = g.shape[0]
    for j in range(k_n):
        s = M[j, j]
        for q in range(j):
            s -= M[j, q] * M[j, q]
        if not (s > 0.0):
            return False
        M[j, j] = np.sqrt(s)
        for i in range(j + 1, k_n):
            s2 = M[i, j]
            for q in range(j):
                s2 -= M[i, q] * M[j, q]
            M[i, j] = s2 / M[j, j]
    for i in range(k_n):
        s = -g[i] if free[i] else 0.0
        for q in range(i):
            s -= M[i, q] * step[q]
        step[i] = s / M[i, i]
    for i in range(k_n - 1, -1, -1):
        s = step[i]
        for q in range(i + 1, k_n):
            s -= M[q, i] * step[q]
        step[i] = s / M[i, i]
    return True


@numba.njit(parallel=True, cache=True)
def levenberg_marquardt(A, b, c, starts, parent, last, lo, hi, max_iter, chi2_tol):  # pragma: no cover
    """Levenberg–Marquardt on χ²(x) = vᵀAv − 2bᵀv + c for every star and start.

    Gradient ``Jᵀ(Av − b)``; the step solves the damped exact Hessian (``JᵀAJ`` plus the
    curvature of v weighted by the residuals ``Av − b``) where that is positive definite, else
    the damped Gauss–Newton matrix ``JᵀAJ`` (the one a least-squares solver on the pixel
    residuals would use). Gauss–Newton alone converges only linearly for stars the model
    fits badly (large residuals) and can run out of iterations there; near a minimum the
    exact Hessian gives quadratic convergence. Steps are projected onto [lo, hi]. Labels on a
    bound whose gradient points outwards are held there and the step is solved on the
    others (an active set): without it the full step, clipped, keeps failing and the
    damping grows until steps are too small to measure, a false convergence on the bound.
    Convergence: an accepted step lowers χ² by less than ``chi2_tol``, or a rejected step
    whose Gauss–Newton decrement ``−g·step`` is below it; the damping hitting 1e12 means
    no further progress is possible (converged only if the decrement is tiny).

    Returns x (N, S, K), chi2 (N, S), converged (N, S), iterations (N, S).
    """
    n, s_n, k_n = starts.shape
    t_n = parent.shape[0]
    x_out = np.empty((n, s_n, k_n))
    chi2_out = np.empty((n, s_n))
    done_out = np.zeros((n, s_n), dtype=np.bool_)
    it_out = np.zeros((n, s_n), dtype=np.int64)
    for idx in numba.prange(n * s_n):
        i = idx // s_n
        si = idx % s_n
        Ai = A[i]
        bi = b[i]
        ci = c[i]
        x = np.empty(k_n)
        xn = np.empty(k_n)
        for k in range(k_n):
            x[k] = min(max(starts[i, si, k], lo[k]), hi[k])
        v = np.empty(t_n)
        J = np.empty((t_n, k_n))
        vn = np.empty(t_n)
        Jn = np.empty((t_n, k_n))
        Av = np.empty(t_n)
        g = np.empty(k_n)
        H = np.empty((k_n, k_n))
        AJ = np.empty((t_n, k_n))
        M = np.empty((k_n, k_n))
        step = np.empty(k_n)
        free = np.ones(k_n, dtype=np.bool_)
        Hn = np.empty((k_n, k_n))
        D2 = np.empty((t_n, k_n, k_n))
        _design(x, parent, last, v, J)
        chi2 = _chi2_and_grad(Ai, bi, ci, v, J, Av, g, H, AJ)
        _newton_matrix(x, parent, last, bi, J, Av, H, D2, Hn)
        lam = 1e-3
        done = False
        it = 0
        while it < max_iter and not done:
            it += 1
            # active set: a label on a bound whose gradient points outwards is held there, and
            # the damped Gauss–Newton step is solved on the others (projected LM)
            for k in range(k_n):
                free[k] = not ((x[k] <= lo[k] and g[k] > 0.0) or (x[k] >= hi[k] and g[k] < 0.0))
            # damping scaled by the Gauss–Newton diagonal (the Fisher information) in both
            ok = _damped_solve(Hn, H, lam, g, step, M, free) or _damped_solve(H, H, lam, g, step, M, free)
            if not ok:
                lam *= 10.0
                if lam > 1e12:
                    break
                continue
            for k in range(k_n):
                xn[k] = min(max(x[k] + step[k], lo[k]), hi[k])
            _design(xn, parent, last, vn, Jn)
            chi2n = _chi2_only(Ai, bi, ci, vn)
            decrement = 0.0
            for k in range(k_n):
                decrement -= g[k] * step[k]
            if chi2n < chi2:
                decrease = chi2 - chi2n
                for k in range(k_n):
                    x[k] = xn[k]
                _design(x, parent, last, v, J)
                chi2 = _chi2_and_grad(Ai, bi, ci, v, J, Av, g, H, AJ)
                _newton_matrix(x, parent, last, bi, J, Av, H, D2, Hn)
                lam = max(lam / 10.0, 1e-12)
                if decrease < chi2_tol:
                    done = True
            else:
                lam *= 10.0
                if decrement < chi2_tol:
                    done = True
                elif lam > 1e12:
                    done = decrement < 1e3 * chi2_tol
                    break
        for k in range(k_n):
            x_out[i, si, k] = x[k]
        chi2_out[i, si] = chi2
        done_out[i, si] = done
        it_out[i, si] = it
    return x_out, chi2_out, done_out, it_out


@numba.njit(parallel=True, cache=True)
def weight_sums(ivar_t, s2, ok):  # pragma: no cover - compiled
    """Sums of the adjusted ivar over stars (per pixel) and over usable pixels (per star)."""
    p, n = ivar_t.shape
    nb = 32
    partial = np.zeros((nb, n))
    wsum = np.zeros(p)
    for blk in numba.prange(nb):
        for pp in range(blk * p // nb, (blk + 1) * p // nb):
            if ok[pp]:
                s = s2[pp]
                acc = 0.0
                for j in range(n):
                    iv = ivar_t[pp, j]
                    w = _adjusted_ivar(iv, s)
                    acc += w
                    partial[blk, j] += w
                wsum[pp] = acc
    return wsum, partial.sum(axis=0)


@numba.njit(parallel=True, cache=True)
def fingerprint(a_t, coeffs):  # pragma: no cover - compiled
    """Projections of a (P, N) array on fixed coefficients: per row and per column."""
    p, n = a_t.shape
    rows = np.zeros(p)
    nb = 32
    partial = np.zeros((nb, n))
    for blk in numba.prange(nb):
        for pp in range(blk * p // nb, (blk + 1) * p // nb):
            acc = 0.0
            cp = coeffs[pp % coeffs.shape[0]]
            for j in range(n):
                x = a_t[pp, j]
                acc += x * coeffs[j % coeffs.shape[0]]
                partial[blk, j] += x * cp
            rows[pp] = acc
    return rows, partial.sum(axis=0)
