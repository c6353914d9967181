"""Monte Carlo error propagation through an offset model, chunked over stars.

For each star the survey's labels are drawn from their error distribution: a multivariate
normal where the catalogue gives covariances, otherwise independent split normals (a
normal when the errors are symmetric). Each draw goes through the offset model of the
label, and a normal draw of the model's own (accumulated) uncertainty ``tau`` is added.
The 15.87/50/84.13 percentiles of the calibrated draws are the calibrated value (the
median) and its ``P16``/``P84``: the same form as an input catalogue's asymmetric errors,
read the same way by the combination (``mode = P50``, ``s1 = P50 - P16``,
``s2 = P84 - P50``). Fitting an exact split normal to the percentiles
(:func:`~bayescannon.homogenise.splitnormal.fit_split_normal`) was tried and rejected: its
mode is very sensitive to Monte Carlo noise in the percentiles of nearly symmetric draws.

``propagation="exact"`` evaluates the trees on every draw. ``"linear"`` (the default,
~30× cheaper for 200 draws) evaluates them at the value and at one error below and above
it along each input label, and moves each draw along these one-sided secant slopes: the
offset is smooth on the scale of the errors in practice, and trees are piecewise
constant below it anyway.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

from bayescannon.homogenise.kernels import mc_block
from bayescannon.homogenise.splitnormal import split_normal_ppf

__all__ = ["draw_inputs", "lattice_index", "propagate", "propagate_block", "PERCENTILES"]

#: Percentiles that define the calibrated split normal (±1σ of a normal, and the median).
PERCENTILES = (15.865525393145708, 50.0, 84.13447460685429)


@functools.lru_cache(maxsize=16)
def _korobov(n: int, dims: int) -> tuple:
    """Generating vector ``(1, a, a², ...) mod n`` of a rank-1 lattice of ``n`` points, with
    ``a`` coprime to ``n`` near ``0.618 n`` (every one-dimensional projection is then a
    permutation of the ``n`` strata)."""
    a = next(
        (
            c
            for d in range(n)
            for c in (round(0.618 * n) + d, round(0.618 * n) - d)
            if 1 < c < n and math.gcd(c, n) == 1
        ),
        1,
    )
    g = [1]
    for _ in range(dims - 1):  # a handful of dimensions
        g.append(g[-1] * a % n)
    return tuple(g)


@functools.lru_cache(maxsize=16)
def _normal_table(n: int) -> np.ndarray:
    """Standard normal quantiles at the midpoints of ``n`` equal strata, scaled so that
    their 15.87/84.13 percentiles (:data:`PERCENTILES`, as ``numpy.percentile`` reads
    them) are exactly -1 and +1: the midpoints alone fall short of the tails (by 0.7 %
    for 200 draws), which would narrow every interval by as much."""
    z = special.ndtri((np.arange(n) + 0.5) / n)
    return z / np.percentile(z, PERCENTILES[2]) if n > 2 else z


@functools.lru_cache(maxsize=16)
def _half_normal_table(n: int = 8192) -> np.ndarray:
    """Quantiles of ``|Z|`` at the midpoints of ``n`` equal strata (the split-normal draws
    read them instead of evaluating the normal quantile function per draw)."""
    return special.ndtri(0.5 + 0.5 * (np.arange(n) + 0.5) / n)


def lattice_index(rng, m: int, dims: int, n_draws: int) -> np.ndarray:
    """Stratum of every draw, (m, dims, n_draws) int32: a randomly shifted rank-1 lattice
    per star, ``(t g_i + c_i) mod n_draws`` with the Korobov vector ``g`` and a random
    shift ``c`` per star and dimension. Each dimension takes every stratum once (a Latin
    hypercube in each margin, far less Monte Carlo noise in the percentiles than plain
    draws) and the dimensions are spread like a lattice rule, at the cost of one integer
    addition per draw: no random permutation, no normal quantile per draw."""
    g = np.asarray(_korobov(n_draws, dims), dtype=np.int64)
    base = (np.arange(n_draws)[None, :] * g[:, None] % n_draws).astype(np.int32)  # (dims, n_draws)
    c = rng.integers(0, n_draws, size=(m, dims), dtype=np.int32)
    idx = base[None] + c[:, :, None]
    np.subtract(idx, n_draws, out=idx, where=idx >= n_draws)
    return idx


def draw_inputs(rng, mu, s1, s2, cov, n_draws: int, index=None) -> np.ndarray:
    """Deviations from the catalogue values, shape (n, k, n_draws), from the split normal
    of each label shifted to median 0 (the offset model's median already holds the
    median of the survey's noise); 0 for missing labels. ``index`` (n, k, n_draws): the
    strata of the draws (:func:`lattice_index`; drawn here when None)."""
    n, k = mu.shape
    ok = np.isfinite(mu) & np.isfinite(s1) & np.isfinite(s2)
    s1z, s2z = np.where(ok, s1, 1.0), np.where(ok, s2, 1.0)
    if index is None:
        index = lattice_index(rng, n, k, n_draws)
    z = _normal_table(n_draws)[index]  # stratified standard normals
    delta = z * s1z[..., None]  # symmetric labels: exact quantiles of the stratum midpoints
    asym = ok & ~np.isclose(s1z, s2z)
    table = _half_normal_table()
    for i in np.flatnonzero(asym.any(axis=0)):  # a handful of labels
        # split normals on the same strata: mass r = s1/(s1+s2) below the mode; a draw at
        # level u < r is -s1 |Z| at the |Z| level 1 - u/r, one at u >= r is s2 |Z| at level
        # (u - r)/(1 - r), read from a fine table of |Z| quantiles
        rows = np.flatnonzero(asym[:, i])
        u = index[rows, i, :] + rng.random((len(rows), n_draws))
        u *= 1.0 / n_draws  # uniform within each stratum
        a1, a2 = s1z[rows, i][:, None], s2z[rows, i][:, None]
        r = a1 / (a1 + a2)
        low = u < r
        level = np.where(low, 1.0 - u / r, (u - r) / (1.0 - r))
        h = table[np.minimum((level * len(table)).astype(np.int32), len(table) - 1)]
        delta[rows, i, :] = np.where(low, -a1, a2) * h - split_normal_ppf(0.5, 0.0, a1, a2)
    if cov is not None:
        c = np.where(ok[:, :, None] & ok[:, None, :], cov, 0.0)
        c = c + np.eye(k)[None] * np.where(ok, 0.0, 1.0)[:, None, :]  # missing labels: unit variance, zeroed below
        sym = ~asym.any(axis=1)
        try:
            chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            chol = None  # a covariance that is not positive definite: the margins are used
        if chol is not None:
            delta = np.where(sym[:, None, None], np.einsum("nij,njd->nid", chol, z), delta)
    delta[~ok] = 0.0
    return delta


def propagate_block(
    model,
    X,
    label_index: int,
    mu,
    s1,
    s2,
    cov,
    tau,
    seed,
    *,
    n_draws: int = 200,
    propagation: str = "linear",
    shift=None,
    center=None,
) -> np.ndarray:
    """The Monte Carlo of one block of stars: the task unit of :func:`propagate`.

    Takes the block's rows of every input of :func:`propagate` (``tau`` as an (m,) array,
    ``shift`` as a pair of arrays or None, ``center`` as an (m,) array or None) and the
    block's own ``seed`` (anything
    :func:`numpy.random.default_rng` takes), so that a block's result depends only on its
    inputs, not on which worker or in which order it runs.

    Returns
    -------
    numpy.ndarray, shape (6, m)
        P16, P50, P84 of the calibrated draws with the model uncertainty ``tau``, then the
        same without it (the noise of the measurement alone, for
        :func:`~bayescannon.homogenise.splitnormal.combine_chained`).
    """
    rng = np.random.default_rng(seed)
    if propagation != "exact" or model is None:
        return _fused_block(rng, model, X, label_index, mu, s1, s2, cov, tau, n_draws, shift, center)
    m, k = mu.shape
    j = label_index
    index = lattice_index(rng, m, k + 1, n_draws)  # the labels' strata, then tau's
    delta = draw_inputs(rng, mu, s1, s2, cov, n_draws, index=index[:, :k])
    value = mu[:, j][:, None] + delta[:, j, :]
    x0 = np.asarray(X, dtype=float)
    xd = np.repeat(x0[:, None, :], n_draws, axis=1)
    xd[:, :, :k] += np.moveaxis(delta, 2, 1)
    value = value + model.predict_median(xd.reshape(m * n_draws, -1)).reshape(m, n_draws)
    if shift is not None:
        value = value + shift[0][:, None] + np.einsum("mi,mid->md", shift[1], delta)
    out = np.empty((6, m))
    p = np.percentile(value, PERCENTILES, axis=1)
    out[3:] = p
    if np.any(tau > 0):
        value += tau[:, None] * _normal_table(n_draws)[index[:, k]]
        p = np.percentile(value, PERCENTILES, axis=1)
    out[:3] = p
    return out


@functools.lru_cache(maxsize=16)
def _virtual_index(n: int) -> tuple:
    """Floors and fractions of the virtual indexes of :data:`PERCENTILES` among ``n``
    sorted draws, as ``numpy.percentile`` (linear) computes them."""
    q = np.asarray(PERCENTILES) / 100.0
    v = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0
    v = np.clip(v, 0, n - 1)
    floor = np.floor(v)
    return floor.astype(np.int64), v - floor


def _fused_block(rng, model, X, j, mu, s1, s2, cov, tau, n_draws, shift, center) -> np.ndarray:
    """:func:`propagate_block` with the linear propagation (or no model) in one compiled
    pass (:func:`~bayescannon.homogenise.kernels.mc_block`): the random numbers are drawn
    here in the order of :func:`lattice_index` and :func:`draw_inputs`, the draws
    themselves never exist as an (m, k, n_draws) array."""
    m, k = mu.shape
    shifts = rng.integers(0, n_draws, size=(m, k + 1), dtype=np.int32)  # as lattice_index
    g = np.asarray(_korobov(n_draws, k + 1), dtype=np.int64)
    base = (np.arange(n_draws)[None, :] * g[:, None] % n_draws).astype(np.int64)
    ok = np.isfinite(mu) & np.isfinite(s1) & np.isfinite(s2)
    s1z, s2z = np.where(ok, s1, 1.0), np.where(ok, s2, 1.0)
    asym = ok & ~np.isclose(s1z, s2z)
    jit_row = np.full((m, k), -1, dtype=np.int64)
    medshift = np.zeros((m, k))
    parts, start = [], 0
    for i in np.flatnonzero(asym.any(axis=0)):  # a handful of labels, in the order of draw_inputs
        rows = np.flatnonzero(asym[:, i])
        parts.append(rng.random((len(rows), n_draws)))
        jit_row[rows, i] = start + np.arange(len(rows))
        start += len(rows)
        medshift[rows, i] = split_normal_ppf(0.5, 0.0, s1z[rows, i], s2z[rows, i])
    jitter = np.concatenate(parts) if parts else np.zeros((0, n_draws))
    use_chol = np.zeros(m, dtype=bool)
    chol = np.zeros((m, k, k))
    if cov is not None:
        c = np.where(ok[:, :, None] & ok[:, None, :], cov, 0.0)
        c = c + np.eye(k)[None] * np.where(ok, 0.0, 1.0)[:, None, :]
        try:
            chol = np.ascontiguousarray(np.linalg.cholesky(c))
            use_chol = ~asym.any(axis=1)
        except np.linalg.LinAlgError:
            pass  # a covariance that is not positive definite: the margins are used
    if model is not None:
        x0 = np.asarray(X, dtype=float)
        g_lo, g_hi, center = _secant_slopes(model, x0, s1, s2, center)
    else:
        g_lo = g_hi = np.zeros((m, k))
        center = np.zeros(m)
    if shift is None:
        sh0, sh1 = np.zeros(m), np.zeros((m, k))
    else:
        sh0, sh1 = (np.ascontiguousarray(a, dtype=float) for a in shift)
    vidx, gamma = _virtual_index(n_draws)
    tau = np.ascontiguousarray(tau, dtype=float)
    return mc_block(
        int(j),
        np.ascontiguousarray(mu[:, j], dtype=float),
        np.ascontiguousarray(s1z, dtype=float),
        np.ascontiguousarray(s2z, dtype=float),
        np.ascontiguousarray(ok),
        np.ascontiguousarray(asym),
        medshift,
        jit_row,
        jitter,
        use_chol,
        chol,
        base,
        shifts.astype(np.int64),
        _normal_table(n_draws),
        _half_normal_table(),
        np.ascontiguousarray(center, dtype=float),
        g_lo,
        g_hi,
        sh0,
        sh1,
        tau,
        bool(np.any(tau > 0)),
        vidx,
        gamma,
    )


def _secant_slopes(model, x0, s1, s2, center=None):
    """One-sided secant slopes (m, k) below and above the catalogue values along each input
    label, and the offset at them (see the module docstring)."""
    lo_s = np.where(np.isfinite(s1) & (s1 > 0), s1, 0.0)
    hi_s = np.where(np.isfinite(s2) & (s2 > 0), s2, 0.0)
    good = (lo_s > 0) & (hi_s > 0)
    steps = np.stack([np.where(good, -lo_s, 0.0), np.where(good, hi_s, 0.0)], axis=2)  # (m, k, 2)
    diff = model.median_secants(x0, steps)  # (2k, m): median at the moved inputs minus at x0
    if center is None:
        center = model.predict_median(x0)
    g_lo = np.where(good, -diff[0::2].T / np.where(good, lo_s, 1.0), 0.0)
    g_hi = np.where(good, diff[1::2].T / np.where(good, hi_s, 1.0), 0.0)
    return np.ascontiguousarray(g_lo), np.ascontiguousarray(g_hi), np.asarray(center, dtype=float)


def propagate(
    model,
    X,
    label_index: int,
    mu,
    s1,
    s2,
    cov,
    tau,
    rng,
    *,
    n_draws: int = 200,
    chunk_size: int = 20000,
    propagation: str = "linear",
    shift=None,
    executor=None,
    return_noise: bool = False,
    center=None,
):
    """Calibrated split normal of one label for every star (rows of ``X``).

    Parameters
    ----------
    model : OffsetModel or None
        None for a survey on the reference scale (no offset).
    X : array (n, k + n_features)
        Offset-model inputs; the first ``k`` columns are the survey's labels.
    label_index : int
        Column of the label being calibrated.
    mu, s1, s2 : arrays (n, k)
        Catalogue values and split-normal scales of every label.
    cov : array (n, k, k) or None
    tau : float or array (n,)
        The model's own (accumulated) uncertainty, per star or one for all.
    rng : numpy.random.Generator
        Gives one seed; block ``b`` draws from ``default_rng([seed, b])``.
    chunk_size : int
        Stars per block (:func:`propagate_block`): memory is bounded by the block, whatever
        the number of stars: ~``chunk_size × n_draws`` floats per split-normal label (their
        uniforms) with the linear propagation, whose compiled pass keeps each star's draws
        in a scratch array; ~``chunk_size × n_draws × (k + 3)`` with ``"exact"``.
    shift : (array (n,), array (n, k)) or None
        A smooth correction added to every draw, linear in the draw's deviations: its value
        at the catalogue values and its gradient along the input labels (the
        errors-in-variables term of :mod:`~bayescannon.homogenise.deconvolve`).
    executor : Executor, optional
        Runs the blocks of ``chunk_size`` stars as tasks
        (:class:`bayescannon.pipeline.cluster.DaskExecutor`); default here. Each block
        draws from its own generator seeded from ``rng`` and its index, so the result is
        the same wherever the blocks run.
    return_noise : bool
        Also return the percentiles of the draws without ``tau``.
    center : array (n,), optional
        ``model.predict_median(X)`` when the caller has it already (the linear propagation
        then does not predict it again).

    Returns
    -------
    median, lower, upper : arrays (n,)
        P50, P50 - P16 and P84 - P50 of the calibrated draws (and, with ``return_noise``,
        the same three without the model uncertainty).
    """
    n, k = mu.shape
    j = label_index
    tau = np.broadcast_to(np.asarray(tau, dtype=float), (n,))
    ok = np.isfinite(mu[:, j])
    if model is None and not np.any(tau > 0):  # on the reference scale already: the catalogue's own split normal
        ok = ok & np.isfinite(s1[:, j]) & np.isfinite(s2[:, j])
        own = tuple(np.where(ok, a[:, j], np.nan) for a in (mu, s1, s2))
        return own + own if return_noise else own
    seed = int(rng.integers(2**62))
    starts = list(range(0, n, chunk_size))  # blocks of stars: memory does not grow with n
    tasks = []
    for b, start in enumerate(starts):
        sl = slice(start, min(start + chunk_size, n))
        tasks.append(
            {
                "X": None if X is None else X[sl],
                "label_index": j,
                "mu": mu[sl],
                "s1": s1[sl],
                "s2": s2[sl],
                "cov": None if cov is None else cov[sl],
                "tau": np.array(tau[sl]),
                "seed": [seed, b],
                "n_draws": n_draws,
                "propagation": propagation,
                "shift": None if shift is None else (shift[0][sl], shift[1][sl]),
                "center": None if center is None else np.asarray(center[sl], dtype=float),
            }
        )
    if executor is None:
        parts = [_block_task(t, model) for t in tasks]
    else:
        parts = executor.map_chunks(
            _block_task,
            tasks,
            broadcast={"model": model},
            names=[f"mc-{start}" for start in starts],
            desc="Monte Carlo blocks",
        )
    out = np.concatenate(parts, axis=1) if parts else np.full((6, 0), np.nan)
    out[:, ~ok] = np.nan
    res = (out[1], out[1] - out[0], out[2] - out[1])
    if return_noise:
        res += (out[4], out[4] - out[3], out[5] - out[4])
    return res


def _block_task(task: dict, model) -> np.ndarray:
    """One block of :func:`propagate` (a task: runs in this process or on a worker)."""
    return propagate_block(model, **task)
