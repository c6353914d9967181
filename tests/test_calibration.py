"""Calibrated uncertainties: error-model fit (known truth), coverage on held-out emulator
stars, the formal path unchanged, save/load, typed errors."""

from pathlib import Path

import numpy as np
import pytest

from bayescannon import CannonModel
from bayescannon.bayes import calibrate
from bayescannon.core.uncertainty import (
    check_label_errors,
    conformal_quantiles,
    coverage_curve,
    fit_error_model,
    interval_factor,
)
from bayescannon.errors import LabelError, NotCalibratedError, ShapeMismatchError

EMULATOR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "apogee_payne_emulator.npz"
LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
LO = np.array([4300.0, 4.05, -0.7, -0.2])
HI = np.array([6900.0, 4.9, 0.3, 0.4])


def _emulator(n, rng, pixels, snr=(30.0, 250.0)):
    """Emulator spectra (S/N log-uniform) on a subset of pixels, with known labels."""
    d = np.load(EMULATOR)
    w0, b0, w1, b1 = d["w0"][pixels], d["b0"][pixels], d["w1"][pixels], d["b1"][pixels]
    lab = rng.uniform(LO, HI, (n, 4))
    l5 = np.column_stack([lab, np.full(n, 10.0)])
    s = (l5 - d["x_min"]) / (d["x_max"] - d["x_min"]) - 0.5
    h = 1.0 / (1.0 + np.exp(-(np.einsum("pjk,nk->npj", w0, s) + b0)))
    flux0 = np.einsum("pj,npj->np", w1, h) + b1
    sn = np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]), n))
    flux = flux0 + rng.standard_normal(flux0.shape) / sn[:, None]
    ivar = np.broadcast_to((sn**2)[:, None], flux.shape).copy()
    ivar[:, d["bad_pixel_mask"][pixels]] = 0.0
    return flux, ivar, lab


def test_fit_error_model_recovers_known_parameters():
    rng = np.random.default_rng(0)
    n, k = 20000, 2
    x = rng.uniform(-0.5, 0.5, (n, k))
    formal = rng.uniform(0.05, 0.3, (n, k)) ** 2
    a_true, beta_true, dof_true = (
        np.array([1.5, 1.0]),
        np.array([[np.log(0.04), 1.0, 0.0], [np.log(0.01), 0.0, -1.0]]),
        8.0,
    )
    var = a_true**2 * formal + np.exp(np.column_stack([np.ones(n), x]) @ beta_true.T)
    t = rng.standard_t(dof_true, (n, k)) * np.sqrt((dof_true - 2) / dof_true)
    out = fit_error_model(t * np.sqrt(var), formal, np.zeros(n), x, ["a", "b"])
    # ML estimates from 20,000 stars: a to a few per cent, β to ~0.1, ν within a factor ~1.5
    np.testing.assert_allclose(out["noise_scale"], a_true, rtol=0.06)
    np.testing.assert_allclose(np.asarray(out["floor_coefficients"]), beta_true, atol=0.15)
    assert all(5.0 < d < 14.0 for d in out["dof"])


def _biased_residuals(rng, n, formal):
    """Noise plus a deterministic label-dependent bias: lighter-tailed than a Gaussian."""
    x = rng.uniform(-0.5, 0.5, (n, 1))
    bias = 0.25 * np.sign(np.sin(6 * np.pi * x[:, 0]))  # ±0.25, half the stars each way
    return bias + np.sqrt(formal[:, 0]) * rng.standard_normal(n), x


def test_conformal_intervals_cover_lighter_than_gaussian_residuals():
    # residual = ±b + noise is platykurtic: no Student t matches its 68 % and 95 % points
    rng = np.random.default_rng(4)
    n = 8000
    formal = rng.uniform(0.1, 0.2, (n, 1)) ** 2
    r, x = _biased_residuals(rng, n, formal)
    cal = fit_error_model(r[:, None], formal, np.zeros(n), x, ["a"])
    assert cal["dof"][0] > 100  # the t fit goes Gaussian: the best it can do
    # fresh stars from the same population, with the calibrated sd and the conformal factors
    r2, x2 = _biased_residuals(rng, n, formal)
    beta = np.asarray(cal["floor_coefficients"])[0]
    sd = np.sqrt(cal["noise_scale"][0] ** 2 * formal[:, 0] + np.exp(beta[0] + x2 @ beta[1:]))
    for level in (0.68, 0.95):
        tol = 3 * np.sqrt(2 * level * (1 - level) / n)  # calibration and test sets both random
        conformal = np.mean(np.abs(r2) <= interval_factor(cal, level)[0] * sd)
        assert abs(conformal - level) < tol, (level, conformal)
    # and the Gaussian quantiles miss on this population (why the conformal step exists)
    gauss68 = np.mean(np.abs(r2) <= 0.9945 * sd)
    assert abs(gauss68 - 0.68) > 3 * np.sqrt(2 * 0.68 * 0.32 / n), gauss68


def test_conformal_quantiles_rank():
    z = np.arange(1.0, 100.0)  # 99 scores: the 68 % quantile is the ceil(100·0.68) = 68th
    np.testing.assert_array_equal(conformal_quantiles(z[::-1], [0.68, 0.95, 0.999]), [68.0, 95.0, 99.0])


def test_coverage_curve_is_diagonal_for_gaussian_errors():
    rng = np.random.default_rng(1)
    n = 4000
    sd = rng.uniform(0.5, 2.0, (n, 3))
    levels, emp = coverage_curve(sd * rng.standard_normal((n, 3)), sd)
    tol = 4 * np.sqrt(levels * (1 - levels) / n)[:, None]
    assert np.all(np.abs(emp - levels[:, None]) < tol)


@pytest.mark.parametrize(
    "errors, exc",
    [
        (np.zeros((5, 2)), LabelError),
        (-np.ones((5, 2)), LabelError),
        (np.ones((5, 3)), ShapeMismatchError),
        (np.full((5, 2), np.nan), LabelError),
    ],
)
def test_bad_label_errors_raise(errors, exc):
    with pytest.raises(exc):
        check_label_errors(errors, 5, ["a", "b"])


def test_uncalibrated_model_refuses_calibrated_errors():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (40, 2))
    flux = 1 + 0.1 * x @ rng.normal(size=(2, 30)) + 0.01 * rng.standard_normal((40, 30))
    model = CannonModel(["a", "b"]).fit(flux, np.full(flux.shape, 1e4), x)
    with pytest.raises(NotCalibratedError):
        model.infer(flux, np.full(flux.shape, 1e4), uncertainty="calibrated")


@pytest.mark.shared_data
@pytest.mark.skipif(not EMULATOR.exists(), reason="../shared/data (APOGEE emulator) is not available")
def test_calibrated_coverage_on_held_out_emulator_stars(tmp_path):
    rng = np.random.default_rng(3)
    pixels = np.arange(0, 7214, 8)  # 902 pixels keep this test fast
    flux, ivar, lab = _emulator(1200, rng, pixels)
    tf, ti, tl = _emulator(2000, rng, pixels)
    model = CannonModel(LABELS, random_state=0).fit(flux, ivar, lab)
    formal = model.infer(tf, ti)
    calibrate(model, flux, ivar, lab, n_folds=5)
    cal = model.infer(tf, ti, uncertainty="calibrated")
    # the formal path is unchanged by calibrating; the calibrated one keeps the formal errors
    np.testing.assert_array_equal(model.infer(tf, ti)["errors"].values, formal["errors"].values)
    np.testing.assert_array_equal(cal["errors_formal"].values, formal["errors"].values)
    # the calibrated estimate is the maximum-likelihood one minus the learned bias
    np.testing.assert_array_equal(cal["labels_uncorrected"].values, formal["labels"].values)
    np.testing.assert_allclose(cal["labels"].values, formal["labels"].values - cal["label_bias"].values, rtol=1e-12)
    # the bias correction does not make the labels worse (it is chosen by CV): rms within 2 %
    rms_raw = np.sqrt(np.mean((formal["labels"].values - tl) ** 2, axis=0))
    rms_cal = np.sqrt(np.mean((cal["labels"].values - tl) ** 2, axis=0))
    assert np.all(rms_cal <= 1.02 * rms_raw), (rms_cal, rms_raw)
    inside68 = np.abs(cal["labels"].values - tl) <= cal["half_width_68"].values
    inside95 = np.abs(cal["labels"].values - tl) <= cal["half_width_95"].values
    n = len(tl)
    # issue targets (±0.03, ±0.02) plus 2σ of the binomial noise of n held-out stars
    tol68 = 0.03 + 2 * np.sqrt(0.68 * 0.32 / n)
    tol95 = 0.02 + 2 * np.sqrt(0.95 * 0.05 / n)
    assert np.all(np.abs(inside68.mean(0) - 0.68) < tol68), inside68.mean(0)
    assert np.all(np.abs(inside95.mean(0) - 0.95) < tol95), inside95.mean(0)
    # formal errors are far too small on these spectra (model error)
    formal68 = np.abs(formal["labels"].values - tl) <= 0.994 * formal["errors"].values
    assert np.all(formal68.mean(0) < 0.6)
    # the calibration travels with the model file
    model.save(tmp_path / "m.nc")
    back = CannonModel.load(tmp_path / "m.nc")
    np.testing.assert_allclose(
        back.infer(tf, ti, uncertainty="calibrated")["errors"].values, cal["errors"].values, rtol=1e-10
    )


def test_error_model_gradient_matches_finite_differences():
    from scipy.optimize import approx_fprime

    from bayescannon.core.uncertainty import _t_nll

    rng = np.random.default_rng(11)
    n = 200
    r = rng.standard_t(5, n) * 0.1
    nv = rng.uniform(0.001, 0.01, n)
    x1 = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    rv = rng.uniform(0.0, 0.002, n)
    params = np.array([0.3, -5.0, 0.2, -0.1, np.log(4.0)])
    _, grad = _t_nll(r, nv, x1, rv, params)
    numeric = approx_fprime(params, lambda p: _t_nll(r, nv, x1, rv, p)[0], 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-4 * np.abs(numeric).max())


def test_theta_variance_of_the_test_step_equals_the_separate_kappa_path():
    # κ is accumulated in the test step's weighting pass; it must equal calibration.kappa
    from bayescannon.core import scaling
    from bayescannon.core.uncertainty import epsilon
    from bayescannon.core.vectorizer import PolynomialVectorizer

    rng = np.random.default_rng(12)
    vec = PolynomialVectorizer(["a", "b"], 2)
    theta = rng.normal(scale=0.05, size=(60, vec.n_terms))
    theta[:, 0] = 1.0
    x = rng.uniform(-0.5, 0.5, (600, 2))
    sn = rng.uniform(30, 200, (600, 1))
    flux = vec(x) @ theta.T + rng.standard_normal((600, 60)) / sn
    ivar = np.broadcast_to(sn**2, flux.shape).copy()
    ivar[rng.uniform(size=ivar.shape) < 0.1] = 0.0  # missing pixels change each star's κ
    model = CannonModel(["a", "b"]).fit(flux[:400], ivar[:400], x[:400])
    calibrate(model, flux[:400], ivar[:400], x[:400], n_folds=4)
    cal = model.infer(flux[400:], ivar[400:], uncertainty="calibrated", chunk_size=64)
    # ε is evaluated at the maximum-likelihood labels (before the bias correction)
    xs = scaling.scale(cal["labels_uncorrected"].values, model.label_offset_, model.label_scale_)
    want = 1.0 + epsilon(model, xs, ivar[400:])
    assert np.ptp(want) > 0
    np.testing.assert_allclose(cal["theta_variance"].values, want, rtol=1e-10)


# --------------------------------------------------------------------------- conditional calibration
def _injected(rng, n):
    """Held-out residuals with a known region-dependent bias and heteroscedastic noise.

    Two labels (scaled estimates x̂ uniform in ±0.5); bias b(x̂) quadratic/cubic, of the
    size of the noise; noise sd log-uniform over a factor 10 (an S/N range); a
    model-error sd that grows with x̂_a. Returns residuals, formal variances, x̂, bias, noise sd.
    """
    x = rng.uniform(-0.5, 0.5, (n, 2))
    bias = np.column_stack([1.0 * x[:, 0] ** 2 + 0.5 * x[:, 0] * x[:, 1] - 0.08, -0.2 * x[:, 1] + 1.2 * x[:, 0] ** 3])
    noise_sd = 0.02 * np.exp(rng.uniform(0.0, np.log(10.0), (n, 1))) * np.ones((1, 2))
    model_sd = 0.03 * np.exp(x[:, :1] + 0.5) * np.ones((1, 2))
    r = bias + np.sqrt(noise_sd**2 + model_sd**2) * rng.standard_normal((n, 2))
    return r, noise_sd**2, x, bias, noise_sd[:, 0]


def _bins_outside(cal, r, fv, x, by_snr, tol):
    """Per-quintile 68 % coverage of x̂_a, x̂_b and the noise sd; the bins outside 0.68 ± tol."""
    from bayescannon.bayes.calibration import interval_inside
    from bayescannon.core.conditional import binned_coverage

    inside = interval_inside(cal, r, fv, x, np.zeros(len(r)))
    worst = []
    for by in (x[:, 0], x[:, 1], by_snr):
        cov, counts, _, _ = binned_coverage(inside, by)
        assert counts.min() >= 900
        worst.append(np.abs(cov[:, 0, :] - 0.68).max())
    return np.asarray(worst), inside[:, 0].mean(0)


def test_conditional_calibration_recovers_injected_bias_and_covers_every_bin():
    from bayescannon.bayes.calibration import fit_calibration
    from bayescannon.core.conditional import predict_bias

    rng = np.random.default_rng(21)
    n_cal, n_test = 4000, 5000
    r, fv, x, b, _ = _injected(rng, n_cal)
    cal, oof = fit_calibration(r, fv, np.zeros(n_cal), x, ["a", "b"], random_state=0)
    # the learned bias on fresh points vs the injected one: a least-squares fit of p ≤ 10
    # terms to n_cal stars with residual sd σ has an error sd ≈ σ sqrt(p / n_cal); allow 4×
    r2, fv2, x2, b2, nsd2 = _injected(rng, n_test)
    sigma = np.sqrt(np.mean((r - b) ** 2, axis=0))  # sd of the residuals about the bias
    learned = predict_bias(cal["bias"], x2)
    err = np.sqrt(np.mean((learned - b2) ** 2, axis=0))
    assert np.all(err < 4 * sigma * np.sqrt(10 / n_cal)), (err, sigma)
    assert np.all(np.sqrt(np.mean(b2**2, axis=0)) > 5 * err)  # the bias is far larger than its error
    # the cross-fitted bias (used to calibrate the widths) is as close as the final one
    assert np.all(np.sqrt(np.mean((oof - b) ** 2, axis=0)) < 4 * sigma * np.sqrt(10 / n_cal))
    # held-out coverage per quintile of each label and of the noise (S/N): within 3σ of the
    # binomial noise of a 1,000-star bin and of the calibration (≈ 800 stars per bin), 3.5σ
    # because the worst of 30 bins is taken
    tol = 3.5 * np.sqrt(0.68 * 0.32 * (1 / 1000 + 1 / 800))
    worst, overall = _bins_outside(cal, r2 - learned, fv2, x2, nsd2, tol)
    assert np.all(worst < tol), worst
    assert np.all(np.abs(overall - 0.68) < 3 * np.sqrt(0.68 * 0.32 * (1 / n_test + 1 / n_cal))), overall
    # the old behaviour (error model and conformal factors only) covers on average but not per bin
    old, _ = fit_calibration(r, fv, np.zeros(n_cal), x, ["a", "b"], bias=False, mondrian=False)
    worst_old, overall_old = _bins_outside(old, r2, fv2, x2, nsd2, tol)
    assert np.all(np.abs(overall_old - 0.68) < 0.03), overall_old
    assert worst_old.max() > tol, worst_old  # the test above fails for the old calibration


def test_bias_that_changes_sign_along_a_label_is_learned_by_the_spline_terms():
    """A bias oscillating along one label (as a quadratic Cannon's Teff bias does on emulator
    spectra: +38, +9, +53, −39 K per quintile) is beyond a cubic; the piecewise-linear terms
    follow it, the CV picks them, and the corrected intervals cover in every quintile."""
    from bayescannon.bayes.calibration import fit_calibration, interval_inside
    from bayescannon.core.conditional import binned_coverage, fit_bias_model, predict_bias

    rng = np.random.default_rng(31)

    def draw(n):
        x = rng.uniform(-0.5, 0.5, (n, 2))
        sd = 0.05 * np.exp(rng.uniform(0.0, np.log(4.0), (n, 1))) * np.ones((1, 2))
        b = np.column_stack([0.08 * np.sin(3 * np.pi * x[:, 0]), 0.02 * x[:, 1]])
        return b + sd * rng.standard_normal((n, 2)), sd**2, x, b

    n_cal, n_test = 3000, 5000
    r, fv, x, b = draw(n_cal)
    cal, _ = fit_calibration(r, fv, np.zeros(n_cal), x, ["a", "b"], random_state=0)
    assert cal["bias"]["splines"][0]  # chosen by CV for the oscillating label
    r2, fv2, x2, b2 = draw(n_test)
    learned = predict_bias(cal["bias"], x2)
    # a cubic alone leaves an rms of ~0.03 (≈ 0.4 of the median noise sd); the spline fit's
    # error: the wiggle between 9 knots (the sine's curvature over a knot spacing, ≤ 0.01)
    # plus the fit noise ≈ sd sqrt(p / n) ≈ 0.003
    only_poly, _ = fit_bias_model(r, x, 1.0 / fv, ["a", "b"], splines=(False,))
    err_poly = np.sqrt(np.mean((predict_bias(only_poly, x2) - b2)[:, 0] ** 2))
    err = np.sqrt(np.mean((learned - b2)[:, 0] ** 2))
    assert err < 0.015 < err_poly, (err, err_poly)
    inside = interval_inside(cal, r2 - learned, fv2, x2, np.zeros(n_test))
    cov, counts, _, _ = binned_coverage(inside, x2[:, 0])
    assert counts.min() >= 900
    # per-quintile 68 % coverage within 3.5σ of the binomial noise of the test bin and of the
    # calibration bin (600 stars), the worst of 10 cells
    tol = 3.5 * np.sqrt(0.68 * 0.32 * (1 / 1000 + 1 / 600))
    assert np.all(np.abs(cov[:, 0, :] - 0.68) < tol), cov[:, 0, :]


def test_mondrian_effects_shrink_to_zero_without_signal_and_keep_a_real_one():
    """Empirical-Bayes shrinkage: with homoscedastic residuals the raked effects are pulled
    well below their raw sampling noise; a real ×1.6 width in one quintile is kept."""
    from bayescannon.core.conditional import fit_mondrian_scales

    rng = np.random.default_rng(32)
    n = 2500
    x = rng.uniform(-0.5, 0.5, (n, 2))
    u = rng.uniform(0.0, 1.0, (n, 2))
    z = np.abs(rng.standard_normal((n, 2)))
    flat = np.asarray(fit_mondrian_scales(z, x, u, ["a", "b"])["log_scales"])
    # raw noise of a bin's log 68 % quantile from 500 stars: sqrt(0.68·0.32/500)/(q f(q)) ≈ 0.043
    assert np.sqrt(np.mean(flat**2)) < 0.5 * 0.043, flat
    z[:, 0] *= np.where(x[:, 1] > 0.3, 1.6, 1.0)  # the top quintile of x_b is 1.6× wider
    eff = np.asarray(fit_mondrian_scales(z, x, u, ["a", "b"])["log_scales"])[0, 1]  # label a, partition x_b
    top = eff[4] - np.mean(eff[:4])
    assert abs(top - np.log(1.6)) < 4 * 0.043 * np.sqrt(1.25), eff


def test_calibration_version_3_without_spline_terms_is_read():
    from bayescannon.bayes.calibration import fit_calibration
    from bayescannon.core.conditional import predict_bias
    from bayescannon.core.uncertainty import CALIBRATION_VERSION, check_calibrated

    rng = np.random.default_rng(33)
    r, fv, x, _, _ = _injected(rng, 1500)
    cal, _ = fit_calibration(r, fv, np.zeros(1500), x, ["a", "b"], random_state=0)
    assert cal["version"] == CALIBRATION_VERSION == 7
    # a version-3 bias has no "splines"/"knots": the same polynomial coefficients give the same bias
    poly = {"degree": [2, 1], "coefficients": [[0.1, 0.2, 0.0, 0.3, 0.0, 0.0], [0.05, 0.0, -0.2]]}
    want = np.column_stack([0.1 + 0.2 * x[:, 0] + 0.3 * x[:, 0] ** 2, 0.05 - 0.2 * x[:, 1]])
    np.testing.assert_allclose(predict_bias(poly, x), want, atol=1e-12)

    class M:
        label_names = ["a", "b"]
        calibration_ = cal | {"version": 3, "bias": poly}

    assert check_calibrated(M)["version"] == 3


def test_calibration_version_2_is_read_and_unknown_versions_are_refused():
    from bayescannon.bayes.calibration import fit_calibration
    from bayescannon.core.uncertainty import calibrated_intervals, check_calibrated

    rng = np.random.default_rng(22)
    r, fv, x, _, _ = _injected(rng, 1500)
    old, _ = fit_calibration(r, fv, np.zeros(1500), x, ["a", "b"], bias=False, mondrian=False)
    v2 = {k: v for k, v in old.items() if k not in ("bias", "mondrian")} | {"version": 2}
    cov = np.zeros((1500, 2, 2))
    cov[:, [0, 1], [0, 1]] = fv
    # a version-2 calibration gives the same intervals as before: no bias, unit factors
    np.testing.assert_allclose(calibrated_intervals(v2, cov, x, None)[3], calibrated_intervals(old, cov, x, None)[3])

    class M:
        label_names = ["a", "b"]
        calibration_ = v2

    assert check_calibrated(M)["version"] == 2
    M.calibration_ = v2 | {"version": 99}
    with pytest.raises(NotCalibratedError, match="version 99"):
        check_calibrated(M)


def test_empty_coverage_bins_are_stored_as_json_null_and_read_back_as_nan(capsys):
    import json

    from bayescannon.bayes.calibration import binned_coverage_arrays, coverage_by_bin
    from bayescannon.commands.calibrate import print_binned_coverage

    rng = np.random.default_rng(23)
    n = 200
    inside = rng.random((n, 2, 2)) < 0.68
    y = rng.normal(size=(n, 2))
    snr = np.full(n, 50.0)  # one S/N value: every star in the top bin, four bins empty
    cb = coverage_by_bin(inside, snr, y, ["a", "b"])
    text = json.dumps(cb, allow_nan=False)  # raises on NaN: the record is standard JSON
    back = json.loads(text)
    d = binned_coverage_arrays(back["snr"])
    assert d["n"].tolist() == [0, 0, 0, 0, n]
    assert np.all(np.isnan(d["68"][:4])) and np.all(np.isnan(d["lo"][:4]))
    np.testing.assert_allclose(d["68"][4], inside[:, 0].mean(axis=0))
    np.testing.assert_allclose(binned_coverage_arrays(back["a"])["95"], np.asarray(cb["a"]["95"]))
    print_binned_coverage(back, ["a", "b"])  # NaN bins print as nan, not a TypeError
    assert "nan" in capsys.readouterr().out


# --------------------------------------------------------------------------- smooth width model (version 5)
def _curved_widths(rng, n):
    """Residuals whose width is *not* log-linear in the labels: U-shaped in x̂_b (×2.2 at
    the edges), a noise scale that grows towards low S/N beyond the formal error, and a
    cubic bias. Returns residuals, formal variances, x̂, bias, noise sd."""
    x = rng.uniform(-0.5, 0.5, (n, 2))
    bias = np.column_stack([0.6 * x[:, 0] ** 3 - 0.2 * x[:, 1], 0.5 * x[:, 0] * x[:, 1] + 0.05])
    noise_sd = 0.02 * np.exp(rng.uniform(0.0, np.log(15.0), (n, 1))) * np.ones((1, 2))
    snr_excess = 1.0 + 0.6 * (noise_sd / 0.3) ** 2  # the formal error understates low-S/N noise
    model_sd = 0.04 * np.exp(3.2 * x[:, 1:2] ** 2) * np.ones((1, 2))
    sd = np.sqrt(snr_excess * noise_sd**2 + model_sd**2)
    return bias + sd * rng.standard_normal((n, 2)), noise_sd**2, x, bias, noise_sd[:, 0]


def test_smooth_width_model_covers_every_bin_of_curved_label_and_snr_dependent_widths():
    """Known label- and S/N-dependent width and bias: the calibrated 68 % intervals cover
    0.68 ± tol in every quintile of each label and of the noise, tol from binomial noise;
    the widths-only (version-2) calibration on the same residuals does not."""
    from bayescannon.bayes.calibration import fit_calibration
    from bayescannon.core.conditional import predict_bias

    rng = np.random.default_rng(41)
    n_cal, n_test = 4000, 6000
    r, fv, x, _, _ = _curved_widths(rng, n_cal)
    cal, _ = fit_calibration(r, fv, np.zeros(n_cal), x, ["a", "b"], random_state=0)
    assert cal["width"]["degree"][0] >= 2 and cal["width"]["degree"][1] >= 2  # the curvature is seen by CV
    r2, fv2, x2, _, nsd2 = _curved_widths(rng, n_test)
    # per bin: binomial noise of the 1,200-star test bin and of a factor fitted on the 800
    # calibration stars of the bin (an upper bound: the smooth model pools all stars); 3.5σ
    # because the worst of 30 bins is taken
    tol = 3.5 * np.sqrt(0.68 * 0.32 * (1 / 1200 + 1 / 800))
    worst, overall = _bins_outside(cal, r2 - predict_bias(cal["bias"], x2), fv2, x2, nsd2, tol)
    assert np.all(worst < tol), (worst, tol)
    assert np.all(np.abs(overall - 0.68) < 3 * np.sqrt(0.68 * 0.32 * (1 / n_test + 1 / n_cal))), overall
    old, _ = fit_calibration(r, fv, np.zeros(n_cal), x, ["a", "b"], bias=False, mondrian=False, smooth=False)
    worst_old, _ = _bins_outside(old, r2, fv2, x2, nsd2, tol)
    assert worst_old.max() > tol, worst_old  # the check above can fail


def test_fit_smooth_width_recovers_a_known_log_width_and_stays_flat_without_one():
    from bayescannon.core.conditional import fit_smooth_width, smooth_log_scales

    rng = np.random.default_rng(42)
    n = 4000
    x = rng.uniform(-0.5, 0.5, (n, 2))
    u = rng.uniform(0.0, 1.0, (n, 2))
    true = np.column_stack([0.8 * x[:, 0] + 2.0 * x[:, 1] ** 2, 0.5 * u[:, 1] - 0.25])
    z = np.abs(rng.standard_normal((n, 2))) * np.exp(true)
    params = fit_smooth_width(z, x, u, ["a", "b"])
    got = smooth_log_scales(params, x, u)
    # the model has unit geometric mean on the calibration stars: compare centred log widths;
    # ML log-sd error of p ≈ 10 coefficients from n stars: sqrt(p / (2n)) ≈ 0.035 rms; allow 2×
    err = np.sqrt(np.mean(((got - got.mean(0)) - (true - true.mean(0))) ** 2, axis=0))
    assert np.all(err < 0.07), err
    assert np.all(np.std(true, axis=0) > 4 * err)
    flat = smooth_log_scales(fit_smooth_width(np.abs(rng.standard_normal((n, 2))), x, u, ["a", "b"]), x, u)
    # without structure CV keeps no (or a negligible) factor: well below the ~0.02 rms noise
    # of a single 800-star bin's log-sd
    assert np.sqrt(np.mean(flat**2)) < 0.02, np.sqrt(np.mean(flat**2))


def test_calibration_version_4_without_a_smooth_width_model_is_read():
    from bayescannon.bayes.calibration import fit_calibration
    from bayescannon.core.uncertainty import calibrated_intervals, check_calibrated

    rng = np.random.default_rng(43)
    r, fv, x, _, _ = _injected(rng, 1500)
    v5, _ = fit_calibration(r, fv, np.zeros(1500), x, ["a", "b"], random_state=0)
    v4 = {k: v for k, v in v5.items() if k != "width"} | {"version": 4}
    cov = np.zeros((1500, 2, 2))
    cov[:, [0, 1], [0, 1]] = fv
    # a version-4 calibration: the Mondrian factors alone (floored at √u), as that release gave
    from bayescannon.core.conditional import mondrian_scales

    var = np.einsum("nkk->nk", calibrated_intervals(v5 | {"mondrian": None, "width": None}, cov, x, None)[0])
    floor = np.exp(np.column_stack([np.ones(1500), x]) @ np.asarray(v4["floor_coefficients"]).T)
    s = mondrian_scales(v4["mondrian"], x, 1.0 - floor / var)
    np.testing.assert_allclose(calibrated_intervals(v4, cov, x, None)[1], np.sqrt(var) * s, rtol=1e-12)

    class M:
        label_names = ["a", "b"]
        calibration_ = v4

    assert check_calibrated(M)["version"] == 4


def test_repeated_residual_rows_of_one_star_share_a_cross_validation_fold():
    from bayescannon.core.conditional import _fold_of

    groups = np.tile(np.arange(500), 3)  # three residual draws of each of 500 stars
    fold = _fold_of(groups, 5, np.random.default_rng(0))
    per_star = fold.reshape(3, 500)
    assert np.all(per_star == per_star[0])  # a star's rows are never on both sides of a split
    assert np.bincount(per_star[0], minlength=5).tolist() == [100] * 5


def test_a_held_out_calibration_set_that_is_the_training_set_is_refused(caplog):
    """n_folds=0 on the training stars would calibrate on in-sample residuals (too small):
    refused when most calibration stars are training stars, a warning naming the rows when a
    few are; real held-out stars pass silently."""
    import logging

    from bayescannon.errors import InvalidInputError
    from bayescannon.simulate import simulate_survey

    names = ["TEFF", "LOGG", "FE_H"]
    ds = simulate_survey(260, rng=5)
    flux, ivar = ds["flux"].values, ds["ivar"].values
    lab = np.column_stack([ds[n].values for n in names])
    model = CannonModel(names, 2).fit(flux[:160], ivar[:160], lab[:160])
    with pytest.raises(InvalidInputError, match=r"160 of 160 calibration stars .* training stars"):
        calibrate(model, flux[:160], ivar[:160], lab[:160], n_folds=0)
    assert model.calibration_ is None
    # three training stars among 100 held-out ones: calibrated, with a warning naming them
    rows = np.r_[np.arange(160, 257), [0, 1, 2]]
    with caplog.at_level(logging.WARNING, logger="bayescannon.bayes.calibration"):
        calibrate(model, flux[rows], ivar[rows], lab[rows], n_folds=0)
    assert model.calibration_ is not None
    assert any(
        "3 of 100 calibration stars" in r.getMessage() and "rows 97, 98, 99" in r.getMessage() for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bayescannon.bayes.calibration"):
        calibrate(model, flux[160:], ivar[160:], lab[160:], n_folds=0)
    assert not any("training stars" in r.getMessage() for r in caplog.records)
    # cross-validation of the training set is the right way to use the training stars
    calibrate(model, flux[:160], ivar[:160], lab[:160], n_folds=3)
    assert model.calibration_["source"] == "cv-3"
