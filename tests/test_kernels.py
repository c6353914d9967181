"""Every compiled kernel of :mod:`bayescannon.core._kernels` against the numpy core.

Each test builds small random inputs with masked pixels (ivar = 0) and compares the kernel
with the same maths written in numpy from :mod:`bayescannon.core.likelihood` (and, for the
Cholesky solve, :mod:`bayescannon.core.train`). Sums are compared to 1e-12 relative (only
the order of the additions differs); exact operations are compared exactly.
"""

import numpy as np
import pytest

from bayescannon.core import (
    _kernels,
    labelfit,  # module access: test_statistics is not a test
)
from bayescannon.core.labelfit import spectrum_statistics, sufficient_statistics
from bayescannon.core.likelihood import adjusted_ivar, label_log_likelihood, log_likelihood, statistics_chi2
from bayescannon.core.train import _solve_masked, _unpack

RTOL = 1e-12


def _data(seed=0, n=40, p=30, masked=0.2):
    rng = np.random.default_rng(seed)
    ivar = rng.uniform(50.0, 5000.0, (n, p))
    ivar[rng.random((n, p)) < masked] = 0.0
    ivar[:, 3] = 0.0  # a pixel masked in every star
    flux = 1.0 + 0.05 * rng.standard_normal((n, p))
    flux[ivar == 0] = 0.0
    model = 1.0 + 0.05 * rng.standard_normal((n, p))
    s2 = rng.uniform(0.0, 1e-3, p)
    s2[:5] = 0.0
    return rng, flux, ivar, model, s2


# --------------------------------------------------------------------------- adjusted ivar
def test_adjusted_ivar_numpy_pytensor_numba_agree():
    pt = pytest.importorskip("pytensor.tensor")
    import pytensor

    _, _, ivar, _, s2 = _data()
    want = ivar / (1.0 + ivar * s2[None, :])
    np.testing.assert_array_equal(adjusted_ivar(ivar, s2[None, :]), want)
    iv_t, s2_t = pt.dmatrix("ivar"), pt.dvector("s2")
    f = pytensor.function([iv_t, s2_t], adjusted_ivar(iv_t, s2_t[None, :]))
    np.testing.assert_allclose(f(ivar, s2), want, rtol=1e-15, atol=0)
    jit = np.vectorize(_kernels._adjusted_ivar)  # the compiled alias, called per element
    np.testing.assert_array_equal(jit(ivar, s2[None, :]), want)
    # ivar = 0 stays 0 in every backend (a masked pixel, not a division by zero)
    assert _kernels._adjusted_ivar(0.0, 0.5) == 0.0
    assert f(np.zeros((1, 2)), np.array([0.0, 0.5])).tolist() == [[0.0, 0.0]]
    assert adjusted_ivar(0.0, 0.0) == 0.0
    assert np.count_nonzero(want[ivar == 0]) == 0


# --------------------------------------------------------------------------- training kernels
def test_prepare_training_transposes_and_reports_bad_values():
    _, flux, ivar, _, _ = _data()
    flux = flux.copy()
    ivar = ivar.copy()
    flux[ivar == 0] = 7.0  # garbage under masked pixels is zeroed
    ivar[5, 7], ivar[2, 9] = np.nan, -1.0
    ivar[8, 1] = 10.0
    flux[8, 1] = np.inf
    flux_t, ivar_t, bad = _kernels.prepare_training(np.ascontiguousarray(flux), np.ascontiguousarray(ivar))
    clean = np.where(np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux), ivar, 0.0)
    np.testing.assert_array_equal(ivar_t, clean.T)
    np.testing.assert_array_equal(flux_t, np.where(clean > 0, flux, 0.0).T)
    np.testing.assert_array_equal(bad, [[5, 7], [2, 9], [8, 1]])
    _, _, ok = _kernels.prepare_training(np.ones((3, 4)), np.ones((3, 4)))
    np.testing.assert_array_equal(ok, -1)


def test_weights_kernel():
    _, flux, ivar, _, s2 = _data()
    flux_t, ivar_t = np.ascontiguousarray(flux.T), np.ascontiguousarray(ivar.T)
    idx = np.array([0, 3, 4, 11, 29])
    w, wf = np.full((8, flux.shape[0]), np.nan), np.full((8, flux.shape[0]), np.nan)
    _kernels.weights(ivar_t, flux_t, s2, idx, w, wf)
    want = adjusted_ivar(ivar_t[idx], s2[idx, None])
    np.testing.assert_array_equal(w[: idx.size], want)
    np.testing.assert_array_equal(wf[: idx.size], want * flux_t[idx])
    assert np.all(np.isnan(w[idx.size :]))  # rows beyond len(idx) untouched
    assert not w[1].any()  # the pixel masked everywhere


def _fixed_terms(ivar_t, flux_t, model_t, s2):
    """Score, curvature and mean noise of the likelihood at fixed residuals (numpy)."""
    w = adjusted_ivar(ivar_t, s2[:, None])
    r = flux_t - model_t
    g1 = 0.5 * np.sum(w * (w * r * r - 1.0), axis=1)
    g2 = np.sum(w * w * (0.5 - w * r * r), axis=1)
    used = ivar_t > 0
    noise = np.sum(np.where(used, 1.0 / np.where(used, ivar_t, 1.0), 0.0), axis=1) / np.maximum(used.sum(axis=1), 1)
    return g1, g2, noise, w * w * r


def test_score_terms_kernel():
    _, flux, ivar, model, s2 = _data()
    flux_t, ivar_t, model_t = (np.ascontiguousarray(a.T) for a in (flux, ivar, model))
    idx = np.arange(flux_t.shape[0])
    w2r = np.empty_like(model_t)
    g1, s_fixed, g2_fixed, noise = _kernels.score_terms(ivar_t, flux_t, model_t, s2, idx, w2r, False)
    want_g1, want_g2, want_noise, want_w2r = _fixed_terms(ivar_t, flux_t, model_t, s2)
    np.testing.assert_allclose(g1, want_g1, rtol=RTOL, atol=1e-9 * np.abs(want_g1).max())
    np.testing.assert_allclose(g2_fixed, want_g2, rtol=RTOL)
    np.testing.assert_allclose(noise, want_noise, rtol=RTOL)
    np.testing.assert_array_equal(w2r, want_w2r)
    np.testing.assert_array_equal(s_fixed, s2)

    # with solve_fixed: the maximiser over s² ≥ 0 of the likelihood at fixed residuals
    g1, s_fixed, g2_fixed, _ = _kernels.score_terms(ivar_t, flux_t, model_t, s2, idx, w2r, True)
    g1_at, g2_at, _, _ = _fixed_terms(ivar_t, flux_t, model_t, s_fixed)
    np.testing.assert_allclose(g1, want_g1, rtol=RTOL, atol=1e-9 * np.abs(want_g1).max())
    interior = s_fixed > 0
    assert interior.sum() > 10 and np.all(s_fixed >= 0)
    # zero score in the interior (relative to its size at the start), ≤ 0 on the boundary
    assert np.all(np.abs(g1_at[interior]) <= 1e-6 * np.abs(want_g1[interior]) + 1e-6)
    assert np.all(g1_at[~interior] <= 1e-6)
    np.testing.assert_allclose(g2_fixed[interior], g2_at[interior], rtol=1e-6)
    lnl = lambda s: log_likelihood(flux_t, ivar_t, model_t, s[:, None], axis=1, constant=False)  # noqa: E731
    best = lnl(s_fixed)
    for f in (0.9, 1.1):
        assert np.all(lnl(np.where(interior, s_fixed * f, s_fixed)) <= best + 1e-9 * np.abs(best))


def test_log_likelihood_terms_kernel():
    _, flux, ivar, model, s2 = _data()
    flux_t, ivar_t, model_t = (np.ascontiguousarray(a.T) for a in (flux, ivar, model))
    got = _kernels.log_likelihood_terms(ivar_t, flux_t, model_t, s2)
    want = log_likelihood(flux_t, ivar_t, model_t, s2[:, None], axis=1, constant=False)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert got[3] == 0.0  # the pixel masked in every star


def test_solve_packed_kernel_with_censored_and_singular_pixels():
    rng = np.random.default_rng(3)
    m, t = 12, 4
    X = rng.standard_normal((m, 30, t))
    G = np.einsum("mni,mnj->mij", X, X)
    G[5] = np.outer(X[5, 0], X[5, 0])  # rank 1: singular
    b = rng.standard_normal((m, t))
    iu, ju = np.triu_indices(t)
    packed = np.ascontiguousarray(G[:, iu, ju])
    np.testing.assert_array_equal(_unpack(packed, t), G)
    allowed = np.ones((m, t), dtype=bool)
    allowed[2, 3] = allowed[7, 1] = False
    theta, ok = _kernels.solve_packed(packed, b, allowed, 1e-10)
    assert ok.tolist() == [i != 5 for i in range(m)]
    assert not theta[5].any()
    want = _solve_masked(G[ok], b[ok], allowed[ok])
    np.testing.assert_allclose(theta[ok], want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    assert theta[2, 3] == 0.0 and theta[7, 1] == 0.0


def test_weight_sums_kernel():
    _, _, ivar, _, s2 = _data()
    ivar_t = np.ascontiguousarray(ivar.T)
    ok = np.ones(ivar_t.shape[0], dtype=bool)
    ok[[1, 17]] = False
    wsum, rowsum = _kernels.weight_sums(ivar_t, s2, ok)
    w = adjusted_ivar(ivar_t, s2[:, None]) * ok[:, None]
    np.testing.assert_allclose(wsum, w.sum(axis=1), rtol=RTOL)
    np.testing.assert_allclose(rowsum, w.sum(axis=0), rtol=RTOL)
    assert wsum[1] == 0.0 and wsum[17] == 0.0


def test_fingerprint_kernel():
    rng = np.random.default_rng(4)
    a_t = rng.standard_normal((70, 45))
    coeffs = rng.standard_normal(16)  # shorter than both axes: used cyclically
    rows, cols = _kernels.fingerprint(a_t, coeffs)
    c_cols = coeffs[np.arange(a_t.shape[1]) % coeffs.size]
    c_rows = coeffs[np.arange(a_t.shape[0]) % coeffs.size]
    np.testing.assert_allclose(rows, a_t @ c_cols, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(cols, c_rows @ a_t, rtol=RTOL, atol=1e-12)


# --------------------------------------------------------------------------- test step and κ
def _kappa_numpy(w, inv_wbar):
    """κ = Σ w²/w̄ / Σ w over pixels with 1/w̄ > 0 (0 without such a pixel)."""
    use = inv_wbar > 0
    num = (w * w) @ inv_wbar
    den = w @ use.astype(float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def test_test_weights_kernel():
    rng, flux, ivar, _, s2 = _data(seed=5)
    flux, ivar = flux.copy(), ivar.copy()
    ivar[4, 2], ivar[6, 8], flux[9, 5] = np.inf, -2.0, np.nan
    ivar[9, 5] = 100.0
    ivar[11] = 0.0  # a star without a usable pixel
    pixel_ok = np.ones(flux.shape[1], dtype=bool)
    pixel_ok[[0, 12]] = False
    inv_wbar = rng.uniform(1e-4, 1e-3, flux.shape[1]) * pixel_ok
    inv_wbar[20] = 0.0
    n, p = flux.shape
    w, wf = np.empty((n + 3, p)), np.empty((n + 3, p))
    c, n_pix, bad, kappa = _kernels.test_weights(flux, ivar, s2, pixel_ok, inv_wbar, w, wf)
    usable = np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux) & pixel_ok[None, :]
    want_w = np.where(usable, adjusted_ivar(np.where(usable, ivar, 0.0), s2[None, :]), 0.0)
    want_wf = want_w * np.where(usable, flux, 0.0)
    np.testing.assert_array_equal(w[:n], want_w)
    np.testing.assert_array_equal(wf[:n], want_wf)
    np.testing.assert_allclose(c, np.sum(want_wf * np.where(usable, flux, 0.0), axis=1), rtol=RTOL)
    np.testing.assert_array_equal(n_pix, usable.sum(axis=1))
    want_bad = np.full((n, 3), -1)
    want_bad[4, 0], want_bad[6, 1], want_bad[9, 2] = 2, 8, 5
    np.testing.assert_array_equal(bad, want_bad)
    np.testing.assert_allclose(kappa, _kappa_numpy(want_w, inv_wbar), rtol=RTOL)
    assert kappa[11] == 0.0 and np.all(kappa[np.arange(n) != 11] > 0)


def test_kappa_kernel_equals_numpy_and_the_test_step_kappa():
    rng, flux, ivar, _, s2 = _data(seed=6)
    ivar = ivar.copy()
    ivar[1, 4] = np.nan
    ivar[2, 6] = np.inf
    inv_wbar = rng.uniform(1e-4, 1e-3, flux.shape[1])
    inv_wbar[[0, 9]] = 0.0
    got = _kernels.kappa_kernel(ivar, s2, inv_wbar)
    usable = np.isfinite(ivar) & (ivar > 0)
    w = np.where(usable, adjusted_ivar(np.where(usable, ivar, 0.0), s2[None, :]), 0.0)
    np.testing.assert_allclose(got, _kappa_numpy(w, inv_wbar), rtol=RTOL)
    # the fused pass of the test step computes the same κ (one definition)
    pixel_ok = np.ones(flux.shape[1], dtype=bool)
    buf = np.empty(flux.shape)
    *_, kappa_tw = _kernels.test_weights(flux, ivar, s2, pixel_ok, inv_wbar, buf, buf.copy())
    np.testing.assert_array_equal(got, kappa_tw)


def test_spectrum_statistics_equal_the_numpy_sufficient_statistics():
    rng, flux, ivar, _, s2 = _data(seed=7)
    theta = rng.standard_normal((flux.shape[1], 6))
    pixel_ok = np.ones(flux.shape[1], dtype=bool)
    pixel_ok[2] = False
    A, b, c, n_pix, kappa, bad = spectrum_statistics(flux, ivar, s2, theta, pixel_ok)
    w = adjusted_ivar(ivar, s2[None, :]) * pixel_ok
    A0, b0, c0, n0 = sufficient_statistics(flux, w, theta)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_allclose(c, c0, rtol=RTOL)
    np.testing.assert_array_equal(n_pix, n0)
    assert not kappa.any() and np.all(bad == -1)
    A1, b1 = labelfit.test_statistics(w, w * flux, theta)
    np.testing.assert_array_equal(A1, A0)
    np.testing.assert_array_equal(b1, b0)
    # χ² from the statistics equals the pixel sum, and the label likelihood is −½ χ²
    v = rng.standard_normal((flux.shape[0], 6))
    chi2 = np.sum(w * (flux - v @ theta.T) ** 2, axis=1)
    np.testing.assert_allclose(statistics_chi2(A, b, c, v), chi2, rtol=1e-9)
    np.testing.assert_allclose(label_log_likelihood(A, b, c, v), -0.5 * chi2, rtol=1e-9)


def test_log_likelihood_numpy_and_pytensor_ignore_masked_pixels():
    pt = pytest.importorskip("pytensor.tensor")
    import pytensor

    _, flux, ivar, model, s2 = _data(seed=8, n=6, p=9)
    garbage = np.where(ivar > 0, flux, np.nan)  # NaN flux under masked pixels
    want = -0.5 * np.sum(
        np.where(
            ivar > 0,
            adjusted_ivar(ivar, s2) * (flux - model) ** 2 - np.log(np.where(ivar > 0, adjusted_ivar(ivar, s2), 1.0)),
            0.0,
        )
    )
    got = log_likelihood(garbage, ivar, model, s2, constant=False)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    n_used = np.count_nonzero(ivar)
    np.testing.assert_allclose(
        log_likelihood(garbage, ivar, model, s2), want - 0.5 * n_used * np.log(2 * np.pi), rtol=RTOL
    )
    f, iv, mf, s = pt.dmatrix(), pt.dmatrix(), pt.dmatrix(), pt.dvector()
    lnl = log_likelihood(f, iv, mf, s, xp=pt)
    fn = pytensor.function([f, iv, mf, s], [lnl, pytensor.grad(lnl, s), pytensor.grad(lnl, mf)])
    val, g_s, g_m = fn(garbage, ivar, model, s2)
    np.testing.assert_allclose(val, log_likelihood(garbage, ivar, model, s2), rtol=RTOL)
    assert np.all(np.isfinite(g_s)) and np.all(np.isfinite(g_m))
    assert not g_m[ivar == 0].any()
