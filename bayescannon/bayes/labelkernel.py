"""The label posterior's log density and gradient, compiled by numba and cached on disk.

This is the sampler's hot path for :class:`bayescannon.bayes.posterior.LabelPosterior`:
nutpie calls :func:`logp_grad` through its Python-function interface
(:func:`nutpie.from_pyfunc`), so no PyTensor graph is compiled at all. Why: nutpie's own
PyMC path wraps the PyTensor function in a ``numba.cfunc`` that numba cannot cache
("uses dynamic globals"), so every fresh process paid 30–130 s of compilation for a
posterior that needs ~1 s of sampling. This kernel is an ordinary ``njit(cache=True)``
function of plain arrays: compiled once per machine (~5–15 s), then loaded from numba's
disk cache in well under a second; the per-evaluation overhead of the Python call
(~2–5 µs) is small against NUTS's few thousand gradient evaluations per star.

The density is the one of the PyMC model in :mod:`bayescannon.bayes.posterior` (kept for
``sampler="pymc"``): per star, with ``u = u_MAP + L z`` and ``x = lo + (hi − lo) σ(u)``
(uniform prior) or ``x = u`` (normal prior, sd ``hi``),

    ln p(z) = ln L(v(x)) + ln prior(u),
    ln L = −½ χ²/(1 + ε) − ½ n_pix ln(1 + ε),  χ² = vᵀAv − 2bᵀv + c,  ε = κ vᵀG₀⁻¹v

(:func:`bayescannon.core.likelihood.label_log_likelihood`). ``tests/test_bayes.py``
checks the value against that numpy core and the gradient against finite differences.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["logp_grad", "labels_from_z"]


@numba.njit(cache=True, inline="always")
def _softplus(u):  # pragma: no cover - compiled
    return max(u, 0.0) + np.log1p(np.exp(-abs(u)))


@numba.njit(cache=True)
def logp_grad(z, A, b, c, n_pix, kappa, g0, u0, chol, lo, hi, parent, last, uniform):  # pragma: no cover
    """Log density and its gradient for a batch of stars.

    Parameters
    ----------
    z : ndarray, shape (S·K,)
        Standardised coordinates, star-major (star s, label k at ``s·K + k``).
    A, b, c : ndarray, shapes (S, T, T), (S, T), (S,)
        Sufficient statistics of each star.
    n_pix, kappa : ndarray, shape (S,)
        Used pixels and the θ-uncertainty weight κ of each star.
    g0 : ndarray, shape (T, T)
        G₀⁻¹ of the θ covariance (zeros without θ uncertainty).
    u0 : ndarray, shape (S, K)
        MAP in unconstrained units.
    chol : ndarray, shape (S, K, K)
        Cholesky factor of the Laplace covariance in unconstrained units.
    lo, hi : ndarray, shape (K,)
        Uniform prior bounds (scaled units); with ``uniform`` False, ``hi`` is the normal
        prior's standard deviation and ``lo`` is unused.
    parent, last : ndarray of int, shape (T,)
        The vectorizer's term recursion: term t = term ``parent[t]`` × label ``last[t]``.
    uniform : bool

    Returns
    -------
    logp : float
    grad : ndarray, shape (S·K,)
    """
    s_n = A.shape[0]
    t_n = A.shape[1]
    k_n = u0.shape[1]
    grad = np.zeros(s_n * k_n)
    u = np.empty(k_n)
    x = np.empty(k_n)
    dxdu = np.empty(k_n)
    gu = np.empty(k_n)
    v = np.empty(t_n)
    jac = np.zeros((t_n, k_n))
    av = np.empty(t_n)
    gv = np.empty(t_n)
    total = 0.0
    for s in range(s_n):
        for k in range(k_n):
            acc = u0[s, k]
            for j in range(k + 1):
                acc += chol[s, k, j] * z[s * k_n + j]
            u[k] = acc
        prior = 0.0
        for k in range(k_n):
            if uniform:
                sig = 1.0 / (1.0 + np.exp(-u[k]))
                x[k] = lo[k] + (hi[k] - lo[k]) * sig
                dxdu[k] = (hi[k] - lo[k]) * sig * (1.0 - sig)
                prior += -_softplus(-u[k]) - _softplus(u[k])
                gu[k] = 1.0 - 2.0 * sig
            else:
                x[k] = u[k]
                dxdu[k] = 1.0
                prior += -0.5 * (u[k] / hi[k]) ** 2
                gu[k] = -u[k] / (hi[k] * hi[k])
        # v(x) and its Jacobian by the term recursion (product rule)
        v[0] = 1.0
        for k in range(k_n):
            jac[0, k] = 0.0
        for t in range(1, t_n):
            pa = parent[t]
            j = last[t]
            v[t] = v[pa] * x[j]
            for k in range(k_n):
                jac[t, k] = jac[pa, k] * x[j]
            jac[t, j] += v[pa]
        vav = 0.0
        bv = 0.0
        vgv = 0.0
        for t in range(t_n):
            a_ = 0.0
            g_ = 0.0
            for r in range(t_n):
                a_ += A[s, t, r] * v[r]
                g_ += g0[t, r] * v[r]
            av[t] = a_
            gv[t] = g_
            vav += v[t] * a_
            bv += b[s, t] * v[t]
            vgv += v[t] * g_
        chi2 = vav - 2.0 * bv + c[s]
        eps = kappa[s] * vgv
        q = 1.0 + eps
        total += -0.5 * chi2 / q - 0.5 * n_pix[s] * np.log1p(eps) + prior
        # d lnL / d v = −(Av − b)/q + (½ χ²/q² − ½ n/q) · 2κ G v   (A, G₀⁻¹ symmetric)
        coef = (0.5 * chi2 / (q * q) - 0.5 * n_pix[s] / q) * 2.0 * kappa[s]
        for k in range(k_n):
            gx = 0.0
            for t in range(t_n):
                gx += jac[t, k] * (-(av[t] - b[s, t]) / q + coef * gv[t])
            gu[k] += gx * dxdu[k]
        # z → u is u = u0 + L z: ∂/∂z = Lᵀ ∂/∂u
        for j in range(k_n):
            acc = 0.0
            for k in range(j, k_n):
                acc += chol[s, k, j] * gu[k]
            grad[s * k_n + j] = acc
    return total, grad


@numba.njit(cache=True)
def labels_from_z(z, u0, chol, lo, hi, offset, scale, uniform):  # pragma: no cover - compiled
    """Physical labels (S, K) of standardised coordinates ``z`` (S·K,)."""
    s_n, k_n = u0.shape
    out = np.empty((s_n, k_n))
    for s in range(s_n):
        for k in range(k_n):
            acc = u0[s, k]
            for j in range(k + 1):
                acc += chol[s, k, j] * z[s * k_n + j]
            if uniform:
                xk = lo[k] + (hi[k] - lo[k]) / (1.0 + np.exp(-acc))
            else:
                xk = acc
            out[s, k] = xk * scale[k] + offset[k]
    return out
