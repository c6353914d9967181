"""Figures of labels, spectra and coefficients (see :mod:`bayescannon.plots`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bayescannon.core.likelihood import adjusted_ivar
from bayescannon.errors import InvalidInputError, ShapeMismatchError
from bayescannon.pipeline.atomic import atomic_path
from bayescannon.results import label_axis_text, label_display_name, label_units_text

__all__ = [
    "one_to_one",
    "scatter_vs_snr",
    "binned_statistics_plot",
    "kiel_diagram",
    "label_distributions",
    "coefficient_spectra",
    "residual_band",
    "alpha_vs_feh",
    "precision_vs_snr",
    "coverage_map",
    "pipeline_comparison",
    "new_figure",
    "save_figure",
    "APOGEE_LINES",
]

#: Lines in the APOGEE H band (vacuum wavelengths, Angstrom) marked by
#: :func:`coefficient_spectra` by default: hydrogen Brackett series (n → 4).
APOGEE_LINES = {
    "Br11": 16811.1,
    "Br12": 16411.7,
    "Br13": 16113.7,
    "Br14": 15884.9,
    "Br15": 15704.9,
    "Br16": 15560.7,
    "Br17": 15443.1,
    "Br18": 15345.0,
    "Br19": 15264.7,
}


def _colour(c, cmap, vmin=None, vmax=None) -> dict:
    """scatter() keywords: a colour map only when there are values to map."""
    if c is None:
        return {}
    return {"c": c, "cmap": cmap, "vmin": vmin, "vmax": vmax}


def new_figure(n_panels=1, *, ncols=None, panel=(3.6, 3.4), sharex=False, sharey=False):
    """A figure (constrained layout, no pyplot) with ``n_panels`` axes on a grid.

    Parameters
    ----------
    n_panels : int
        Number of axes; unused grid cells are hidden.
    ncols : int, optional
        Columns of the grid (default: all panels in one row).
    panel : (float, float)
        Size of one panel in inches.
    sharex, sharey : bool
        Share the x / y axes between panels.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : ndarray of matplotlib.axes.Axes
        The ``n_panels`` axes, flattened.
    """
    from matplotlib.figure import Figure

    ncols = ncols or n_panels
    nrows = int(np.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n_panels]


def save_figure(fig, path, *, formats=None, dpi: int = 110, overwrite: bool = True) -> list[Path]:
    """Write a figure atomically (an existing file is replaced).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : path-like
        Output file; its suffix is the format unless ``formats`` are given.
    formats : list of str, optional
        Formats (e.g. ``("png", "pdf")``) that replace the suffix of ``path``.
    dpi : int
        Resolution of raster formats.
    overwrite : bool
        Replace an existing file (reports refresh their figures); False raises
        :class:`~bayescannon.errors.OutputExistsError` instead.

    Returns
    -------
    list of pathlib.Path
        The paths written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    # figures of this module lay themselves out (constrained layout): no tight bbox pass
    bbox = None if fig.get_layout_engine() is not None else "tight"
    for fmt in formats or [path.suffix.lstrip(".") or "png"]:
        p = path.with_suffix(f".{fmt}")
        with atomic_path(p, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches=bbox)
        out.append(p)
    return out


def _as_2d(a, name, k=None):
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or (k is not None and a.shape[1] != k):
        raise ShapeMismatchError(f"{name} must be (N, {k}); got {a.shape}")
    return a


def one_to_one(
    truth,
    inferred,
    label_names,
    *,
    errors=None,
    color=None,
    color_label=None,
    units=None,
    xprefix="reference ",
    yprefix="bayescannon ",
):
    """One-to-one panels (inferred vs reference) with bias and scatter annotated.

    Parameters
    ----------
    truth, inferred : ndarray, shape (N, K)
    label_names : list of str
    errors : ndarray (N, K), optional
        Error bars of the inferred labels.
    color : ndarray (N,), optional
        Colour of the points (e.g. S/N).
    color_label : str, optional
    units : dict, optional
        Axis units per label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    k = len(label_names)
    truth = _as_2d(truth, "truth", k)
    inferred = _as_2d(inferred, "inferred", k)
    if truth.shape != inferred.shape:
        raise ShapeMismatchError(f"truth {truth.shape} and inferred {inferred.shape} differ")
    fig, axes = new_figure(k)
    sc = None
    for i, (ax, name) in enumerate(zip(axes, label_names)):
        x, y = truth[:, i], inferred[:, i]
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
            continue
        sc = ax.scatter(
            x[ok],
            y[ok],
            s=4,
            alpha=0.7,
            rasterized=True,
            **_colour(None if color is None else np.asarray(color)[ok], "viridis"),
        )
        if errors is not None:
            ax.errorbar(x[ok], y[ok], yerr=np.asarray(errors)[ok, i], fmt="none", lw=0.3, alpha=0.3, color="k")
        lo, hi = np.min(np.r_[x[ok], y[ok]]), np.max(np.r_[x[ok], y[ok]])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        d = y[ok] - x[ok]
        unit = (units or {}).get(name) or label_units_text(name)
        p16, p84 = np.percentile(d, [16, 84])
        ax.text(
            0.04,
            0.96,
            f"bias {np.mean(d):.3g}\nscatter {np.std(d):.3g} {unit}\n(16-84)/2 {0.5 * (p84 - p16):.3g}",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
        )
        given = (units or {}).get(name)
        ax.set_xlabel(label_axis_text(name, prefix=xprefix, units=given))
        ax.set_ylabel(label_axis_text(name, prefix=yprefix, units=given))
        ax.set_aspect("equal", adjustable="datalim")
    if color is not None and sc is not None:
        fig.colorbar(sc, ax=list(axes), label=color_label or "")
    return fig


def _bin_centres(lo, hi, logx):
    """Bin centres; open-ended bins get a finite stand-in edge."""
    finite = np.isfinite(hi)
    if logx:
        hi = np.where(finite, hi, 1.5 * lo)
        lo = np.where(lo > 0, lo, 0.5 * hi)
        return np.sqrt(lo * hi)
    width = np.median(hi[finite] - lo[finite]) if finite.any() else 1.0
    return 0.5 * (lo + np.where(finite, hi, lo + width))


def binned_statistics_plot(table, *, label_names=None, xlabel=None, logx=False):
    """Bias (points) and scatter (RMS line, half 16–84 dashed) per bin, one panel per
    label, from a table of :func:`bayescannon.validate.binned_statistics`.

    Parameters
    ----------
    table : astropy.table.Table
    label_names : list of str, optional
        Labels to show (default: all in the table).
    xlabel : str, optional
    logx : bool

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = label_names or list(dict.fromkeys(np.asarray(table["LABEL"]).astype(str)))
    fig, axes = new_figure(len(names))
    for ax, name in zip(axes, names):
        t = table[np.asarray(table["LABEL"]).astype(str) == name]
        lo, hi = np.asarray(t["BIN_LO"], float), np.asarray(t["BIN_HI"], float)
        x = _bin_centres(lo, hi, logx)
        ok = np.asarray(t["STATUS"]).astype(str) == "ok"

        def f(c, t=t):
            return np.ma.filled(np.ma.asarray(t[c], dtype=float), np.nan)

        ax.axhline(0, color="0.6", lw=0.8)
        ax.plot(x[ok], f("BIAS")[ok], "o", color="C0", label="bias")
        ax.plot(x[ok], f("RMS")[ok], "-", color="C1", label="RMS")
        ax.plot(x[ok], -f("RMS")[ok], "-", color="C1")
        ax.plot(x[ok], f("HALF_P16_84")[ok], "--", color="C2", label="(p84-p16)/2")
        ax.plot(x[ok], -f("HALF_P16_84")[ok], "--", color="C2")
        if logx:
            _log_snr_axis(ax)
        ax.set_title(label_display_name(name))
        ax.set_xlabel(xlabel or (label_axis_text(str(t["X"][0])) if len(t) else ""))
        ax.set_ylabel(label_axis_text(name, delta=True))
    axes[0].legend(fontsize=7)
    return fig


def scatter_vs_snr(cv, *, label_names=None):
    """Bias and scatter of the cross-validation in S/N bins (Ho+2017 Fig. 8).

    Parameters
    ----------
    cv : CrossValidation or astropy.table.Table
        A cross-validation result (with S/N) or its ``by_snr`` table.
    label_names : list of str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = cv.by_snr if hasattr(cv, "by_snr") else cv
    return binned_statistics_plot(table, label_names=label_names, xlabel="S/N", logx=True)


def kiel_diagram(
    teff,
    logg,
    *,
    color=None,
    color_label="[Fe/H]",
    titles=("before", "after"),
    teff_after=None,
    logg_after=None,
    color_after=None,
):
    """Kiel diagram (log g vs Teff, both axes reversed), optionally before / after.

    Parameters
    ----------
    teff, logg : ndarray (N,)
        First panel (e.g. the survey's own labels).
    color : ndarray (N,), optional
    color_label : str
    titles : (str, str)
    teff_after, logg_after, color_after : ndarray, optional
        Second panel (e.g. the transferred labels).

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = [(teff, logg, color)]
    if teff_after is not None and logg_after is not None:
        panels.append((teff_after, logg_after, color_after if color_after is not None else color))
    fig, axes = new_figure(len(panels), sharex=True, sharey=True)
    sc = None
    allc = [np.asarray(c, float) for _, _, c in panels if c is not None]
    finite = np.concatenate([c[np.isfinite(c)] for c in allc]) if allc else np.array([])
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (None, None)
    for ax, (t, g, c), title in zip(axes, panels, titles):
        t, g = np.asarray(t, float), np.asarray(g, float)
        if t.shape != g.shape:
            raise ShapeMismatchError(f"teff {t.shape} and logg {g.shape} differ")
        sc = ax.scatter(t, g, s=3, rasterized=True, **_colour(c, "plasma", vmin, vmax))
        ax.set_xlabel(label_axis_text("TEFF"))
        ax.set_ylabel(label_axis_text("LOGG"))
        if len(panels) > 1:
            ax.set_title(title)
    axes[0].invert_xaxis()
    axes[0].invert_yaxis()
    if finite.size and sc is not None:
        fig.colorbar(sc, ax=list(axes), label=color_label)
    return fig


def label_distributions(labels, label_names, *, bins: int = 40):
    """Histogram of each label (e.g. of a catalogue), one panel per label, axes with units.

    Parameters
    ----------
    labels : ndarray (N, K) or dict of str to ndarray (N, K)
        Label values in their units; several sets (e.g. ``{"all": y, "unflagged": y[good]}``)
        are drawn over each other on the same bins. Non-finite values are left out (their
        number is in the legend).
    label_names : list of str
        The K labels.
    bins : int
        Number of bins over the finite range of the first set.

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [str(n) for n in label_names]
    sets = labels if isinstance(labels, dict) else {"": labels}
    if not sets:
        raise InvalidInputError("no labels given")
    sets = {str(k): _as_2d(v, f"labels[{k!r}]", len(names)) for k, v in sets.items()}
    fig, axes = new_figure(len(names), ncols=min(len(names), 4), panel=(3.0, 2.6))
    for j, (ax, name) in enumerate(zip(axes, names)):
        first = next(iter(sets.values()))[:, j]
        finite = first[np.isfinite(first)]
        edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else bins
        for kname, y in sets.items():
            v = y[:, j]
            ok = np.isfinite(v)
            text = f"{kname + ': ' if kname else ''}{int(ok.sum())} stars"
            if (~ok).any():
                text += f" ({int((~ok).sum())} without value)"
            ax.hist(v[ok], bins=edges, histtype="step", label=text)
        ax.set_xlabel(label_axis_text(name))
        ax.set_ylabel("stars per bin")
        ax.legend(fontsize=6)
    return fig


def coefficient_spectra(model, *, labels=None, lines=None, wavelength_range=None, line_labels=True):
    """Leading (linear-term) coefficients θ_λ of each label against wavelength, with
    known lines marked (Ho+2017 Fig. 5), plus the model scatter s.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    labels : list of str, optional
        Labels to show (default: all).
    lines : mapping of str to float or list of float, optional
        Line names and wavelengths (Angstrom) to mark; default :data:`APOGEE_LINES`
        when the grid is in the H band, else none.
    wavelength_range : (float, float), optional
        Zoom.
    line_labels : bool
        Write line names.

    Returns
    -------
    matplotlib.figure.Figure
    """
    model._check_fitted()
    names = labels or list(model.label_names)
    unknown = [n for n in names if n not in model.label_names]
    if unknown:
        raise InvalidInputError(f"unknown label(s) {unknown}; the model has {model.label_names}")
    p = model.theta_.shape[0]
    wl = np.asarray(model.wavelength_, float) if model.wavelength_ is not None else np.arange(p, dtype=float)
    if lines is None and model.wavelength_ is not None and 15000 < np.median(wl) < 17000:
        lines = APOGEE_LINES
    sel = np.ones(p, bool)
    if wavelength_range is not None:
        sel = (wl >= wavelength_range[0]) & (wl <= wavelength_range[1])
        if not sel.any():
            raise InvalidInputError(f"no pixel in wavelength range {wavelength_range}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 1.6 * (len(names) + 2)), layout="constrained")
    axes = fig.subplots(len(names) + 2, 1, sharex=True, squeeze=False)[:, 0]
    axes[0].plot(wl[sel], model.theta_[sel, 0], lw=0.6, color="k")
    axes[0].set_ylabel(r"$\theta_0$")
    for ax, name in zip(axes[1:-1], names):
        t = model.term_names.index(name)
        ax.plot(wl[sel], model.theta_[sel, t], lw=0.6)
        ax.axhline(0, color="0.7", lw=0.5)
        ax.set_ylabel(f"θ ({label_display_name(name)})")
    axes[-1].plot(wl[sel], np.sqrt(model.s2_[sel]), lw=0.6, color="C3")
    axes[-1].set_ylabel("s")
    axes[-1].set_xlabel("wavelength (Å)" if model.wavelength_ is not None else "pixel")
    lo, hi = wl[sel].min(), wl[sel].max()
    for lname, lw in (lines or {}).items():
        for w in np.atleast_1d(lw):
            if lo <= w <= hi:
                for ax in axes:
                    ax.axvline(w, color="C2", lw=0.5, alpha=0.6, ls=":")
                if line_labels:
                    axes[0].text(
                        w,
                        1.0,
                        lname,
                        transform=axes[0].get_xaxis_transform(),
                        rotation=90,
                        fontsize=6,
                        va="bottom",
                        ha="center",
                        color="C2",
                    )
    return fig


def residual_band(model, flux, ivar, labels, *, wavelength_range=None, normalised: bool = False):
    """Per-pixel median residual (data − model) and 16–84 % band over a set of stars
    (Nandakumar+2022 Figs 5–6), with the model scatter s for comparison.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    flux, ivar : ndarray (N, P)
        Spectra (e.g. the training set); pixels with ivar = 0 are ignored.
    labels : ndarray (N, K) or inference result
        Labels at which the model is evaluated (training labels, or inferred ones).
    wavelength_range : (float, float), optional
    normalised : bool
        Show residuals in units of their uncertainty (``r·sqrt(w)``) instead of flux.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if hasattr(labels, "data_vars") and "labels" in labels:
        labels = labels["labels"].values
    y = np.asarray(labels, float)
    f = np.asarray(flux, float)
    iv = np.asarray(ivar, float)
    if f.shape != iv.shape or f.shape[0] != y.shape[0]:
        raise ShapeMismatchError(f"flux {f.shape}, ivar {iv.shape} and labels {y.shape} do not agree")
    good = np.all(np.isfinite(y), axis=1)
    r = np.full(f.shape, np.nan)
    r[good] = f[good] - model.predict(y[good])
    if normalised:
        w = adjusted_ivar(iv, model.s2_[None, :])
        r = r * np.sqrt(w)
    r[iv <= 0] = np.nan
    p = f.shape[1]
    wl = np.asarray(model.wavelength_, float) if model.wavelength_ is not None else np.arange(p, dtype=float)
    sel = np.ones(p, bool) if wavelength_range is None else (wl >= wavelength_range[0]) & (wl <= wavelength_range[1])
    cols = np.isfinite(r).sum(axis=0) > 0
    q = np.full((3, p), np.nan)
    q[:, cols] = np.nanpercentile(r[:, cols], [16, 50, 84], axis=0)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(wl[sel], q[0, sel], q[2, sel], color="C0", alpha=0.3, lw=0, label="16–84 %")
    ax.plot(wl[sel], q[1, sel], lw=0.6, color="C0", label="median")
    if not normalised:
        s = np.sqrt(model.s2_[sel])
        ax.plot(wl[sel], s, lw=0.5, color="C3", label="±s")
        ax.plot(wl[sel], -s, lw=0.5, color="C3")
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xlabel("wavelength (Å)" if model.wavelength_ is not None else "pixel")
    ax.set_ylabel("residual / σ" if normalised else "data − model")
    ax.legend(fontsize=7, loc="upper right")
    return fig


def alpha_vs_feh(
    feh,
    alpha,
    *,
    color=None,
    color_label=None,
    feh_after=None,
    alpha_after=None,
    titles=("before", "after"),
    ylabel=None,
    alpha_name="ALPHA_M",
):
    """[α/Fe] (or [α/M]) vs [Fe/H], optionally before / after side by side.

    Parameters
    ----------
    feh, alpha : ndarray (N,)
        [Fe/H] and the α abundance of each star.
    color : ndarray (N,), optional
        Colour of each point.
    color_label : str, optional
        Label of the colour bar.
    feh_after, alpha_after : ndarray, optional
        Second panel (e.g. the transferred labels).
    titles : (str, str)
        Panel titles when there are two panels.
    ylabel : str, optional
        Axis label of the α abundance; by default from the label table for ``alpha_name``.
    alpha_name : str
        Label of the α abundance: ``"ALPHA_M"`` ([α/M]) or ``"ALPHA_FE"`` ([α/Fe]).

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = [(feh, alpha)]
    if feh_after is not None and alpha_after is not None:
        panels.append((feh_after, alpha_after))
    fig, axes = new_figure(len(panels), sharex=True, sharey=True)
    sc = None
    for ax, (x, y), title in zip(axes, panels, titles):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape:
            raise ShapeMismatchError(f"[Fe/H] {x.shape} and [alpha] {y.shape} differ")
        c = None if color is None or len(np.asarray(color)) != x.size else color
        sc = ax.scatter(x, y, s=3, alpha=0.7, rasterized=True, **_colour(c, "viridis"))
        ax.set_xlabel(label_axis_text("FE_H"))
        ax.set_ylabel(ylabel or label_axis_text(alpha_name))
        if len(panels) > 1:
            ax.set_title(title)
    if color is not None and sc is not None:
        fig.colorbar(sc, ax=list(axes), label=color_label or "")
    return fig


def precision_vs_snr(calibration):
    """Repeat-observation precision per S/N bin and its exponential fit, one panel per
    label.

    Parameters
    ----------
    calibration : RepeatCalibration

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = calibration.label_names
    fig, axes = new_figure(len(names))
    b = calibration.binned
    for q, (ax, name) in enumerate(zip(axes, names)):
        t = b[np.asarray(b["LABEL"]).astype(str) == name]
        ok = np.asarray(t["STATUS"]).astype(str) == "ok"
        x = np.ma.filled(np.ma.asarray(t["SNR_MEDIAN"], dtype=float), np.nan)
        y = np.ma.filled(np.ma.asarray(t["PRECISION"], dtype=float), np.nan)
        ax.plot(x[ok], y[ok], "o", label="repeats")
        fin = np.isfinite(x)
        if fin.any():
            grid = np.linspace(np.nanmin(x[fin]), np.nanmax(x[fin]), 100)
            curve = calibration.precision(grid)[:, q]
            if np.isfinite(curve).any():
                ax.plot(grid, curve, "-", label=calibration.fit_status[q][:20])
        if not ok.any():  # say so, rather than an empty panel with meaningless axes
            ax.text(0.5, 0.5, f"no precision fit:\n{calibration.fit_status[q]}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)  # fmt: skip
        ax.set_xlabel("lower S/N of pair")
        unit = label_units_text(name)
        ax.set_ylabel(f"σ({label_display_name(name)}) [{unit}]" if unit else f"σ({label_display_name(name)})")
        ax.set_title(f"{label_display_name(name)}: errors × {calibration.scale[q]:.2f}", fontsize=9)
    axes[0].legend(fontsize=7)
    return fig


def _binned_from_report(report, kind):
    """``coverage_by_bin``-style dict from a :func:`bayescannon.bayes.coverage_report` Dataset."""
    cb = report["coverage_binned"].sel(kind=kind)
    out = {}
    for by in [str(b) for b in report["by"].values]:
        out[by] = {
            "n": report["bin_count"].sel(by=by).values.tolist(),
            "lo": report["bin_lo"].sel(by=by).values.tolist(),
            "hi": report["bin_hi"].sel(by=by).values.tolist(),
            **{str(int(round(100 * lv))): cb.sel(by=by, level=lv).values.tolist() for lv in report["level"].values},
        }
    return out, [str(n) for n in report["label_name"].values]


def coverage_map(coverage, label_names=None, *, level=0.68, band=0.05, kind="calibrated"):
    """Coverage of the intervals per S/N quintile and per quintile of each label.

    One panel per binning variable (S/N, then each label); in each, the coverage of every
    label's interval against the bin's median value, with ``level ± band`` shaded.

    Parameters
    ----------
    coverage : dict or xarray.Dataset
        A calibration's ``coverage_by_bin`` (``model.calibration_["coverage_by_bin"]``)
        or a :func:`bayescannon.bayes.coverage_report` result.
    label_names : list of str, optional
        Labels of the coverage columns (required with a dict).
    level : float
        0.68 or 0.95.
    band : float
        Half-width of the shaded target band.
    kind : str
        With a report: ``"calibrated"`` or ``"formal"``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if hasattr(coverage, "data_vars"):
        if kind not in [str(k) for k in coverage["kind"].values]:
            raise InvalidInputError(f"the coverage report has no kind {kind!r}: {list(coverage['kind'].values)}")
        coverage, label_names = _binned_from_report(coverage, kind)
    if label_names is None:
        raise InvalidInputError("label_names are required with a coverage_by_bin dict")
    key = str(int(round(100 * level)))
    fig, axes = new_figure(len(coverage), ncols=min(len(coverage), 3), sharey=True)
    for ax, (by, d) in zip(axes, coverage.items()):
        if key not in d:
            raise InvalidInputError(f"no coverage at level {level} for {by}: levels {[k for k in d if k.isdigit()]}")
        x = 0.5 * (np.asarray(d["lo"], dtype=float) + np.asarray(d["hi"], dtype=float))
        cov = np.asarray(d[key], dtype=float)
        if cov.shape != (x.size, len(label_names)):
            raise ShapeMismatchError(f"coverage of {by} has shape {cov.shape}; expected ({x.size}, {len(label_names)})")
        ax.axhspan(level - band, level + band, color="0.85", zorder=0, label=f"{level:.2f} ± {band:.2f}")
        ax.axhline(level, color="0.5", lw=0.8, ls="--")
        for j, name in enumerate(label_names):
            ax.plot(x, cov[:, j], "o-", ms=4, label=label_display_name(name))
        ax.set_xlabel(f"{label_axis_text(by)}, quintile mid-points")
        ax.set_ylabel(f"{key} % interval coverage")
        n = np.asarray(d["n"])
        counts = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
        ax.set_title(f"by {label_display_name(by)} ({counts} stars per bin)", fontsize=9)
    axes[0].legend(fontsize=7)
    return fig


def pipeline_comparison(result, *, bins: int = 20, outlier_z: float | None = None):
    """Figure of :func:`bayescannon.bayes.compare.compare_with_pipeline`.

    Row 1: histogram of the posterior quantiles of the pipeline values per label (flat
    at 1 when both agree within errors; KS p-value in the title). Row 2: z against S/N
    (when known). Rows 3…: z against each of our labels (posterior mean, with units).

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [str(n) for n in result["label_name"].values]
    k = len(names)
    snr = result["snr"].values
    has_snr = bool(np.isfinite(snr).any())
    nrows = 1 + int(has_snr) + k
    fig, axes = new_figure(nrows * k, ncols=k, panel=(3.0, 2.4))
    axes = axes.reshape(nrows, k)
    zlim = float(outlier_z if outlier_z is not None else result.attrs.get("outlier_z", 3.0))
    for j, name in enumerate(names):
        q = result["quantile"].sel(label_name=name).values
        z = result["z"].sel(label_name=name).values
        ax = axes[0, j]
        ax.hist(q[np.isfinite(q)], bins=bins, range=(0, 1), density=True, histtype="stepfilled", alpha=0.5)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set_xlabel(f"posterior quantile of pipeline {label_display_name(name)}")
        ax.set_ylabel("probability density")
        ax.set_title(
            f"{label_display_name(name)}: KS p = {float(result['ks_pvalue'].sel(label_name=name)):.2g}", fontsize=9
        )
        rows = [(snr, "S/N")] if has_snr else []
        rows += [(result["ours_mean"].sel(label_name=other).values, label_axis_text(other)) for other in names]
        for r, (xv, xname) in enumerate(rows, start=1):
            ax = axes[r, j]
            ok = np.isfinite(xv) & np.isfinite(z)
            out = ok & (np.abs(z) > zlim)
            ax.scatter(xv[ok & ~out], z[ok & ~out], s=4, alpha=0.6)
            ax.scatter(xv[out], z[out], s=8, color="C3", label=f"|z| > {zlim:g}")
            for level in (-zlim, 0.0, zlim):
                ax.axhline(level, color="k", lw=0.7, ls="-" if level == 0 else ":")
            ax.set_xlabel(xname)
            ax.set_ylabel(f"z ({label_display_name(name)})")
            if xname == "S/N":
                _log_snr_axis(ax)
    return fig


def _log_snr_axis(ax):
    """A logarithmic S/N axis with plain-number ticks at 1, 2, 5 × 10^k and no minor labels
    (matplotlib's default labels the minor ticks 3×10¹, 4×10¹, … over one another)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # lazy: matplotlib

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
