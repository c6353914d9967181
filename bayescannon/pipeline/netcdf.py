"""netCDF (HDF5) files of numpy Datasets read and written through h5netcdf, without xarray's dask probe.

xarray's netCDF layer asks of every array it encodes or decodes whether it is a dask array
(``is_chunked_array`` in ``apply_ufunc``, reached from the string and fill-value coders), and
the first such question imports ``dask.array`` when dask is installed: ~0.5 s (with
``scipy.fft``, ``scipy.sparse`` and ``jinja2``) that every CLI command paid for reading its
model or spectra file. Model files and spectra containers hold only numbers, strings and
``NaN`` fill values, so this module writes them as xarray would (dimension scales, ``_FillValue``
NaN on floats, variable-length strings, the ``coordinates`` attribute) and reads them back
into the same Dataset (``identical``) built with :func:`bayescannon.results.result_dataset`'s
builders. Anything outside that subset (time units, scale/offset packing, integer fill values,
booleans, enums, character arrays) takes xarray's own path, which handles every case.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import xarray as xr

from bayescannon.results import index_coordinates, numpy_variable

logger = logging.getLogger(__name__)

__all__ = ["read_netcdf", "write_netcdf"]

#: variable attributes that make xarray's CF decoding do more than drop a NaN fill value
_CF_DECODED = frozenset(
    {"scale_factor", "add_offset", "missing_value", "calendar", "dtype", "_Unsigned", "_Encoding", "flag_values"}
)
_TIME_UNITS = frozenset(
    {"days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "nanoseconds", "day", "hour", "second"}
)


def _plain_variable(var) -> bool:
    """True when xarray would decode ``var`` to its stored values (strings to ``<U``, a NaN
    ``_FillValue`` on floats dropped)."""
    attrs = var.attrs
    if _CF_DECODED.intersection(attrs):
        return False
    units = attrs.get("units")
    if isinstance(units, str) and (" since " in units or units.strip().lower() in _TIME_UNITS):
        return False
    dtype = var.dtype
    if dtype is str or np.dtype(dtype).kind == "O":
        return "_FillValue" not in attrs
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        fill = attrs.get("_FillValue")
        return fill is None or bool(np.all(np.isnan(fill)))
    return dtype.kind in "iu" and "_FillValue" not in attrs


def _plain_dataset(ds) -> bool:
    """True when every variable and attribute of a Dataset has a plain netCDF encoding."""
    for var in ds.variables.values():
        kind = var.dtype.kind
        if kind not in "fiuU" and not (kind == "O" and all(isinstance(v, str) for v in var.values.ravel().tolist())):
            return False
        if _CF_DECODED.intersection(var.attrs) or "_FillValue" in var.attrs or var.encoding.get("_FillValue"):
            return False
        units = var.attrs.get("units")
        if isinstance(units, str) and (" since " in units or units.strip().lower() in _TIME_UNITS):
            return False
    return True


def read_netcdf(path) -> xr.Dataset:
    """Read a netCDF4 file into a Dataset of numpy arrays, as ``xr.open_dataset(path,
    engine="h5netcdf").load()`` would, without importing dask.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    xarray.Dataset
        Fully loaded; identical to xarray's reading for files of numbers, strings and NaN fill
        values (others are read by xarray itself).

    Raises
    ------
    OSError, ValueError
        The file is not a readable netCDF4/HDF5 file (as xarray raises them).
    """
    path = os.fspath(path)
    import h5netcdf  # h5py/h5netcdf (~0.1 s): imported when a file is read or written, not with the package

    with h5netcdf.File(path, "r") as f:
        if f.groups or not all(_plain_variable(v) for v in f.variables.values()):
            logger.debug("%s: encodings beyond numbers and strings; read through xarray", path)
            return _read_with_xarray(path)
        attrs = {str(k): v for k, v in f.attrs.items()}
        coord_names = set(str(attrs.pop("coordinates", "")).split())
        raw = {}
        for name, var in f.variables.items():
            values = var[...]
            if var.dtype is str or np.asarray(values).dtype == object:
                values = np.asarray(values).astype(str)
            var_attrs = {str(k): v for k, v in var.attrs.items() if k not in ("_FillValue", "coordinates")}
            coord_names.update(str(var.attrs.get("coordinates", "")).split())
            raw[str(name)] = (tuple(map(str, var.dimensions)), np.asarray(values), var_attrs)
    index = {n: spec for n, spec in raw.items() if spec[0] == (n,)}
    coords = index_coordinates({n: spec[1] for n, spec in index.items()})
    for n, spec in index.items():
        coords[n].attrs.update(spec[2])
    variables = {n: numpy_variable(*spec) for n, spec in raw.items() if n not in index}
    data_vars = {n: v for n, v in variables.items() if n not in coord_names}
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    for n, v in variables.items():  # non-index coordinates, in file order
        if n in coord_names:
            ds.coords[n] = v
    return ds


def _read_with_xarray(path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as src:
        return src.load()


def write_netcdf(ds: xr.Dataset, path) -> None:
    """Write a Dataset of numpy arrays as ``ds.to_netcdf(path, engine="h5netcdf")`` does,
    without importing dask.

    Floats get a ``NaN`` ``_FillValue``, strings become variable-length strings, data
    variables name their non-index coordinates in a ``coordinates`` attribute. A Dataset with
    other dtypes or encodings (booleans, times, packed values) is written by xarray itself.

    Parameters
    ----------
    ds : xarray.Dataset
        Numbers and strings in numpy arrays.
    path : str or path-like
        The file to create (the caller makes the write atomic).
    """
    path = os.fspath(path)
    if not _plain_dataset(ds):
        ds.to_netcdf(path, engine="h5netcdf")
        return
    index = set(ds.xindexes)
    other_coords = [str(c) for c in ds.coords if c not in index]
    import h5netcdf  # see read_netcdf
    import h5py

    with h5netcdf.File(path, "w") as f:
        f.dimensions = {str(d): int(n) for d, n in ds.sizes.items()}
        attached: set[str] = set()
        for name, var in ds.variables.items():
            values = var.values
            kwargs = {}
            if values.dtype.kind in "UO":
                dtype = h5py.special_dtype(vlen=str)
                values = values.astype(object)
            else:
                dtype = values.dtype
                if dtype.kind == "f":
                    kwargs["fillvalue"] = np.array(np.nan, dtype=dtype)[()]
            out = f.create_variable(str(name), dimensions=tuple(map(str, var.dims)), dtype=dtype, **kwargs)
            if values.size:
                out[...] = values
            for k, v in var.attrs.items():
                out.attrs[str(k)] = v
            if name in ds.data_vars:
                mine = [c for c in other_coords if set(ds[c].dims) <= set(var.dims)]
                if mine:
                    out.attrs["coordinates"] = " ".join(mine)
                    attached.update(mine)
        loose = [c for c in other_coords if c not in attached]
        for k, v in ds.attrs.items():
            f.attrs[str(k)] = v
        if loose:
            f.attrs["coordinates"] = " ".join(loose)
