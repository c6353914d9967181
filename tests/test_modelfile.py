"""Model files: bit-identical round trips (netCDF and zarr), clear errors otherwise."""

import numpy as np
import pytest
import xarray as xr
from conftest import LABELS

from bayescannon import CannonModel
from bayescannon.errors import ModelFileError


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
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.training_labels_scaled_, model.training_labels_scaled_)
    np.testing.assert_array_equal(loaded.theta_leverage_, model.theta_leverage_)
    np.testing.assert_array_equal(loaded.train_weight_, model.train_weight_)
    assert loaded.latent_labels_ is None and model.latent_labels_ is None
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_censors_and_regularisation_survive(tmp_path):
    from conftest import Truth

    tr = Truth(n_pixels=30, seed=4)
    y = tr.labels(100)
    flux, ivar = tr.spectra(y, np.median(y, 0), np.ptp(y, 0))
    wl = np.linspace(5000, 5030, 30)
    m = CannonModel(LABELS, regularization=10.0, censors={"FE_H": [(5000, 5010)]}).fit(flux, ivar, y, wavelength=wl)
    loaded = CannonModel.load(m.save(tmp_path / "m.nc"))
    assert loaded.regularization == 10.0
    assert loaded.get_params()["censors"] == {"FE_H": [[5000.0, 5010.0]]}
    refit = loaded.clone().fit(flux, ivar, y, wavelength=wl)
    np.testing.assert_array_equal(refit.censor_mask_, m.censor_mask_)
    np.testing.assert_array_equal(refit.predict(y), m.predict(y))
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
    with pytest.raises(ModelFileError, match=r"arrays \['s2'\] are listed in the checksums but absent"):
        CannonModel.load(tmp_path / "partial.nc")
    del ds.attrs["checksums"]  # as a version-2 file (no checksums) would be
    ds.attrs["format_version"] = 2
    ds.to_netcdf(tmp_path / "partial2.nc", engine="h5netcdf")
    with pytest.raises(ModelFileError, match=r"missing model variables \['s2'\]"):
        CannonModel.load(tmp_path / "partial2.nc")


def test_save_is_atomic_and_leaves_no_temporary_files(trained, tmp_path):
    tr, model = trained
    model.save(tmp_path / "m.nc")
    with pytest.raises(ModelFileError, match="exists; pass overwrite=True"):
        model.save(tmp_path / "m.nc")
    model.save(tmp_path / "m.nc", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nc"]


def test_boolean_censors_and_latent_state_round_trip(tmp_path):
    from conftest import Truth

    tr = Truth(n_pixels=30, seed=5)
    y = tr.labels(120)
    flux, ivar = tr.spectra(y, np.median(y, 0), np.ptp(y, 0))
    mask = np.arange(30) % 3 != 0
    err = np.abs(y) * 0.0 + np.array([40.0, 0.1, 0.05])
    m = CannonModel(LABELS, censors={"LOGG": mask}).fit(flux, ivar, y, label_errors=err, max_iter=4)
    loaded = CannonModel.load(m.save(tmp_path / "m.zarr"))
    assert loaded.censors["LOGG"].dtype == bool
    np.testing.assert_array_equal(loaded.censors["LOGG"], mask)
    assert m.latent_labels_.shape == (120, 3) and not np.array_equal(m.latent_labels_, m.training_labels_scaled_)
    for attr in ("latent_labels_", "training_labels_scaled_", "theta_leverage_", "train_weight_"):
        np.testing.assert_array_equal(getattr(loaded, attr), getattr(m, attr), err_msg=attr)
    for attr in ("latent_iterations_", "latent_converged_", "latent_calibrated_", "latent_trend_order_"):
        assert getattr(loaded, attr) == getattr(m, attr), attr
    a, b = m.infer(flux[:20], ivar[:20]), loaded.infer(flux[:20], ivar[:20])
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_version_1_files_are_still_read(trained, tmp_path):
    tr, model = trained
    ds = model.to_dataset()
    ds = ds.rename_vars({"theta_leverage": "extra_theta_leverage", "train_weight": "extra_train_weight"})
    ds = ds.drop_vars("training_labels")
    ds.attrs["format_version"] = 1
    del ds.attrs["checksums"]  # version-1 files had none
    ds.to_netcdf(tmp_path / "v1.nc", engine="h5netcdf")
    loaded = CannonModel.load(tmp_path / "v1.nc")
    np.testing.assert_array_equal(loaded.theta_leverage_, model.theta_leverage_)
    assert loaded.training_labels_scaled_ is None
    y = tr.labels(5)
    np.testing.assert_array_equal(loaded.predict(y), model.predict(y))


def test_flag_descriptions_are_those_of_their_flag_type(trained):
    from bayescannon.flags import PixelFlag, StarFlag, flag_doc

    _, model = trained
    attrs = model.to_dataset().attrs
    assert attrs["pixel_flag_FEW_STARS"] == "bit 0 (value 1): fewer usable training stars than terms+1; neutral model"
    assert attrs["pixel_flag_NOT_CONVERGED"].endswith("scatter optimisation did not converge")
    assert flag_doc(StarFlag)["NOT_CONVERGED"].endswith("label fit did not converge")
    assert flag_doc(PixelFlag)["SINGULAR"].endswith("singular design at this pixel; neutral model")
