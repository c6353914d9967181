"""Error calibration from repeat observations, with a known true precision."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from bayescannon import CannonModel
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.validate.repeats import (
    RECIPES,
    _best_visit,
    calibrate_from_repeats,
    compare_errors,
    flux_error_scale,
    precision_model,
    repeat_pairs,
)

NAMES = ["TEFF", "FE_H"]
TRUE_PREC = np.array([[300.0, 30.0, 20.0], [0.25, 40.0, 0.02]])  # a, b, c per label
TRUE_SCALE = np.array([1.8, 0.7])  # true error / formal error


def _repeats(n_stars=700, seed=0):
    """Stars observed 2–4 times at one S/N each; measurement noise precision(S/N)."""
    rng = np.random.default_rng(seed)
    nobs = rng.integers(2, 5, size=n_stars)
    group = np.repeat(np.arange(n_stars), nobs).astype(str)
    snr = np.repeat(np.exp(rng.uniform(np.log(10), np.log(200), n_stars)), nobs)
    truth = np.repeat(rng.normal([4800, -0.3], [300, 0.3], size=(n_stars, 2)), nobs, axis=0)
    sigma = precision_model(snr[:, None], TRUE_PREC[:, 0], TRUE_PREC[:, 1], TRUE_PREC[:, 2])
    labels = truth + rng.normal(size=sigma.shape) * sigma
    formal = sigma / TRUE_SCALE
    return labels, formal, snr, group, truth, sigma


def test_pairs_within_groups_and_skipped_singletons():
    p = repeat_pairs(np.array(["a", "b", "a", "c", "a", "b"]))
    pairs = set(zip(p.i.tolist(), p.j.tolist()))
    assert pairs == {(0, 2), (0, 4), (2, 4), (1, 5)}
    assert list(p.skipped["GROUP"]) == ["c"] and p.skipped["REASON"][0] == "single spectrum"
    with pytest.raises(InsufficientDataError, match="single spectrum"):
        repeat_pairs(["a", "b", "c"])


def test_robust_recipe_recovers_error_scale_and_precision():
    labels, formal, snr, group, truth, sigma = _repeats()
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES, recipe="robust", snr_bins=10, min_pairs=20)
    assert cal.recipe == "robust" and cal.per_measurement and cal.summary.meta["RECIPE"] == "robust"
    n_pairs = len(cal.pairs)
    # z = Δ/sqrt(e_i² + e_j²) ~ N(0, f²): the robust width estimates f to ~1.2 f/sqrt(n)
    np.testing.assert_allclose(cal.scale, TRUE_SCALE, rtol=5 * 1.2 / np.sqrt(n_pairs))
    assert cal.fit_status == ["exponential", "exponential"]
    # equal S/N within a star: width/√2 of the differences is the precision itself
    grid = np.array([20.0, 40.0, 80.0, 140.0])  # inside the range of the bin centres
    true = precision_model(grid[:, None], TRUE_PREC[:, 0], TRUE_PREC[:, 1], TRUE_PREC[:, 2])
    np.testing.assert_allclose(cal.precision(grid), true, rtol=0.2)
    calibrated = cal.apply(formal, snr)
    assert np.array_equal(calibrated, np.fmax(formal * cal.scale, cal.precision(snr)))
    # the calibrated errors cover the true errors as 1σ should
    cover = np.mean(np.abs(labels - truth) < calibrated, axis=0)
    assert np.all(cover > 0.683 - 4 * np.sqrt(0.683 * 0.317 / len(labels)))
    assert set(cal.binned["STATUS"]) == {"ok"}
    assert len(cal.summary) == 2 and list(cal.summary["FIT"]) == cal.fit_status


def _visits(n_stars, seed, scale=(1.0, 1.0), best_snr=None):
    """Stars with 2–4 visits at different S/N (log-uniform 10–150 each); with
    ``best_snr`` one extra visit at that S/N. Formal errors = true σ / ``scale``."""
    rng = np.random.default_rng(seed)
    nobs = rng.integers(2, 5, size=n_stars) - (best_snr is not None)
    group = np.repeat(np.arange(n_stars), nobs)
    snr = np.exp(rng.uniform(np.log(10), np.log(150), group.size))
    if best_snr is not None:
        group = np.concatenate([group, np.arange(n_stars)])
        snr = np.concatenate([snr, np.full(n_stars, float(best_snr))])
    truth = rng.normal([4800, -0.3], [300, 0.3], size=(n_stars, 2))[group]
    sigma = precision_model(snr[:, None], TRUE_PREC[:, 0], TRUE_PREC[:, 1], TRUE_PREC[:, 2])
    labels = truth + rng.normal(size=sigma.shape) * sigma
    return labels, sigma / np.asarray(scale), snr, group.astype(str), truth, sigma


def test_best_visit_of_each_star():
    groups = np.ma.array(["a", "b", "a", "a", "b", "c", "d"], mask=[0, 0, 0, 0, 0, 0, 1])
    snr = np.array([10.0, np.nan, 30.0, 30.0, 5.0, 7.0, 99.0])
    # ties go to the first row; a NaN S/N counts as the lowest; masked rows have none
    assert _best_visit(groups, snr).tolist() == [2, 4, 2, 2, 4, 5, -1]


def test_paper_recipe_scale_is_one_when_errors_are_right():
    labels, formal, snr, group, *_ = _visits(3000, seed=11)
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES)
    assert cal.recipe == "nandakumar2022" and not cal.per_measurement
    # the sample standard deviation of ~10^4 (partly correlated) pairs: sd ~ 1/sqrt(2 n) < 0.01
    np.testing.assert_allclose(cal.scale, 1.0, atol=0.03)
    # and a known mis-scale of the formal errors is recovered, to the same relative precision
    labels, formal, snr, group, *_ = _visits(3000, seed=12, scale=TRUE_SCALE)
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES)
    np.testing.assert_allclose(cal.scale, TRUE_SCALE, rtol=0.03)


def test_paper_recipe_precision_is_best_visit_against_each_other_without_sqrt2():
    labels, formal, snr, group, truth, sigma = _visits(1500, seed=13, best_snr=400.0)
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES, snr_bins=8, min_pairs=20)
    used = np.asarray(cal.pairs["PRECISION_PAIR"])
    assert used.sum() == len(snr) - 1500  # one pair per non-best visit
    assert np.all(np.fmax(*[np.asarray(snr)[cal.pairs[c][used]] for c in ("ROW_1", "ROW_2")]) == 400.0)
    assert cal.fit_status == ["exponential", "exponential"]
    # std(other − best) = sqrt(σ(S/N)² + σ(400)²): no division by √2; the best visit's own
    # (scaled formal) variance is subtracted by default, the paper read literally keeps it
    grid = np.array([15.0, 30.0, 60.0, 120.0])
    p = TRUE_PREC
    expected = np.hypot(precision_model(grid[:, None], *p.T), precision_model(400.0, *p.T)[None, :])
    literal = calibrate_from_repeats(labels, formal, snr, group, NAMES, snr_bins=8, min_pairs=20, subtract_best=False)
    np.testing.assert_allclose(literal.precision(grid), expected, rtol=0.15)
    np.testing.assert_allclose(cal.precision(grid), precision_model(grid[:, None], *p.T), rtol=0.15)
    calibrated = cal.apply(formal, snr)
    cover = np.mean(np.abs(labels - truth) < calibrated, axis=0)
    assert np.all(cover > 0.683 - 4 * np.sqrt(0.683 * 0.317 / len(labels)))


def test_paper_precision_is_sqrt2_wider_than_robust_for_equal_snr_visits():
    labels, formal, snr, group, *_ = _repeats(n_stars=1500, seed=14)
    kw = {"snr_bins": 6, "min_pairs": 20}
    literal = calibrate_from_repeats(labels, formal, snr, group, NAMES, subtract_best=False, **kw)
    paper = calibrate_from_repeats(labels, formal, snr, group, NAMES, **kw)
    robust = calibrate_from_repeats(labels, formal, snr, group, NAMES, recipe="robust", **kw)
    grid = np.array([20.0, 50.0, 120.0])
    np.testing.assert_allclose(literal.precision(grid) / robust.precision(grid), np.sqrt(2.0), rtol=0.2)
    # with the best visit's variance subtracted the floor is one visit's precision again
    np.testing.assert_allclose(paper.precision(grid) / robust.precision(grid), 1.0, rtol=0.2)
    with pytest.raises(InvalidInputError, match="recipe"):
        calibrate_from_repeats(labels, formal, snr, group, NAMES, recipe="paper")


@pytest.mark.parametrize("scale", [(1.0, 1.0), tuple(TRUE_SCALE)])
def test_repeat_calibrated_errors_cover_68_percent_of_the_truth(scale):
    """The calibrated 68 % errors, max(scale × formal, precision(S/N)), cover 0.683 of the
    true labels within binomial noise (visits of similar S/N: the paper's floor read
    literally would be √2 too wide and cover ~0.78)."""
    labels, formal, snr, group, truth, _ = _visits(3000, seed=21, scale=scale)
    n = labels.shape[0]
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES)
    cover = np.mean(np.abs(labels - truth) < cal.apply(formal, snr), axis=0)
    # 4 binomial sigma of n (partly correlated) visits, plus 0.01 for the fitted scale and floor
    tol = 4 * np.sqrt(0.683 * 0.317 / n) + 0.01
    np.testing.assert_allclose(cover, 0.683, atol=tol)
    literal = calibrate_from_repeats(labels, formal, snr, group, NAMES, subtract_best=False)
    assert np.all(np.mean(np.abs(labels - truth) < literal.apply(formal, snr), axis=0) > 0.683 + tol)


def _varying_formal(n_stars, seed, spread=(0.4, 2.5)):
    """Visits as in :func:`_visits`, but each star's errors are precision(S/N) times its own
    factor (log-uniform in ``spread``): at one S/N the formal errors vary from star to
    star, and they are right (true σ = formal)."""
    rng = np.random.default_rng(seed)
    nobs = rng.integers(2, 5, size=n_stars)
    group = np.repeat(np.arange(n_stars), nobs)
    snr = np.exp(rng.uniform(np.log(10), np.log(150), group.size))
    factor = np.exp(rng.uniform(*np.log(spread), size=(n_stars, 2)))[group]
    truth = rng.normal([4800, -0.3], [300, 0.3], size=(n_stars, 2))[group]
    sigma = precision_model(snr[:, None], TRUE_PREC[:, 0], TRUE_PREC[:, 1], TRUE_PREC[:, 2]) * factor
    labels = truth + rng.normal(size=sigma.shape) * sigma
    return labels, sigma, snr, group.astype(str), truth


@pytest.mark.parametrize("recipe", RECIPES)
def test_quadrature_combine_covers_68_percent_when_formal_errors_vary_at_fixed_snr(recipe):
    """The paper's max(scale × formal, precision(S/N)) raises every star below its S/N
    bin's typical error to it: with right formal errors spread 0.4–2.5× at one S/N it
    covers ~0.82 (robust recipe ~0.75). The quadrature floor (excess variance) covers 0.68."""
    labels, formal, snr, group, truth = _varying_formal(3000, seed=31)
    n = labels.shape[0]
    tol = 4 * np.sqrt(0.683 * 0.317 / n) + 0.01  # binomial noise of n visits + fitted scale and floor
    paper = calibrate_from_repeats(labels, formal, snr, group, NAMES, recipe=recipe)
    assert np.all(np.mean(np.abs(labels - truth) < paper.apply(formal, snr), axis=0) > 0.683 + tol)
    quad = calibrate_from_repeats(labels, formal, snr, group, NAMES, recipe=recipe, combine="quadrature")
    assert quad.combine == "quadrature" and quad.summary.meta["COMBINE"] == "quadrature"
    assert quad.binned.meta["COMBINE"] == "quadrature" and paper.summary.meta["COMBINE"] == "max"
    np.testing.assert_array_equal(quad.scale, paper.scale)  # the scale is eq. 6's in both
    calibrated = quad.apply(formal, snr)
    np.testing.assert_allclose(calibrated, np.hypot(formal * quad.scale, quad.precision(snr)))
    cover = np.mean(np.abs(labels - truth) < calibrated, axis=0)
    np.testing.assert_allclose(cover, 0.683, atol=0.03)
    # right formal errors leave (almost) nothing to explain: the median excess floor is a
    # small part of the median error
    assert np.all(np.median(quad.precision(snr), axis=0) < 0.35 * np.median(formal, axis=0))


def test_quadrature_floor_recovers_an_error_term_the_formal_errors_miss():
    labels, sigma, snr, group, truth = _varying_formal(3000, seed=32)
    extra = np.array([40.0, 0.03])  # an S/N-independent error the formal errors do not know
    labels = labels + np.random.default_rng(33).normal(size=labels.shape) * extra
    formal = sigma / 1.5
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES, combine="quadrature")
    cover = np.mean(np.abs(labels - truth) < cal.apply(formal, snr), axis=0)
    np.testing.assert_allclose(cover, 0.683, atol=0.03)
    with pytest.raises(InvalidInputError, match="combine"):
        calibrate_from_repeats(labels, formal, snr, group, NAMES, combine="sum")


def test_too_few_pairs_per_bin_are_reported_not_fitted():
    labels, formal, snr, group, *_ = _repeats(n_stars=40, seed=1)
    cal = calibrate_from_repeats(labels, formal, snr, group, NAMES, snr_bins=[10, 20, 200, 400], min_pairs=10)
    st = cal.binned[cal.binned["LABEL"] == "TEFF"]
    assert list(st["STATUS"] == "ok") == [True, True, False]
    assert st["PRECISION"].mask[2]
    assert cal.fit_status[0].startswith("constant")
    assert not cal.summary["PREC_C"].mask[0]  # a constant fit is a fit


def test_no_precision_fit_is_masked_not_placeholder_numbers():
    labels, formal, snr, group, *_ = _repeats(n_stars=40, seed=1)
    cal = calibrate_from_repeats(
        labels, formal, snr, group, NAMES, snr_bins=[1000, 2000], min_pairs=10
    )  # no visit in the bin
    assert all(status == "no bin with enough pairs" for status in cal.fit_status)
    summary = cal.summary
    for col in ("PREC_A", "PREC_B", "PREC_C"):
        assert summary[col].mask.all(), col
    # calibrated errors then fall back to the scaled formal errors (never a placeholder precision)
    np.testing.assert_allclose(cal.apply(formal, snr), formal * cal.scale[None, :])


def test_compare_errors_ratios_and_coverage():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.05, 0.2, size=(4000, 2))
    b = 2.0 * a
    resid = rng.normal(size=a.shape) * a
    t = compare_errors(a, b, ["X", "Y"], names=("REPEATS", "BAYES"), residuals=resid)
    np.testing.assert_allclose(t["RATIO_BAYES_REPEATS"], 2.0)
    tol = 4 * np.sqrt(0.683 * 0.317 / 4000)
    assert np.all(np.abs(t["COVERAGE_REPEATS"] - 0.683) < tol)
    assert np.all(np.abs(t["COVERAGE_BAYES"] - 0.954) < 4 * np.sqrt(0.954 * 0.046 / 4000))
    assert np.all(np.abs(t["Z_WIDTH_REPEATS"] - 1.0) < 5 * 1.2 / np.sqrt(4000))
    assert np.all(np.abs(t["Z_WIDTH_BAYES"] - 0.5) < 5 * 0.6 / np.sqrt(4000))


def test_flux_error_rescaling_finds_underestimated_flux_errors():
    names = ["TEFF", "LOGG", "FE_H"]
    ref = mock_quadratic_survey(200, 80, names, snr=(60.0, 150.0), scatter=0.002, rng=7)
    model = CannonModel(names).fit(ref)
    theta, s2 = ref["true_theta"].values, ref["true_s2"].values
    test = mock_quadratic_survey(150, 80, names, snr=(60.0, 150.0), theta=theta, s2=s2, rng=8)
    truth = np.column_stack([test[n].values for n in names])
    flux, ivar = test["flux"].values, test["ivar"].values
    ok = flux_error_scale(model, flux, ivar, truth)
    # ivar claims errors 3 times smaller than the noise actually in the spectra
    bad = flux_error_scale(model, flux, ivar * 9.0, truth)
    tol = 4.0 / np.sqrt(2 * 80)  # spread of a reduced χ² with ~80 dof, in the median
    assert abs(ok.factor_with_scatter - 1.0) < tol
    assert abs(bad.factor / 3.0 - ok.factor) < tol
    assert bad.reduced_chi2.shape == (150,)


def test_repeats_command(tmp_path, capsys):
    from bayescannon.cli import main

    labels, formal, snr, group, *_ = _repeats(n_stars=300, seed=4)
    t = Table(
        {
            "ID": [f"spec{i}" for i in range(len(snr))],
            "STAR": group,
            "SNR": snr,
            "TEFF": labels[:, 0],
            "e_TEFF": formal[:, 0],
            "FE_H": labels[:, 1],
            "e_FE_H": formal[:, 1],
            "e_BAYES_TEFF": 1.5 * formal[:, 0],
            "e_BAYES_FE_H": 0.8 * formal[:, 1],
            "FLAGS": np.zeros(len(snr), np.int64),
        }
    )
    t.meta["LABELS"] = "TEFF FE_H"
    path = tmp_path / "cat.fits"
    t.write(path)
    out = tmp_path / "rep"
    assert (
        main(
            [
                "repeats",
                str(path),
                "--group-column",
                "STAR",
                "--compare-prefix",
                "e_BAYES_",
                "-o",
                str(out),
                "--report-format",
                "html",
            ]
        )
        == 0
    )
    summary = Table.read(out / "repeat_calibration.ecsv")
    n_pairs = len(Table.read(out / "repeat_pairs.fits"))
    text = capsys.readouterr().out
    assert "errors x" in text and f"report {out / 'report.html'}" in text
    # --json: the same numbers as one object
    import json

    assert main(["repeats", str(path), "--group-column", "STAR", "-o", str(tmp_path / "rep_json"), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    js = json.loads(lines[0])
    assert js["n_pairs"] == n_pairs and set(js["labels"]) == {"TEFF", "FE_H"}
    np.testing.assert_allclose([js["labels"][n]["ERROR_SCALE"] for n in ("TEFF", "FE_H")], summary["ERROR_SCALE"])
    np.testing.assert_allclose(summary["ERROR_SCALE"], TRUE_SCALE, rtol=5 * 1.2 / np.sqrt(n_pairs))
    cal = Table.read(out / "catalogue_calibrated.fits")
    assert "e_CAL_TEFF" in cal.colnames and np.all(
        cal["e_CAL_TEFF"] >= summary["ERROR_SCALE"][0] * cal["e_TEFF"] - 1e-9
    )
    html = (out / "report.html").read_text()
    assert (out / "error_comparison.ecsv").is_file() and "<img src='precision_vs_snr.png'" in html
    assert html.count("<table>") == 4 and (out / "precision_vs_snr.png").stat().st_size > 0
    # the paper read literally keeps the best visit's variance in the floor: wider errors
    out2 = tmp_path / "rep_literal"
    argv = ["repeats", str(path), "--group-column", "STAR", "--keep-best-variance", "-o", str(out2)]
    assert main([*argv, "--report-format", "md"]) == 0
    literal = Table.read(out2 / "catalogue_calibrated.fits")
    for name in ("TEFF", "FE_H"):
        assert np.mean(literal[f"e_CAL_{name}"]) > 1.05 * np.mean(cal[f"e_CAL_{name}"])
