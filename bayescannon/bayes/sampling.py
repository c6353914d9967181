"""Sampler statistics in one vocabulary, whichever NUTS implementation produced them.

nutpie and PyMC name their per-draw statistics differently; ArviZ's diagnostics
(``az.bfmi``, ``az.plot_energy``, …) read ``sample_stats/energy`` and friends. Every
per-draw statistic is kept (energy, energy_error, step_size, tree_depth, n_steps,
diverging, maxdepth_reached, acceptance_rate, lp, …), renamed to PyMC's names; the
statistics with extra dimensions (gradients, unconstrained draws, mass matrices) are
dropped: they are per parameter, not per draw.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["collect_sample_stats", "stack_sample_stats", "raw_trace_arrays", "RENAME"]

# nutpie name -> PyMC / ArviZ name
RENAME = {
    "depth": "tree_depth",
    "mean_tree_accept": "acceptance_rate",
    "logp": "lp",
    "reached_max_treedepth": "maxdepth_reached",
}


def collect_sample_stats(stats: xr.Dataset) -> xr.Dataset:
    """The per-draw sampler statistics of one run, with (chain, draw) dims only.

    Parameters
    ----------
    stats : xarray.Dataset
        ``sample_stats`` of a nutpie or PyMC trace.

    Returns
    -------
    xarray.Dataset
        Every variable whose dims are exactly ``(chain, draw)``, renamed by :data:`RENAME`;
        ``maxdepth_reached`` is added (False) when the sampler does not report it.
    """
    keep = [v for v in stats.data_vars if tuple(stats[v].dims) == ("chain", "draw")]
    out = stats[keep].rename({k: v for k, v in RENAME.items() if k in keep})
    out = out.drop_vars([c for c in out.coords if c not in ("chain", "draw")])
    if "maxdepth_reached" not in out and "diverging" in out:
        out["maxdepth_reached"] = xr.zeros_like(out["diverging"], dtype=bool)
    out.attrs = {}
    return out


def stack_sample_stats(per_star: list[xr.Dataset], counts: list[int], star_ids) -> xr.Dataset:
    """Per-batch statistics → (chain, draw, star): each batch's values repeated for its stars.

    Parameters
    ----------
    per_star : list of xarray.Dataset
        :func:`collect_sample_stats` of each batch (same variables, same chain/draw sizes).
    counts : list of int
        Stars in each batch.
    star_ids : array_like
        Ids of all stars, in batch order.
    """
    common = [v for v in per_star[0].data_vars if all(v in s for s in per_star)]
    data = {}
    for v in common:
        arrs = [np.repeat(np.asarray(s[v].values)[:, :, None], c, axis=2) for s, c in zip(per_star, counts)]
        data[v] = (("chain", "draw", "star"), np.concatenate(arrs, axis=2))
    first = per_star[0]
    coords = {"chain": first["chain"].values, "draw": first["draw"].values, "star": np.asarray(star_ids)}
    return xr.Dataset(data, coords=coords)


# bookkeeping columns of nutpie's raw statistics, not per-draw statistics
_NOT_STATS = ("chain", "draw", "tuning")


def raw_trace_arrays(raw, shape: tuple[int, ...], name: str = "labels") -> tuple[np.ndarray, xr.Dataset]:
    """Draws and per-draw statistics of a raw nutpie trace (``return_raw_trace=True``).

    nutpie's own conversion (``arviz.from_dict`` of every column, warm-up included) costs
    ~0.2 s per call, more than sampling one star; this reads only what is kept: the
    post-warm-up draws of ``name`` and every scalar statistic.

    Parameters
    ----------
    raw : nutpie raw trace
        With ``get_arrow_trace()`` → (draw batches, statistic batches), one per chain.
    shape : tuple of int
        Shape of one draw of ``name``.
    name : str
        The stored variable.

    Returns
    -------
    draws : ndarray, shape (chain, draw, *shape)
    stats : xarray.Dataset
        As :func:`collect_sample_stats` (PyMC names, dims (chain, draw)); nullable
        statistics (e.g. ``divergence_energy_error``) are NaN where absent.
    """
    import pyarrow as pa  # lazy: nutpie's dependency, only after sampling

    draw_batches, stat_batches = raw.get_arrow_trace()
    draws, cols = [], {}
    for d, st in zip(draw_batches, stat_batches, strict=True):
        d, st = pa.record_batch(d), pa.record_batch(st)
        keep = ~np.asarray(st.column("tuning").to_numpy(zero_copy_only=False), dtype=bool)
        values = d.column(name).flatten().to_numpy(zero_copy_only=False)
        draws.append(values.reshape((d.num_rows, *shape))[keep])
        for field in st.schema:
            if field.name in _NOT_STATS or not (
                pa.types.is_floating(field.type) or pa.types.is_integer(field.type) or pa.types.is_boolean(field.type)
            ):
                continue
            col = st.column(field.name)
            if col.null_count and not pa.types.is_floating(field.type):
                col = col.cast(pa.float64())
            arr = col.to_numpy(zero_copy_only=False)
            if col.null_count:
                arr = np.where(np.asarray(col.is_null().to_numpy(zero_copy_only=False)), np.nan, arr)
            cols.setdefault(field.name, []).append(np.asarray(arr)[keep])
    n_draw = min(len(x) for x in draws)
    data = {k: (("chain", "draw"), np.stack([a[:n_draw] for a in v])) for k, v in cols.items() if len(v) == len(draws)}
    stats = xr.Dataset(data, coords={"chain": np.arange(len(draws)), "draw": np.arange(n_draw)})
    return np.stack([x[:n_draw] for x in draws]), collect_sample_stats(stats)
