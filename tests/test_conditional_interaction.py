"""Calibration version 7: a label dependence of the width that changes with S/N.

The model error (which dominates at high S/N) may vary with a label in a way the error
model's log-linear floor cannot follow, while the noise part (dominant at low S/N) does not
vary with it at all. The additive width factors then fit the average over S/N: too wide at
low S/N, too narrow at high S/N in the same label region. The smooth width model's
label × noise-fraction terms (chosen by the calibration's own cross-validation) follow it.
"""

from __future__ import annotations

import numpy as np

from bayescannon.bayes.calibration import fit_calibration, interval_inside
from bayescannon.core.conditional import bin_index, quantile_edges, smooth_log_scales
from bayescannon.core.uncertainty import CALIBRATION_VERSION, calibrated_intervals, check_calibrated


def _residuals(rng, n):
    """Residuals with a noise part of known variance (S/N spread over 25×) and a model
    error whose log-variance is quadratic in label a (a factor e⁴ from the middle to the
    edges): not log-linear, so the error model's floor cannot follow it."""
    x = rng.uniform(-0.5, 0.5, (n, 2))
    noise = (0.02 * np.exp(rng.uniform(np.log(0.2), np.log(5.0), n)))[:, None] ** 2 * np.ones((1, 2))
    floor = 0.02**2 * np.exp(16.0 * x[:, [0]] ** 2 - 2.0) * np.ones((1, 2))
    r = rng.standard_normal((n, 2)) * np.sqrt(noise + floor)
    return r, noise, x


def _cells(cal, r, noise, x):
    """68 % coverage in the 5 × 5 cells (quintiles of the noise variance × of label a), label a."""
    inside = interval_inside(cal, r, noise, x, np.zeros(len(r)))[:, 0, 0]
    bs = bin_index(noise[:, 0], quantile_edges(noise[:, 0]))
    ba = bin_index(x[:, 0], quantile_edges(x[:, 0]))
    return np.array([[inside[(bs == i) & (ba == j)].mean() for j in range(5)] for i in range(5)])


def test_width_interaction_with_the_noise_fraction_covers_every_snr_and_label_cell():
    rng = np.random.default_rng(7)
    n_cal, n_test = 4000, 25000
    r, noise, x = _residuals(rng, n_cal)
    rt, noise_t, xt = _residuals(rng, n_test)
    kw = dict(bias=False, mondrian=False, random_state=0)
    cal, _ = fit_calibration(r, noise, np.zeros(n_cal), x, ["a", "b"], **kw)
    assert cal["version"] == CALIBRATION_VERSION == 7
    assert cal["width"]["interaction"][0]  # chosen by the calibration's own cross-validation
    # tolerance: 3 binomial sd of a 1,000-star test cell plus 2 of a 160-star calibration cell
    tol = 3 * np.sqrt(0.68 * 0.32 / (n_test / 25)) + 2 * np.sqrt(0.68 * 0.32 / (n_cal / 25))
    cells = _cells(cal, rt, noise_t, xt)
    assert np.max(np.abs(cells - 0.68)) < tol, (np.round(cells, 3), tol)  # measured 0.048 (tol 0.118)
    # the version-6 additive width model fails the same check: the test can fail
    additive, _ = fit_calibration(r, noise, np.zeros(n_cal), x, ["a", "b"], **kw, interactions=(False,))
    assert not any(additive["width"]["interaction"])
    cells_old = _cells(additive, rt, noise_t, xt)
    # measured 0.157: too narrow at high S/N and too wide at low S/N at the edges of label a
    assert np.max(np.abs(cells_old - 0.68)) > tol, np.round(cells_old, 3)


def test_version_6_additive_width_model_is_still_read_and_gives_the_same_intervals():
    rng = np.random.default_rng(5)
    n = 1500
    r, noise, x = _residuals(rng, n)
    v7, _ = fit_calibration(r, noise, np.zeros(n), x, ["a", "b"], bias=False, random_state=0, interactions=(False,))
    v6 = v7 | {"version": 6, "width": {k: v for k, v in v7["width"].items() if k != "interaction"}}
    u = rng.uniform(0.0, 1.0, (n, 2))
    np.testing.assert_array_equal(smooth_log_scales(v6["width"], x, u), smooth_log_scales(v7["width"], x, u))
    cov = np.zeros((n, 2, 2))
    cov[:, [0, 1], [0, 1]] = noise
    np.testing.assert_array_equal(calibrated_intervals(v6, cov, x, None)[2], calibrated_intervals(v7, cov, x, None)[2])

    class M:
        label_names = ["a", "b"]
        calibration_ = v6

    assert check_calibrated(M)["version"] == 6
