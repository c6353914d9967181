"""Figures of the uncertainties: are the error bars honest?

* :func:`coverage_curve` — empirical against nominal coverage of central intervals
  (a calibration curve: on the diagonal when the intervals are honest).
* :func:`calibrated_interval_levels` — levels of calibrated (conformal) intervals for the
  coverage curve.
* :func:`zscore_histogram` — histogram of (estimate − truth) / error with N(0, 1) drawn.
* :func:`errors_vs_snr` — the quoted error of each label against S/N.
* :func:`corner_posterior` — a corner plot of posterior draws, truth and a Gaussian
  (Laplace) approximation marked when given.
* :func:`corner_from_tree` — the same for one star of a posterior ``DataTree`` of
  :func:`bayescannon.bayes.sample_labels` (its MAP and Laplace errors marked).
* :func:`survey_one_to_one` — transferred labels against the survey's own.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from bayescannon.core.uncertainty import interval_factor
from bayescannon.errors import InvalidInputError, ShapeMismatchError
from bayescannon.plots.labels import _as_2d, _log_snr_axis, new_figure, one_to_one
from bayescannon.results import label_axis_text, label_display_name, label_units_text

__all__ = [
    "interval_levels",
    "calibrated_interval_levels",
    "coverage_curve",
    "zscore_histogram",
    "errors_vs_snr",
    "corner_posterior",
    "corner_from_tree",
    "survey_one_to_one",
]


def _by_kind(scores, name, k):
    """``{kind: (N, K) array}`` from a dict or a single array (kind ``""``)."""
    if not isinstance(scores, dict):
        scores = {"": scores}
    if not scores:
        raise InvalidInputError(f"no {name} given")
    return {str(kind): _as_2d(v, f"{name}[{kind!r}]", k) for kind, v in scores.items()}


def interval_levels(scores, *, kind: str = "z") -> np.ndarray:
    """The smallest central-interval level that contains the truth, per star and label.

    Parameters
    ----------
    scores : ndarray
        ``kind="z"``: standardised residuals (estimate − truth) / σ of Gaussian intervals;
        ``kind="quantile"``: the posterior quantile of the truth (0…1);
        ``kind="level"``: the levels themselves, already computed for intervals that are not
        Gaussian (e.g. calibrated intervals with conformal half-widths).
    kind : str
        ``"z"``, ``"quantile"`` or ``"level"``.

    Returns
    -------
    ndarray
        Same shape, in [0, 1]; the truth lies in the central ``p`` interval iff the value ≤ p.
        Non-finite scores stay NaN.
    """
    s = np.asarray(scores, dtype=float)
    if kind == "z":
        return special.erf(np.abs(s) / np.sqrt(2.0))
    if kind == "quantile":
        return np.abs(2.0 * s - 1.0)
    if kind == "level":
        return np.clip(s, 0.0, 1.0)
    raise InvalidInputError(f"kind must be 'z', 'quantile' or 'level'; got {kind!r}")


def calibrated_interval_levels(cal: dict, z) -> np.ndarray:
    """The smallest central *calibrated* interval level that contains the truth, per star and label.

    Calibrated intervals are ``sd × interval_factor(cal, level)`` (conformal quantiles or a
    Student t), not Gaussian: reading ``z = (estimate − truth) / sd`` as a Gaussian z would
    misstate their coverage. ``|z|`` is mapped through the calibration's half-width factors
    instead (NaN stays NaN; beyond the widest calibrated interval the level is 1).

    Parameters
    ----------
    cal : dict
        A model's ``calibration_``.
    z : ndarray (N, K)
        Bias-corrected residuals over the calibrated sd (``(labels − truth) / errors`` of a
        calibrated ``infer`` result).

    Returns
    -------
    ndarray (N, K)
        For :func:`coverage_curve` with ``kind="level"``.
    """
    z = np.abs(np.asarray(z, dtype=float))
    lo, hi = 0.005, 0.995
    if cal.get("z_quantiles"):
        lv = np.asarray(cal["quantile_levels"], dtype=float)
        lo, hi = max(lo, float(lv[0])), min(hi, float(lv[-1]))
    grid = np.linspace(lo, hi, 199)
    factors = np.maximum.accumulate(np.array([interval_factor(cal, p) for p in grid]), axis=0)  # (G, K)
    out = np.full(z.shape, np.nan)
    for k in range(z.shape[1]):  # labels, not stars
        f = np.concatenate([[0.0], factors[:, k]])
        out[:, k] = np.interp(z[:, k], f, np.concatenate([[0.0], grid]), right=1.0)
    out[~np.isfinite(z)] = np.nan
    return out


def coverage_curve(scores, label_names, *, kind: str = "z", levels=None):
    """Empirical against nominal coverage of central intervals, one panel per label.

    Parameters
    ----------
    scores : ndarray (N, K) or dict of str to ndarray (N, K)
        Per interval kind (e.g. ``{"formal": z_formal, "calibrated": z_cal}``) the
        standardised residuals (``kind="z"``), posterior quantiles of the truth
        (``kind="quantile"``) or interval levels (``kind="level"``).
    label_names : list of str
        The K labels.
    kind : str
        ``"z"``, ``"quantile"`` or ``"level"`` (see :func:`interval_levels`).
    levels : array_like, optional
        Nominal levels drawn (default 0.02…0.98).

    Returns
    -------
    matplotlib.figure.Figure
        The coverage of each kind at each level is in the lines' data (x nominal, y empirical).
    """
    names = [str(n) for n in label_names]
    scores = _by_kind(scores, "scores", len(names))
    levels = np.linspace(0.02, 0.98, 49) if levels is None else np.asarray(levels, dtype=float)
    fig, axes = new_figure(len(names), ncols=min(len(names), 4), panel=(3.0, 3.0), sharey=True)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--", label="ideal")
        for kname, s in scores.items():
            r = interval_levels(s[:, j], kind=kind)
            r = r[np.isfinite(r)]
            cov = (r[None, :] <= levels[:, None]).mean(axis=1) if r.size else np.full(levels.size, np.nan)
            ax.plot(levels, cov, "-", label=f"{kname} ({r.size} stars)" if kname else f"{r.size} stars")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(label_display_name(name))
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("empirical coverage")
    axes[0].legend(fontsize=7)
    return fig


def zscore_histogram(z, label_names, *, bins: int = 40, zmax: float = 5.0):
    """Histogram of standardised residuals per label with the N(0, 1) density drawn.

    Parameters
    ----------
    z : ndarray (N, K) or dict of str to ndarray (N, K)
        (estimate − truth) / error, per interval kind.
    label_names : list of str
        The K labels.
    bins : int
        Number of bins over ``[-zmax, zmax]``.
    zmax : float
        Half-width of the histogram range; the fraction outside it is annotated.

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [str(n) for n in label_names]
    z = _by_kind(z, "z", len(names))
    fig, axes = new_figure(len(names), ncols=min(len(names), 4), panel=(3.0, 2.6), sharey=True)
    grid = np.linspace(-zmax, zmax, 201)
    for j, (ax, name) in enumerate(zip(axes, names)):
        lines = []
        for kname, a in z.items():
            v = a[:, j][np.isfinite(a[:, j])]
            ax.hist(v, bins=bins, range=(-zmax, zmax), density=True, histtype="step", label=kname or None)
            if v.size:
                lines.append(
                    f"{kname + ': ' if kname else ''}sd {np.std(v):.2f}, |z|>{zmax:g}: {np.mean(np.abs(v) > zmax):.1%}"
                )
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", lw=0.8, label="N(0, 1)")
        ax.text(0.03, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7)
        ax.set_xlabel(f"z = Δ{label_display_name(name)} / σ")
        ax.set_ylabel("probability density")
    axes[0].legend(fontsize=7, loc="upper right")
    return fig


def errors_vs_snr(snr, errors, label_names):
    """The quoted error of each label against S/N (log–log), per error kind.

    Parameters
    ----------
    snr : ndarray (N,)
        Signal-to-noise ratio of each star.
    errors : ndarray (N, K) or dict of str to ndarray (N, K)
        1σ errors in the labels' units (e.g. ``{"formal": ..., "calibrated": ...}``).
    label_names : list of str
        The K labels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [str(n) for n in label_names]
    snr = np.asarray(snr, dtype=float).ravel()
    errors = _by_kind(errors, "errors", len(names))
    for kname, e in errors.items():
        if e.shape[0] != snr.size:
            raise ShapeMismatchError(f"errors[{kname!r}] has {e.shape[0]} stars but snr has {snr.size}")
    fig, axes = new_figure(len(names), ncols=min(len(names), 4), panel=(3.0, 2.6))
    for j, (ax, name) in enumerate(zip(axes, names)):
        for kname, e in errors.items():
            ok = np.isfinite(snr) & (snr > 0) & np.isfinite(e[:, j]) & (e[:, j] > 0)
            ax.scatter(snr[ok], e[ok, j], s=4, alpha=0.6, rasterized=True, label=kname or None)
        ax.set_yscale("log")
        _log_snr_axis(ax)
        unit = label_units_text(name)
        ax.set_xlabel(label_axis_text("SNR"))
        ax.set_ylabel(f"σ({label_display_name(name)}) [{unit}]" if unit else f"σ({label_display_name(name)})")
    if len(errors) > 1:
        axes[0].legend(fontsize=7)
    return fig


def _gaussian_ellipse(mean, cov, nsig):
    w, v = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, 100)
    circle = np.stack([np.cos(t), np.sin(t)])
    return mean[:, None] + nsig * (v * np.sqrt(np.maximum(w, 0))) @ circle


def corner_posterior(draws, label_names, *, truth=None, laplace=None, bins: int = 30, title=None):
    """Corner plot of posterior draws of one star.

    Parameters
    ----------
    draws : ndarray (S, K)
        Posterior draws (chains stacked) in the labels' units.
    label_names : list of str
        The K labels.
    truth : ndarray (K,), optional
        True (or reference) labels, drawn as lines and a star marker.
    laplace : (ndarray (K,), ndarray (K, K)), optional
        Mean and covariance of a Gaussian approximation (e.g. the Laplace MAP errors):
        its density on the diagonal and its 1σ and 2σ ellipses below it.
    bins : int
        Histogram bins.
    title : str, optional
        Figure title (e.g. the star id).

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [str(n) for n in label_names]
    k = len(names)
    x = _as_2d(draws, "draws", k)
    x = x[np.all(np.isfinite(x), axis=1)]
    if x.shape[0] < 2:
        raise InvalidInputError(f"a corner plot needs at least 2 finite draws; got {x.shape[0]}")
    if truth is not None:
        truth = np.asarray(truth, dtype=float).ravel()
        if truth.size != k:
            raise ShapeMismatchError(f"truth has {truth.size} values for {k} labels")
    if laplace is not None:
        mu, cov = np.asarray(laplace[0], dtype=float).ravel(), np.asarray(laplace[1], dtype=float)
        if mu.size != k or cov.shape != (k, k):
            raise ShapeMismatchError(f"laplace mean {mu.shape} / covariance {cov.shape} do not match {k} labels")
    fig, axes = new_figure(k * k, ncols=k, panel=(2.2, 2.2))
    axes = axes.reshape(k, k)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(x[:, i], bins=bins, density=True, histtype="stepfilled", alpha=0.5, label="posterior")
                if laplace is not None:
                    sd = np.sqrt(cov[i, i])
                    g = np.linspace(x[:, i].min(), x[:, i].max(), 200)
                    ax.plot(g, np.exp(-0.5 * ((g - mu[i]) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), "C1-", lw=1,
                            label="Laplace")  # fmt: skip
                if truth is not None:
                    ax.axvline(truth[i], color="C3", lw=1, label="truth")
                ax.set_yticks([])
            else:
                ax.scatter(x[:, j], x[:, i], s=1, alpha=0.3, color="C0", rasterized=True)
                if laplace is not None:
                    sub = np.ix_([j, i], [j, i])
                    for nsig in (1, 2):
                        e = _gaussian_ellipse(mu[[j, i]], cov[sub], nsig)
                        ax.plot(e[0], e[1], "C1-", lw=0.8)
                if truth is not None:
                    ax.axvline(truth[j], color="C3", lw=0.8)
                    ax.axhline(truth[i], color="C3", lw=0.8)
                    ax.plot(truth[j], truth[i], "*", color="C3", ms=8)
                ax.set_ylabel(label_axis_text(names[i]))
            ax.set_xlabel(label_axis_text(names[j]))
    axes[0, 0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def corner_from_tree(tree, star, *, truth=None, laplace: bool = True, **kwargs):
    """Corner plot of one star of a posterior ``DataTree`` (:func:`corner_posterior`).

    Parameters
    ----------
    tree : xarray.DataTree
        Posterior of :func:`bayescannon.bayes.sample_labels` (``posterior/labels`` with dims
        ``chain``, ``draw``, ``star``, ``label_name``; ``constant_data`` with ``map_labels``
        and ``map_errors``).
    star : str or int
        Star id, or position along ``star``.
    truth : array_like (K,), optional
        True (or reference) labels, marked.
    laplace : bool
        Draw the Laplace approximation of the MAP (``map_labels`` ± ``map_errors``, a diagonal
        covariance) when the tree has finite ones.
    **kwargs
        Passed to :func:`corner_posterior` (``bins``, ``title``; the title defaults to the star id).

    Returns
    -------
    matplotlib.figure.Figure
    """
    post = tree["posterior"].to_dataset()["labels"]
    ids = [str(s) for s in post["star"].values]
    if isinstance(star, str):
        if star not in ids:
            raise InvalidInputError(f"star {star!r} is not in the posterior (stars: {', '.join(ids[:5])} ...)")
        pos = ids.index(star)
    else:
        pos = int(star)
        if not -len(ids) <= pos < len(ids):
            raise InvalidInputError(f"star position {pos} is outside the posterior's {len(ids)} stars")
    one = post.isel(star=pos)
    names = [str(n) for n in one["label_name"].values]
    draws = one.stack(sample=("chain", "draw")).transpose("sample", "label_name").values
    gauss = None
    if laplace and "constant_data" in tree.children:
        const = tree["constant_data"].to_dataset()
        if "map_labels" in const and "map_errors" in const:
            mu = const["map_labels"].isel(star=pos).sel(label_name=names).values.astype(float)
            sd = const["map_errors"].isel(star=pos).sel(label_name=names).values.astype(float)
            if np.all(np.isfinite(mu)) and np.all(np.isfinite(sd)) and np.all(sd > 0):
                gauss = (mu, np.diag(sd**2))
    kwargs.setdefault("title", f"star {ids[pos]}")
    return corner_posterior(draws, names, truth=truth, laplace=gauss, **kwargs)


def survey_one_to_one(survey, transferred, label_names, *, survey_name: str = "survey", **kwargs):
    """Transferred labels against the survey's own (a :func:`one_to_one` with the axes named).

    Parameters
    ----------
    survey, transferred : ndarray (N, K)
        The survey's labels and the transferred (or homogenised) ones.
    label_names : list of str
        The K labels.
    survey_name : str
        Name of the survey on the x axis.
    **kwargs
        Passed to :func:`one_to_one` (``errors``, ``color``, ``color_label``, ``units``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    return one_to_one(survey, transferred, label_names, xprefix=f"{survey_name} ", yprefix="transferred ", **kwargs)
