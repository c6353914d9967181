"""The label posterior's log density and gradient, compiled by numba and cached on disk.

This is the sampler's hot path for :class:`bayescannon.bayes.posterior.LabelPosterior`:
nutpie calls :func:`logp_grad` through a C callback (:func:`c_callbacks`, a
``numba.cfunc`` reading one packed buffer, :func:`pack`) handed to nutpie's PyMC-model
interface, so no PyTensor graph is compiled and no Python runs per gradient. Why: nutpie's
own PyMC path wraps the PyTensor function in a ``numba.cfunc`` that numba cannot cache
("uses dynamic globals"), so every fresh process paid 30–130 s of compilation for a
posterior that needs ~1 s of sampling; its Python-function interface (``from_pyfunc``,
the previous choice) takes the GIL for every gradient (~15 µs each, and the two chains'
threads then run one at a time: ~2 s per star warm). Here every function is
``cache=True`` and free of dynamic globals: compiled once per machine, then loaded from
numba's disk cache.

The density is the one of the PyMC model in :mod:`bayescannon.bayes.posterior` (kept for
``sampler="pymc"``): per star, with ``u = u_MAP + L z`` and ``x = lo + (hi − lo) σ(u)``
(uniform prior) or ``x = u`` (normal prior, sd ``hi``),

    ln p(z) = ln L(v(x)) + ln prior(u),
    ln L = −½ χ²/(1 + ε) − ½ n_pix ln(1 + ε),  χ² = vᵀAv − 2bᵀv + c,  ε = κ vᵀG₀⁻¹v

(:func:`bayescannon.core.likelihood.label_log_likelihood`). ``tests/test_bayes.py``
checks the value against that numpy core and the gradient against finite differences.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

__all__ = ["logp_grad", "labels_from_z", "pack", "c_callbacks"]


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


# ------------------------------------------------------------------ C callbacks
# nutpie's PyMC interface calls a C function ``logp(dim, x*, grad*, logp*, data*)`` from its
# Rust threads without the GIL (the Python-function interface takes the GIL for every
# gradient: two chains then run one at a time, plus ~15 µs of Python per call). These
# callbacks read everything from one packed float64 buffer (:func:`pack`), use no dynamic
# globals and are therefore cached on disk by numba like the kernels above.

HEADER = 4  # S, K, T, uniform


def _buffer_size(s_n, k_n, t_n):
    """Length of the packed buffer (:func:`pack`); the same formula is inlined in ``_unpack``."""
    return HEADER + s_n * (t_n * t_n + t_n + 3 + k_n + k_n * k_n) + t_n * t_n + 4 * k_n + 2 * t_n


def pack(A, b, c, n_pix, kappa, g0, u0, chol, lo, hi, offset, scale, parent, last, uniform) -> np.ndarray:
    """One contiguous float64 buffer of a batch's data, in the order the C callbacks read it.

    Parameters are those of :func:`logp_grad` and :func:`labels_from_z` (``offset``,
    ``scale``: the physical label scaling).

    Returns
    -------
    ndarray, shape (n,)
    """
    s_n, t_n = np.shape(b)
    k_n = np.shape(u0)[1]
    parts = [np.array([s_n, k_n, t_n, 1.0 if uniform else 0.0])]
    parts += [np.ravel(a).astype(np.float64) for a in (A, b, c, n_pix, kappa, g0, u0, chol, lo, hi, offset, scale)]
    parts += [np.ravel(parent).astype(np.float64), np.ravel(last).astype(np.float64)]
    out = np.ascontiguousarray(np.concatenate(parts))
    if out.size != _buffer_size(s_n, k_n, t_n):  # pragma: no cover - a layout bug
        raise AssertionError(f"packed buffer has {out.size} numbers, expected {_buffer_size(s_n, k_n, t_n)}")
    return out


@numba.njit(cache=True)
def _unpack(data_):  # pragma: no cover - compiled
    head = numba.carray(data_, (HEADER,), np.float64)
    s_n, k_n, t_n = int(head[0]), int(head[1]), int(head[2])
    uniform = head[3] != 0.0
    size = HEADER + s_n * (t_n * t_n + t_n + 3 + k_n + k_n * k_n) + t_n * t_n + 4 * k_n + 2 * t_n
    buf = numba.carray(data_, (size,), np.float64)
    o = HEADER
    A = buf[o : o + s_n * t_n * t_n].reshape((s_n, t_n, t_n))
    o += s_n * t_n * t_n
    b = buf[o : o + s_n * t_n].reshape((s_n, t_n))
    o += s_n * t_n
    c = buf[o : o + s_n]
    o += s_n
    n_pix = buf[o : o + s_n]
    o += s_n
    kappa = buf[o : o + s_n]
    o += s_n
    g0 = buf[o : o + t_n * t_n].reshape((t_n, t_n))
    o += t_n * t_n
    u0 = buf[o : o + s_n * k_n].reshape((s_n, k_n))
    o += s_n * k_n
    chol = buf[o : o + s_n * k_n * k_n].reshape((s_n, k_n, k_n))
    o += s_n * k_n * k_n
    lo = buf[o : o + k_n]
    o += k_n
    hi = buf[o : o + k_n]
    o += k_n
    offset = buf[o : o + k_n]
    o += k_n
    scale = buf[o : o + k_n]
    o += k_n
    parent = buf[o : o + t_n].astype(np.int64)
    o += t_n
    last = buf[o : o + t_n].astype(np.int64)
    return A, b, c, n_pix, kappa, g0, u0, chol, lo, hi, offset, scale, parent, last, uniform


def _logp_c(dim, x_, out_, logp_, data_):  # pragma: no cover - compiled
    """nutpie's C log-density callback: :func:`logp_grad` on the buffer of :func:`pack`."""
    A, b, c, n_pix, kappa, g0, u0, chol, lo, hi, _, _, parent, last, uniform = _unpack(data_)
    if dim != u0.size:
        return -1
    x = numba.carray(x_, (dim,))
    out = numba.carray(out_, (dim,))
    value, grad = logp_grad(x, A, b, c, n_pix, kappa, g0, u0, chol, lo, hi, parent, last, uniform)
    logp_[0] = value
    out[:] = grad
    if not np.all(np.isfinite(grad)):
        return 3
    if not np.isfinite(value):
        return 4
    return 0


def _expand_c(dim, expanded, x_, out_, data_):  # pragma: no cover - compiled
    """nutpie's C callback for the stored draws: physical labels (S·K,) of ``z``."""
    _, _, _, _, _, _, u0, chol, lo, hi, offset, scale, _, _, uniform = _unpack(data_)
    if dim != u0.size or expanded != u0.size:
        return -1
    x = numba.carray(x_, (dim,))
    out = numba.carray(out_, (expanded,))
    out[:] = labels_from_z(x, u0, chol, lo, hi, offset, scale, uniform).ravel()
    return 0


_LOGP_SIG = numba.types.int64(
    numba.types.uint64,
    numba.types.CPointer(numba.types.double),
    numba.types.CPointer(numba.types.double),
    numba.types.CPointer(numba.types.double),
    numba.types.voidptr,
)
_EXPAND_SIG = numba.types.int64(
    numba.types.uint64,
    numba.types.uint64,
    numba.types.CPointer(numba.types.double),
    numba.types.CPointer(numba.types.double),
    numba.types.voidptr,
)


@functools.cache
def c_callbacks():
    """The compiled C callbacks ``(logp, expand)`` (numba ``CFunc`` objects, ``.address``).

    Compiled on first use in a process, from numba's disk cache after the first time on a
    machine (a cfunc is compiled when it is created, so this is not done at import).
    """
    return numba.cfunc(_LOGP_SIG, cache=True)(_logp_c), numba.cfunc(_EXPAND_SIG, cache=True)(_expand_c)
