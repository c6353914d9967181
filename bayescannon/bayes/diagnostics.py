"""ArviZ-1 diagnostics of label posteriors: convergence per star, posterior vs Laplace
summary tables, plots (posterior vs Laplace, coverage curve), file I/O. Corner plots are
:func:`bayescannon.plots.corner_from_tree` (``plot_corner`` here is deprecated).

Everything here takes the ``xarray.DataTree`` returned by
:func:`bayescannon.bayes.sample_labels` (dims ``chain``, ``draw``, ``star``,
``label_name``). Plot functions return matplotlib figures; the library never shows them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.core import scaling
from bayescannon.core.uncertainty import calibrated_errors, calibration_bias, coverage_curve, leverage
from bayescannon.errors import InvalidInputError, OutputPathError
from bayescannon.pipeline.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "summarize",
    "summary_table",
    "plot_posterior_vs_laplace",
    "plot_coverage",
    "plot_corner",
    "plot_energy",
    "save_posterior",
    "load_posterior",
    "RHAT_MAX",
]

RHAT_MAX = 1.01


def _labels_of(result) -> xr.DataArray:
    """The ``labels`` variable of an ArviZ statistic (a DataTree rooted at the group)."""
    if isinstance(result, xr.DataTree):
        node = result["posterior"] if "posterior" in result.children else result
        return node.to_dataset()["labels"]
    return result["labels"]


def summarize(tree: xr.DataTree, *, model=None, rhat_max: float = RHAT_MAX, min_ess: float | None = None) -> xr.Dataset:
    """Per-star and per-label convergence and comparison with the MAP/Laplace errors.

    Parameters
    ----------
    tree : xarray.DataTree
        Posterior samples (groups ``posterior``, ``sample_stats``, ``constant_data``).
    model : CannonModel, optional
        When calibrated, calibrated posterior sd and 68 %/95 % half-widths are added.
    rhat_max : float
        Largest acceptable rank-normalised split R-hat.
    min_ess : float, optional
        Smallest acceptable bulk and tail ESS (default 50 per chain).

    Returns
    -------
    xarray.Dataset
        (star, label_name): ``mean``, ``sd``, ``q02_5``, ``q16``, ``q84``, ``q97_5``,
        ``r_hat``, ``ess_bulk``, ``ess_tail``, ``map``, ``laplace_sd``, ``sd_ratio``
        (posterior sd / Laplace sd) and, for a calibrated model, ``label_bias`` (the learned
        bias at the MAP labels), ``calibrated_mean`` (``mean − label_bias``: the centre of
        the calibrated intervals), ``calibrated_sd``, ``half_width_68``, ``half_width_95``;
        (star): ``n_divergent``, ``min_bfmi`` (smallest per-chain E-BFMI, when the sampler
        reported energies; < 0.3 means poor exploration), ``max_r_hat``, ``min_ess``, ``converged``.
    """
    import arviz as az

    post = tree["posterior"].to_dataset()["labels"]
    chains = post.sizes["chain"]
    min_ess = 50.0 * chains if min_ess is None else float(min_ess)
    rhat = _labels_of(az.rhat(tree, var_names=["labels"]))
    ess_b = _labels_of(az.ess(tree, var_names=["labels"], method="bulk"))
    ess_t = _labels_of(az.ess(tree, var_names=["labels"], method="tail"))
    vals = post.transpose("star", "label_name", "chain", "draw").values
    flat = vals.reshape(vals.shape[0], vals.shape[1], -1)
    q = np.quantile(flat, [0.025, 0.16, 0.84, 0.975], axis=-1)
    mean = flat.mean(axis=-1)
    sd = flat.std(axis=-1, ddof=1)
    const = tree["constant_data"].to_dataset()
    dims = ("star", "label_name")
    out = xr.Dataset(
        {
            "mean": (dims, mean),
            "sd": (dims, sd),
            "q02_5": (dims, q[0]),
            "q16": (dims, q[1]),
            "q84": (dims, q[2]),
            "q97_5": (dims, q[3]),
            "r_hat": (dims, rhat.transpose(*dims).values),
            "ess_bulk": (dims, ess_b.transpose(*dims).values),
            "ess_tail": (dims, ess_t.transpose(*dims).values),
        },
        coords={"star": post["star"].values, "label_name": post["label_name"].values},
    )
    if "map_labels" in const:
        out["map"] = (dims, const["map_labels"].values)
        out["laplace_sd"] = (dims, const["map_errors"].values)
        out["sd_ratio"] = out["sd"] / out["laplace_sd"]
    div = tree["sample_stats"].to_dataset()["diverging"].transpose("star", ...).values
    out["n_divergent"] = ("star", div.reshape(div.shape[0], -1).sum(axis=1))
    stats = tree["sample_stats"].to_dataset()
    if "energy" in stats:
        bf = az.bfmi(tree)
        bf = (bf["sample_stats"] if "sample_stats" in bf.children else bf).to_dataset()["energy"]
        out["min_bfmi"] = ("star", bf.min("chain").transpose("star").values)
    out["max_r_hat"] = ("star", np.max(out["r_hat"].values, axis=1))
    out["min_ess"] = ("star", np.minimum(out["ess_bulk"].values.min(axis=1), out["ess_tail"].values.min(axis=1)))
    finite = np.all(np.isfinite(out["r_hat"].values), axis=1)
    out["converged"] = (
        "star",
        finite
        & (out["max_r_hat"].values < rhat_max)
        & (out["n_divergent"].values == 0)
        & (out["min_ess"].values >= min_ess),
    )
    if model is not None and getattr(model, "calibration_", None):
        x = scaling.scale(mean, model.label_offset_, model.label_scale_)
        centred = flat - mean[:, :, None]
        pcov = np.einsum("nks,njs->nkj", centred, centred) / (flat.shape[-1] - 1)
        eps = np.zeros(mean.shape[0])
        if not int(tree.attrs.get("propagate_theta", 1)) and "kappa" in const:
            eps = const["kappa"].values * leverage(model, x)
        _, csd, h68, h95 = calibrated_errors(model, pcov, x, eps)
        # the learned bias is a function of the maximum-likelihood estimate (what the
        # calibration saw); the posterior is centred on the same misspecified model, so it
        # carries the same bias: shift it by b(x̂ of the MAP), or of the mean without one
        xb = (
            scaling.scale(const["map_labels"].values, model.label_offset_, model.label_scale_)
            if "map_labels" in const
            else x
        )
        bias = calibration_bias(model.calibration_, xb)
        out["label_bias"] = (dims, bias)
        out["calibrated_mean"] = (dims, mean - bias)
        out["calibrated_sd"] = (dims, csd)
        out["half_width_68"] = (dims, h68)
        out["half_width_95"] = (dims, h95)
    out.attrs = {
        "rhat_max": rhat_max,
        "min_ess": min_ess,
        "converged": "R-hat < rhat_max for every label, no divergence, bulk and tail ESS >= min_ess",
    }
    return out


def summary_table(tree: xr.DataTree):
    """The ``diagnostics`` group as a flat pandas table (one row per star and label)."""
    diag = tree["diagnostics"].to_dataset() if "diagnostics" in tree.children else summarize(tree)
    per_label = [v for v in diag.data_vars if diag[v].dims == ("star", "label_name")]
    per_star = [v for v in diag.data_vars if diag[v].dims == ("star",)]
    df = diag[per_label].to_dataframe().reset_index()
    return df.merge(diag[per_star].to_dataframe().reset_index(), on="star")


def _figure(nrows, ncols, **kw):
    """A figure and its axes grid, without pyplot: the library never switches the backend."""
    from matplotlib.figure import Figure  # lazy: matplotlib only when a figure is asked for

    fig = Figure(figsize=kw.pop("figsize", None), layout=kw.pop("layout", "constrained"))
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def plot_energy(tree: xr.DataTree, star, **kwargs):
    """ArviZ's energy plot (marginal and transition energy, per-chain BFMI) of one star.

    ``az.plot_energy`` expects ``sample_stats/energy`` with (chain, draw) only; a
    posterior file has a ``star`` dimension, so one star is selected first.

    Parameters
    ----------
    tree : xarray.DataTree
        Output of :func:`bayescannon.bayes.sample_labels`.
    star : str or int
        Star id or position.
    **kwargs
        Passed to ``arviz.plot_energy`` (default ``backend="matplotlib"``).

    Returns
    -------
    arviz_plots.PlotCollection
    """
    import arviz as az  # lazy: ArviZ only for diagnostics

    one = tree.sel(star=star) if isinstance(star, str) else tree.isel(star=int(star))
    kwargs.setdefault("backend", "matplotlib")
    return az.plot_energy(one, **kwargs)


def plot_posterior_vs_laplace(tree: xr.DataTree, star, *, bins: int = 40):
    """Marginal posteriors of one star's labels against the Laplace (MAP) Gaussian
    and, when present, the calibrated Gaussian.

    Parameters
    ----------
    tree : xarray.DataTree
    star : str or int
        Star id or position.

    Returns
    -------
    matplotlib.figure.Figure
    """
    post = tree["posterior"].to_dataset()["labels"]
    sel = {"star": star} if isinstance(star, str) else {}
    post = post.sel(sel) if sel else post.isel(star=int(star))
    sid = str(post["star"].values)
    const = tree["constant_data"].to_dataset().sel(star=sid)
    diag = tree["diagnostics"].to_dataset().sel(star=sid) if "diagnostics" in tree.children else None
    names = list(post["label_name"].values)
    fig, axes = _figure(1, len(names), figsize=(3.3 * len(names), 3.0))
    for ax, name in zip(axes[0], names):
        s = post.sel(label_name=name).values.ravel()
        ax.hist(s, bins=bins, density=True, histtype="stepfilled", alpha=0.4, color="C0", label="NUTS posterior")
        grid = np.linspace(*np.quantile(s, [0.0005, 0.9995]), 200)
        mu, sd = float(const["map_labels"].sel(label_name=name)), float(const["map_errors"].sel(label_name=name))
        if np.isfinite(sd) and sd > 0:
            grid = np.linspace(min(grid[0], mu - 4 * sd), max(grid[-1], mu + 4 * sd), 200)
            ax.plot(
                grid,
                np.exp(-0.5 * ((grid - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)),
                "k-",
                lw=1,
                label="Laplace (MAP)",
            )
        if diag is not None and "calibrated_sd" in diag:
            cs = float(diag["calibrated_sd"].sel(label_name=name))
            m = float(diag["calibrated_mean" if "calibrated_mean" in diag else "mean"].sel(label_name=name))
            g2 = np.linspace(m - 4 * cs, m + 4 * cs, 200)
            ax.plot(
                g2, np.exp(-0.5 * ((g2 - m) / cs) ** 2) / (cs * np.sqrt(2 * np.pi)), "C3--", lw=1, label="calibrated"
            )
        ax.set_xlabel(name)
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"star {sid}", fontsize=9)
    return fig


def plot_coverage(residuals, sd, label_names, *, dof=None, calibration=None, ax_title: str | None = None, other=None):
    """Coverage (calibration) curve: empirical vs nominal coverage of central intervals.

    Parameters
    ----------
    residuals, sd : ndarray, shape (N, K)
        Estimate minus truth and reported standard deviations.
    label_names : list of str
    dof : array_like (K,), optional
        Student-t degrees of freedom (Gaussian intervals when None and no calibration).
    calibration : dict, optional
        A model's ``calibration_``: intervals from its conformal quantile factors.
    other : dict, optional
        ``{name: (sd, dof)}`` more error models drawn dashed (e.g. formal errors).

    Returns
    -------
    matplotlib.figure.Figure
    """

    fig, axes = _figure(1, 1, figsize=(4.2, 4.0))
    ax = axes[0][0]
    lv, emp = coverage_curve(residuals, sd, dof, calibration=calibration)
    for k, name in enumerate(label_names):
        ax.plot(lv, emp[:, k], color=f"C{k}", label=name)
    for name, (osd, odof) in (other or {}).items():
        lv2, emp2 = coverage_curve(residuals, osd, odof)
        for k in range(len(label_names)):
            ax.plot(lv2, emp2[:, k], color=f"C{k}", ls=":", lw=1, label=name if k == 0 else None)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for lvl in (0.68, 0.95):
        ax.axvline(lvl, color="0.8", lw=0.6)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title(ax_title or "coverage of central intervals", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_corner(tree: xr.DataTree, star):
    """Deprecated: use :func:`bayescannon.plots.corner_from_tree` (truth and Laplace marked).

    Corner (pair) plot of one star's labels with ArviZ's ``plot_pair``; emits a
    ``FutureWarning`` and will be removed in a future release.

    Returns
    -------
    arviz_plots.PlotMatrix
        Save with ``.savefig(path)``.
    """
    warnings.warn(
        "bayescannon.bayes.diagnostics.plot_corner is deprecated and will be removed; use "
        "bayescannon.plots.corner_from_tree(tree, star) (a matplotlib Figure with truth and Laplace marked)",
        FutureWarning,
        stacklevel=2,
    )
    import arviz as az  # heavy: imported only when plotting

    post = tree["posterior"].to_dataset()
    ids = list(post["star"].values)
    sid = star if isinstance(star, str) else ids[int(star)]
    if sid not in ids:
        raise InvalidInputError(f"star {star!r} is not in the posterior (stars: {ids[:5]}...)")
    one = xr.DataTree.from_dict({"posterior": post.sel(star=sid)})
    return az.plot_pair(one, var_names=["labels"], backend="matplotlib", marginal=True)


def save_posterior(tree: xr.DataTree, path, *, overwrite: bool = False) -> Path:
    """Write a posterior DataTree to netCDF (``.nc``, h5netcdf) or zarr (``.zarr``), atomically;
    an existing ``path`` is replaced only with ``overwrite=True`` (else ``OutputExistsError``)."""
    path = Path(path)
    if path.suffix not in (".nc", ".zarr"):
        raise OutputPathError(f"{path}: a posterior is written as .nc or .zarr; got {path.name!r}")
    zarr = path.suffix == ".zarr"
    with atomic_path(path, overwrite=overwrite, directory=zarr) as tmp:
        if zarr:
            tree.to_zarr(tmp, mode="w", consolidated=False)
        else:
            tree.to_netcdf(tmp, engine="h5netcdf", mode="w")
    logger.info("wrote posterior of %d stars to %s", tree["posterior"].sizes["star"], path)
    return path


def load_posterior(path) -> xr.DataTree:
    """Read a posterior written by :func:`save_posterior`."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"posterior file {path} does not exist")
    if path.suffix == ".zarr" or path.is_dir():
        return xr.open_datatree(path, engine="zarr", consolidated=False).load()
    with xr.open_datatree(path, engine="h5netcdf") as t:
        return t.load()
