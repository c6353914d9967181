"""bayescannon's own container files: ``.nc``, ``.npz`` and the FITS "bayescannon table".

Three formats round-trip a spectra container exactly (see ``docs/guides/conventions.md``):

``.nc``
    the ``xarray.Dataset`` written with ``h5netcdf`` (boolean per-star columns are
    stored as ``int8`` and restored on reading);
``.npz``
    keys ``wavelength``, ``flux``, ``ivar``, ``ids`` (plus ``mask``, per-star columns
    ``star__<name>`` and JSON-encoded attributes);
``.fits`` ("bayescannon table")
    image HDUs ``FLUX``, ``IVAR`` (and ``MASK``), a 1-D image HDU ``WAVELENGTH``
    (``BUNIT`` = Angstrom) and a binary table ``IDS`` with a ``STAR`` column and the
    per-star columns.

Files are written atomically (:mod:`bayescannon.pipeline.atomic`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from bayescannon.errors import InvalidInputError, SurveyFormatError
from bayescannon.io.backend import FitsProbe, SpectraFormat
from bayescannon.io.common import format_error, wavelength_unit_factor
from bayescannon.io.fits import table_hdu
from bayescannon.io.records import _build_dataset
from bayescannon.pipeline.atomic import write_atomic
from bayescannon.pipeline.netcdf import read_netcdf, write_netcdf
from bayescannon.results import index_coordinates, numpy_variable
from bayescannon.spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = ["BAYESCANNON_FITS", "CONTAINER_FORMATS", "NC", "NPZ", "decode_container", "write_spectra"]

_FORMAT_TAG = "bayescannon-spectra"
_BOOL_TAG = "bayescannon_dtype"


# ---------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------


def _per_star_vars(ds: xr.Dataset) -> list[str]:
    return [k for k, v in ds.data_vars.items() if v.dims == ("star",)]


def _json_safe(d: Mapping) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[str(k)] = v
    return out


def _to_json(d: Mapping) -> str:
    return json.dumps(_json_safe(d), default=str)


def _per_star_columns(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Per-star columns as arrays (object arrays as strings)."""
    out = {}
    for k in _per_star_vars(ds):
        v = np.asarray(ds[k].values)
        out[k] = v.astype(str) if v.dtype == object else v
    return out


def _check_exists(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise format_error(path, "file does not exist")
    return path


def _check_shapes(path, flux, ivar, wl, names=("flux", "ivar", "wavelength")) -> None:
    if flux.ndim != 2 or ivar.shape != flux.shape or wl.shape != (flux.shape[1],):
        raise format_error(
            path,
            f"inconsistent shapes: {names[0]} {flux.shape}, {names[1]} {ivar.shape}, {names[2]} {wl.shape}",
        )


def _ignore_options(fmt: str, path, kwargs: Mapping) -> None:
    if kwargs:
        logger.warning(
            "%s: the %s container format takes no reader options; ignored %s",
            os.fspath(path),
            fmt,
            ", ".join(sorted(kwargs)),
        )


# ---------------------------------------------------------------------------------------
# netCDF
# ---------------------------------------------------------------------------------------


def _netcdf_attr(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value)
    return json.dumps(value, default=str)


def _write_nc(ds: xr.Dataset, path: Path) -> None:
    out = ds.copy()
    for k in list(out.data_vars):
        if out[k].dtype == bool:
            attrs = dict(out[k].attrs)
            attrs[_BOOL_TAG] = "bool"
            out[k] = numpy_variable(out[k].dims, np.asarray(out[k].values).astype(np.int8), attrs)
    out.attrs = {k: _netcdf_attr(v) for k, v in out.attrs.items()}
    write_netcdf(out, path)


def decode_container(ds: xr.Dataset, path=None) -> xr.Dataset:
    """Undo the netCDF encodings of :func:`_write_nc` (booleans, string ids and columns),
    e.g. on a slice of stars read lazily from a container file (``path`` is unused, kept
    for the reader signature)."""
    for k in list(ds.data_vars):
        if ds[k].attrs.get(_BOOL_TAG) == "bool":
            attrs = {a: b for a, b in ds[k].attrs.items() if a != _BOOL_TAG}
            ds[k] = numpy_variable(ds[k].dims, np.asarray(ds[k].values).astype(bool), attrs)
    # numpy in, numpy out: built without xarray's dask probe (bayescannon.results)
    if "star" in ds.coords and (ds["star"].dtype.kind != "U" or ds["star"].attrs):  # ids as str, no attributes
        ds = ds.assign_coords(index_coordinates({"star": np.asarray(ds["star"].values).astype(str)}))
    for k in _per_star_vars(ds):
        if ds[k].dtype == object:
            ds[k] = numpy_variable("star", np.asarray(ds[k].values).astype(str))
    if isinstance(ds.attrs.get("normalised"), (int, np.integer)):
        ds.attrs["normalised"] = bool(ds.attrs["normalised"])
    return ds


_restore = decode_container  # the name io.generic re-exports


def _read_nc(path, **kwargs) -> xr.Dataset:
    path = _check_exists(path)
    _ignore_options("nc", path, kwargs)
    try:
        ds = read_netcdf(path)
    except (OSError, ValueError) as exc:
        raise format_error(path, f"not a readable netCDF/HDF5 file ({exc})") from exc
    for var in ("flux", "ivar"):
        if var not in ds:
            raise format_error(path, f"no '{var}' variable: not a spectra container")
    if "wavelength" not in ds.coords:
        raise format_error(path, "no 'wavelength' coordinate: not a spectra container")
    return check_spectra(decode_container(ds, path))


# ---------------------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------------------


def _write_npz(ds: xr.Dataset, path: Path) -> None:
    arrays = {
        "wavelength": np.asarray(ds["wavelength"].values, dtype=np.float64),
        "flux": np.asarray(ds["flux"].values, dtype=np.float64),
        "ivar": np.asarray(ds["ivar"].values, dtype=np.float64),
        "ids": np.asarray(ds["star"].values).astype(str),
        "attrs_json": np.asarray(_to_json(ds.attrs)),
        "wavelength_attrs_json": np.asarray(_to_json(ds["wavelength"].attrs)),
    }
    if "mask" in ds:
        arrays["mask"] = np.asarray(ds["mask"].values, dtype=np.uint32)
    arrays.update({f"star__{k}": v for k, v in _per_star_columns(ds).items()})
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _read_npz(path, **kwargs) -> xr.Dataset:
    path = _check_exists(path)
    _ignore_options("npz", path, kwargs)
    try:
        with np.load(path, allow_pickle=False) as z:
            content = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise format_error(path, f"not a readable .npz file ({exc})") from exc
    missing = [k for k in ("wavelength", "flux", "ivar", "ids") if k not in content]
    if missing:
        raise format_error(path, f"missing array(s) {', '.join(missing)} in .npz")
    flux, ivar, wl = content["flux"], content["ivar"], content["wavelength"]
    _check_shapes(path, flux, ivar, wl)
    if content["ids"].shape != (flux.shape[0],):
        raise format_error(path, f"ids has shape {content['ids'].shape}; expected ({flux.shape[0]},)")
    attrs = json.loads(str(content["attrs_json"])) if "attrs_json" in content else {}
    wl_attrs = json.loads(str(content["wavelength_attrs_json"])) if "wavelength_attrs_json" in content else {}
    factor = wavelength_unit_factor(wl_attrs.get("units"), path, "wavelength units")
    wl_attrs["units"] = "Angstrom"
    extras = {k[len("star__") :]: v for k, v in content.items() if k.startswith("star__")}
    ds = _build_dataset(
        np.asarray(wl, dtype=np.float64) * factor,
        flux.astype(np.float64, copy=False),
        ivar.astype(np.float64, copy=False),
        content.get("mask"),
        content["ids"].astype(str),
        extras,
        attrs,
        wl_attrs,
    )
    return check_spectra(ds)


# ---------------------------------------------------------------------------------------
# FITS "bayescannon table"
# ---------------------------------------------------------------------------------------


def _write_bc_fits(ds: xr.Dataset, path: Path) -> None:
    primary = fits.PrimaryHDU()
    primary.header["BCFORMAT"] = (_FORMAT_TAG, "bayescannon spectra container")
    primary.header["BCATTRS"] = _to_json(ds.attrs)
    hdus = [
        primary,
        fits.ImageHDU(np.asarray(ds["flux"].values, dtype=np.float64), name="FLUX"),
        fits.ImageHDU(np.asarray(ds["ivar"].values, dtype=np.float64), name="IVAR"),
    ]
    if "mask" in ds:
        hdus.append(fits.ImageHDU(np.asarray(ds["mask"].values, dtype=np.uint32), name="MASK"))
    wl_hdu = fits.ImageHDU(np.asarray(ds["wavelength"].values, dtype=np.float64), name="WAVELENGTH")
    wl_hdu.header["BUNIT"] = "Angstrom"
    wl_hdu.header["BCWATTRS"] = _to_json(ds["wavelength"].attrs)
    hdus.append(wl_hdu)
    columns = {"STAR": np.asarray(ds["star"].values).astype(str), **_per_star_columns(ds)}
    hdus.append(table_hdu(columns, "IDS"))
    fits.HDUList(hdus).writeto(path, overwrite=True)  # the empty temporary file of write_atomic


def _read_bc_fits(path, **kwargs) -> xr.Dataset:
    path = _check_exists(path)
    _ignore_options("bayescannon", path, kwargs)
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [str(h.name).upper() for h in hdul]
            missing = [n for n in ("FLUX", "IVAR", "WAVELENGTH", "IDS") if n not in names]
            if missing:
                raise format_error(path, f"missing HDU(s) {', '.join(missing)} (found {', '.join(names)})")
            flux = np.array(hdul["FLUX"].data, dtype=np.float64)
            ivar = np.array(hdul["IVAR"].data, dtype=np.float64)
            mask = np.array(hdul["MASK"].data, dtype=np.uint32) if "MASK" in names else None
            wl_hdu = hdul["WAVELENGTH"]
            if wl_hdu.data is None:
                raise format_error(path, "WAVELENGTH HDU holds no data")
            wl = np.array(wl_hdu.data, dtype=np.float64).ravel()
            factor = wavelength_unit_factor(wl_hdu.header.get("BUNIT"), path, "BUNIT of the WAVELENGTH HDU")
            wl_attrs = json.loads(wl_hdu.header.get("BCWATTRS", "{}"))
            table = Table.read(hdul["IDS"])
            attrs = json.loads(hdul[0].header.get("BCATTRS", "{}"))
    except SurveyFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise format_error(path, f"not a readable bayescannon FITS table ({exc})") from exc
    _check_shapes(path, flux, ivar, wl, ("FLUX", "IVAR", "WAVELENGTH"))
    if "STAR" not in table.colnames or len(table) != flux.shape[0]:
        raise format_error(path, f"IDS table must have a STAR column and {flux.shape[0]} rows")
    ids = np.asarray(table["STAR"]).astype(str)
    extras = {}
    for k in table.colnames:
        if k == "STAR":
            continue
        col = table[k]
        v = np.asarray(col.filled() if hasattr(col, "filled") else col)
        extras[k] = v.astype(str) if v.dtype.kind in "SU" else v
    wl_attrs["units"] = "Angstrom"
    ds = _build_dataset(wl * factor, flux, ivar, mask, ids, extras, attrs, wl_attrs)
    return check_spectra(ds)


def _is_bc_fits(probe: FitsProbe) -> bool:
    return {"FLUX", "IVAR", "WAVELENGTH"} <= set(probe.names) or probe.primary.get("BCFORMAT") == _FORMAT_TAG


# ---------------------------------------------------------------------------------------
# format entries and the writer
# ---------------------------------------------------------------------------------------


def _name_endswith(*suffixes: str):
    return lambda path: os.path.basename(os.fspath(path)).lower().endswith(suffixes)


NC = SpectraFormat(
    name="nc",
    description="netCDF/HDF5 container (.nc, .h5, .hdf5, .nc4)",
    guess_can_open=_name_endswith(".nc", ".h5", ".hdf5", ".nc4"),
    open_dataset=_read_nc,
    write=_write_nc,
    write_suffixes=(".nc", ".h5", ".nc4"),
)
NPZ = SpectraFormat(
    name="npz",
    description="numpy container (.npz)",
    guess_can_open=_name_endswith(".npz"),
    open_dataset=_read_npz,
    write=_write_npz,
    write_suffixes=(".npz",),
)
BAYESCANNON_FITS = SpectraFormat(
    name="bayescannon",
    description='FITS "bayescannon table" container (FLUX, IVAR, WAVELENGTH, IDS HDUs)',
    guess_can_open=lambda path: False,  # a .fits name says nothing: the content does
    guess_from_content=_is_bc_fits,
    open_dataset=_read_bc_fits,
    write=_write_bc_fits,
    write_suffixes=(".fits", ".fit"),
)
#: The container formats, in the order :func:`write_spectra` tries their suffixes.
CONTAINER_FORMATS = (NC, NPZ, BAYESCANNON_FITS)


def write_spectra(ds: xr.Dataset, path, format: str | None = None, overwrite: bool = False) -> Path:
    """Write a spectra container to ``.nc``, ``.npz`` or a FITS "bayescannon table".

    The file is written to a temporary name in the same folder and moved into place
    (mode ``0o666`` less the umask), so a reader never sees a half-written file.

    Parameters
    ----------
    ds : xarray.Dataset
        The spectra container.
    path : str or path-like
        Output file; the suffix picks the format unless ``format`` is given.
    format : {"nc", "npz", "bayescannon"}, optional
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    InvalidInputError
        When ``ds`` is not a valid container, the format is unknown, or the file exists
        and ``overwrite`` is False.
    """
    check_spectra(ds)
    path = Path(path)
    by_name = {f.name: f for f in CONTAINER_FORMATS}
    if format is None:
        lower = path.name.lower()
        fmt = next((f for f in CONTAINER_FORMATS if lower.endswith(f.write_suffixes)), None)
        if fmt is None:
            raise InvalidInputError(f"{path}: cannot tell the format from the suffix; use .nc, .npz or .fits")
    elif format in by_name:
        fmt = by_name[format]
    else:
        raise InvalidInputError(f"format must be 'nc', 'npz' or 'bayescannon'; got {format!r}")
    write_atomic(path, lambda tmp: fmt.write(ds, tmp), overwrite=overwrite)
    logger.debug("wrote %d spectra to %s", ds.sizes["star"], path)
    return path
