"""Monte Carlo propagation (issue 13): blocked draws (the task unit of an executor) and the
stratified lattice draws."""

from __future__ import annotations

import numpy as np

from bayescannon.homogenise.deconvolve import Deconvolution, noise_covariance
from bayescannon.homogenise.propagate import draw_inputs, lattice_index, propagate, propagate_block
from bayescannon.homogenise.splitnormal import split_normal_ppf


def test_lattice_takes_every_stratum_once_per_dimension():
    idx = lattice_index(np.random.default_rng(0), 50, 4, 200)
    assert idx.dtype == np.int32 and idx.min() == 0 and idx.max() == 199
    np.testing.assert_array_equal(np.sort(idx, axis=-1), np.broadcast_to(np.arange(200), idx.shape))


def test_draws_have_the_right_margins_and_correlation():
    rng = np.random.default_rng(1)
    n, nd = 4000, 200
    mu = rng.normal(size=(n, 3))
    s1 = np.column_stack([np.full(n, 0.7), np.full(n, 1.0), np.full(n, 0.3)])
    s2 = np.column_stack([np.full(n, 1.4), np.full(n, 1.0), np.full(n, 0.3)])
    d = draw_inputs(rng, mu, s1, s2, None, nd)
    # per-star percentiles as the propagation reads them; 4000 stars average the jitter
    med = split_normal_ppf(0.5, 0.0, 0.7, 1.4)
    for p in (0.15865525, 0.5, 0.84134475):
        q = np.quantile(d[:, 0, :] + med, p, axis=1).mean()
        # the sample percentile of 200 draws of a skewed law is biased by ~1 % of the scale
        assert abs(q - split_normal_ppf(p, 0.0, 0.7, 1.4)) < 0.015, p
    # symmetric labels: the 15.87/84.13 percentiles are exactly -sigma, +sigma
    np.testing.assert_allclose(
        np.percentile(d[:, 1, :], [15.865525393145708, 84.13447460685429], axis=1),
        np.broadcast_to([[-1.0], [1.0]], (2, n)),
        atol=1e-12,
    )
    # independent labels: per-star correlation ~0 (sd 1/sqrt(200) per star)
    r = [np.corrcoef(d[i, 1], d[i, 2])[0, 1] for i in range(500)]
    assert abs(np.mean(r)) < 4 / np.sqrt(200 * 500)
    cov = np.zeros((n, 3, 3))
    cov[:, range(3), range(3)] = [1.0, 1.0, 0.09]
    cov[:, 1, 2] = cov[:, 2, 1] = 0.5 * 0.3
    d2 = draw_inputs(rng, mu, np.ones((n, 3)) * [1, 1, 0.3], np.ones((n, 3)) * [1, 1, 0.3], cov, nd)
    r2 = [np.corrcoef(d2[i, 1], d2[i, 2])[0, 1] for i in range(500)]
    assert abs(np.mean(r2) - 0.5) < 4 * 0.75 / np.sqrt(200 * 500)
    missing = mu.copy()
    missing[:10, 2] = np.nan
    assert (draw_inputs(rng, missing, s1, s2, None, nd)[:10, 2] == 0).all()


def test_propagate_is_its_blocks_and_returns_the_noise_alone():
    rng = np.random.default_rng(2)
    n, k = 1000, 2
    mu = rng.normal(size=(n, k))
    s = np.full((n, k), 0.2)
    tau = np.full(n, 0.3)
    shift = (np.zeros(n), np.zeros((n, k)))
    full = propagate(
        None,
        None,
        0,
        mu,
        s,
        s,
        None,
        tau,
        np.random.default_rng(7),
        chunk_size=300,
        n_draws=200,
        shift=shift,
        return_noise=True,
    )
    seed = int(np.random.default_rng(7).integers(2**62))
    blocks = [
        propagate_block(
            None,
            None,
            0,
            mu[a : a + 300],
            s[a : a + 300],
            s[a : a + 300],
            None,
            tau[a : a + 300],
            [seed, b],
            n_draws=200,
            shift=(shift[0][a : a + 300], shift[1][a : a + 300]),
        )
        for b, a in reversed(list(enumerate(range(0, n, 300))))
    ]  # any order
    got = np.concatenate(blocks[::-1], axis=1)
    np.testing.assert_allclose(full[0], got[1])
    np.testing.assert_allclose(full[3], got[4])
    # stratified draws: the noise-only half width is sigma, with tau sqrt(sigma² + tau²) (MC error ~2 %)
    np.testing.assert_allclose(np.median(full[4] + full[5]) / 2, 0.2, rtol=0.03)
    np.testing.assert_allclose(np.median(full[1] + full[2]) / 2, np.hypot(0.2, 0.3), rtol=0.03)


def test_analytic_shrinkage_jacobian_matches_finite_differences():
    rng = np.random.default_rng(0)
    n = 3000
    two = rng.random((n, 1)) < 0.5  # a two-component population, correlated noise, a missing label
    x = np.where(
        two, rng.normal([5000, 2.5, -0.3], [300, 0.5, 0.2], (n, 3)), rng.normal([6000, 4.3, 0], [300, 0.2, 0.3], (n, 3))
    )
    sig = np.array([100, 0.2, 0.1]) * rng.uniform(0.5, 1.5, (n, 3))
    v = x + sig * rng.standard_normal((n, 3))
    v[:20, 1] = np.nan
    cov = noise_covariance(sig, sig)
    cov[:, 0, 1] = cov[:, 1, 0] = 0.3 * sig[:, 0] * sig[:, 1]
    dec = Deconvolution(n_components=4, n_iter=15, random_state=0).fit(v, cov)
    d0, jac = dec.shrinkage_and_slope(v, cov)
    np.testing.assert_array_equal(d0, dec.shrinkage(v, cov))
    h = 1e-4 * np.nanstd(v, axis=0)
    ok = np.isfinite(v).all(axis=1)
    for i in range(3):
        up, dn = v.copy(), v.copy()
        up[:, i] += h[i]
        dn[:, i] -= h[i]
        fd = (dec.shrinkage(up, cov) - dec.shrinkage(dn, cov)) / (2 * h[i])
        scale = np.abs(fd[ok]).max(axis=0) + 1e-12  # per output label
        assert np.all(np.abs(jac[ok, :, i] - fd[ok]) <= 1e-5 * scale), i
    assert (jac[:20, :, 1] == 0).all() and (jac[:20, 1, :] == 0).all() and np.isnan(d0[:20, 1]).all()
