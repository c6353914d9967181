"""Fused, compiled inner loops of the training step (numba, cached on disk).

These kernels only fuse elementwise work that numpy would otherwise do in many
memory-bound passes over (pixel, star) arrays; the maths they implement is the one in
:mod:`bayescannon.likelihood` (``w = ivar/(1 + ivar s²)``), and the tests check them
against the numpy expressions. Arrays are pixel-major: (P, N).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["weights", "score_terms", "log_likelihood_terms"]


@numba.njit(parallel=True, cache=True, fastmath=False)
def weights(ivar_t, flux_t, s2, idx):  # pragma: no cover - compiled
    """Adjusted ivar and ivar·flux for the pixels ``idx``: two (len(idx), N) arrays."""
    m = idx.shape[0]
    n = ivar_t.shape[1]
    w = np.empty((m, n))
    wf = np.empty((m, n))
    for a in numba.prange(m):
        p = idx[a]
        s = s2[p]
        for j in range(n):
            iv = ivar_t[p, j]
            x = iv / (1.0 + iv * s)
            w[a, j] = x
            wf[a, j] = x * flux_t[p, j]
    return w, wf


@numba.njit(parallel=True, cache=True, fastmath=False)
def score_terms(ivar_t, flux_t, model_t, s2, idx):  # pragma: no cover - compiled
    """Per pixel in ``idx``: score ∂lnp/∂s², curvature ∂²lnp/∂(s²)² at fixed θ, the
    mean excess squared residual ``<r² − σ²>`` (a moments estimate of s²) and the mean
    noise variance ``<σ²>``.

    ``model_t`` (len(idx), N) holds θ·v for those pixels; ``s2`` is full length.
    """
    m = idx.shape[0]
    n = ivar_t.shape[1]
    g1 = np.zeros(m)
    g2 = np.zeros(m)
    excess = np.zeros(m)
    noise = np.zeros(m)
    for a in numba.prange(m):
        p = idx[a]
        s = s2[p]
        acc1 = 0.0
        acc2 = 0.0
        acc4 = 0.0
        acc5 = 0.0
        cnt = 0
        for j in range(n):
            iv = ivar_t[p, j]
            if iv > 0.0:
                r = flux_t[p, j] - model_t[a, j]
                w = iv / (1.0 + iv * s)
                wr2 = w * r * r
                acc1 += w * (wr2 - 1.0)
                acc2 += w * w * (0.5 - wr2)
                var = 1.0 / iv
                acc4 += r * r - var
                acc5 += var
                cnt += 1
        g1[a] = 0.5 * acc1
        g2[a] = acc2
        c = max(cnt, 1)
        excess[a] = acc4 / c
        noise[a] = acc5 / c
    return g1, g2, excess, noise


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
                w = iv / (1.0 + iv * s)
                acc += w * r * r - np.log(w)
        out[p] = -0.5 * acc
    return out


@numba.njit(parallel=True, cache=True, fastmath=False)
def test_weights(flux, ivar, s2, pixel_ok):  # pragma: no cover - compiled
    """Validate and weight test spectra in one pass (star-major arrays).

    Returns
    -------
    w, wf : (N, P) adjusted ivar and adjusted ivar × flux (0 where unusable)
    c : (N,) Σ w f²
    n_pix : (N,) number of usable pixels
    bad : (N, 3) first pixel per star with non-finite ivar, negative ivar, non-finite
        flux where ivar > 0 (−1 where none)
    """
    n, p = flux.shape
    w = np.empty((n, p))
    wf = np.empty((n, p))
    c = np.zeros(n)
    n_pix = np.zeros(n, dtype=np.int64)
    bad = np.full((n, 3), -1, dtype=np.int64)
    for i in numba.prange(n):
        acc = 0.0
        cnt = 0
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
                    x = iv / (1.0 + iv * s2[j])
                    cnt += 1
            w[i, j] = x
            if x > 0.0:
                y = x * f
                wf[i, j] = y
                acc += y * f
            else:
                wf[i, j] = 0.0
        c[i] = acc
        n_pix[i] = cnt
    return w, wf, c, n_pix, bad


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
