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

__all__ = ["collect_sample_stats", "stack_sample_stats", "RENAME"]

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
