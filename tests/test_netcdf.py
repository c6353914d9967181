"""netCDF files read and written through h5netcdf (:mod:`bayescannon.pipeline.netcdf`): the same
files and Datasets as xarray's netCDF layer, and CLI commands that never import dask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from astropy.table import Table

from bayescannon import CannonModel
from bayescannon.io import read_spectra, write_spectra
from bayescannon.pipeline.netcdf import read_netcdf, write_netcdf
from bayescannon.spectra import make_spectra

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["TEFF", "LOGG", "FE_H"]


def _xarray_read(path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as src:
        return src.load()


def _h5_dump(path) -> list:
    """Every group, dataset, dtype, shape, fill value, attribute and value of an HDF5 file
    (dimension-scale references compared by presence: they are object addresses)."""
    out = []

    def visit(name, obj):
        attrs = {k: "ref" if k in ("DIMENSION_LIST", "REFERENCE_LIST") else repr(obj.attrs[k]) for k in obj.attrs}
        out.append((name, str(getattr(obj, "dtype", "")), getattr(obj, "shape", None), sorted(attrs.items())))
        if isinstance(obj, h5py.Dataset):
            out.append(str(obj.fillvalue))
            values = obj[...]
            out.append(values.tolist() if values.dtype.kind == "O" else values.tobytes())

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        out.append(sorted((k, repr(f.attrs[k])) for k in f.attrs))
    return out


def _assert_same(ds, ref):
    xr.testing.assert_identical(ds, ref)
    assert {k: ds[k].dtype for k in ds.variables} == {k: ref[k].dtype for k in ref.variables}
    assert set(ds.coords) == set(ref.coords) and set(ds.xindexes) == set(ref.xindexes)


def _spectra(n=40, p=30, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, 3)) * [300.0, 0.5, 0.2] + [4800.0, 2.5, -0.2]
    x = (y - y.mean(0)) / y.std(0)
    theta = rng.normal(scale=0.02, size=(p, 4))
    flux = 1 + np.column_stack([np.ones(n), x]) @ theta.T + 0.01 * rng.normal(size=(n, p))
    ivar = np.full_like(flux, 1e4)
    ivar[0, :3] = 0.0
    return y, flux, ivar


@pytest.fixture
def container():
    y, flux, ivar = _spectra()
    ds = make_spectra(
        15000.0 + np.arange(flux.shape[1]),
        flux,
        ivar,
        ids=[f"2M{i:05d}" for i in range(len(y))],
        mask=np.zeros(flux.shape, dtype=np.uint32),
        attrs={"survey": "test", "resolving_power": 22500.0, "normalised": True, "bands": np.array([1, 2])},
        TEFF=y[:, 0],
        LOGG=y[:, 1],
        FE_H=y[:, 2],
        good=np.arange(len(y)) % 3 != 0,
        field=np.array([f"N{i % 4}" for i in range(len(y))]),
    )
    ds["TEFF"].attrs["units"] = "K"
    return ds


def test_make_spectra_matches_xarray_construction(container):
    """``make_spectra`` builds the Dataset xarray's constructor builds from the same arrays."""
    data = {k: (v.dims, v.values, dict(v.attrs)) for k, v in container.data_vars.items()}
    ref = xr.Dataset(
        data,
        coords={"star": container["star"].values, "wavelength": ("pixel", container["wavelength"].values)},
        attrs=container.attrs,
    )
    ref["wavelength"].attrs["units"] = "Angstrom"
    _assert_same(container, ref)
    assert list(container.variables) == list(ref.variables)


def test_model_file_is_the_file_xarray_writes(tmp_path):
    """A model file has the same groups, dimension scales, dtypes, fill values, attributes and
    values as ``Dataset.to_netcdf(engine="h5netcdf")`` writes, and reads back identical."""
    y, flux, ivar = _spectra()
    model = CannonModel(NAMES).fit(flux, ivar, y)
    path = model.save(tmp_path / "m.nc")
    ref = _xarray_read(path)
    ref.to_netcdf(tmp_path / "ref.nc", engine="h5netcdf")
    assert _h5_dump(path) == _h5_dump(tmp_path / "ref.nc")
    _assert_same(read_netcdf(path), ref)
    _assert_same(read_netcdf(tmp_path / "ref.nc"), ref)
    # the checksums written from the built Dataset verify, and predictions are bit-identical
    back = CannonModel.load(path)
    np.testing.assert_array_equal(back.theta_, model.theta_)
    np.testing.assert_array_equal(back.infer(flux, ivar)["labels"].values, model.infer(flux, ivar)["labels"].values)


def test_spectra_file_is_the_file_xarray_writes(tmp_path, container):
    """A spectra container (booleans, string columns, uint32 mask, array attributes) is written
    as xarray writes it and read back into the container it was."""
    path = write_spectra(container, tmp_path / "s.nc")
    back = read_spectra(path)
    _assert_same(back, container)
    raw = _xarray_read(path)
    _assert_same(read_netcdf(path), raw)
    write_netcdf(raw, tmp_path / "mine.nc")
    raw.to_netcdf(tmp_path / "ref.nc", engine="h5netcdf")
    assert _h5_dump(tmp_path / "mine.nc") == _h5_dump(tmp_path / "ref.nc")


def test_other_encodings_are_left_to_xarray(tmp_path):
    """Times, packed integers and integer fill values take xarray's own path both ways."""
    ds = xr.Dataset(
        {
            "t": ("n", np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[ns]")),
            "packed": ("n", np.array([1.5, np.nan])),
            "count": ("n", np.array([3, 4], dtype=np.int32)),
        },
        coords={"n": [10, 20]},
    )
    ds["packed"].encoding = {"dtype": "int16", "scale_factor": 0.5, "_FillValue": -1}
    write_netcdf(ds, tmp_path / "x.nc")
    ref = _xarray_read(tmp_path / "x.nc")
    assert ref["t"].dtype.kind == "M" and ref["packed"].values[0] == 1.5 and np.isnan(ref["packed"].values[1])
    _assert_same(read_netcdf(tmp_path / "x.nc"), ref)
    _assert_same(ref, ds)


def test_unreadable_file_raises_oserror(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError):
        read_netcdf(bad)


_CLI_CHILD = """
import json, sys
from bayescannon.cli import main
from bayescannon.spectra import make_spectra
before = "dask" in sys.modules
make_spectra([1.0, 2.0], [[1.0, 1.0]], [[1.0, 1.0]], mask=[[0, 1]], snr=[10.0])
codes = [main(["train", {train!r}, "--labels", "TEFF", "LOGG", "FE_H", "-o", {model!r}, "--no-progress"]),
         main(["infer", {model!r}, {test!r}, "-o", {out!r}, "--no-progress"])]
print(json.dumps(dict(before=before, codes=codes, after=sorted(m for m in sys.modules if m.startswith("dask")))))
"""


def test_cli_train_and_infer_do_not_import_dask(tmp_path):
    """A fresh process that trains (spectra file in, model file out) and infers (model and
    spectra files in, FITS catalogue out) through the CLI never imports dask, and writes the
    catalogue this process writes from the same files."""
    y, flux, ivar = _spectra(n=80)
    wl = 15000.0 + np.arange(flux.shape[1])
    ids = [f"S{i:03d}" for i in range(80)]
    kw = dict(TEFF=y[:, 0], LOGG=y[:, 1], FE_H=y[:, 2])
    train = write_spectra(
        make_spectra(wl, flux[:50], ivar[:50], ids=ids[:50], **{k: v[:50] for k, v in kw.items()}),
        tmp_path / "train.nc",
    )
    test = write_spectra(make_spectra(wl, flux[50:], ivar[50:], ids=ids[50:]), tmp_path / "test.nc")
    paths = {"train": str(train), "test": str(test)}
    # the same commands here first: the child loads the compiled kernels from the disk cache
    exec(
        compile(
            _CLI_CHILD.format(**paths, model=str(tmp_path / "a.nc"), out=str(tmp_path / "a.fits")).replace(
                "print(json.dumps", "(json.dumps"
            ),
            "<child>",
            "exec",
        ),
        {},
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = _CLI_CHILD.format(**paths, model=str(tmp_path / "b.nc"), out=str(tmp_path / "b.fits"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"before": False, "codes": [0, 0], "after": []}
    a, b = Table.read(tmp_path / "a.fits"), Table.read(tmp_path / "b.fits")
    assert len(b) == 30 and list(b["ID"]) == ids[50:]
    for name in NAMES:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
        # labels recovered within 5 sigma of the formal errors (S/N 100 per pixel)
        err = np.asarray(b[f"e_{name}"], dtype=float)
        assert np.all(np.abs(np.asarray(b[name], dtype=float) - y[50:, NAMES.index(name)]) < 5 * err + 1e-9)
