"""Figures written by ``validate --figures``, ``catalogue --figures`` and the ``homogenise``
report: built from the command's own figure functions on tiny data, their axes named and
with units from :data:`bayescannon.results.LABEL_METADATA` (checked on the Figure objects;
the CLI tests check that the PNGs are written)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from bayescannon import CannonModel
from bayescannon.commands import catalogue as catalogue_cmd
from bayescannon.commands import homogenise as homogenise_cmd
from bayescannon.commands import validate as validate_cmd
from bayescannon.results import label_axis_text
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.validate.crossval import cross_validate

LABELS = ["TEFF", "LOGG", "FE_H"]
#: what a paper prints, written out (not derived) so that a regression of the table shows
AXIS = {"TEFF": r"$T_\mathrm{eff}$ [K]", "LOGG": r"$\log g$ [dex]", "FE_H": "[Fe/H]"}
SIGMA = {"TEFF": r"σ($T_\mathrm{eff}$) [K]", "LOGG": r"σ($\log g$) [dex]", "FE_H": "σ([Fe/H]) [dex]"}


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


@pytest.fixture(scope="module")
def cv_setup():
    ds = mock_quadratic_survey(150, 30, LABELS, snr=(15.0, 250.0), rng=7)
    cv = cross_validate(CannonModel(LABELS, random_state=0), ds, n_folds=3, random_state=1, n_jobs=1)
    full = CannonModel(LABELS, random_state=0).fit(ds, progressbar=False)
    return ds, cv, full


def test_validate_figures_name_their_axes_and_compare_formal_with_calibrated(cv_setup):
    ds, cv, full = cv_setup
    snr = ds["snr"].values
    formal = validate_cmd._uncertainty_figures(full, cv, ds, snr)
    assert set(formal) == {"coverage_curve", "zscores", "errors_vs_snr"}
    # the coverage curve of the formal CV errors: one line per kind after the diagonal
    cc = _panels(formal["coverage_curve"])
    assert [ax.get_title() for ax in cc] == [r"$T_\mathrm{eff}$", r"$\log g$", "[Fe/H]"]
    assert [len(ax.lines) for ax in cc] == [2, 2, 2]
    assert [ax.get_xlabel() for ax in _panels(formal["zscores"])] == [
        r"z = Δ$T_\mathrm{eff}$ / σ",
        r"z = Δ$\log g$ / σ",
        "z = Δ[Fe/H] / σ",
    ]
    assert [ax.get_ylabel() for ax in _panels(formal["errors_vs_snr"])] == [SIGMA[n] for n in LABELS]
    # calibrated on the CV residuals: a second kind; its coverage is near the nominal one
    validate_cmd._calibrate_on_cv(full, cv, ds, snr)
    figs = validate_cmd._uncertainty_figures(full, cv, ds, snr)
    for ax in _panels(figs["coverage_curve"]):
        assert [ln.get_label() for ln in ax.lines][1:] == ["formal (150 stars)", "calibrated (in-sample) (150 stars)"]
        lv, cov = ax.lines[2].get_xdata(), ax.lines[2].get_ydata()
        at68 = cov[np.argmin(np.abs(lv - 0.68))]
        # 150 stars: the binomial sd of a coverage near 0.68 is 0.038; in-sample, so ~3 sd
        assert abs(at68 - 0.68) < 0.12, at68
    assert len(_panels(figs["errors_vs_snr"])[0].collections) == 2


def test_catalogue_figures_name_their_axes():
    rng = np.random.default_rng(3)
    n = 60
    y = np.column_stack([rng.normal(4800, 200, n), rng.normal(2.5, 0.4, n), rng.normal(-0.1, 0.2, n)])
    snr = rng.uniform(20, 200, n)
    err = np.column_stack([3000 / snr, 5 / snr, 3 / snr])
    result = xr.Dataset(
        {"labels": (("star", "label_name"), y), "errors": (("star", "label_name"), err)},
        coords={"label_name": LABELS},
    )
    good = snr > 50
    figs = catalogue_cmd.catalogue_figures(result, LABELS, snr, good, "calibrated")
    assert set(figs) == {"errors_vs_snr", "label_distributions"}
    ev = _panels(figs["errors_vs_snr"])
    assert [ax.get_ylabel() for ax in ev] == [SIGMA[n] for n in LABELS] and ev[0].get_xlabel() == "S/N"
    np.testing.assert_allclose(ev[0].collections[0].get_offsets(), np.column_stack([snr, err[:, 0]]))
    ld = _panels(figs["label_distributions"])
    assert [ax.get_xlabel() for ax in ld] == [AXIS[n] for n in LABELS]
    legend = [t.get_text() for t in ld[0].get_legend().get_texts()]
    assert legend == [f"all: {n} stars", f"unflagged: {int(good.sum())} stars"]


def test_homogenise_report_figures_name_their_axes():
    trends = [
        {"LABEL": "TEFF", "PAIR": "LAMOST-APOGEE", "X": "APOGEE_TEFF", "BINS": [4000, 5000], "MEDIANS": [10.0, -5.0]},
        {"LABEL": "FE_H", "PAIR": "LAMOST-APOGEE", "X": "APOGEE_FE_H", "BINS": [-1.0, 0.0], "MEDIANS": [0.02, 0.0]},
    ]
    fig = homogenise_cmd.trends_figure(trends, ["TEFF", "FE_H"])
    axes = _panels(fig)
    assert [ax.get_xlabel() for ax in axes] == [AXIS["TEFF"], AXIS["FE_H"]]
    assert axes[0].get_ylabel() == r"pair median after calibration: Δ$T_\mathrm{eff}$ [K]"
    assert axes[1].get_ylabel() == "pair median after calibration: Δ[Fe/H] [dex]"
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), [10.0, -5.0])
    # the Kiel diagrams of the report: the axes of the label table
    assert label_axis_text("TEFF") == AXIS["TEFF"] and label_axis_text("LOGG") == AXIS["LOGG"]


def test_calibrated_levels_follow_the_calibrated_intervals_not_a_gaussian(cv_setup):
    """A star lies inside the calibrated 68 % (95 %) interval iff its level is ≤ 0.68 (0.95):
    the coverage curve of calibrated errors uses the calibration's (conformal) half-widths."""
    from bayescannon.core import scaling
    from bayescannon.core.uncertainty import calibrated_errors, calibration_bias, epsilon
    from bayescannon.plots import calibrated_interval_levels

    ds, cv, full = cv_setup
    validate_cmd._calibrate_on_cv(full, cv, ds, ds["snr"].values)
    pred = cv.predictions
    est, ref, cov = validate_cmd._cv_estimates(pred), pred["reference"].values, pred["covariance"].values
    x = scaling.scale(np.nan_to_num(est), full.label_offset_, full.label_scale_)
    _, sd, h68, h95 = calibrated_errors(full, cov, x, epsilon(full, x, ds["ivar"].values))
    resid = est - calibration_bias(full.calibration_, x) - ref
    lv = calibrated_interval_levels(full.calibration_, resid / sd)
    ok = np.isfinite(lv)
    assert ok.all()
    for level, half in ((0.68, h68), (0.95, h95)):
        inside = np.abs(resid) <= half
        # equal up to the 199-point level grid: at most a star or two on the boundary
        assert np.mean((lv <= level) == inside) > 0.98
    # the Gaussian reading of the same z differs (it is what the figure showed before)
    gauss = np.mean(np.abs(resid / sd) <= 1.0, axis=0)
    assert np.any(np.abs(gauss - np.mean(lv <= 0.68, axis=0)) > 0.05), gauss
