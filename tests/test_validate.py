"""Cross-validation, bootstrap and binned statistics on data from a known quadratic
Cannon model (bayescannon.simulate.mock_quadratic_survey)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table

from bayescannon import CannonModel
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.validate import (
    binned_statistics,
    bootstrap,
    cross_validate,
    make_folds,
    summary_statistics,
)

LABELS = ["TEFF", "LOGG", "FE_H"]


@pytest.fixture(scope="module")
def survey():
    return mock_quadratic_survey(240, 40, LABELS, snr=(15.0, 250.0), rng=3)


@pytest.fixture(scope="module")
def cv(survey):
    return cross_validate(CannonModel(LABELS, random_state=0), survey, n_folds=4, random_state=1, n_jobs=1)


def test_summary_statistics_match_numpy_definitions():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 2.0, size=(500, 3))
    d[rng.random(d.shape) < 0.1] = np.nan
    s = summary_statistics(d)
    for k in range(3):
        col = d[np.isfinite(d[:, k]), k]
        assert s["n"][k] == col.size
        assert s["bias"][k] == pytest.approx(col.mean())
        assert s["rms"][k] == pytest.approx(col.std(ddof=1))
        assert s["rmse"][k] == pytest.approx(np.sqrt(np.mean(col**2)))
        p16, p50, p84 = np.percentile(col, [16, 50, 84])
        assert s["median"][k] == pytest.approx(p50)
        assert s["half_p16_84"][k] == pytest.approx(0.5 * (p84 - p16))
    few = summary_statistics(np.array([[1.0, np.nan], [np.nan, np.nan]]))
    assert np.all(np.isnan(few["bias"])) and list(few["n"]) == [1, 0]


def test_folds_are_balanced_and_fixed_by_the_seed():
    f = make_folds(103, 8, random_state=5)
    counts = np.bincount(f, minlength=8)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    assert np.array_equal(f, make_folds(103, 8, random_state=5))
    assert not np.array_equal(f, make_folds(103, 8, random_state=6))
    with pytest.raises(InvalidInputError):
        make_folds(10, 1)
    with pytest.raises(InsufficientDataError):
        make_folds(5, 8)


def test_cross_validation_recovers_truth_within_formal_errors(cv, survey):
    pred = cv.predictions
    n = survey.sizes["star"]
    # every star predicted exactly once, by the model of its own fold
    assert np.bincount(pred["fold"].values).sum() == n
    assert np.all(np.isfinite(pred["labels"].values))
    truth = np.column_stack([survey[k].values for k in LABELS])
    assert np.array_equal(pred["reference"].values, truth)
    z = (pred["labels"].values - truth) / pred["errors"].values
    # the mock is an exact quadratic model: errors are right up to the θ uncertainty of
    # a model trained on 180 stars with 10 terms (≈ sqrt(1 + 10/180) ≈ 1.03)
    assert np.all(np.abs(np.mean(z, axis=0)) < 4.0 / np.sqrt(n))
    assert np.all(np.abs(np.std(z, axis=0) - 1.03) < 0.05 + 4.0 / np.sqrt(2 * n))
    s = cv.summary
    assert list(s["LABEL"]) == LABELS and np.all(s["N"] == n)
    assert np.all(np.abs(s["BIAS"]) < 4.0 * s["RMS"] / np.sqrt(n))
    # the RMS of the CV differences is what the formal errors predict
    expected = np.sqrt(np.mean(pred["errors"].values ** 2, axis=0))
    assert np.all(np.abs(s["RMS"] / expected - 1.0) < 0.1 + 4.0 / np.sqrt(2 * n))
    assert np.allclose(cv.scatter(), s["RMS"]) and np.allclose(cv.scatter("half_p16_84"), s["HALF_P16_84"])


def test_statistics_in_snr_and_label_bins(cv):
    t = cv.by_snr
    assert set(t["LABEL"]) == set(LABELS)
    for name in LABELS:
        rows = t[t["LABEL"] == name]
        assert rows["N"].sum() == len(cv.predictions["star"])
        ok = rows["STATUS"] == "ok"
        skipped = ~ok
        assert np.all(rows["N"][skipped] < cv.min_per_bin) and np.all(rows["RMS"].mask[skipped])
        okr = rows[ok]
        # noise ∝ 1/(S/N): the scatter falls from the lowest to the highest S/N bin
        assert okr["RMS"][0] > 2.0 * okr["RMS"][-1]
        assert np.all(np.abs(okr["BIAS"]) < 4.5 * okr["RMS"] / np.sqrt(okr["N"]))
    lb = cv.by_label
    assert np.all(lb["N"][lb["LABEL"] == "TEFF"].sum() <= len(cv.predictions["star"]))
    assert set(lb["X"]) == {"REFERENCE"}


def test_binned_statistics_reports_skipped_bins():
    x = np.array([1.0, 1.5, 2.5, 2.6, 2.7, 2.8, 2.9])
    d = np.column_stack([x - 2.0])
    t = binned_statistics(x, d, [0.0, 2.0, 3.0, 4.0], label_names=["A"], min_count=3)
    assert list(t["N"]) == [2, 5, 0]
    assert list(t["STATUS"] == "ok") == [False, True, False]
    assert t["BIAS"][1] == pytest.approx(np.mean(x[2:] - 2.0))
    assert t["BIAS"].mask[0] and t["BIAS"].mask[2]


def test_parallel_folds_give_the_serial_result(survey, cv):
    par = cross_validate(CannonModel(LABELS, random_state=0), survey, n_folds=4, random_state=1, n_jobs=2)
    assert np.array_equal(par.predictions["fold"].values, cv.predictions["fold"].values)
    # other thread counts sum in another order: equal to far below the label errors
    diff = np.abs(par.predictions["labels"].values - cv.predictions["labels"].values)
    assert np.all(diff < 1e-3 * cv.predictions["errors"].values)


def test_folds_too_small_for_the_model_raise_before_fitting():
    small = mock_quadratic_survey(14, 20, LABELS, rng=1)
    with pytest.raises(InsufficientDataError, match="terms"):
        cross_validate(CannonModel(LABELS), small, n_folds=2, n_jobs=1)
    with pytest.raises(InsufficientDataError):
        cross_validate(CannonModel(LABELS), small, n_folds=20, n_jobs=1)


def test_bootstrap_spread_is_the_finite_reference_set_part_of_the_error(survey, cv):
    boot = bootstrap(CannonModel(LABELS), survey, n_boot=3, random_state=2, n_jobs=1)
    assert boot.labels.shape == (3, survey.sizes["star"], len(LABELS))
    sigma = boot.std
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    # θ estimated from N = 240 stars with T = 10 terms: the label error it causes is
    # of order sqrt(T/N) ≈ 0.2 of the formal (noise) error, well below it
    ratio = np.median(sigma / cv.predictions["errors"].values, axis=0)
    assert np.all((ratio > 0.05) & (ratio < 0.6))
    s = boot.summary
    assert list(s["LABEL"]) == LABELS and np.all(s["N_MODELS"] == 3)
    assert np.all(s["P16_SIGMA"] <= s["MEDIAN_SIGMA"]) and np.all(s["MEDIAN_SIGMA"] <= s["P84_SIGMA"])
    t = boot.to_table()
    assert len(t) == survey.sizes["star"] and "e_BOOT_TEFF" in t.colnames


def test_cv_predictions_are_the_infer_dataset_of_each_fold(cv, survey):
    pred = cv.predictions
    flux, ivar = survey["flux"].values, survey["ivar"].values
    truth = np.column_stack([survey[k].values for k in LABELS])
    fold = pred["fold"].values
    test = np.flatnonzero(fold == 2)
    model = CannonModel(LABELS, random_state=0).fit(
        flux[fold != 2], ivar[fold != 2], truth[fold != 2], wavelength=survey["wavelength"].values
    )
    ref = model.infer(flux[test], ivar[test], wavelength=survey["wavelength"].values)
    assert set(ref.data_vars) <= set(pred.data_vars)
    assert {"reference", "fold", "snr", "covariance"} <= set(pred.data_vars)
    assert pred["covariance"].dims == ("star", "label_name", "label_name_2")
    for name in ref.data_vars:
        np.testing.assert_array_equal(pred[name].values[test], ref[name].values, err_msg=name)
        assert pred[name].dims == ref[name].dims
    assert pred["labels"].attrs["units"] == ref["labels"].attrs["units"]
    assert list(pred["star"].values[test]) == list(survey["star"].values[test])
    # the deprecated alias and the accessor are the labels themselves
    np.testing.assert_array_equal(pred["inferred"].values, pred["labels"].values)
    np.testing.assert_array_equal(cv.inferred.values, pred["labels"].values)


def test_validate_command_writes_tables_and_report(tmp_path, survey, capsys):
    from bayescannon.cli import main
    from bayescannon.io import write_spectra

    ds = survey.isel(star=slice(0, 120)).drop_vars(["true_theta", "true_s2", "term"])
    spectra = write_spectra(ds, tmp_path / "ref.nc", overwrite=True)
    out = tmp_path / "val"
    rc = main(
        [
            "validate",
            str(spectra),
            "--labels",
            *LABELS,
            "--n-folds",
            "3",
            "--bootstrap",
            "2",
            "--n-jobs",
            "1",
            "-o",
            str(out),
            "--no-progress",
            "--report-format",
            "md",
        ]
    )
    assert rc == 0
    summary = Table.read(out / "cv_summary.ecsv")
    assert list(summary["LABEL"]) == LABELS and np.all(summary["N"] == 120)
    preds = Table.read(out / "cv_predictions.fits")
    assert len(preds) == 120 and set(preds["FOLD"]) == {0, 1, 2}
    assert (out / "cv_by_snr.ecsv").is_file() and (out / "bootstrap_summary.ecsv").is_file()
    report = (out / "report.md").read_text()
    assert "one_to_one.png" in report and (out / "one_to_one.png").stat().st_size > 0
    assert "Bootstrap" in report and "coefficients.png" in report and "residuals.png" in report
    printed = capsys.readouterr().out
    # human-readable by default: the per-label lines and the closing line, no JSON
    assert "3-fold cross-validation of 120 stars" in printed and not any(
        line.lstrip().startswith("{") for line in printed.splitlines()
    )
    assert all(f"{name:>10}  bias" in printed for name in LABELS)
    # the uncertainties calibrated on the CV residuals: coverage per quintile printed and drawn
    assert "coverage_map.png" in report and (out / "coverage_map.png").stat().st_size > 0
    assert "coverage per quintile" in printed
    # --json: one JSON object and nothing else; --figures: the uncertainty figures
    figs = tmp_path / "figs"
    argv = ["validate", str(spectra), "--labels", *LABELS, "--n-folds", "3", "--bootstrap", "0", "--n-jobs", "1"]
    argv += ["-o", str(out), "--no-progress", "--report-format", "md", "--overwrite", "--json", "--figures", str(figs)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    summary = json.loads(printed[0])
    assert summary["n_folds"] == 3 and summary["n_stars"] == 120
    cov = summary["calibration_coverage_68"]
    assert set(cov) == {"snr", *LABELS} and all(np.shape(v) == (5, len(LABELS)) for v in cov.values())
    # 120 stars, 24 per bin: each bin's coverage is a fraction of 24 stars near 0.68
    assert all(0.3 < np.mean(v) < 0.95 for v in cov.values())
    names = sorted(p.name for p in figs.iterdir())
    assert names == ["coverage_curve.png", "errors_vs_snr.png", "one_to_one.png", "zscores.png"]
    assert sorted(summary["figures"]) == sorted(str(figs / n) for n in names)


@pytest.mark.parametrize("command", ["validate", "catalogue", "clusters", "repeats"])
def test_commands_are_discovered(command, capsys):
    from bayescannon.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: bayescannon " + command in capsys.readouterr().out
