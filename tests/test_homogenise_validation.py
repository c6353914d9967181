"""The pair validation's expected scatter (issue 13: "pair scatter after calibration below
the quadrature sum of the two surveys' errors × 1.1").

The scatter of a pair is a robust one (1.4826 MAD) of differences whose widths differ from
star to star. Its expectation under the stated errors is the MAD of that scale mixture
(:func:`~bayescannon.homogenise.validation.implied_robust_scatter`), not the median of the
per-star quadrature sums, which is smaller when the widths spread over a range of S/N: on the
six-survey mock (LAMOST-LAMOST_MRS [Fe/H], both surveys' noise ∝ 1 + 30/SNR from the same
magnitudes) exactly normal differences of the stated widths have 1.074 × that median.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import optimize, special, stats

from bayescannon.homogenise import robust_scatter
from bayescannon.homogenise.validation import implied_robust_scatter, pair_validation


def test_implied_robust_scatter_exact_cases():
    # equal widths: the width itself; NaN and non-positive widths ignored; none left: NaN
    assert implied_robust_scatter(np.full(7, 0.3)) == pytest.approx(0.3, rel=1e-9)
    assert implied_robust_scatter([0.3, np.nan, 0.0, 0.3]) == pytest.approx(0.3, rel=1e-9)
    assert np.isnan(implied_robust_scatter([np.nan, -1.0]))
    # two equal groups of widths 1 and 3: the median m of |d| solves
    # erf(m / sqrt 2) + erf(m / (3 sqrt 2)) = 1 (checked by brentq, independently)
    m = optimize.brentq(lambda t: special.erf(t / np.sqrt(2)) + special.erf(t / (3 * np.sqrt(2))) - 1.0, 0, 10)
    assert implied_robust_scatter([1.0, 3.0]) == pytest.approx(m / stats.norm.ppf(0.75), rel=1e-9)


def _pair_data(sig_a, sig_b, rng):
    """Two surveys measuring the same n stars with exact normal errors of the stated widths;
    the calibrated values are the measurements themselves (no training stars)."""
    n = len(sig_a)
    x = rng.normal(0.0, 0.3, n)
    va, vb = x + sig_a * rng.standard_normal(n), x + sig_b * rng.standard_normal(n)
    data = {
        s: SimpleNamespace(value=v[:, None], s1=e[:, None], s2=e[:, None], features=np.zeros((n, 0)))
        for s, v, e in (("A", va, sig_a), ("B", vb, sig_b))
    }
    cal = {"FE_H": {"A": (va, sig_a, sig_a), "B": (vb, sig_b, sig_b)}}
    rows = {"A": np.arange(n), "B": np.arange(n)}
    return pair_validation(data, rows, n, ["FE_H"], cal, {}, [], {})["pairs"][0]


def test_expected_scatter_of_heteroscedastic_pairs_is_the_mad_of_the_mixture():
    # both surveys' noise ∝ 1 + 30/SNR, S/N from a magnitude uniform over 7 mag (the mock's
    # LAMOST and LAMOST_MRS): widths over a factor ~2.8, right-skewed
    rng = np.random.default_rng(3)
    n = 20000
    snr = np.clip(60.0 * 10 ** (-0.2 * (rng.uniform(8, 15, n) - 12.0)), 10, 1000)
    sig_a, sig_b = 0.07 * (1 + 30 / snr) / 1.3, 0.06 * (1 + 30 / snr) / 1.3
    row = _pair_data(sig_a, sig_b, rng)
    # the robust scatter of normal data has a relative standard error 1/sqrt(2 * 0.3675 n)
    # (MAD's efficiency 0.3675): 0.0082 at n = 20,000
    se = 1.0 / np.sqrt(2 * 0.3675 * n)
    ratio = row["SCATTER_CAL"] / row["EXPECTED_CAL"]
    assert abs(ratio - 1.0) < 3 * se, (ratio, se)
    assert row["SCATTER_RAW"] / row["EXPECTED_RAW"] == pytest.approx(ratio)
    # the median of the quadrature sums (the first definition, kept as MEDIAN_ERROR_CAL)
    # under-states it by ~7 %, 8 se here: exact errors read as excess scatter
    assert row["SCATTER_CAL"] / row["MEDIAN_ERROR_CAL"] > 1 + 5 * se
    assert row["EXPECTED_CAL"] / row["MEDIAN_ERROR_CAL"] == pytest.approx(1.07, abs=0.02)
    # and the MAD of the mixture is what a robust scatter of exact draws gives on average
    draws = [robust_scatter(np.hypot(sig_a, sig_b) * rng.standard_normal(n)) for _ in range(20)]
    assert np.mean(draws) == pytest.approx(row["EXPECTED_CAL"], rel=3 * se / np.sqrt(20))
