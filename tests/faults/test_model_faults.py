"""Fault injection (issue 11): bad training pixels, underdetermined stars, corrupted model files.

Every finding of the issue on training and model files is a test here, plus seeded random
byte flips and truncations of a saved model file: each must be detected (ModelFileError on
load) or leave the loaded model bit-identical (a flip in bytes HDF5 does not read); an
untyped exception or a different model is a failure.
"""

import json
import logging

import numpy as np
import pytest
from conftest import LABELS, Truth

from bayescannon import CannonModel
from bayescannon.errors import LabelError, ModelFileError
from bayescannon.flags import PixelFlag, StarFlag
from bayescannon.modelfile import _checksums

N_FLIPS = 60
N_TRUNCATIONS = 60


@pytest.fixture(scope="module")
def small():
    tr = Truth(n_pixels=40, seed=2)
    y = tr.labels(120)
    flux, ivar = tr.spectra(y, np.median(y, 0), np.ptp(y, 0))
    return flux, ivar, y


@pytest.fixture(scope="module")
def model(small):
    flux, ivar, y = small
    return CannonModel(LABELS).fit(flux, ivar, y, wavelength=np.linspace(15100, 15200, 40))


# ---------------------------------------------------------------- training
@pytest.mark.parametrize(
    "case",
    ["constant flux, tiny ivar", "ivar 0 but for T+1 stars", "ivar 0 but for 4 stars", "ivar 1e30", "flux 1e100"],
)
def test_a_degenerate_pixel_never_crashes_training(small, case):
    flux, ivar, y = (a.copy() for a in small)
    j = 5
    if case == "constant flux, tiny ivar":
        flux[:, j], ivar[:, j] = 1.0, 1e-300
    elif case == "ivar 0 but for T+1 stars":
        ivar[11:, j] = 0.0
    elif case == "ivar 0 but for 4 stars":
        ivar[4:, j] = 0.0
    elif case == "ivar 1e30":
        ivar[7, j] = 1e30
    else:
        flux[7, j] = 1e100
    m = CannonModel(LABELS).fit(flux, ivar, y)
    assert np.all(np.isfinite(m.theta_)) and np.all(np.isfinite(m.s2_)) and np.all(m.s2_ >= 0)
    assert not np.delete(m.pixel_flags_, j).any(), "only the bad pixel may be flagged"
    neutral = PixelFlag.FEW_STARS | PixelFlag.SINGULAR
    if case in ("ivar 0 but for 4 stars", "ivar 1e30", "flux 1e100"):
        assert m.pixel_flags_[j] & neutral
        np.testing.assert_array_equal(m.theta_[j, 1:], 0.0)
        assert m.s2_[j] == 0.0


@pytest.mark.parametrize("kind", ["linear", "constant", "square"])
def test_collinear_labels_are_a_typed_error_naming_them(small, kind):
    flux, ivar, y = small
    y = y.copy()
    if kind == "linear":
        y[:, 2] = -3.0 * y[:, 0] / 1000.0 + 1.0
        match = r"\['TEFF', 'FE_H'\] are linearly dependent"
    elif kind == "constant":
        y[:, 2] = 0.0
        match = "FE_H has no spread"
    else:
        y[:, 1] = (y[:, 2] + 0.3) ** 2
        match = r"\['LOGG', 'FE_H'\] are polynomially dependent"
    with pytest.raises(LabelError, match=match):
        CannonModel(LABELS).fit(flux, ivar, y)


# ---------------------------------------------------------------- test step
def test_star_with_fewer_usable_pixels_than_labels_is_not_converged(model, small):
    # issue 11: a star with one usable pixel reported converged=True
    flux, ivar, _ = small
    iv = ivar[:4].copy()
    iv[0, 1:] = 0.0  # 1 pixel
    iv[1, 2:] = 0.0  # 2 pixels (< 3 labels)
    iv[2, 3:] = 0.0  # 3 pixels: identified (barely), FEW_PIXELS only
    res = model.infer(flux[:4], iv)
    np.testing.assert_array_equal(res["n_pixels"].values, [1, 2, 3, 40])
    flags = res["flags"].values
    for i in (0, 1):
        assert not res["converged"].values[i]
        assert flags[i] & StarFlag.UNDERDETERMINED and flags[i] & StarFlag.SINGULAR_COVARIANCE
        assert np.all(np.isnan(res["covariance"].values[i])) and np.all(np.isnan(res["errors"].values[i]))
    assert not flags[2] & StarFlag.UNDERDETERMINED and flags[2] & StarFlag.FEW_PIXELS
    assert not flags[3] & (StarFlag.UNDERDETERMINED | StarFlag.FEW_PIXELS)
    assert res["converged"].values[3] and np.all(np.isfinite(res["errors"].values[3]))


# ---------------------------------------------------------------- model files
def _state(m):
    """Everything a loaded model holds, for a bit-identical comparison."""
    out = {}
    for k, v in vars(m).items():
        if isinstance(v, np.ndarray):
            out[k] = (v.dtype.str, v.shape, v.tobytes())
        elif isinstance(v, dict):
            out[k] = json.dumps(v, sort_keys=True, default=lambda a: np.asarray(a).tolist())
        else:
            out[k] = repr(v)
    return out


def _resigned(ds, path):
    """Write ``ds`` with freshly computed checksums: a hand-edited file that passes them."""
    ds = ds.copy()
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "checksums"}
    ds.attrs["checksums"] = json.dumps(_checksums(ds))
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def _edit(ds, name, fn):
    ds = ds.copy(deep=True)
    ds[name] = ds[name].copy(data=fn(ds[name].values.copy()))
    return ds


def _set(index, value):
    def fn(a):
        a[index] = value
        return a

    return fn


IMPOSSIBLE = {
    "label_scale 0": ("label_scale", _set(1, 0.0), "label_scale has impossible values"),
    "label_scale < 0": ("label_scale", _set(0, -2.0), "label_scale has impossible values"),
    "label_scale NaN": ("label_scale", _set(0, np.nan), "label_scale contains non-finite"),
    "s2 < 0": ("s2", _set(3, -1e-4), "s2 has impossible values"),
    "s2 inf": ("s2", _set(3, np.inf), "s2 contains non-finite"),
    "theta NaN": ("theta", _set((2, 4), np.nan), "theta contains non-finite"),
    "label_min NaN": ("label_min", _set(2, np.nan), "label_min contains non-finite"),
    "label bounds inverted": ("label_min", _set(0, 1e9), "label_min > label_max"),
    "censor mask not 0/1": ("censor_mask", _set((0, 0), 7), "censor_mask has impossible values"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_physically_impossible_values_are_refused_even_with_valid_checksums(model, tmp_path, case):
    name, fn, match = IMPOSSIBLE[case]
    path = _resigned(_edit(model.to_dataset(), name, fn), tmp_path / "m.nc")
    with pytest.raises(ModelFileError, match=match) as err:
        CannonModel.load(path)
    assert "m.nc" in str(err.value)


CALIBRATIONS = {
    "not JSON": ("{'kind': broken", "does not parse"),
    "a list": ("[1, 2, 3]", "is not a"),
    "other labels": ({"label_names": ["A", "B", "C"]}, "is for labels"),
    "short noise_scale": ({"noise_scale": [1.0, 1.0]}, r"noise_scale of shape \(2,\)"),
    "negative noise_scale": ({"noise_scale": [1.0, -1.0, 1.0]}, "impossible values in noise_scale"),
    "dof <= 2": ({"dof": [5.0, 2.0, 5.0]}, "impossible values in dof"),
    "floor shape": ({"floor_coefficients": [[0.0] * 3] * 3}, r"floor_coefficients of shape \(3, 3\)"),
    "z NaN": ({"z_quantiles": [[np.nan, 1.0]] * 3}, "impossible values in z_quantiles"),
    "missing dof": ({"dof": None}, "no readable dof"),
}


def _calibration(**changes):
    cal = {
        "kind": "bayescannon.core.uncertainty",
        "version": 2,
        "label_names": list(LABELS),
        "noise_scale": [1.1, 0.9, 1.0],
        "floor_coefficients": [[-9.0, 0.1, 0.0, 0.0]] * 3,
        "dof": [6.0, 8.0, 30.0],
        "quantile_levels": [0.5, 0.9],
        "z_quantiles": [[0.6, 1.6]] * 3,
    }
    for k, v in changes.items():
        if v is None:
            del cal[k]
        else:
            cal[k] = v
    return cal


def test_a_good_calibration_round_trips(model, tmp_path):
    m = model.clone()
    m.__dict__.update({k: v for k, v in vars(model).items() if k.endswith("_")})
    m.calibration_ = _calibration()
    loaded = CannonModel.load(m.save(tmp_path / "c.nc"))
    assert loaded.calibration_ == m.calibration_


@pytest.mark.parametrize("case", sorted(CALIBRATIONS))
def test_bad_calibration_is_refused(model, tmp_path, case):
    change, match = CALIBRATIONS[case]
    ds = model.to_dataset()
    ds.attrs["calibration"] = change if isinstance(change, str) else json.dumps(_calibration(**change))
    with pytest.raises(ModelFileError, match=match):
        CannonModel.load(_resigned(ds, tmp_path / "m.nc"))


@pytest.mark.parametrize("value", [None, "2", "3", 2.0, -1, 0, 99, "garbage"])
def test_format_version_is_parsed_strictly(model, tmp_path, value):
    ds = model.to_dataset()
    if value is None:
        del ds.attrs["format_version"]
    else:
        ds.attrs["format_version"] = value
    with pytest.raises(ModelFileError, match="format_version|format version"):
        CannonModel.load(_resigned(ds, tmp_path / "m.nc"))


def test_files_without_checksums(model, tmp_path, caplog):
    ds = model.to_dataset()
    del ds.attrs["checksums"]
    ds.to_netcdf(tmp_path / "v3.nc", engine="h5netcdf")
    with pytest.raises(ModelFileError, match="without its checksums"):
        CannonModel.load(tmp_path / "v3.nc")
    ds.attrs["format_version"] = 2  # an older file: read, with a logged warning
    ds.to_netcdf(tmp_path / "v2.nc", engine="h5netcdf")
    with caplog.at_level(logging.WARNING, logger="bayescannon.modelfile"):
        loaded = CannonModel.load(tmp_path / "v2.nc")
    assert "cannot be verified" in caplog.text
    np.testing.assert_array_equal(loaded.theta_, model.theta_)


def test_edited_array_or_attribute_is_named(model, tmp_path):
    path = model.save(tmp_path / "m.nc")
    ds = model.to_dataset()
    ds["s2"] = ds["s2"] * 1.0001  # edited without updating the checksums
    ds.to_netcdf(tmp_path / "e.nc", engine="h5netcdf")
    with pytest.raises(ModelFileError, match=r"e\.nc: array 's2' does not match its checksum"):
        CannonModel.load(tmp_path / "e.nc")
    ds = model.to_dataset()
    ds.attrs["params"] = ds.attrs["params"].replace('"n_starts": 4', '"n_starts": 5')
    ds.to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    with pytest.raises(ModelFileError, match="attributes .* do not match their checksum"):
        CannonModel.load(tmp_path / "a.nc")
    assert _state(CannonModel.load(path)) == _state(CannonModel.load(path))


def test_save_does_not_overwrite_without_overwrite(model, tmp_path):
    path = model.save(tmp_path / "m.nc")
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="exists"):
        model.save(path)
    assert path.read_bytes() == before
    model.save(path, overwrite=True)


def _classify(path, reference):
    try:
        loaded = CannonModel.load(path)
    except ModelFileError:
        return "detected"
    return "identical" if _state(loaded) == reference else "silently wrong"


def test_random_byte_flips_and_truncations_are_all_detected(model, tmp_path):
    path = model.save(tmp_path / "m.nc")
    data = path.read_bytes()
    reference = _state(CannonModel.load(path))
    rng = np.random.default_rng(20261111)
    counts = {"flip": {}, "truncation": {}}
    bad = tmp_path / "bad.nc"
    for _ in range(N_FLIPS):
        pos = int(rng.integers(len(data)))
        out = bytearray(data)
        out[pos] ^= int(rng.integers(1, 256))
        bad.write_bytes(bytes(out))
        kind = _classify(bad, reference)
        counts["flip"][kind] = counts["flip"].get(kind, 0) + 1
        assert kind != "silently wrong", f"flip at byte {pos} of {len(data)} loaded a different model"
    for _ in range(N_TRUNCATIONS):
        size = int(rng.integers(len(data)))
        bad.write_bytes(data[:size])
        kind = _classify(bad, reference)
        counts["truncation"][kind] = counts["truncation"].get(kind, 0) + 1
        assert kind == "detected", f"truncation to {size} of {len(data)} bytes was not detected"
    logging.getLogger(__name__).warning("model-file faults (%d bytes): %s", len(data), counts)
    assert sum(counts["flip"].values()) == N_FLIPS and counts["truncation"] == {"detected": N_TRUNCATIONS}
