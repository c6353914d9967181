"""The compiled homogenisation kernels (issue 13) against the numpy implementations they
replaced (kept here as references): the split-normal combination solved exactly per star,
and the fused Monte Carlo block (draws, secant offset, shift, tau, percentiles)."""

from __future__ import annotations

import numpy as np
import pytest

from bayescannon.homogenise.propagate import PERCENTILES, _normal_table, draw_inputs, lattice_index, propagate_block
from bayescannon.homogenise.splitnormal import DELTA_NLL_68, DELTA_NLL_95, combine_split_normal


# ---------------------------------------------------------------- references (numpy, before the kernels)
def _total_nll(x, mu, s1, s2, use):
    d = x[:, None] - mu
    s = np.where(d < 0, s1, s2)
    return np.where(use, 0.5 * (d / np.where(use, s, 1.0)) ** 2, 0.0).sum(axis=1)


def _combine_reference(mu, s1, s2, delta_nll=(DELTA_NLL_68, DELTA_NLL_95), n_iter=60):
    """The bisection implementation of combine_split_normal (n_iter raised to 60)."""
    use = np.isfinite(mu) & np.isfinite(s1) & np.isfinite(s2) & (s1 > 0) & (s2 > 0)
    n = use.sum(axis=1)
    srt = np.sort(np.where(use, mu, np.inf), axis=1)
    n_stars, k = mu.shape
    best = np.full(n_stars, np.nan)
    w1 = np.where(use, 1.0 / np.where(use, s1, 1.0) ** 2, 0.0)
    w2 = np.where(use, 1.0 / np.where(use, s2, 1.0) ** 2, 0.0)
    mu0 = np.where(use, mu, 0.0)
    for j in range(k + 1):
        lo = srt[:, j - 1] if j > 0 else np.full(n_stars, -np.inf)
        hi = srt[:, j] if j < k else np.full(n_stars, np.inf)
        w = np.where(mu0 >= hi[:, None], w1, w2)
        with np.errstate(invalid="ignore", divide="ignore"):
            x = (w * mu0).sum(axis=1) / w.sum(axis=1)
        best = np.where((x >= lo) & (x <= hi) & np.isnan(best) & (n > 0), x, best)
    ok = n > 0
    kink = ok & np.isnan(best)
    if kink.any():
        cand = np.where(use[kink], mu[kink], np.nan)
        nll = np.stack(
            [_total_nll(np.nan_to_num(cand[:, i]), mu[kink], s1[kink], s2[kink], use[kink]) for i in range(k)], axis=1
        )
        best[kink] = cand[np.arange(cand.shape[0]), np.argmin(np.where(use[kink], nll, np.inf), axis=1)]
    xb = np.where(ok, best, 0.0)
    fmin = _total_nll(xb, mu, s1, s2, use)
    span = np.where(use, np.maximum(s1, s2), 0.0).max(axis=1) * 10.0 + 1e-300
    intervals = []
    for dn in delta_nll:
        ends = []
        for sign in (-1.0, 1.0):
            a, b = xb.copy(), xb + sign * span
            for _ in range(n_iter):
                m = 0.5 * (a + b)
                inside = _total_nll(m, mu, s1, s2, use) - fmin <= dn
                a, b = np.where(inside, m, a), np.where(inside, b, m)
            ends.append(np.where(ok, 0.5 * (a + b), np.nan))
        intervals.append(tuple(ends))
    return np.where(ok, best, np.nan), intervals, n, np.where(ok, 2.0 * fmin, np.nan)


def _block_reference(model, X, j, mu, s1, s2, cov, tau, seed, n_draws=200, shift=None, center=None):
    """The numpy implementation of propagate_block (linear propagation)."""
    rng = np.random.default_rng(seed)
    m, k = mu.shape
    index = lattice_index(rng, m, k + 1, n_draws)
    delta = draw_inputs(rng, mu, s1, s2, cov, n_draws, index=index[:, :k])
    value = mu[:, j][:, None] + delta[:, j, :]
    if model is not None:
        x0 = np.asarray(X, dtype=float)
        lo_s = np.where(np.isfinite(s1) & (s1 > 0), s1, 0.0)
        hi_s = np.where(np.isfinite(s2) & (s2 > 0), s2, 0.0)
        good = (lo_s > 0) & (hi_s > 0)
        steps = np.stack([np.where(good, -lo_s, 0.0), np.where(good, hi_s, 0.0)], axis=2)
        diff = model.median_secants(x0, steps)
        off = np.repeat(np.asarray(model.predict_median(x0) if center is None else center)[:, None], n_draws, axis=1)
        for i in range(k):
            g_lo = np.where(good[:, i], -diff[2 * i] / np.where(good[:, i], lo_s[:, i], 1.0), 0.0)
            g_hi = np.where(good[:, i], diff[2 * i + 1] / np.where(good[:, i], hi_s[:, i], 1.0), 0.0)
            d = delta[:, i, :]
            off += np.where(d < 0, g_lo[:, None], g_hi[:, None]) * d
        value = value + off
    if shift is not None:
        value = value + shift[0][:, None] + np.einsum("mi,mid->md", shift[1], delta)
    out = np.empty((6, m))
    out[3:] = np.percentile(value, PERCENTILES, axis=1)
    if np.any(tau > 0):
        value += tau[:, None] * _normal_table(n_draws)[index[:, k]]
    out[:3] = np.percentile(value, PERCENTILES, axis=1)
    return out


class _SmoothModel:
    """A stand-in offset model with a smooth, non-linear median (the secants then differ
    below and above)."""

    def predict_median(self, x):
        return 0.3 * np.sin(x[:, 0]) + 0.1 * x[:, 1] ** 2 - 0.05 * x[:, 2]

    def median_secants(self, x0, steps):
        base = self.predict_median(x0)
        out = []
        for i in range(steps.shape[1]):
            for side in range(2):
                x = x0.copy()
                x[:, i] += steps[:, i, side]
                out.append(self.predict_median(x) - base)
        return np.array(out)


def _catalogue(rng, n, k=3):
    mu = rng.normal(size=(n, k))
    s1 = rng.uniform(0.1, 0.5, size=(n, k))
    s2 = s1.copy()
    skew = rng.random((n, k)) < 0.4  # split normals on ~40 % of the labels
    s2[skew] = s1[skew] * rng.uniform(0.3, 3.0, size=skew.sum())
    mu[rng.random((n, k)) < 0.05] = np.nan  # missing labels
    return mu, s1, s2


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("k", [1, 2, 5])
def test_combination_kernel_matches_the_bisection(k):
    rng = np.random.default_rng(k)
    n = 3000
    mu = rng.normal(scale=2.0, size=(n, k)) + 5000.0  # large values: the centring matters
    s1 = rng.uniform(0.2, 2.0, size=(n, k))
    s2 = s1 * np.exp(rng.normal(scale=0.7, size=(n, k)))
    mu[rng.random((n, k)) < 0.2] = np.nan
    s1[rng.random((n, k)) < 0.05] = 0.0  # an unusable scale
    mu[:3, 0] = mu[:3, -1]  # ties
    got = combine_split_normal(mu, s1, s2)
    ref = _combine_reference(mu, s1, s2)
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(ref[0]))
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-9, atol=1e-12)
    for (lo, hi), (rlo, rhi) in zip(got[1], ref[1], strict=True):
        np.testing.assert_allclose(lo, rlo, rtol=0, atol=1e-8)
        np.testing.assert_allclose(hi, rhi, rtol=0, atol=1e-8)
    # and the ends are where the summed NLL has risen by exactly the level
    ok = np.isfinite(got[0])
    use = np.isfinite(mu) & np.isfinite(s1) & (s1 > 0)
    x0 = np.nan_to_num(got[0])
    for (lo, hi), dn in zip(got[1], (DELTA_NLL_68, DELTA_NLL_95), strict=True):
        for end in (lo, hi):
            rise = _total_nll(np.nan_to_num(end), mu, s1, s2, use) - _total_nll(x0, mu, s1, s2, use)
            np.testing.assert_allclose(rise[ok], dn, rtol=1e-6)


@pytest.mark.parametrize("with_model", [False, True])
@pytest.mark.parametrize("with_cov", [False, True])
def test_fused_block_matches_the_numpy_block(with_model, with_cov):
    rng = np.random.default_rng(3)
    n, k = 700, 3
    mu, s1, s2 = _catalogue(rng, n, k)
    cov = None
    if with_cov:
        sig = 0.5 * (s1 + s2)
        cov = sig[:, :, None] * sig[:, None, :] * np.where(np.eye(k, dtype=bool), 1.0, 0.4)[None]
    X = np.column_stack([mu, rng.normal(size=n)])
    tau = rng.uniform(0.0, 0.2, size=n)
    shift = (rng.normal(scale=0.1, size=n), rng.normal(scale=0.05, size=(n, k)))
    model = _SmoothModel() if with_model else None
    for j in range(k):
        args = (model, X, j, mu, s1, s2, cov, tau, [11, j])
        got = propagate_block(*args, n_draws=200, shift=shift)
        ref = _block_reference(*args, n_draws=200, shift=shift)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
        # deterministic: the same seed gives the same bits
        np.testing.assert_array_equal(got, propagate_block(*args, n_draws=200, shift=shift))


def test_fused_block_without_tau_or_shift_matches_and_has_no_tau():
    rng = np.random.default_rng(4)
    mu, s1, s2 = _catalogue(rng, 400)
    tau = np.zeros(400)
    got = propagate_block(None, None, 1, mu, s1, s2, None, tau, 5, n_draws=50)
    ref = _block_reference(None, None, 1, mu, s1, s2, None, tau, 5, n_draws=50)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[:3], got[3:])


def test_percentiles_by_selection_equal_numpy_on_ties_and_edges():
    from bayescannon.homogenise.kernels import _percentiles

    rng = np.random.default_rng(9)
    q = np.array([0.0, 15.865525393145708, 50.0, 84.13447460685429, 100.0])
    for n in (1, 2, 3, 50, 200):
        for a in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(float), np.sort(rng.normal(size=n))[::-1]):
            v = n * q / 100 + (1.0 + (q / 100) * -1.0) - 1.0
            vidx = np.floor(v).astype(np.int64)
            out = np.empty((5, 1))
            _percentiles(a.copy(), vidx, v - vidx, out, 0, 0)
            np.testing.assert_allclose(out[:, 0], np.percentile(a, q), rtol=1e-14, atol=1e-14)
