"""Batched test step: agreement with per-star least squares, truth recovery, flags."""

import logging
import os
import time

import numpy as np
import pytest
from conftest import LABELS, Truth
from scipy.optimize import least_squares

from bayescannon import CannonModel
from bayescannon.core import scaling
from bayescannon.core.labelfit import chi2_at, fit_labels, sufficient_statistics
from bayescannon.core.likelihood import adjusted_ivar
from bayescannon.core.polyfit import MonomialMap, poly_coefficients, use_polynomial_form
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.flags import StarFlag
from bayescannon.spectra import make_spectra
from bayescannon.survey.batch import infer_chunked


def test_batched_lm_agrees_with_per_star_least_squares(trained):
    tr, model = trained
    y = tr.labels(25)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(20, 60))
    res = model.infer(flux, ivar)
    vec = model.vectorizer
    w = adjusted_ivar(ivar, model.s2_[None, :])
    for i in range(len(y)):
        sw = np.sqrt(w[i])

        def resid(x, sw=sw, f=flux[i]):
            return sw * (f - model.theta_ @ vec(x))

        def jac(x, sw=sw):
            return -sw[:, None] * (model.theta_ @ vec.jacobian(x))

        x0 = scaling.scale(res["labels"].values[i], model.label_offset_, model.label_scale_)
        # start the reference from a perturbed point; it must come back to our optimum
        ref = least_squares(resid, x0 + 0.05, jac=jac, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
        np.testing.assert_allclose(ref.x, x0, atol=3e-7)
        np.testing.assert_allclose(2 * ref.cost, res["chi2"].values[i], rtol=1e-9)


def test_labels_recovered_with_calibrated_formal_errors(trained):
    tr, model = trained
    y = tr.labels(800)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(20, 100))
    res = model.infer(flux, ivar)
    assert res["converged"].values.all()
    z = (res["labels"].values - y) / res["errors"].values
    n = len(y)
    # with the model known up to its training noise, pulls are ~N(0, 1); training-set
    # noise in θ adds a little variance, bounded by the ratio of test to training noise
    assert np.all(np.abs(z.mean(0)) < 4 / np.sqrt(n) + 0.1)
    assert np.all(np.abs(z.std(0) - 1) < 4 / np.sqrt(2 * n) + 0.1)
    rchi2 = res["reduced_chi2"].values
    assert abs(np.median(rchi2) - 1) < 4 * np.sqrt(2 / model.theta_.shape[0])


def test_covariance_is_inverse_of_half_the_chi2_hessian(trained):
    tr, model = trained
    y = tr.labels(3)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(100, 100.0001))
    res = model.infer(flux, ivar)
    vec = model.vectorizer
    w = adjusted_ivar(ivar, model.s2_[None, :])
    for i in range(3):
        x0 = scaling.scale(res["labels"].values[i], model.label_offset_, model.label_scale_)
        J = -(model.theta_ @ vec.jacobian(x0)) * np.sqrt(w[i])[:, None]
        fisher = J.T @ J
        cov_scaled = np.linalg.inv(fisher)
        want = cov_scaled * np.outer(model.label_scale_, model.label_scale_)
        np.testing.assert_allclose(res["covariance"].values[i], want, rtol=1e-6)


def test_inputs_are_not_modified_and_chunks_do_not_matter(trained):
    tr, model = trained
    y = tr.labels(30)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    flux[3, 5] = np.nan
    ivar[3, 5] = 0.0
    f0, i0 = flux.copy(), ivar.copy()
    a = model.infer(flux, ivar, chunk_size=7)
    b = model.infer(flux, ivar, chunk_size=1000)
    np.testing.assert_array_equal(flux[~np.isnan(f0)], f0[~np.isnan(f0)])
    assert np.isnan(flux[3, 5])
    np.testing.assert_array_equal(ivar, i0)
    # chunking changes BLAS blocking (rounding) only: agreement far inside the convergence
    # tolerance (χ² decrement < 1e-9 ⇒ |Δlabel| ≲ 1e-4 σ)
    diff = np.abs(a["labels"].values - b["labels"].values) / a["errors"].values
    assert diff.max() < 1e-4
    assert a["n_pixels"].values[3] == model.theta_.shape[0] - 1


def test_star_without_pixels_is_flagged_not_silent(trained, caplog):
    tr, model = trained
    y = tr.labels(4)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    ivar[1] = 0.0
    res = model.infer(flux, ivar, ids=["a", "b", "c", "d"])
    assert res["flags"].sel(star="b").item() & StarFlag.NO_PIXELS
    assert np.isnan(res["labels"].sel(star="b")).all()
    assert not res["converged"].sel(star="b").item()
    assert np.isfinite(res["labels"].sel(star=["a", "c", "d"])).all()
    assert "no usable pixel" in caplog.text


def test_far_outside_training_set_is_flagged(trained):
    tr, model = trained
    y = tr.labels(2)
    y[0, 0] = model.label_max_[0] + 0.4 * (model.label_max_[0] - model.label_min_[0])
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(200, 201))
    res = model.infer(flux, ivar)
    assert res["flags"].values[0] & StarFlag.EXTRAPOLATED
    assert not res["flags"].values[1] & StarFlag.EXTRAPOLATED
    y[0, 0] = model.label_max_[0] + 2.0 * (model.label_max_[0] - model.label_min_[0])
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(200, 201))
    res = model.infer(flux, ivar)
    assert res["flags"].values[0] & StarFlag.AT_BOUND


def test_predict_and_residuals(trained):
    tr, model = trained
    y = tr.labels(5)
    pred = model.predict(y)
    x = scaling.scale(y, model.label_offset_, model.label_scale_)
    np.testing.assert_allclose(pred, model.vectorizer(x) @ model.theta_.T)
    np.testing.assert_allclose(model.predict(y[0]), pred[0])
    np.testing.assert_allclose(model.residuals(pred + 1.0, y), 1.0)
    as_dict = model.predict({name: y[:, k] for k, name in enumerate(LABELS)})
    np.testing.assert_allclose(as_dict, pred)


def test_more_starts_never_worse(trained):
    tr, model = trained
    y = tr.labels(50)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(10, 30))
    one = model.infer(flux, ivar, n_starts=1)
    many = model.infer(flux, ivar, n_starts=8)
    assert np.all(many["chi2"].values <= one["chi2"].values + 1e-6)


# --------------------------------------------------------------------------------------
# chunked, resumable inference (bayescannon.survey.batch on pipeline.chunks)
# --------------------------------------------------------------------------------------


def _chunk_spectra(trained, n):
    """Spectra of ``n`` new stars (the truth's generator moves on at every call)."""
    tr, model = trained
    y = tr.labels(n)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    return make_spectra(model.wavelength_, flux, ivar)


def test_chunked_inference_keys_on_the_spectra_and_options(trained, tmp_path, caplog):
    _, model = trained
    a = _chunk_spectra(trained, 8)
    b = _chunk_spectra(trained, 8)
    assert not np.array_equal(a["flux"].values, b["flux"].values)
    work = tmp_path / "work"
    ra = infer_chunked(model, a, work, chunk_size=3)
    # same star ids, other spectra, same folder: b's labels, never a's
    with caplog.at_level(logging.WARNING):
        rb = infer_chunked(model, b, work, chunk_size=3)
    assert "other inputs or options" in caplog.text
    np.testing.assert_array_equal(
        rb["labels"].values, infer_chunked(model, b, tmp_path / "fresh", chunk_size=3)["labels"].values
    )
    assert not np.allclose(rb["labels"].values, ra["labels"].values)
    # other infer options recompute too: the result follows the options
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rb1 = infer_chunked(model, b, work, chunk_size=3, n_starts=1)
    assert caplog.text.count("other inputs or options") == 3
    np.testing.assert_array_equal(rb1["n_iter"].values, model.infer(b, n_starts=1, chunk_size=3)["n_iter"].values)


def test_chunked_inference_recomputes_corrupted_chunks_bit_for_bit(trained, tmp_path, caplog):
    _, model = trained
    ds = _chunk_spectra(trained, 9)
    work = tmp_path / "work"
    full = infer_chunked(model, ds, work, chunk_size=4)
    files = sorted(work.glob("chunk_*.nc"))
    assert len(files) == 3
    reference = [f.read_bytes() for f in files]
    files[0].write_bytes(reference[0][: len(reference[0]) // 2])  # truncated
    corrupt = bytearray(reference[1])
    corrupt[len(corrupt) // 2] ^= 0xFF
    files[1].write_bytes(bytes(corrupt))  # one flipped byte
    stale = work / ".tmp_chunk_000000008_000000009.nc.abc.nc"
    stale.write_bytes(b"half")  # left by a killed run of an older version (no owner in its name) ...
    os.utime(stale, (time.time() - 2 * 86400,) * 2)  # ... two days ago: stale, removed
    with caplog.at_level(logging.WARNING):
        again = infer_chunked(model, ds, work, chunk_size=4)
    assert caplog.text.count("truncated or corrupted") == 2
    assert not list(work.glob(".tmp_*"))
    for name in ("labels", "errors", "chi2"):
        np.testing.assert_array_equal(again[name].values, full[name].values)


def _pair_engine(model, flux, ivar, n_starts=4):
    """The sufficient-statistics engine (A = Σ w θθᵀ, labelfit.fit_labels) on the same starts."""
    vec = model.vectorizer
    w = adjusted_ivar(ivar, model.s2_[None, :])
    A, b, c, _ = sufficient_statistics(flux, w, model.theta_)
    cand = model.start_candidates_
    starts = cand[np.argsort(chi2_at(A, b, c, vec(cand)), axis=1)[:, :n_starts]]
    smin = scaling.scale(model.label_min_, model.label_offset_, model.label_scale_)
    smax = scaling.scale(model.label_max_, model.label_offset_, model.label_scale_)
    width = smax - smin
    bounds = np.column_stack([smin - model.bounds_margin * width, smax + model.bounds_margin * width])
    return fit_labels(A, b, c, vec, starts, bounds=bounds, restart=True), w


def test_polynomial_chi2_is_the_pair_quadratic_form_and_the_direct_sum():
    rng = np.random.default_rng(3)
    for order in (1, 2, 3):
        vec = PolynomialVectorizer(["a", "b", "c", "d"], order)
        mm = MonomialMap(vec)
        p, n = 200, 7
        theta = rng.normal(scale=0.05, size=(p, vec.n_terms))
        theta[:, 0] = 1.0
        x = rng.uniform(-1.5, 1.5, size=(n, 4))
        flux = np.einsum("npt,pt->np", np.broadcast_to(vec(x)[:, None, :], (n, p, vec.n_terms)), theta)
        flux += rng.normal(scale=0.01, size=(n, p))
        w = rng.uniform(1e3, 1e5, size=(n, p))
        A, b, c, _ = sufficient_statistics(flux, w, theta)
        a, b2 = poly_coefficients(w, w * flux, c, theta, mm.theta_monomials(theta))
        np.testing.assert_array_equal(b, b2)
        pts = rng.uniform(-2, 2, size=(5, 4))
        got = a @ mm.quad(pts).T
        pair = chi2_at(A, b, c, vec(pts))
        direct = np.einsum("np,nsp->ns", w, (flux[:, None, :] - (vec(pts) @ theta.T)[None]) ** 2)
        # both forms cancel Σ w f² against vᵀAv: rounding is relative to that scale
        scale = c[:, None] + np.abs(pair)
        assert np.all(np.abs(got - direct) < 1e-12 * scale)
        assert np.all(np.abs(got - pair) < 1e-12 * scale)
        assert mm.n_monomials == {1: 15, 2: 70, 3: 210}[order]


def test_polynomial_derivative_coefficients_match_finite_differences():
    rng = np.random.default_rng(4)
    mm = MonomialMap(PolynomialVectorizer(["a", "b", "c"], 3))
    a = rng.normal(size=(2, mm.n_monomials))
    x = rng.uniform(-1, 1, size=(2, 3))
    ga, ha = mm.derivative_coefficients(a)
    g = np.einsum("nkm,nm->nk", ga, mm.quad(x)[:, : mm.n_grad])
    h = mm.hessian(a, x)
    np.testing.assert_allclose(np.einsum("nkqm,nm->nkq", ha, mm.quad(x)[:, : mm.n_hess]), h, rtol=1e-14)
    eps = 1e-6
    for k in range(3):
        dx = np.zeros(3)
        dx[k] = eps
        f = lambda y: np.einsum("nm,nm->n", a, mm.quad(y))  # noqa: E731
        np.testing.assert_allclose(g[:, k], (f(x + dx) - f(x - dx)) / (2 * eps), rtol=1e-7, atol=1e-7)
        gp = np.einsum("nkm,nm->nk", ga, mm.quad(x + dx)[:, : mm.n_grad])
        gm = np.einsum("nkm,nm->nk", ga, mm.quad(x - dx)[:, : mm.n_grad])
        np.testing.assert_allclose(h[:, :, k], (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def trained_cubic():
    """An order-3 model (3 labels: 84 monomials + 40 against 210 pairs, the polynomial form)."""
    tr = Truth(n_pixels=200, seed=12)
    y = tr.labels(600)
    offset, scale = np.median(y, 0), np.subtract(*np.percentile(y, [97.5, 2.5], 0))
    flux, ivar = tr.spectra(y, offset, scale)
    model = CannonModel(LABELS, 3, random_state=0).fit(flux, ivar, y, wavelength=np.linspace(15100, 15300, 200))
    return tr, model


def test_engine_choice_by_cost():
    assert not use_polynomial_form(PolynomialVectorizer(LABELS, 2))
    assert not use_polynomial_form(PolynomialVectorizer(["a", "b", "c", "d"], 2))
    assert use_polynomial_form(PolynomialVectorizer(LABELS, 3))
    assert use_polynomial_form(PolynomialVectorizer(["a", "b", "c", "d"], 3))


def test_polynomial_engine_agrees_with_the_pair_engine(trained_cubic):
    tr, model = trained_cubic
    assert use_polynomial_form(model.vectorizer)
    y = tr.labels(60)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_, snr=(20, 200))
    res = model.infer(flux, ivar)
    ref, w = _pair_engine(model, flux, ivar)
    x = scaling.scale(res["labels"].values, model.label_offset_, model.label_scale_)
    err = np.sqrt(np.einsum("nkk->nk", ref.covariance))
    # both converge to χ² decrements < 1e-9: the labels agree far inside the formal errors
    assert np.all(np.abs(x - ref.labels) < 1e-4 * err)
    np.testing.assert_allclose(res["chi2"].values, ref.chi2, rtol=1e-9)
    cov = res["covariance"].values / np.outer(model.label_scale_, model.label_scale_)
    # relative to the error scale sqrt(cov_ii cov_jj) (a near-zero correlation has no relative precision)
    assert np.all(np.abs(cov - ref.covariance) < 1e-5 * err[:, :, None] * err[:, None, :])
    # the reported χ² is Σ w (f − θ·v)² at the reported labels
    direct = np.einsum("np,np->n", w, (flux - model.vectorizer(x) @ model.theta_.T) ** 2)
    np.testing.assert_allclose(res["chi2"].values, direct, rtol=1e-9)


@pytest.mark.parametrize("fixture", ["trained", "trained_cubic"])
def test_test_step_cache_follows_refit_and_set_params(fixture, request):
    tr, model = request.getfixturevalue(fixture)
    m = model.clone()
    m.__dict__.update({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in vars(model).items()})
    m.__dict__.pop("_test_cache", None)
    y = tr.labels(5)
    flux, ivar = tr.spectra(y, m.label_offset_, m.label_scale_)
    first = m.infer(flux, ivar)
    cached = m._test_cache[3]
    assert m.infer(flux, ivar).equals(first) and m._test_cache[3] is cached
    # a new θ array (refit, load) rebuilds Φ; so does set_params
    m.theta_ = m.theta_ * 1.001
    moved = m.infer(flux, ivar)
    assert m._test_cache[3] is not cached
    assert not np.array_equal(moved["labels"].values, first["labels"].values)
    m.set_params(n_starts=m.n_starts)
    assert "_test_cache" not in vars(m)
