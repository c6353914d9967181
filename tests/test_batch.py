import numpy as np
import xarray as xr

from bayescannon.spectra import make_spectra
from bayescannon.survey.batch import infer_chunked


def test_chunked_inference_resumes_and_matches(trained, tmp_path):
    tr, model = trained
    y = tr.labels(23)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    ds = make_spectra(model.wavelength_, flux, ivar)
    full = model.infer(ds)
    out = infer_chunked(model, ds, tmp_path / "work", chunk_size=5)
    np.testing.assert_allclose(
        out["labels"].values, full["labels"].values, rtol=0, atol=1e-4 * np.nanmax(full["errors"].values)
    )
    files = sorted((tmp_path / "work").glob("chunk_*.nc"))
    assert len(files) == 5
    # an interrupted run: remove two chunks; the rerun recomputes only those
    files[1].unlink()
    files[3].unlink()
    mtimes = {f: f.stat().st_mtime_ns for f in files if f.exists()}
    again = infer_chunked(model, ds, tmp_path / "work", chunk_size=5)
    for f, t in mtimes.items():
        assert f.stat().st_mtime_ns == t  # untouched
    np.testing.assert_array_equal(again["labels"].values, out["labels"].values)
    assert not list((tmp_path / "work").glob(".tmp_*"))


def test_a_tampered_chunk_is_recomputed_not_reused(trained, tmp_path, caplog):
    """A chunk file edited after it was written (here: claiming another model) fails its
    checksum and is recomputed; the result equals a fresh run."""
    tr, model = trained
    y = tr.labels(6)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    ds = make_spectra(model.wavelength_, flux, ivar)
    fresh = infer_chunked(model, ds, tmp_path / "fresh", chunk_size=3)
    infer_chunked(model, ds, tmp_path / "w", chunk_size=3)
    f = sorted((tmp_path / "w").glob("chunk_*.nc"))[0]
    with xr.open_dataset(f, engine="h5netcdf") as handle:
        x = handle.load()
    x.attrs["model_training_hash"] = "other"
    x["labels"][:] = 0.0
    x.to_netcdf(f, engine="h5netcdf")
    with caplog.at_level("WARNING"):
        again = infer_chunked(model, ds, tmp_path / "w", chunk_size=3)
    assert "truncated or corrupted" in caplog.text
    np.testing.assert_array_equal(again["labels"].values, fresh["labels"].values)
