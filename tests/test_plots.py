"""Plots: each function draws what it is given (checked on the artists' data)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from bayescannon.errors import InvalidInputError
from bayescannon.plots import (
    alpha_vs_feh,
    coefficient_spectra,
    coverage_map,
    kiel_diagram,
    one_to_one,
    precision_vs_snr,
    residual_band,
    save_figure,
    scatter_vs_snr,
)
from bayescannon.validate import binned_statistics


def test_one_to_one_annotates_bias_and_scatter(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(300, 2)) * [300, 0.5] + [4800, 2.5]
    inferred = truth + rng.normal(size=truth.shape) * [50, 0.1] + [20, -0.05]
    fig = one_to_one(truth, inferred, ["TEFF", "LOGG"], color=rng.uniform(20, 200, 300), color_label="S/N")
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for k, ax in enumerate(axes[:2]):
        d = inferred[:, k] - truth[:, k]
        text = ax.texts[0].get_text()
        assert f"bias {np.mean(d):.3g}" in text and f"scatter {np.std(d):.3g}" in text
        np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([truth[:, k], inferred[:, k]]))
    # axes carry the label's unit even when no units are passed
    assert [ax.get_xlabel() for ax in axes[:2]] == [r"reference $T_\mathrm{eff}$ [K]", r"reference $\log g$ [dex]"]
    assert [ax.get_ylabel() for ax in axes[:2]] == [r"bayescannon $T_\mathrm{eff}$ [K]", r"bayescannon $\log g$ [dex]"]
    paths = save_figure(fig, tmp_path / "o2o.png", formats=["png", "pdf"])
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


def test_scatter_vs_snr_draws_the_binned_table():
    rng = np.random.default_rng(1)
    snr = np.exp(rng.uniform(np.log(10), np.log(300), 2000))
    d = rng.normal(size=(2000, 1)) * (100.0 / snr[:, None])
    t = binned_statistics(snr, d, [10, 30, 100, 300], label_names=["TEFF"], x_name="SNR")
    fig = scatter_vs_snr(t)
    ax = fig.axes[0]
    bias_line, rms_line = ax.lines[1], ax.lines[2]
    np.testing.assert_allclose(bias_line.get_ydata(), np.asarray(t["BIAS"]))
    np.testing.assert_allclose(rms_line.get_ydata(), np.asarray(t["RMS"]))
    assert ax.get_xscale() == "log"
    assert ax.get_ylabel() == r"Δ$T_\mathrm{eff}$ [K]" and ax.get_xlabel() == "S/N"


def test_coefficient_spectra_and_residual_band(trained):
    truth, model = trained
    fig = coefficient_spectra(model, lines={"Br19": 15264.7, "outside": 16000.0})
    axes = fig.axes
    assert len(axes) == len(model.label_names) + 2
    for ax, name in zip(axes[1:-1], model.label_names):
        np.testing.assert_allclose(ax.lines[0].get_ydata(), model.theta_[:, model.term_names.index(name)])
    # only the line inside the 15100–15300 Å grid is marked, on every panel
    marked = [ln for ln in axes[0].lines[1:] if ln.get_xdata()[0] == 15264.7]
    assert len(marked) == 1 and not any(ln.get_xdata()[0] == 16000.0 for ln in axes[0].lines[1:])
    with pytest.raises(InvalidInputError):
        coefficient_spectra(model, labels=["NOPE"])
    y = truth.labels(60)
    flux, ivar = truth.spectra(y, model.label_offset_, model.label_scale_)
    fig = residual_band(model, flux, ivar, y)
    ax = fig.axes[0]
    med = np.nanpercentile(flux - model.predict(y), 50, axis=0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), med)


def test_kiel_alpha_and_precision_figures():
    rng = np.random.default_rng(2)
    teff, logg, feh = rng.uniform(4000, 5500, 100), rng.uniform(1, 4, 100), rng.uniform(-1, 0.3, 100)
    fig = kiel_diagram(teff, logg, color=feh, teff_after=teff + 30, logg_after=logg, titles=("survey", "cannon"))
    ax0, ax1 = fig.axes[:2]
    assert ax0.xaxis_inverted() and ax0.yaxis_inverted()
    np.testing.assert_allclose(ax1.collections[0].get_offsets()[:, 0], teff + 30)
    assert [ax0.get_title(), ax1.get_title()] == ["survey", "cannon"]
    assert (ax0.get_xlabel(), ax0.get_ylabel()) == (r"$T_\mathrm{eff}$ [K]", r"$\log g$ [dex]")
    fig = alpha_vs_feh(feh, 0.1 - 0.2 * feh)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets()[:, 1], 0.1 - 0.2 * feh)
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("[Fe/H]", "[α/M]")
    # ALPHA_FE is [α/Fe], not [α/M]
    assert alpha_vs_feh(feh, feh, alpha_name="ALPHA_FE").axes[0].get_ylabel() == "[α/Fe]"

    from bayescannon.validate.repeats import calibrate_from_repeats

    group = np.repeat(np.arange(150), 2).astype(str)
    snr = np.repeat(rng.uniform(10, 200, 150), 2)
    lab = rng.normal(size=(300, 1)) * (5.0 / snr[:, None])
    cal = calibrate_from_repeats(lab, np.full((300, 1), 0.01), snr, group, ["FE_H"], snr_bins=5, min_pairs=10)
    fig = precision_vs_snr(cal)
    pts = fig.axes[0].lines[0]
    np.testing.assert_allclose(pts.get_ydata(), np.asarray(cal.binned["PRECISION"]))
    assert fig.axes[0].get_ylabel() == "σ([Fe/H]) [dex]" and not fig.axes[0].texts
    # too few pairs for any bin: the panel says why instead of drawing empty axes
    few = calibrate_from_repeats(lab, np.full((300, 1), 0.01), snr, group, ["FE_H"], snr_bins=20, min_pairs=10)
    ax = precision_vs_snr(few).axes[0]
    assert "no bin with enough pairs" in ax.texts[0].get_text()
    assert all(np.isfinite(line.get_ydata()).any() for line in ax.lines if len(line.get_ydata()))


def test_coverage_map_draws_each_bin_with_units_and_the_target_band():
    from bayescannon.bayes.calibration import coverage_by_bin

    rng = np.random.default_rng(5)
    n = 1000
    y = np.column_stack([rng.uniform(4000, 6000, n), rng.uniform(-1, 0.5, n)])
    snr = rng.uniform(20, 300, n)
    inside = np.stack([rng.uniform(size=(n, 2)) < 0.68, rng.uniform(size=(n, 2)) < 0.95], axis=1)
    cb = coverage_by_bin(inside, snr, y, ["TEFF", "FE_H"])
    fig = coverage_map(cb, ["TEFF", "FE_H"])
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert [ax.get_xlabel() for ax in axes] == [
        "S/N, quintile mid-points",
        r"$T_\mathrm{eff}$ [K], quintile mid-points",
        "[Fe/H], quintile mid-points",
    ]
    # equal bins say "200 stars per bin", not "200-200"
    assert [ax.get_title() for ax in axes] == [
        f"by {by} (200 stars per bin)" for by in ("S/N", r"$T_\mathrm{eff}$", "[Fe/H]")
    ]
    for ax, by in zip(axes, ["snr", "TEFF", "FE_H"]):
        band = ax.patches[0]
        np.testing.assert_allclose([band.get_y(), band.get_y() + band.get_height()], [0.63, 0.73])
        for j, line in enumerate([ln for ln in ax.lines if ln.get_marker() == "o"]):
            np.testing.assert_allclose(line.get_ydata(), np.asarray(cb[by]["68"])[:, j])
            mid = 0.5 * (np.asarray(cb[by]["lo"]) + np.asarray(cb[by]["hi"]))
            np.testing.assert_allclose(line.get_xdata(), mid)
    # each bin holds a fifth of the stars, and the coverage is the fraction inside
    assert cb["TEFF"]["n"] == [200] * 5
    q = np.quantile(y[:, 0], [0.2, 0.4, 0.6, 0.8])
    first = y[:, 0] < q[0]
    np.testing.assert_allclose(cb["TEFF"]["68"][0], inside[first, 0].mean(0))
    with pytest.raises(InvalidInputError):
        coverage_map(cb)  # a dict needs its label names
    with pytest.raises(InvalidInputError):
        coverage_map(cb, ["TEFF", "FE_H"], level=0.5)


def test_label_metadata_names_and_units():
    from bayescannon.results import label_axis_text, label_description, label_unit

    assert label_axis_text("TEFF") == r"$T_\mathrm{eff}$ [K]"
    assert label_axis_text("logg") == r"$\log g$ [dex]"
    assert label_axis_text("FE_H") == "[Fe/H]"
    assert label_axis_text("ALPHA_FE") == "[α/Fe]" and label_axis_text("ALPHA_M") == "[α/M]"
    assert label_axis_text("MG_FE", delta=True) == "Δ[Mg/Fe] [dex]"
    assert label_axis_text("TEFF", delta=True, prefix="mean ") == r"mean Δ$T_\mathrm{eff}$ [K]"
    # catalogues use the same table: FITS units (no dex: it does not survive FITS) and descriptions
    assert (label_unit("TEFF"), label_unit("LOGG"), label_unit("VMIC")) == ("K", None, "km/s")
    assert label_description("ALPHA_FE") == "[alpha/Fe] (dex)" and label_description("CA_H") == "[Ca/H] (dex)"


def test_coverage_curve_and_zscore_histogram_of_honest_and_too_small_errors():
    from scipy.stats import norm

    from bayescannon.plots import coverage_curve, interval_levels, zscore_histogram

    rng = np.random.default_rng(7)
    z = rng.normal(size=(4000, 2))
    fig = coverage_curve({"formal": 2.0 * z, "calibrated": z}, ["TEFF", "FE_H"])
    levels = np.linspace(0.02, 0.98, 49)
    for ax, name in zip(fig.axes, [r"$T_\mathrm{eff}$", "[Fe/H]"]):
        assert ax.get_title() == name
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("nominal coverage", "empirical coverage")
        formal, calibrated = ax.lines[1].get_ydata(), ax.lines[2].get_ydata()
        # binomial noise of a fraction of 4000 stars is <= 0.008: 5 sigma = 0.04
        np.testing.assert_allclose(calibrated, levels, atol=0.04)
        np.testing.assert_allclose(formal, 2 * norm.cdf(norm.ppf(0.5 + levels / 2) / 2) - 1, atol=0.04)
    # a posterior quantile of 0.5 is inside every interval, 0 or 1 outside all
    np.testing.assert_allclose(interval_levels([0.5, 0.0, 1.0, 0.84], kind="quantile"), [0, 1, 1, 0.68])
    np.testing.assert_allclose(interval_levels([1.0, -1.96], kind="z"), [0.6827, 0.95], atol=1e-4)
    with pytest.raises(InvalidInputError):
        interval_levels([0.1], kind="nope")
    fig = zscore_histogram({"calibrated": z}, ["TEFF", "FE_H"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == r"z = Δ$T_\mathrm{eff}$ / σ" and ax.get_ylabel() == "probability density"
    assert f"sd {np.std(z[:, 0]):.2f}" in ax.texts[0].get_text()


def test_errors_vs_snr_and_corner_and_survey_one_to_one():
    from bayescannon.plots import corner_posterior, errors_vs_snr, survey_one_to_one

    rng = np.random.default_rng(8)
    snr = rng.uniform(10, 300, 200)
    err = np.column_stack([3000 / snr, 0.5 / snr])
    fig = errors_vs_snr(snr, {"formal": err, "calibrated": 1.3 * err}, ["TEFF", "LOGG"])
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == [r"σ($T_\mathrm{eff}$) [K]", r"σ($\log g$) [dex]"]
    assert fig.axes[0].get_xlabel() == "S/N" and fig.axes[0].get_xscale() == "log"
    np.testing.assert_allclose(fig.axes[0].collections[1].get_offsets()[:, 1], 1.3 * err[:, 0])
    with pytest.raises(Exception, match="200"):
        errors_vs_snr(snr[:10], err, ["TEFF", "LOGG"])

    draws = rng.multivariate_normal([4800, 2.5], [[100**2, 0], [0, 0.1**2]], size=500)
    truth = np.array([4750.0, 2.6])
    fig = corner_posterior(draws, ["TEFF", "LOGG"], truth=truth, laplace=(draws.mean(0), np.cov(draws.T)))
    axes = np.array(fig.axes).reshape(2, 2)
    assert not axes[0, 1].get_visible()
    assert axes[1, 0].get_xlabel() == r"$T_\mathrm{eff}$ [K]" and axes[1, 0].get_ylabel() == r"$\log g$ [dex]"
    assert axes[0, 0].lines[-1].get_xdata()[0] == truth[0]  # truth marked on the marginal
    star = [ln for ln in axes[1, 0].lines if ln.get_marker() == "*"][0]
    np.testing.assert_allclose([star.get_xdata()[0], star.get_ydata()[0]], truth)
    with pytest.raises(Exception, match="3 values"):
        corner_posterior(draws, ["TEFF", "LOGG"], truth=[1, 2, 3])

    fig = survey_one_to_one(draws, draws + 1, ["TEFF", "LOGG"], survey_name="LAMOST")
    assert fig.axes[0].get_xlabel() == r"LAMOST $T_\mathrm{eff}$ [K]"
    assert fig.axes[0].get_ylabel() == r"transferred $T_\mathrm{eff}$ [K]"


def _posterior_tree(rng, ids=("a", "b"), names=("TEFF", "LOGG")):
    """A posterior DataTree of the layout of ``bayes.sample_labels`` (2 chains x 300 draws)."""
    import xarray as xr

    mean = np.array([[4800.0, 2.5], [5100.0, 3.1]])
    sd = np.array([[80.0, 0.1], [120.0, 0.2]])
    draws = mean[None, None] + sd[None, None] * rng.standard_normal((2, 300, len(ids), len(names)))
    post = xr.Dataset(
        {"labels": (("chain", "draw", "star", "label_name"), draws)},
        coords={"star": list(ids), "label_name": list(names)},
    )
    const = xr.Dataset(
        {"map_labels": (("star", "label_name"), mean), "map_errors": (("star", "label_name"), sd)},
        coords={"star": list(ids), "label_name": list(names)},
    )
    return xr.DataTree.from_dict({"posterior": post, "constant_data": const}), draws, mean, sd


def test_corner_from_tree_draws_the_star_its_truth_and_laplace():
    from bayescannon.plots import corner_from_tree

    rng = np.random.default_rng(11)
    tree, draws, mean, sd = _posterior_tree(rng)
    fig = corner_from_tree(tree, "b", truth=[5000.0, 3.0])
    axes = np.array(fig.axes).reshape(2, 2)
    assert fig._suptitle.get_text() == "star b"
    assert axes[1, 0].get_xlabel() == r"$T_\mathrm{eff}$ [K]" and axes[1, 0].get_ylabel() == r"$\log g$ [dex]"
    # the scatter is star b's draws (chains stacked), not star a's
    np.testing.assert_allclose(
        np.sort(axes[1, 0].collections[0].get_offsets()[:, 0]), np.sort(draws[:, :, 1, 0].ravel())
    )
    # the Laplace density on the diagonal peaks at star b's MAP with its error as width
    lap = [ln for ln in axes[0, 0].lines if ln.get_label() == "Laplace"][0]
    x, y = lap.get_xdata(), lap.get_ydata()
    assert abs(x[np.argmax(y)] - mean[1, 0]) < 0.02 * (x.max() - x.min())
    np.testing.assert_allclose(y.max(), 1 / (sd[1, 0] * np.sqrt(2 * np.pi)), rtol=1e-3)
    assert axes[0, 0].lines[-1].get_xdata()[0] == 5000.0
    # by position, and without Laplace
    fig = corner_from_tree(tree, 0, laplace=False)
    assert not [ln for ln in fig.axes[0].lines if ln.get_label() == "Laplace"]
    with pytest.raises(InvalidInputError, match="'zz' is not in the posterior"):
        corner_from_tree(tree, "zz")
    with pytest.raises(InvalidInputError, match="outside"):
        corner_from_tree(tree, 5)


def test_label_distributions_bins_each_label_with_units():
    from bayescannon.plots import label_distributions

    rng = np.random.default_rng(12)
    y = np.column_stack([rng.normal(4800, 300, 400), rng.normal(2.5, 0.5, 400), rng.normal(-0.2, 0.3, 400)])
    y[:7, 2] = np.nan
    fig = label_distributions({"all": y, "unflagged": y[:200]}, ["TEFF", "LOGG", "FE_H"], bins=20)
    axes = fig.axes
    assert [ax.get_xlabel() for ax in axes] == [r"$T_\mathrm{eff}$ [K]", r"$\log g$ [dex]", "[Fe/H]"]
    # the step outline of the 'all' set is its histogram on 20 bins of its own range
    top = axes[0].patches[0].get_xy()[:, 1]
    assert top.max() == np.histogram(y[:, 0], bins=20)[0].max()
    legend = [t.get_text() for t in axes[2].get_legend().get_texts()]
    assert legend == ["all: 393 stars (7 without value)", "unflagged: 193 stars (7 without value)"]
    with pytest.raises(Exception, match=r"\(N, 3\)"):
        label_distributions(y[:, :2], ["TEFF", "LOGG", "FE_H"])
