"""The overall interval level by a parametric (Student-t / generalised-normal) fit, with the
guard that falls back to the split-conformal quantile (bayescannon.core.level_scale)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import stats

from bayescannon import CannonModel
from bayescannon.bayes import calibrate
from bayescannon.bayes.calibration import fit_calibration, interval_inside
from bayescannon.core.level_scale import (
    DEFAULT_LEVEL_ESTIMATOR,
    GUARD_SD,
    level_quantile,
    parametric_quantile,
    rescale_quantile_table,
)
from bayescannon.core.uncertainty import conformal_quantiles, interval_factor
from bayescannon.errors import InvalidInputError, ModelFileError

P68 = 0.68
Q68_GAUSS = stats.norm.ppf(0.84)


def _q_sd(n, q, density):
    """sd of the conformal 68 % quantile of |z| on n stars: binomial sd / density of |z| at q."""
    return np.sqrt(P68 * (1 - P68) / n) / density


@pytest.mark.parametrize("family", ["student-t", "parametric"])
def test_parametric_quantile_recovers_gaussian_and_student_t_scales(family):
    rng = np.random.default_rng(3)
    n = 4000
    z = 1.3 * rng.standard_normal(n)
    q, fitted, _ = parametric_quantile(np.abs(z), P68, family)
    true = 1.3 * Q68_GAUSS
    # 4 sd of the conformal quantile (the parametric one is less noisy): 0.054 here
    tol = 4 * _q_sd(n, true, 2 * stats.norm.pdf(Q68_GAUSS) / 1.3)
    assert abs(q - true) < tol, (q, true, tol)
    z = 0.7 * rng.standard_t(3, n)
    q, fitted, shape = parametric_quantile(np.abs(z), P68, family)
    true = 0.7 * stats.t.ppf(0.84, 3)
    tol = 4 * _q_sd(n, true, 2 * stats.t.pdf(true / 0.7, 3) / 0.7)
    assert abs(q - true) < tol, (q, true, tol)
    assert fitted == "student-t" and 2.0 < shape < 5.0  # ν = 3 recovered; the t wins on a t sample


def test_parametric_level_is_less_noisy_than_the_conformal_one_on_gaussian_z():
    rng = np.random.default_rng(4)
    n, reps = 1000, 150
    cov = np.empty((reps, 2))
    for i in range(reps):
        z = np.abs(rng.standard_normal(n))
        qc = conformal_quantiles(z, [P68])[0]
        qt, _ = level_quantile(z, P68, "student-t")
        cov[i] = 2 * stats.norm.cdf([qc, qt]) - 1  # true coverage of each estimate
    sd_c, sd_t = cov.std(axis=0)
    # theory: 0.0148 (binomial) and 2φ(1)/√(2n) = 0.0108 (Gaussian ML); the ratio 0.73 is
    # estimated to ~8 % from 150 repeats
    assert sd_t < 0.9 * sd_c, (sd_t, sd_c)
    # nearly unbiased: the free ν's finite-sample bias (measured -0.004 at n = 500, about -0.002
    # at 1,000-2,000) is a small fraction of the binomial sd
    assert abs(cov[:, 1].mean() - P68) < 0.3 * np.sqrt(P68 * (1 - P68) / n), cov[:, 1].mean()


def test_guard_falls_back_to_conformal_on_bimodal_and_keeps_the_fit_on_gaussian():
    rng = np.random.default_rng(5)
    n = 2000
    bimodal = np.abs(0.5 * rng.standard_normal(n) + rng.choice([-1.2, 1.2], n))
    for est in ("student-t", "parametric"):
        q, rec = level_quantile(bimodal, P68, est)
        assert rec["used"] == "conformal" and q == rec["conformal"]
        assert abs(rec["disagreement_sd"]) > GUARD_SD and rec["parametric"] != q
    q, rec = level_quantile(np.abs(rng.standard_normal(n)), P68, "student-t")
    assert rec["used"] == "student-t" and q == rec["parametric"] and abs(rec["disagreement_sd"]) <= GUARD_SD
    q, rec = level_quantile(bimodal, P68, "conformal")
    assert rec["used"] == "conformal" and rec["parametric"] is None
    with pytest.raises(InvalidInputError, match="level_estimator"):
        level_quantile(bimodal, P68, "gaussian")


def test_generalised_normal_fits_lighter_than_gaussian_z_where_the_student_t_cannot():
    rng = np.random.default_rng(11)
    n = 4000
    a = np.abs(0.6 * rng.standard_normal(n) + rng.uniform(-1.5, 1.5, n))  # platykurtic
    big = np.abs(0.6 * rng.standard_normal(400_000) + rng.uniform(-1.5, 1.5, 400_000))
    sd = np.sqrt(P68 * (1 - P68) / n)
    q, fitted, beta = parametric_quantile(a, P68, "parametric")
    assert fitted == "gennorm" and beta > 2.0  # lighter tails than a Gaussian
    assert abs(np.mean(big <= q) - P68) < 3 * sd  # measured +0.2 sd
    qt, _, nu = parametric_quantile(a, P68, "student-t")
    assert nu > 100 and np.mean(big <= qt) - P68 < -3 * sd  # the t family cannot: measured -3.9 sd


def test_rescaled_quantile_table_moves_the_level_and_keeps_95_and_monotone():
    lv = np.round(np.arange(0.01, 0.9951, 0.01), 2)
    zq = conformal_quantiles(np.abs(np.random.default_rng(6).standard_normal(2000)), lv)
    i68, i95 = np.searchsorted(lv, [0.68, 0.95])
    for c in (0.9, 1.1):
        new = rescale_quantile_table(lv, zq, 0.68, c * zq[i68], upper=0.95)
        assert new[i68] == pytest.approx(c * zq[i68], rel=1e-12)
        np.testing.assert_allclose(new[: i68 + 1], c * zq[: i68 + 1], rtol=1e-12)  # one overall scale below
        np.testing.assert_array_equal(new[i95:], zq[i95:])  # 95 % and above stay split-conformal
        assert np.all(np.diff(new) >= 0)
        between = new[i68 + 1 : i95] / zq[i68 + 1 : i95]
        assert np.all((between - 1) * (c - 1) >= 0) and np.all(np.abs(between - 1) <= abs(c - 1) + 1e-12)


def _residuals(rng, n, kind):
    """Residuals whose width varies with the noise and a label; standardised shape ``kind``."""
    x = rng.uniform(-0.5, 0.5, (n, 2))
    noise = (0.02 * np.exp(rng.uniform(np.log(0.3), np.log(3.0), n)))[:, None] ** 2 * np.ones((1, 2))
    sd = np.sqrt(noise + 0.01**2 * np.exp(2 * x))
    if kind == "gauss":
        e = rng.standard_normal((n, 2))
    elif kind == "t3":
        e = rng.standard_t(3, (n, 2)) / np.sqrt(3.0)
    else:  # two populations: 70 % narrow, 30 % 2.5x wider
        e = rng.standard_normal((n, 2)) * np.where(rng.random((n, 2)) < 0.7, 1.0, 2.5)
    return e * sd, noise, x


@pytest.mark.parametrize("kind", ["gauss", "t3", "mixture"])
def test_student_t_level_covers_fresh_stars_within_binomial_noise(kind):
    rng = np.random.default_rng({"gauss": 7, "t3": 8, "mixture": 9}[kind])
    n_cal, n_test = 2000, 20000
    r, noise, x = _residuals(rng, n_cal, kind)
    cal, _ = fit_calibration(
        r,
        noise,
        np.zeros(n_cal),
        x,
        ["a", "b"],
        bias=False,
        mondrian=False,
        random_state=0,
        level_estimator="student-t",
    )
    rec = cal["level_scale"]
    assert rec["requested"] == "student-t" and len(rec["used"]) == 2
    assert all(u in ("student-t", "conformal") for u in rec["used"])
    rt, noise_t, xt = _residuals(rng, n_test, kind)
    inside = interval_inside(cal, rt, noise_t, xt, np.zeros(n_test))
    # 3 binomial sd of the calibration's own level (2,000 stars) and of the 20,000 test stars
    tol68 = 3 * np.sqrt(P68 * (1 - P68) * (1 / n_cal + 1 / n_test))
    tol95 = 3 * np.sqrt(0.95 * 0.05 * (1 / n_cal + 1 / n_test))
    np.testing.assert_array_less(np.abs(inside[:, 0].mean(axis=0) - P68), tol68)
    np.testing.assert_array_less(np.abs(inside[:, 1].mean(axis=0) - 0.95), tol95)
    # the 68 % interval factor is the chosen level, the 95 % one the split-conformal quantile
    f68 = interval_factor(cal, 0.68)
    chosen = [p if u != "conformal" else c for u, p, c in zip(rec["used"], rec["parametric"], rec["conformal"])]
    np.testing.assert_allclose(f68, chosen, rtol=1e-12)
    if kind == "gauss":
        assert rec["used"] == ["student-t", "student-t"]


def test_calibrate_level_estimator_round_trips_through_the_model_file(trained, tmp_path):
    tr, fitted = trained
    model = copy.deepcopy(fitted)  # the fixture is shared: calibrate a copy
    y = tr.labels(800)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    with pytest.raises(InvalidInputError, match="level_estimator"):
        calibrate(model, flux, ivar, y, n_folds=0, level_estimator="normal")
    cal = calibrate(model, flux, ivar, y, n_folds=0, level_estimator="student-t")
    assert cal["level_scale"]["requested"] == "student-t"
    model.save(tmp_path / "m.nc")
    back = CannonModel.load(tmp_path / "m.nc")
    assert back.calibration_["level_scale"] == cal["level_scale"]
    yt = tr.labels(50)
    ft, it = tr.spectra(yt, model.label_offset_, model.label_scale_)
    a = model.infer(ft, it, uncertainty="calibrated")
    b = back.infer(ft, it, uncertainty="calibrated")
    np.testing.assert_allclose(b["half_width_68"].values, a["half_width_68"].values, rtol=1e-12)
    # a file written before the record existed (no level_scale) still loads and gives the same intervals
    old = copy.deepcopy(model)
    del old.calibration_["level_scale"]
    old.save(tmp_path / "old.nc")
    c = CannonModel.load(tmp_path / "old.nc").infer(ft, it, uncertainty="calibrated")
    np.testing.assert_allclose(c["half_width_68"].values, a["half_width_68"].values, rtol=1e-12)


def test_model_file_refuses_an_edited_level_scale_record():
    from bayescannon.modelfile import _calibration

    names = ["a", "b"]
    rng = np.random.default_rng(10)
    r, noise, x = _residuals(rng, 600, "gauss")
    cal, _ = fit_calibration(r, noise, np.zeros(600), x, names, bias=False, mondrian=False, smooth=False)
    assert _calibration(json.dumps(cal), names, "f.nc")["level_scale"]["used"] == ["conformal", "conformal"]
    for bad in ({"used": ["gaussian", "conformal"]}, {"used": ["conformal"]}, {"conformal": [1.0, None]}):
        edited = cal | {"level_scale": cal["level_scale"] | bad}
        with pytest.raises(ModelFileError, match="level_scale"):
            _calibration(json.dumps(edited), names, "f.nc")


def test_calibrate_cli_level_estimator_is_recorded(tmp_path, capsys):
    from bayescannon.cli import main

    train, held = tmp_path / "train.nc", tmp_path / "held.nc"
    assert main(["simulate", "-o", str(train), "-n", "150", "--seed", "3"]) == 0
    assert main(["simulate", "-o", str(held), "-n", "300", "--seed", "4"]) == 0
    model = tmp_path / "model.nc"
    assert main(["train", str(train), "-o", str(model), "--labels", "TEFF", "LOGG", "FE_H", "--no-progress"]) == 0
    out_t = tmp_path / "t.nc"
    assert main(["calibrate", str(model), str(held), "--level-estimator", "student-t", "-o", str(out_t)]) == 0
    assert "68 % level (student-t, guard 2 binomial sd): TEFF " in capsys.readouterr().out
    rec = CannonModel.load(out_t).calibration_["level_scale"]
    assert rec["requested"] == "student-t" and len(rec["used"]) == 3
    with pytest.raises(SystemExit):
        main(["calibrate", str(model), str(held), "--level-estimator", "gaussian", "-o", str(tmp_path / "x.nc")])
    # the default (the library's DEFAULT_LEVEL_ESTIMATOR, split-conformal): no line, nothing else changes
    from bayescannon.cli import build_parser

    assert build_parser().parse_args(["calibrate", "m.nc", "s.nc"]).level_estimator == DEFAULT_LEVEL_ESTIMATOR
