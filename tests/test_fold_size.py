"""Fold-size correction of cross-validated calibration residuals (calibration version 6):
residual variance A + B/m in the training-set size m, extrapolated to the full training set."""

import numpy as np

from bayescannon.bayes.calibration import fit_calibration, interval_inside
from bayescannon.core.conditional import fit_fold_size_correction, fold_size_lever
from bayescannon.core.uncertainty import CALIBRATION_VERSION, calibrated_intervals, check_calibrated

N_FULL = 4000
M1, M2 = 0.8 * N_FULL, 0.5 * N_FULL  # 5-fold and 2-fold training sizes


def _size_effect(rng, n, b):
    """Paired held-out residuals of n stars from models on M1 and M2 stars and new residuals
    of the full model, for two labels: noise (an S/N range of 10) plus a model error whose
    variance is ``f (1 + b/m)`` — label a with a training-size effect ``b``, label b without.

    Returns r1, r2, r_full, noise variance, the model-error variance at M1."""
    noise = (0.02 * np.exp(rng.uniform(0.0, np.log(10.0), (n, 1)))) ** 2 * np.ones((1, 2))
    f = 0.03**2 * np.exp(rng.uniform(-0.5, 0.5, (n, 2)))  # model error varies over label space
    bb = np.array([b, 0.0])
    common = np.sqrt(noise + f) * rng.standard_normal((n, 2))  # what does not depend on m (shared by r1, r2)
    r1 = common + np.sqrt(f * bb / M1) * rng.standard_normal((n, 2))
    r2 = common + np.sqrt(f * bb / M2) * rng.standard_normal((n, 2))
    full = np.sqrt(noise + f * (1 + bb / N_FULL)) * rng.standard_normal((n, 2))
    return r1, r2, full, noise, f * (1 + bb / M1)


def test_lever_of_five_and_two_folds_is_one_third():
    # 1/m1 − 1/N = 0.25/N, 1/m2 − 1/m1 = 0.75/N
    assert abs(fold_size_lever((M1, M2, N_FULL)) - 1.0 / 3.0) < 1e-12


def test_correction_recovers_the_full_model_variance_and_leaves_a_flat_label_alone():
    rng = np.random.default_rng(5)
    b = 2000.0  # model-error variance at M1 = 3,200 stars is 1.625 f, at N = 4,000: 1.5 f (a 8 % sd effect at high S/N)
    r1, r2, _, noise, floor = _size_effect(rng, N_FULL, b)
    var = noise + floor  # the error model fitted on r1 (exact here)
    rec, g = fit_fold_size_correction(r1, r2, var, floor, noise / var, (M1, M2, N_FULL), ["a", "b"])
    assert rec["significant"] == [True, False]
    # label b: no size effect, the gate leaves the factor at exactly 1
    assert np.all(g[:, 1] == 1.0)
    assert rec["median_factor"][1] == 1.0
    # label a: κ estimates E[r2² − r1²]/f = b (1/M2 − 1/M1) within its bootstrap sd
    kappa_true = b * (1.0 / M2 - 1.0 / M1)
    assert abs(rec["kappa"][0] - kappa_true) < 3.0 * rec["kappa_sd"][0], rec
    # the extrapolated variance of every star matches the full model's within what the noise of κ allows
    true_var = noise[:, 0] + floor[:, 0] / (1 + b / M1) * (1 + b / N_FULL)
    err = np.abs(g[:, 0] * var[:, 0] - true_var)
    assert np.all(err <= 3.0 * rec["lever"] * rec["kappa_sd"][0] * floor[:, 0] + 1e-15)
    # the correction lives where the model error dominates (high S/N) and never goes below the noise
    hi_sn = noise[:, 0] < np.quantile(noise[:, 0], 0.2)
    lo_sn = noise[:, 0] > np.quantile(noise[:, 0], 0.8)
    assert np.mean(g[hi_sn, 0]) < np.mean(g[lo_sn, 0]) < 1.0
    assert np.all(g[:, 0] * var[:, 0] >= noise[:, 0] - 1e-15)
    assert np.all(np.sqrt(g) >= 0.8 - 1e-12)
    assert rec["scale_m2"][0] > rec["scale_m1"][0] > rec["scale_full"][0]


def test_calibration_with_the_correction_covers_the_full_model_residuals():
    """Version 6 end to end: fitted on the M1 residuals, the uncorrected calibration
    over-covers the full model's residuals at high S/N; the corrected one covers 0.68 there
    (tolerance: 3 binomial sd of the test bin plus 2 of the 800-star calibration bin)."""
    rng = np.random.default_rng(11)
    b = 4000.0
    n = N_FULL
    r1, r2, _, noise, _ = _size_effect(rng, n, b)
    _, _, full, noise_t, _ = _size_effect(rng, n, b)
    x = rng.uniform(-0.5, 0.5, (n, 2))
    xt = rng.uniform(-0.5, 0.5, (n, 2))
    kw = dict(bias=False, random_state=0)
    plain, _ = fit_calibration(r1, noise, np.zeros(n), x, ["a", "b"], **kw)
    fs = {"residuals": r2, "sizes": (M1, M2, N_FULL)}
    cal, _ = fit_calibration(r1, noise, np.zeros(n), x, ["a", "b"], fold_size=fs, **kw)
    assert cal["version"] == CALIBRATION_VERSION == 7
    assert cal["fold_size"]["significant"] == [True, False]
    assert plain["fold_size"] is None
    hi_sn = noise_t[:, 0] < np.quantile(noise_t[:, 0], 0.2)
    cov_plain = interval_inside(plain, full, noise_t, xt, np.zeros(n))[hi_sn, 0, 0].mean()
    cov_corr = interval_inside(cal, full, noise_t, xt, np.zeros(n))[hi_sn, 0, 0].mean()
    tol = 3 * np.sqrt(0.68 * 0.32 / hi_sn.sum()) + 2 * np.sqrt(0.68 * 0.32 / 800)
    assert abs(cov_corr - 0.68) < tol, (cov_plain, cov_corr)
    assert cov_plain - cov_corr > 0.02, (cov_plain, cov_corr)  # the effect is real: plain over-covers
    # label b (no size effect) gets the same intervals as without the correction
    cov = np.zeros((n, 2, 2))
    cov[:, [0, 1], [0, 1]] = noise_t
    np.testing.assert_allclose(
        calibrated_intervals(cal, cov, xt, None)[2][:, 1], calibrated_intervals(plain, cov, xt, None)[2][:, 1]
    )


def test_version_5_calibration_is_still_read_and_gives_the_same_intervals():
    rng = np.random.default_rng(3)
    n = 800
    r1, _, _, noise, _ = _size_effect(rng, n, 0.0)
    x = rng.uniform(-0.5, 0.5, (n, 2))
    v6, _ = fit_calibration(r1, noise, np.zeros(n), x, ["a", "b"], random_state=0, bias=False)
    v5 = {k: v for k, v in v6.items() if k != "fold_size"} | {"version": 5}
    cov = np.zeros((n, 2, 2))
    cov[:, [0, 1], [0, 1]] = noise
    np.testing.assert_array_equal(calibrated_intervals(v5, cov, x, None)[2], calibrated_intervals(v6, cov, x, None)[2])

    class M:
        label_names = ["a", "b"]
        calibration_ = v5

    assert check_calibrated(M)["version"] == 5


def test_calibrate_cli_fold_size_correction_is_recorded_and_off_by_default(tmp_path, capsys):
    from bayescannon.cli import main
    from bayescannon.model import CannonModel

    train = tmp_path / "train.nc"
    assert main(["simulate", "-o", str(train), "-n", "150", "--seed", "3"]) == 0
    model = tmp_path / "model.nc"
    argv = ["train", str(train), "-o", str(model), "--labels", "TEFF", "LOGG", "FE_H", "--no-progress"]
    assert main(argv) == 0
    out_on, out_off = tmp_path / "on.nc", tmp_path / "off.nc"
    assert (
        main(["calibrate", str(model), str(train), "--n-folds", "3", "--fold-size-correction", "-o", str(out_on)]) == 0
    )
    text = capsys.readouterr().out
    assert "fold-size correction (rms r/sd on 100 and 75 stars -> 150" in text
    fs = CannonModel.load(out_on).calibration_["fold_size"]
    assert fs["sizes"] == [100.0, 75.0, 150.0] and abs(fs["lever"] - 1.0) < 1e-12  # (1/100 − 1/150) / (1/75 − 1/100)
    assert len(fs["significant"]) == 3 and all(0.8 <= f <= 1.0 for f in fs["median_factor"])
    argv = ["calibrate", str(model), str(train), "--n-folds", "3", "--no-fold-size-correction", "-o", str(out_off)]
    assert main(argv) == 0
    cal = CannonModel.load(out_off).calibration_
    assert cal["version"] == CALIBRATION_VERSION and cal["fold_size"] is None
    assert "fold-size correction" not in capsys.readouterr().out
