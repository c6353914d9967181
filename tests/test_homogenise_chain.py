"""Chain-correlated calibration errors (issue 13): surveys calibrated through a chain
(A → B → reference) share the error of B's offset model; the combination must see it."""

from __future__ import annotations

import numpy as np
import pytest

from bayescannon.errors import InvalidInputError
from bayescannon.homogenise.splitnormal import combine_chained, combine_split_normal


def _chain_mock(n=20000, seed=0):
    """x ~ N(0, 1); B on the reference through its link (error d_B, tau_B), A chained
    through B (its own link d_A plus B's d_B), C direct and independent."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    sig = {"B": 0.3, "A": 0.3, "C": 0.6}
    tau = {"B": 0.5, "A": 0.2, "C": 0.1}
    d = {s: rng.normal(0, t, n) for s, t in tau.items()}
    y = {
        "B": x + d["B"] + rng.normal(0, sig["B"], n),
        "A": x + d["B"] + d["A"] + rng.normal(0, sig["A"], n),
        "C": x + d["C"] + rng.normal(0, sig["C"], n),
    }
    mu = np.column_stack([y[s] for s in "BAC"])
    return x, mu, sig, tau


def _cover(x, iv):
    return float(np.mean((x >= iv[0]) & (x <= iv[1])))


def test_chained_combination_covers_where_the_independent_one_does_not():
    x, mu, sig, tau = _chain_mock()
    n = len(x)
    # today's treatment: each measurement with its accumulated tau, combined as independent
    acc = {"B": np.hypot(sig["B"], tau["B"]), "A": np.sqrt(sig["A"] ** 2 + tau["A"] ** 2 + tau["B"] ** 2)}
    acc["C"] = np.hypot(sig["C"], tau["C"])
    s_naive = np.broadcast_to([acc[s] for s in "BAC"], mu.shape)
    _, iv_naive, _, _ = combine_split_normal(mu, s_naive, s_naive)
    s_noise = np.broadcast_to([sig[s] for s in "BAC"], mu.shape)
    _, iv, count, chi2 = combine_chained(mu, s_noise, s_noise, np.array([tau[s] for s in "BAC"]), [-1, 0, -1])
    for level, k in ((0.6827, 0), (0.95, 1)):  # 95 %: ΔNLL = 1.92
        se = np.sqrt(level * (1 - level) / n)
        assert abs(_cover(x, iv[k]) - level) < 3 * se, (level, _cover(x, iv[k]))
        assert _cover(x, iv_naive[k]) < level - 10 * se, (level, _cover(x, iv_naive[k]))
    assert (count == 3).all()
    # the summed node chi2 has N - 1 = 2 degrees of freedom: mean 2 within its sampling error
    assert abs(np.mean(chi2) - 2.0) < 3 * 2.0 / np.sqrt(n)


def test_chained_combination_is_generalised_least_squares_for_normal_errors():
    x, mu, sig, tau = _chain_mock(n=200)
    cov = np.diag([sig[s] ** 2 for s in "BAC"])
    cov += np.array([[tau["B"] ** 2, tau["B"] ** 2, 0], [tau["B"] ** 2, tau["B"] ** 2 + tau["A"] ** 2, 0], [0, 0, 0]])
    cov[2, 2] += tau["C"] ** 2
    ci = np.linalg.inv(cov)
    w = ci.sum(axis=1) / ci.sum()
    s = np.broadcast_to([sig[k] for k in "BAC"], mu.shape)
    v, iv, _, _ = combine_chained(mu, s, s, np.array([tau[k] for k in "BAC"]), [-1, 0, -1])
    np.testing.assert_allclose(v, mu @ w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(iv[0][1] - v, 1 / np.sqrt(ci.sum()), rtol=1e-9)
    np.testing.assert_allclose(v - iv[0][0], 1 / np.sqrt(ci.sum()), rtol=1e-9)


def test_without_a_chain_it_is_the_independent_combination_with_tau_in_quadrature():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(500, 3))
    mu[rng.random((500, 3)) < 0.3] = np.nan
    s1, s2 = rng.uniform(0.1, 0.5, (2, 500, 3))
    tau = rng.uniform(0, 0.3, (500, 3))
    v, iv, n, chi2 = combine_chained(mu, s1, s2, tau, [-1, -1, -1])
    v0, iv0, n0, chi20 = combine_split_normal(mu, np.hypot(s1, tau), np.hypot(s2, tau))
    np.testing.assert_allclose(v, v0, atol=1e-12)
    np.testing.assert_allclose(iv[1][1], iv0[1][1], atol=1e-9)
    np.testing.assert_array_equal(n, n0)
    # a star that only the chained survey measured passes up unchanged (plus the link errors)
    mu2 = np.array([[np.nan, 1.0]])
    v2, iv2, n2, _ = combine_chained(mu2, [[0.2, 0.3]], [[0.2, 0.3]], np.array([0.4, 0.0]), [-1, 0])
    assert v2[0] == pytest.approx(1.0) and iv2[0][1][0] - 1.0 == pytest.approx(0.5, rel=1e-6) and n2[0] == 1
    with pytest.raises(InvalidInputError, match="cycle"):
        combine_chained(mu[:, :2], s1[:, :2], s2[:, :2], tau[:, :2], [1, 0])
