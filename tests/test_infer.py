"""Batched test step: agreement with per-star least squares, truth recovery, flags."""

import logging

import numpy as np
from conftest import LABELS
from scipy.optimize import least_squares

from bayescannon.core import scaling
from bayescannon.core.likelihood import adjusted_ivar
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
    (work / ".tmp_chunk_000000008_000000009.nc.abc.nc").write_bytes(b"half")  # left by a killed run
    with caplog.at_level(logging.WARNING):
        again = infer_chunked(model, ds, work, chunk_size=4)
    assert caplog.text.count("truncated or corrupted") == 2
    assert not list(work.glob(".tmp_*"))
    for name in ("labels", "errors", "chi2"):
        np.testing.assert_array_equal(again[name].values, full[name].values)
