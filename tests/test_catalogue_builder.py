"""The one catalogue builder: the same catalogue from every command, calibrated errors
from a calibrated model, flag columns evaluated or absent."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import LABELS, OFFSET, SCALE, Truth

from bayescannon import CannonModel
from bayescannon.bayes import calibrate
from bayescannon.cli import main
from bayescannon.errors import CrossMatchError, InvalidInputError
from bayescannon.io import write_spectra
from bayescannon.spectra import make_spectra
from bayescannon.survey.catalogue import build_catalogue, join_ids, read_catalogue

N_TEST = 30


@pytest.fixture(scope="module")
def calibrated():
    """A calibrated model and test spectra; the last star lies far outside the training box."""
    tr = Truth(n_pixels=120, seed=21)
    y = tr.labels(400)
    offset, scale = np.median(y, 0), np.subtract(*np.percentile(y, [97.5, 2.5], 0))
    flux, ivar = tr.spectra(y, offset, scale)
    wl = np.linspace(15100, 15300, tr.n_pixels)
    model = CannonModel(LABELS, 2, random_state=0).fit(flux, ivar, y, wavelength=wl)
    calibrate(model, flux, ivar, y, n_folds=4)
    yt = OFFSET + SCALE * np.random.default_rng(4).uniform(-0.2, 0.2, size=(N_TEST, len(LABELS)))
    yt[-1] = OFFSET + SCALE * np.array([1.5, 0.0, 0.0])  # far beyond the training box in Teff
    ft, it = tr.spectra(yt, model.label_offset_, model.label_scale_)
    ds = make_spectra(wl, ft, it, ids=[f"T{i:03d}" for i in range(N_TEST)])
    return model, ds, yt


def _columns_equal(a, b):
    assert a.colnames == b.colnames
    for name in a.colnames:
        ma, mb = np.ma.getmaskarray(a[name]), np.ma.getmaskarray(b[name])
        assert np.array_equal(ma, mb), name
        va, vb = np.asarray(np.ma.getdata(a[name]))[~ma], np.asarray(np.ma.getdata(b[name]))[~mb]
        assert np.array_equal(va, vb), name
        assert str(a[name].unit) == str(b[name].unit), name


def test_catalogue_and_infer_commands_write_the_same_catalogue(tmp_path, calibrated):
    model, ds, _ = calibrated
    mpath = model.save(tmp_path / "model.nc")
    spath = write_spectra(ds, tmp_path / "spectra.nc", overwrite=True)
    assert main(["infer", str(mpath), str(spath), "-o", str(tmp_path / "infer.fits"), "--no-progress"]) == 0
    assert (
        main(
            [
                "catalogue",
                str(mpath),
                str(spath),
                "-o",
                str(tmp_path / "cat.fits"),
                "--no-progress",
                "--report-format",
                "md",
            ]
        )
        == 0
    )
    a, b = read_catalogue(tmp_path / "infer.fits"), read_catalogue(tmp_path / "cat.fits")
    _columns_equal(a, b)
    for t in (a, b):  # both calibrated (the model is), both with S/N and every flag evaluated or absent
        assert t.meta["ERRMODEL"].startswith("calibrated") and "HW68_TEFF" in t.colnames and "SNR" in t.colnames
        assert t.meta["MODELHSH"] == model.training_hash_ and "DATE" in t.meta and "ORIGIN" in t.meta
    for name in ("FLAG_OUTSIDE_HULL", "FLAG_FAR_FROM_TRAINING", "FLAG_LOW_SNR", "FLAG_SURVEY_FLAGGED"):
        notes = " ".join(str(v) for k, v in a.meta.items() if k.startswith("FLAGNT"))
        assert (name in a.colnames) != (f"{name} absent" in notes), name


def test_calibrated_model_catalogue_carries_calibrated_errors(calibrated):
    model, ds, _ = calibrated
    cal = model.infer(ds, uncertainty="calibrated")
    t = build_catalogue(model, cal, spectra=ds)
    for k, name in enumerate(LABELS):
        np.testing.assert_array_equal(np.asarray(t[f"e_{name}"]), cal["errors"].values[:, k])
        np.testing.assert_array_equal(np.asarray(t[f"HW95_{name}"]), cal["half_width_95"].values[:, k])
        # the bias-corrected label, with the learned bias beside it
        np.testing.assert_array_equal(np.asarray(t[name]), cal["labels"].values[:, k])
        np.testing.assert_array_equal(np.asarray(t[f"{name}_BIAS"]), cal["label_bias"].values[:, k])
    # calibrated errors are not the formal ones (the model's own error is added to them)
    assert (cal["errors"].values[:, 0] / cal["errors_formal"].values[:, 0]).min() > 1.0 + 1e-4
    assert t.meta["ERRMODEL"].startswith("calibrated") and "calibrated" in t.meta["CONFIG"]
    corr = cal["covariance"].values[:, 0, 1] / np.sqrt(
        cal["covariance"].values[:, 0, 0] * cal["covariance"].values[:, 1, 1]
    )
    np.testing.assert_allclose(np.asarray(t["CORR_TEFF_LOGG"]), corr, rtol=1e-12)
    # formal errors only on request, and then the header says so
    f = build_catalogue(model, cal, spectra=ds, uncertainty="formal")
    np.testing.assert_array_equal(np.asarray(f["e_TEFF"]), cal["errors_formal"].values[:, 0])
    assert "HW68_TEFF" not in f.colnames and f.meta["ERRMODEL"].startswith("formal on request")
    # ... with the uncorrected (maximum-likelihood) labels that the formal errors describe
    np.testing.assert_array_equal(np.asarray(f["TEFF"]), cal["labels_uncorrected"].values[:, 0])
    assert "TEFF_BIAS" not in f.colnames
    with pytest.raises(InvalidInputError, match="calibrated"):
        build_catalogue(model, model.infer(ds), spectra=ds)  # a formal result from a calibrated model
    # S/N: median flux·sqrt(ivar) of each star
    want = np.median(np.abs(ds["flux"].values) * np.sqrt(ds["ivar"].values), axis=1)
    np.testing.assert_allclose(np.asarray(t["SNR"]), want)


def test_flag_columns_are_evaluated_or_absent(calibrated):
    model, ds, _ = calibrated
    res = model.infer(ds, uncertainty="calibrated")
    # distance unit 0.1 of the box: inside it the 10 nearest of 400 training stars lie
    # ~0.07 box away (distance 1.2-1.7); the far star's fit stops at the search bound,
    # ~0.5 box beyond the training edge (distance ~5 > the calibrated threshold)
    t = build_catalogue(model, res, spectra=ds, cv_scatter=0.1 * SCALE)
    thr = t.meta["DISTTHR"]
    assert t.meta["DISTHOW"].startswith("calibrated: p99") and t.meta["DISTPCT"] == pytest.approx(99.0, abs=0.5)
    assert any(f"LABEL_DISTANCE > {thr:.4g}" in str(v) for k, v in t.meta.items() if k.startswith("FLAGNT"))
    out = np.asarray(t["FLAG_OUTSIDE_HULL"])
    far = np.asarray(t["FLAG_FAR_FROM_TRAINING"])
    assert out[-1] and far[-1]  # the star placed far from the training set
    assert not out[:-1].any() and not far[:-1].any()  # the stars inside it
    assert np.array_equal(np.asarray(t["IN_HULL"]), ~out)
    assert np.asarray(t["LABEL_DISTANCE"])[-1] > thr > np.asarray(t["LABEL_DISTANCE"])[:-1].max()
    assert np.array_equal((np.asarray(t["FLAGS"]) & 256) != 0, out)
    # without a CV scatter the distance is not evaluated: its flag is absent (FITS has no
    # masked logical), the distance column fully masked, the hull flag stays
    t2 = build_catalogue(model, res, spectra=ds)
    assert "FLAG_FAR_FROM_TRAINING" not in t2.colnames and t2["LABEL_DISTANCE"].mask.all()
    assert any("FLAG_FAR_FROM_TRAINING absent" in str(v) for k, v in t2.meta.items() if k.startswith("FLAGNT"))
    assert "DISTTHR" not in t2.meta
    assert np.array_equal(np.asarray(t2["FLAG_OUTSIDE_HULL"]), out)
    # a model without its training labels: neither flag, and the header says why
    bare = copy.copy(model)
    bare.training_labels_scaled_ = None
    t3 = build_catalogue(bare, res, spectra=ds)
    assert "FLAG_OUTSIDE_HULL" not in t3.colnames and "IN_HULL" not in t3.colnames
    notes = [str(v) for k, v in t3.meta.items() if k.startswith("FLAGNT")]
    assert any("FLAG_OUTSIDE_HULL absent" in n and "training labels" in n for n in notes), notes


def test_join_ids_finds_rows_and_refuses_duplicates():
    rows, hit = join_ids(["b", "x", "a"], ["a", "b", "c"], what="t")
    assert rows[hit].tolist() == [1, 0] and hit.tolist() == [True, False, True]
    with pytest.raises(CrossMatchError, match="duplicated"):
        join_ids(["a"], ["a", "a"])
    with pytest.raises(CrossMatchError, match="missing"):
        join_ids(["a", "z"], ["a"], require="all")
    with pytest.raises(CrossMatchError, match="no id"):
        join_ids(["z"], ["a"])
