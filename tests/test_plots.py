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
    assert [ax.get_xlabel() for ax in axes[:2]] == ["reference TEFF [K]", "reference LOGG [dex]"]
    assert [ax.get_ylabel() for ax in axes[:2]] == ["bayescannon TEFF [K]", "bayescannon LOGG [dex]"]
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
    assert ax.get_ylabel() == "ΔTEFF [K]"


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
    fig = alpha_vs_feh(feh, 0.1 - 0.2 * feh)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets()[:, 1], 0.1 - 0.2 * feh)

    from bayescannon.validate.repeats import calibrate_from_repeats

    group = np.repeat(np.arange(150), 2).astype(str)
    snr = np.repeat(rng.uniform(10, 200, 150), 2)
    lab = rng.normal(size=(300, 1)) * (5.0 / snr[:, None])
    cal = calibrate_from_repeats(lab, np.full((300, 1), 0.01), snr, group, ["FE_H"], snr_bins=5, min_pairs=10)
    fig = precision_vs_snr(cal)
    pts = fig.axes[0].lines[0]
    np.testing.assert_allclose(pts.get_ydata(), np.asarray(cal.binned["PRECISION"]))
    assert fig.axes[0].get_ylabel() == "σ(FE_H) [dex]" and not fig.axes[0].texts
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
        "S/N (quintile mid-points)",
        "TEFF (K), quintile mid-points",
        "FE_H (dex), quintile mid-points",
    ]
    # equal bins say "200 stars per bin", not "200-200"
    assert [ax.get_title() for ax in axes] == [f"by {by} (200 stars per bin)" for by in ("snr", "TEFF", "FE_H")]
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
