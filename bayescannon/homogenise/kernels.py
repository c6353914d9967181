"""Compiled kernels of the homogenisation (numba, parallel over stars).

* :func:`combine_stars`: the split-normal combination of
  :func:`~bayescannon.homogenise.splitnormal.combine_split_normal`, solved exactly per star.
  The summed NLL is convex and piecewise quadratic with breaks at the modes: the minimum is
  the vertex of the quadratic of the segment that holds it, and each interval end is a root
  of the quadratic of the segment where the NLL crosses ``fmin + delta_nll``, found by
  walking the segments outward from the minimum (no bisection).
* :func:`mc_block`: the Monte Carlo of one block of stars of
  :func:`~bayescannon.homogenise.propagate.propagate_block` (linear propagation) fused in
  one pass per star: the stratified draws of every label (normal, split normal or
  multivariate normal), the secant offset, the errors-in-variables shift, the model
  uncertainty and the 15.87/50/84.13 percentiles. The (stars, labels, draws) array of
  deviations never exists: a star's draws live in a (labels, draws) scratch array.

The random numbers (lattice shifts, the uniform jitter of split-normal draws) are drawn by
the caller with numpy in the same order as the numpy implementation, so the results are
those of the numpy implementation up to floating-point rounding, and the same on any number
of threads.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["combine_stars", "mc_block"]


@numba.njit(cache=True, inline="always")
def _walk_up(d, wlo, whi, n, target):
    """Smallest ``x >= 0`` where ``0.5 Σ w_i(x) (x - d_i)²`` reaches ``target`` (the NLL
    centred on its minimum at 0; ``w_i = wlo_i`` where ``x < d_i``, else ``whi_i``); ``d``
    sorted ascending."""
    a = 0.0
    q = 0
    while q < n and d[q] <= 0.0:
        q += 1
    while True:
        b = d[q] if q < n else np.inf
        aa = 0.0
        bb = 0.0
        cc = 0.0
        for i in range(n):  # the quadratic of the segment (a, b)
            w = wlo[i] if d[i] >= b else whi[i]
            aa += w
            bb += w * d[i]
            cc += w * d[i] * d[i]
        if q >= n or 0.5 * (aa * b * b - 2.0 * bb * b + cc) >= target:
            disc = bb * bb - aa * (cc - 2.0 * target)
            x = (bb + np.sqrt(max(disc, 0.0))) / aa
            return min(max(x, a), b)
        a = b
        q += 1


@numba.njit(cache=True, parallel=True)
def combine_stars(mu, s1, s2, levels):  # pragma: no cover - compiled
    """Minimum, interval ends, count and ``2 NLL_min`` of every star's split normals.

    Parameters
    ----------
    mu, s1, s2 : float64 (n, k)
        Modes and scales (a measurement is used where all three are finite and the scales
        positive).
    levels : float64 (L,)
        ΔNLL of the intervals.

    Returns
    -------
    best : (n,), ends : (L, 2, n), count : int64 (n,), chi2 : (n,)
        NaN where a star has no measurement.
    """
    n, k = mu.shape
    nl = levels.shape[0]
    best = np.full(n, np.nan)
    ends = np.full((nl, 2, n), np.nan)
    count = np.zeros(n, dtype=np.int64)
    chi2 = np.full(n, np.nan)
    for r in numba.prange(n):
        m = np.empty(k)
        w1 = np.empty(k)
        w2 = np.empty(k)
        c = 0
        for i in range(k):
            a, b1, b2 = mu[r, i], s1[r, i], s2[r, i]
            if np.isfinite(a) and np.isfinite(b1) and np.isfinite(b2) and b1 > 0 and b2 > 0:
                m[c] = a
                w1[c] = 1.0 / (b1 * b1)
                w2[c] = 1.0 / (b2 * b2)
                c += 1
        count[r] = c
        if c == 0:
            continue
        # sort by mode (insertion sort: a handful of measurements)
        for i in range(1, c):
            a, b1, b2 = m[i], w1[i], w2[i]
            q = i - 1
            while q >= 0 and m[q] > a:
                m[q + 1], w1[q + 1], w2[q + 1] = m[q], w1[q], w2[q]
                q -= 1
            m[q + 1], w1[q + 1], w2[q + 1] = a, b1, b2
        # the minimum: the vertex inside its own segment
        x = np.nan
        for j in range(c + 1):
            lo = m[j - 1] if j > 0 else -np.inf
            hi = m[j] if j < c else np.inf
            sw = 0.0
            swm = 0.0
            for i in range(c):
                w = w1[i] if m[i] >= hi else w2[i]
                sw += w
                swm += w * m[i]
            v = swm / sw
            if v >= lo and v <= hi:
                x = v
                break
        if np.isnan(x):  # on a breakpoint, a rounding error outside both segments
            fbest = np.inf
            for q in range(c):
                f = 0.0
                for i in range(c):
                    dd = m[q] - m[i]
                    f += 0.5 * dd * dd * (w1[i] if dd < 0 else w2[i])
                if f < fbest:
                    fbest = f
                    x = m[q]
        d = np.empty(c)
        nd = np.empty(c)
        w1r = np.empty(c)
        w2r = np.empty(c)
        fmin = 0.0
        for i in range(c):
            d[i] = m[i] - x
            dd = -d[i]
            fmin += 0.5 * dd * dd * (w1[i] if dd < 0 else w2[i])
        for i in range(c):  # mirrored for the lower end
            nd[i] = -d[c - 1 - i]
            w1r[i] = w1[c - 1 - i]
            w2r[i] = w2[c - 1 - i]
        best[r] = x
        chi2[r] = 2.0 * fmin
        for lev in range(nl):
            t = fmin + levels[lev]
            ends[lev, 1, r] = x + _walk_up(d, w1, w2, c, t)
            ends[lev, 0, r] = x - _walk_up(nd, w2r, w1r, c, t)
    return best, ends, count, chi2


@numba.njit(cache=True, inline="always")
def _select(a, lo, hi, kth):
    """Reorder ``a[lo:hi]`` so that ``a[kth]`` is its order statistic of rank ``kth - lo``,
    with no larger value before it and no smaller one after (Hoare quickselect)."""
    while hi - lo > 1:
        x, y, z = a[lo], a[(lo + hi - 1) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))  # median of three
        i, j = lo, hi - 1
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if kth <= j:
            hi = j + 1
        elif kth >= i:
            lo = i
        else:
            return


@numba.njit(cache=True, inline="always")
def _percentiles(buf, vidx, gamma, out, row, col):
    """``numpy.percentile`` (linear) of ``buf`` at the virtual indexes ``vidx`` (floors,
    ascending) and fractions ``gamma`` into ``out[row + p, col]``; NaN if any draw is NaN.
    Reorders ``buf`` (only the order statistics needed are selected, no full sort)."""
    nb = buf.shape[0]
    for t in range(nb):
        if np.isnan(buf[t]):
            for p in range(vidx.shape[0]):
                out[row + p, col] = np.nan
            return
    lo = 0
    for p in range(vidx.shape[0]):
        i0 = vidx[p]
        if i0 >= lo:  # else a[i0] is in place already
            _select(buf, lo, nb, i0)
        a = buf[i0]
        b = a
        if i0 + 1 < nb:  # the next order statistic: the smallest value after a[i0]
            b = buf[i0 + 1]
            for t in range(i0 + 2, nb):
                b = min(b, buf[t])
        lo = max(lo, i0 + 1)
        g = gamma[p]
        diff = b - a
        out[row + p, col] = b - diff * (1.0 - g) if g >= 0.5 else a + diff * g


@numba.njit(cache=True, parallel=True)
def mc_block(
    j,
    muj,
    s1z,
    s2z,
    ok,
    asym,
    medshift,
    jit_row,
    jitter,
    use_chol,
    chol,
    base,
    shifts,
    ztab,
    htab,
    center,
    g_lo,
    g_hi,
    sh0,
    sh1,
    tau,
    with_tau,
    vidx,
    gamma,
):  # pragma: no cover - compiled
    """The fused Monte Carlo of one block (see the module docstring).

    Parameters
    ----------
    j : int
        The label calibrated.
    muj : (m,)
        Its catalogue values.
    s1z, s2z : (m, k)
        Split-normal scales (1 where missing).
    ok, asym : bool (m, k)
        Usable labels; split-normal (asymmetric) ones.
    medshift : (m, k)
        The median of each split normal (subtracted from its draws).
    jit_row : int64 (m, k), jitter : (rows, n_draws)
        Row of ``jitter`` (uniform in [0, 1)) of every split-normal label.
    use_chol : bool (m,), chol : (m, k, k)
        Stars drawn from the multivariate normal with this Cholesky factor.
    base : int64 (k + 1, n_draws), shifts : int64 (m, k + 1)
        The lattice: stratum ``base[i, t] + shifts[r, i]`` (mod n_draws).
    ztab, htab : (n_draws,), (n_h,)
        Normal quantiles of the strata; fine table of ``|Z|`` quantiles.
    center, g_lo, g_hi : (m,), (m, k), (m, k)
        The offset at the catalogue values and its one-sided secant slopes (zeros: no model).
    sh0, sh1 : (m,), (m, k)
        The errors-in-variables shift and its gradient (zeros: none).
    tau : (m,), with_tau : bool
        The model uncertainty (added to a second copy of the draws when ``with_tau``).
    vidx, gamma : int64 (3,), (3,)
        Floors and fractions of the percentiles' virtual indexes.

    Returns
    -------
    (6, m)
        P16, P50, P84 with ``tau``, then without.
    """
    m, k = s1z.shape
    nd = base.shape[1]
    nh = htab.shape[0]
    inv = 1.0 / nd
    out = np.empty((6, m))
    for r in numba.prange(m):
        delta = np.zeros((k, nd))
        buf = np.empty(nd)
        for i in range(k):
            if not ok[r, i]:
                continue
            c = shifts[r, i]
            if asym[r, i]:
                row = jit_row[r, i]
                a1 = s1z[r, i]
                a2 = s2z[r, i]
                rr = a1 / (a1 + a2)
                for t in range(nd):
                    s = base[i, t] + c
                    if s >= nd:
                        s -= nd
                    u = (s + jitter[row, t]) * inv
                    low = u < rr
                    level = 1.0 - u / rr if low else (u - rr) / (1.0 - rr)
                    h = htab[min(np.int32(level * nh), nh - 1)]
                    delta[i, t] = (-a1 if low else a2) * h - medshift[r, i]
            elif not use_chol[r]:
                sc = s1z[r, i]
                for t in range(nd):
                    s = base[i, t] + c
                    if s >= nd:
                        s -= nd
                    delta[i, t] = ztab[s] * sc
        if use_chol[r]:  # correlated labels (no split normal in this star): L z
            for i in range(k):
                if not ok[r, i]:
                    continue
                for q in range(i + 1):
                    lq = chol[r, i, q]
                    if lq == 0.0:
                        continue
                    c = shifts[r, q]
                    for t in range(nd):
                        s = base[q, t] + c
                        if s >= nd:
                            s -= nd
                        delta[i, t] += lq * ztab[s]
        for t in range(nd):
            v = muj[r] + delta[j, t]
            off = center[r]
            s = 0.0
            for i in range(k):
                di = delta[i, t]
                off += (g_lo[r, i] if di < 0 else g_hi[r, i]) * di
                s += sh1[r, i] * di
            buf[t] = (v + off) + sh0[r] + s
        _percentiles(buf.copy(), vidx, gamma, out, 3, r)
        if with_tau:
            c = shifts[r, k]
            for t in range(nd):
                s = base[k, t] + c
                if s >= nd:
                    s -= nd
                buf[t] += tau[r] * ztab[s]
            _percentiles(buf, vidx, gamma, out, 0, r)
        else:
            for p in range(3):
                out[p, r] = out[3 + p, r]
    return out
