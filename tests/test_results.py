"""The result builders of :mod:`bayescannon.results`: the same Datasets as xarray's own
constructor, without importing dask (the first ``infer`` of a process paid ~0.5 s for it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from bayescannon import CannonModel
from bayescannon.results import index_coordinates, numpy_variable, result_dataset, set_label_units

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["TEFF", "LOGG", "FE_H"]


def _assert_same(ds, ref):
    """Identical values, attrs, dtypes and indexes."""
    xr.testing.assert_identical(ds, ref)
    assert {k: ds[k].dtype for k in ds.variables} == {k: ref[k].dtype for k in ref.variables}
    assert set(ds.xindexes) == set(ref.xindexes)
    for k in ref.xindexes:
        assert type(ds.xindexes[k]) is type(ref.xindexes[k])
        assert ds.xindexes[k].equals(ref.xindexes[k])
        assert ds.xindexes[k].index.dtype == ref.xindexes[k].index.dtype


@pytest.mark.parametrize(
    "ids",
    [
        np.array(["2M00000001+0000000", "2M00000002+0000000", "b"]),  # <U18: the infer ids
        np.array([10, 20, 30]),
        np.array([0.5, 1.5, 2.5]),
        np.array(["a", "bb", "c"], dtype=object),  # object: xarray's own conversion path
        np.array(["2020-01-01", "2020-01-02", "2020-01-03"], dtype="datetime64[ns]"),
    ],
)
def test_result_dataset_is_the_xarray_dataset(ids):
    rng = np.random.default_rng(3)
    data = {
        "labels": (("star", "label_name"), rng.normal(size=(3, 3))),
        "covariance": (("star", "label_name", "label_name_2"), rng.normal(size=(3, 3, 3)), {"note": "x"}),
        "n_pixels": ("star", np.array([5, 6, 7])),
        "converged": ("star", np.array([True, False, True])),
        "chi2": ("star", np.array([1.0, np.nan, 3.0], dtype=np.float32)),
        "when": ("star", np.array(["2020-01-01", "NaT", "2021-06-01"], dtype="datetime64[ns]")),
        "tag": ("star", np.array(["u", None, "w"], dtype=object)),
    }
    coords = {"star": ids, "label_name": NAMES, "label_name_2": NAMES}
    attrs = {"model_training_hash": "abc", "flag_1": "one"}
    ds = set_label_units(result_dataset(data, coords, attrs))
    ref = set_label_units(xr.Dataset(data, coords=coords, attrs=attrs))
    _assert_same(ds, ref)
    assert ds["labels"].attrs["units"] == "K, dex, dex"
    # label-based selection works on the indexes the builder made
    np.testing.assert_array_equal(ds.sel(star=ids[1])["n_pixels"].values, 6)
    np.testing.assert_array_equal(ds.sel(label_name="LOGG")["labels"].values, data["labels"][1][:, 1])


def test_numpy_variable_is_the_xarray_variable():
    for data in (np.arange(6.0).reshape(2, 3), np.array([[1, 2, 3], [4, 5, 6]]), np.ones((2, 3), dtype=bool)):
        v = numpy_variable(("a", "b"), data, {"units": "K"})
        ref = xr.Variable(("a", "b"), data, {"units": "K"})
        assert v.identical(ref) and v.dtype == ref.dtype
        assert np.shares_memory(v.values, data)  # no copy, as xarray's own constructor
    lists = numpy_variable("a", [1.0, 2.0])
    assert lists.identical(xr.Variable("a", [1.0, 2.0]))


def test_index_coordinates_rejects_2d_values():
    with pytest.raises(ValueError, match="'star' must be one-dimensional"):
        index_coordinates({"star": np.zeros((2, 2))})


_CHILD = """
import json, sys
import numpy as np
before = "dask" in sys.modules
import bayescannon
from bayescannon.bayes import calibrate
after_import = "dask" in sys.modules
rng = np.random.default_rng(1)
y = rng.normal(size=(120, 3)) * [300.0, 0.5, 0.2] + [4800.0, 2.5, -0.2]
flux = 1 + 0.01 * rng.normal(size=(120, 30)); ivar = np.full_like(flux, 1e4)
model = bayescannon.CannonModel(["TEFF", "LOGG", "FE_H"]).fit(flux[:40], ivar[:40], y[:40])
formal = model.infer(flux[40:], ivar[40:])
calibrate(model, flux[40:], ivar[40:], y[40:])
calibrated = model.infer(flux[40:], ivar[40:], uncertainty="calibrated")
print(json.dumps(dict(before=before, after_import=after_import, after=sorted(m for m in sys.modules if m.startswith("dask")),
                      formal=sorted(formal.data_vars), calibrated=sorted(calibrated.data_vars))))
"""


def test_fit_and_infer_do_not_import_dask():
    """A fresh process that fits, infers, calibrates and infers calibrated labels never imports
    dask (xarray would import dask.array on the first Dataset it builds: ~0.5 s per command)."""
    # the same calls here first: the child loads the compiled kernels from the disk cache
    # instead of compiling them (this process compiles them when the cache is cold)
    exec(compile(_CHILD.replace("print(json.dumps", "(json.dumps"), "<child>", "exec"), {})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] is False and got["after_import"] is False
    assert got["after"] == []
    # the child really went through both result builders
    assert "labels" in got["formal"] and "half_width_68" not in got["formal"]
    assert {"labels", "half_width_68", "half_width_95", "labels_uncorrected"} <= set(got["calibrated"])


def test_infer_result_matches_xarray_construction(fitted_small):
    """``infer`` builds the same Dataset as xarray's constructor would from its arrays."""
    model, flux, ivar = fitted_small
    ds = model.infer(flux, ivar)
    data = {k: (ds[k].dims, ds[k].values, dict(ds[k].attrs)) for k in ds.data_vars}
    coords = {k: ds[k].values for k in ("star", "label_name", "label_name_2")}
    ref = xr.Dataset(data, coords=coords, attrs=ds.attrs)
    ref.coords["label_unit"] = ("label_name", ds["label_unit"].values)
    _assert_same(ds, ref)
    assert json.dumps(sorted(ds.attrs)) == json.dumps(sorted(ref.attrs))


@pytest.fixture
def fitted_small():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(60, 3)) * [300.0, 0.5, 0.2] + [4800.0, 2.5, -0.2]
    x = (y - y.mean(0)) / y.std(0)
    theta = rng.normal(scale=0.02, size=(25, 4))
    flux = 1 + np.column_stack([np.ones(60), x]) @ theta.T + 0.01 * rng.normal(size=(60, 25))
    ivar = np.full_like(flux, 1e4)
    model = CannonModel(NAMES).fit(flux[:50], ivar[:50], y[:50])
    return model, flux[50:], ivar[50:]
