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

import numpy as np
from scipy import special

from bayescannon.homogenise.splitnormal import split_normal_ppf

__all__ = ["draw_inputs", "propagate", "PERCENTILES"]

#: Percentiles that define the calibrated split normal (±1σ of a normal, and the median).
PERCENTILES = (15.865525393145708, 50.0, 84.13447460685429)


def _stratified_uniform(rng, shape) -> np.ndarray:
    """Latin-hypercube uniforms along the last axis: one draw in each of its ``n`` equal
    strata, in random order (far less Monte Carlo noise in the percentiles)."""
    n = shape[-1]
    strata = rng.permuted(np.broadcast_to(np.arange(n, dtype=float), shape), axis=-1)
    return (strata + rng.random(shape)) / n


def draw_inputs(rng, mu, s1, s2, cov, n_draws: int) -> np.ndarray:
    """Deviations from the catalogue values, shape (n, k, n_draws), from the split normal
    of each label shifted to median 0 (the offset model's median already holds the
    median of the survey's noise); 0 for missing labels."""
    n, k = mu.shape
    ok = np.isfinite(mu) & np.isfinite(s1) & np.isfinite(s2)
    s1z, s2z = np.where(ok, s1, 1.0), np.where(ok, s2, 1.0)
    u = _stratified_uniform(rng, (n, k, n_draws))
    med = split_normal_ppf(0.5, 0.0, s1z, s2z)
    delta = split_normal_ppf(u, 0.0, s1z[..., None], s2z[..., None]) - med[..., None]
    if cov is not None:
        c = np.where(ok[:, :, None] & ok[:, None, :], cov, 0.0)
        c = c + np.eye(k)[None] * np.where(ok, 0.0, 1.0)[:, None, :]  # missing labels: unit variance, zeroed below
        sym = np.isclose(s1z, s2z).all(axis=1)
        try:
            chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            chol = None  # a covariance that is not positive definite: the margins are used
        if chol is not None:
            z = special.ndtri(_stratified_uniform(rng, (n, k, n_draws)))
            delta = np.where(sym[:, None, None], np.einsum("nij,njd->nid", chol, z), delta)
    return np.where(ok[:, :, None], delta, 0.0)


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
    shift : (array (n,), array (n, k)) or None
        A smooth correction added to every draw, linear in the draw's deviations: its value
        at the catalogue values and its gradient along the input labels (the
        errors-in-variables term of :mod:`~bayescannon.homogenise.deconvolve`).
    executor : Executor, optional
        Runs the blocks of ``chunk_size`` stars as tasks
        (:class:`bayescannon.pipeline.cluster.DaskExecutor`); default here. Each block
        draws from its own generator seeded from ``rng``, so the result is the same
        wherever the blocks run.

    Returns
    -------
    median, lower, upper : arrays (n,)
        P50, P50 - P16 and P84 - P50 of the calibrated draws.
    """
    n, k = mu.shape
    j = label_index
    tau = np.broadcast_to(np.asarray(tau, dtype=float), (n,))
    if model is None and not np.any(tau > 0):  # on the reference scale already: the catalogue's own split normal
        ok = np.isfinite(mu[:, j]) & np.isfinite(s1[:, j]) & np.isfinite(s2[:, j])
        return tuple(np.where(ok, a[:, j], np.nan) for a in (mu, s1, s2))
    starts = list(range(0, n, chunk_size))  # blocks of stars: memory does not grow with n
    # one generator per block, seeded from ``rng``: a block's draws are the same wherever it runs
    seeds = rng.integers(0, 2**63 - 1, size=len(starts))
    tasks = []
    for start, seed in zip(starts, seeds):
        sl = slice(start, min(start + chunk_size, n))
        tasks.append(
            {
                "X": None if model is None else np.asarray(X[sl], dtype=float),
                "mu": mu[sl],
                "s1": s1[sl],
                "s2": s2[sl],
                "cov": None if cov is None else cov[sl],
                "tau": np.array(tau[sl]),
                "shift": None if shift is None else (shift[0][sl], shift[1][sl]),
                "seed": int(seed),
                "j": j,
                "n_draws": n_draws,
                "propagation": propagation,
            }
        )
    if executor is None:
        parts = [_propagate_block(t, model) for t in tasks]
    else:
        parts = executor.map_chunks(
            _propagate_block,
            tasks,
            broadcast={"model": model},
            names=[f"mc-{start}" for start in starts],
            desc="Monte Carlo blocks",
        )
    out = np.concatenate(parts, axis=1) if parts else np.full((3, 0), np.nan)
    bad = ~np.isfinite(mu[:, j])
    out[:, bad] = np.nan
    return out[0], out[1], out[2]


def _propagate_block(task: dict, model) -> np.ndarray:
    """P50, P50 - P16, P84 - P50 of one block of stars, shape (3, m) (a task: runs anywhere)."""
    rng = np.random.default_rng(task["seed"])
    mu, s1, s2, cov, tau, shift = (task[key] for key in ("mu", "s1", "s2", "cov", "tau", "shift"))
    j, n_draws, propagation = task["j"], task["n_draws"], task["propagation"]
    m, k = mu.shape
    delta = draw_inputs(rng, mu, s1, s2, cov, n_draws)
    value = mu[:, j][:, None] + delta[:, j, :]
    if model is not None:
        x0 = task["X"]
        if propagation == "exact":
            xd = np.repeat(x0[:, None, :], n_draws, axis=1)
            xd[:, :, :k] += np.moveaxis(delta, 2, 1)
            off = model.predict_median(xd.reshape(m * n_draws, -1)).reshape(m, n_draws)
        else:
            batch = [x0]
            for i in range(k):
                for sgn, s in ((-1.0, s1[:, i]), (1.0, s2[:, i])):
                    xi = x0.copy()
                    xi[:, i] += sgn * np.where(np.isfinite(s), s, 0.0)
                    batch.append(xi)
            pred = model.predict_median(np.concatenate(batch)).reshape(len(batch), m)
            off = np.repeat(pred[0][:, None], n_draws, axis=1)
            for i in range(k):
                lo_s, hi_s = s1[:, i], s2[:, i]
                good = np.isfinite(lo_s) & np.isfinite(hi_s) & (lo_s > 0) & (hi_s > 0)
                g_lo = np.where(good, (pred[0] - pred[1 + 2 * i]) / np.where(good, lo_s, 1.0), 0.0)
                g_hi = np.where(good, (pred[2 + 2 * i] - pred[0]) / np.where(good, hi_s, 1.0), 0.0)
                d = delta[:, i, :]
                off += np.where(d < 0, g_lo[:, None], g_hi[:, None]) * d
        value = value + off
    if shift is not None:
        value = value + shift[0][:, None] + np.einsum("mi,mid->md", shift[1], delta)
    if np.any(tau > 0):
        value = value + tau[:, None] * special.ndtri(_stratified_uniform(rng, value.shape))
    p = np.percentile(value, PERCENTILES, axis=1)
    return np.stack([p[1], p[1] - p[0], p[2] - p[1]])
