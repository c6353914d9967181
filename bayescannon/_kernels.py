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
            y = x * f if x > 0.0 else 0.0
            wf[i, j] = y
            acc += y * f
        c[i] = acc
        n_pix[i] = cnt
    return w, wf, c, n_pix, bad
