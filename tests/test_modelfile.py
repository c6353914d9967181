"""Model files: bit-identical round trips (netCDF and zarr), clear errors otherwise."""

import numpy as np
import pytest
import xarray as xr

from bayescannon import CannonModel
from bayescannon.errors import ModelFileError

from conftest import LABELS


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_round_trip_is_bit_identical(trained, tmp_path, suffix):
    tr, model = trained
    path = model.save(tmp_path / f"model{suffix}")
    loaded = CannonModel.load(path)
    y = tr.labels(20)
    np.testing.assert_array_equal(loaded.predict(y), model.predict(y))
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    a, b = model.infer(flux, ivar), loaded.infer(flux, ivar)
    np.testing.assert_array_equal(a["labels"].values, b["labels"].values)
    np.testing.assert_array_equal(a["covariance"].values, b["covariance"].values)
    assert loaded.training_hash_ == model.training_hash_
    assert loaded.term_names == model.term_names
    np.testing.assert_array_equal(loaded.wavelength_, model.wavelength_)
    from bayescannon import __version__

    assert loaded.package_version_ == __version__


def test_censors_and_regularisation_survive(tmp_path):
    from conftest import Truth

    tr = Truth(n_pixels=30, seed=4)
    y = tr.labels(100)
    flux, ivar = tr.spectra(y, np.median(y, 0), np.ptp(y, 0))
    wl = np.linspace(5000, 5030, 30)
    m = CannonModel(LABELS, regularization=10.0, censors={"FE_H": [(5000, 5010)]}).fit(flux, ivar, y, wavelength=wl)
    loaded = CannonModel.load(m.save(tmp_path / "m.nc"))
    assert loaded.regularization == 10.0
    np.testing.assert_array_equal(loaded.censor_mask_, m.censor_mask_)
    assert not loaded.censor_mask_[wl > 5010.5, 2].any()
    np.testing.assert_array_equal(loaded.predict(y), m.predict(y))


def test_missing_corrupted_and_foreign_files(trained, tmp_path):
    tr, model = trained
    with pytest.raises(ModelFileError, match="does not exist"):
        CannonModel.load(tmp_path / "nothing.nc")
    path = model.save(tmp_path / "m.nc")
    data = path.read_bytes()
    bad = tmp_path / "truncated.nc"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="not a readable"):
        CannonModel.load(bad)
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"this is not a netCDF file at all" * 10)
    with pytest.raises(ModelFileError):
        CannonModel.load(junk)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"x": ("a", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(ModelFileError, match="not a bayescannon model"):
        CannonModel.load(foreign)
    ds = model.to_dataset().drop_vars("s2")
    ds.to_netcdf(tmp_path / "partial.nc", engine="h5netcdf")
    with pytest.raises(ModelFileError, match=r"missing model variables \['s2'\]"):
        CannonModel.load(tmp_path / "partial.nc")


def test_save_is_atomic_and_leaves_no_temporary_files(trained, tmp_path):
    tr, model = trained
    model.save(tmp_path / "m.nc")
    model.save(tmp_path / "m.nc")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nc"]
