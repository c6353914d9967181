"""The spectra container: one ``xarray.Dataset`` that every step accepts.

See ``docs/conventions.md``. Dimensions are ``star`` and ``pixel``; ``flux`` and
``ivar`` are (star, pixel) float64; ``wavelength`` is a (pixel,) coordinate in
Angstrom; ``star`` holds unique string identifiers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from bayescannon.errors import (
    CrossMatchError,
    InvalidInputError,
    LabelError,
    NegativeIvarError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = [
    "make_spectra",
    "check_spectra",
    "check_flux_ivar",
    "default_ids",
    "as_label_array",
    "unpack_spectra",
    "join_ids",
]


def default_ids(n: int, prefix: str = "star") -> np.ndarray:
    """Identifiers ``star000000``, ``star000001``, ... for ``n`` anonymous stars."""
    return np.array([f"{prefix}{i:06d}" for i in range(n)])


def _describe_star(i: int, ids) -> str:
    if ids is None:
        return f"star {i}"
    return f"star {i} (id {ids[i]!s})"


def check_flux_ivar(flux, ivar, *, ids=None, wavelength=None, name: str = "flux"):
    """Validate a flux/ivar pair and return clean float64 copies.

    Parameters
    ----------
    flux, ivar : array_like, shape (N, P)
        Fluxes and inverse variances. ``ivar == 0`` marks pixels without information;
        flux there may be anything (NaN included) and is set to 0 in the copy.
    ids : array_like, optional
        Star identifiers used in error messages.
    wavelength : array_like, optional
        Wavelengths used in error messages.

    Returns
    -------
    flux, ivar : ndarray, shape (N, P)
        New float64 arrays (inputs are never modified).

    Raises
    ------
    ShapeMismatchError, NonFiniteError, NegativeIvarError
        Naming the first offending star and pixel.
    """
    flux = np.array(flux, dtype=np.float64, copy=True)
    ivar = np.array(ivar, dtype=np.float64, copy=True)
    if flux.ndim == 1:
        flux = flux[None, :]
    if ivar.ndim == 1:
        ivar = ivar[None, :]
    if flux.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D (stars, pixels); got shape {flux.shape}")
    if flux.shape != ivar.shape:
        raise ShapeMismatchError(f"{name} has shape {flux.shape} but ivar has shape {ivar.shape}")

    def where(mask):
        n, p = np.argwhere(mask)[0]
        wl = "" if wavelength is None else f", wavelength {float(np.asarray(wavelength)[p]):.3f} A"
        return f"{_describe_star(int(n), ids)}, pixel {int(p)}{wl}"

    bad = ~np.isfinite(ivar)
    if bad.any():
        raise NonFiniteError(f"ivar is not finite at {where(bad)} ({int(bad.sum())} pixels in all)")
    neg = ivar < 0
    if neg.any():
        raise NegativeIvarError(
            f"ivar is negative at {where(neg)} ({int(neg.sum())} pixels in all); "
            "use ivar = 0 for pixels without information"
        )
    badf = (ivar > 0) & ~np.isfinite(flux)
    if badf.any():
        raise NonFiniteError(
            f"{name} is not finite where ivar > 0 at {where(badf)} "
            f"({int(badf.sum())} pixels in all); set ivar = 0 there to mask them"
        )
    flux[ivar == 0] = 0.0
    return flux, ivar


def make_spectra(wavelength, flux, ivar, ids=None, mask=None, attrs=None, **extras) -> xr.Dataset:
    """Build a validated spectra container.

    Parameters
    ----------
    wavelength : array_like, shape (P,)
        Wavelength grid in Angstrom.
    flux, ivar : array_like, shape (N, P)
        Flux and inverse variance.
    ids : array_like of str, shape (N,), optional
        Unique star identifiers (default ``star000000`` ...).
    mask : array_like of int, shape (N, P), optional
        Survey pixel-mask bits (0 = good).
    attrs : dict, optional
        Dataset attributes (``survey``, ``instrument``, ...).
    **extras : array_like, shape (N,)
        Per-star columns (``snr``, ``rv``, label columns, ...).

    Returns
    -------
    xarray.Dataset
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.ndim != 2:
        raise ShapeMismatchError(f"flux must be 2-D (stars, pixels); got shape {flux.shape}")
    n, p = flux.shape
    if ids is None:
        ids = default_ids(n)
    ids = np.asarray(ids).astype(str)
    ds = xr.Dataset(
        {"flux": (("star", "pixel"), flux), "ivar": (("star", "pixel"), ivar)},
        coords={"star": ids, "wavelength": ("pixel", wavelength)},
        attrs=dict(attrs or {}),
    )
    ds["wavelength"].attrs.setdefault("units", "Angstrom")
    if mask is not None:
        ds["mask"] = (("star", "pixel"), np.asarray(mask, dtype=np.uint32))
    for key, value in extras.items():
        ds[key] = ("star", np.asarray(value))
    check_spectra(ds)
    return ds


def check_spectra(ds: xr.Dataset) -> xr.Dataset:
    """Check that ``ds`` follows the container convention; return it unchanged.

    Raises
    ------
    InvalidInputError
        When a variable, coordinate or dimension is missing or inconsistent, or when ids
        are duplicated.
    """
    if not isinstance(ds, xr.Dataset):
        raise InvalidInputError(f"expected an xarray.Dataset of spectra; got {type(ds).__name__}")
    for var in ("flux", "ivar"):
        if var not in ds:
            raise InvalidInputError(f"spectra dataset has no '{var}' variable")
        if ds[var].dims != ("star", "pixel"):
            raise InvalidInputError(f"'{var}' must have dims ('star', 'pixel'); got {ds[var].dims}")
    if "wavelength" not in ds.coords:
        raise InvalidInputError("spectra dataset has no 'wavelength' coordinate")
    if ds["wavelength"].dims != ("pixel",):
        raise InvalidInputError(f"'wavelength' must have dims ('pixel',); got {ds['wavelength'].dims}")
    wl = np.asarray(ds["wavelength"].values, dtype=float)
    if not np.all(np.isfinite(wl)):
        raise NonFiniteError("wavelength grid contains non-finite values")
    if wl.size > 1 and not np.all(np.diff(wl) > 0):
        i = int(np.argmax(~(np.diff(wl) > 0)))
        raise InvalidInputError(f"wavelength grid is not strictly increasing at pixel {i + 1}")
    if "star" in ds.coords:
        ids = np.asarray(ds["star"].values).astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][:5]
            raise InvalidInputError(f"duplicated star ids: {', '.join(map(str, dup))}")
    return ds


def as_label_array(labels, label_names, n_expected=None):
    """Labels as an (N, K) float64 array in ``label_names`` order, validated."""
    if isinstance(labels, xr.Dataset):
        missing = [n for n in label_names if n not in labels]
        if missing:
            raise LabelError(f"labels dataset has no column(s) {missing}; it has {list(labels.data_vars)}")
        arr = np.column_stack([np.asarray(labels[n].values, dtype=np.float64) for n in label_names])
    elif isinstance(labels, Mapping) or hasattr(labels, "colnames") or hasattr(labels, "columns"):
        cols = (
            list(labels.colnames)
            if hasattr(labels, "colnames")
            else list(labels.keys() if isinstance(labels, Mapping) else labels.columns)
        )
        missing = [n for n in label_names if n not in cols]
        if missing:
            raise LabelError(f"label table has no column(s) {missing}; it has {cols}")
        arr = np.column_stack([np.asarray(labels[n], dtype=np.float64) for n in label_names])
    else:
        arr = np.array(labels, dtype=np.float64, copy=True)
        if arr.ndim == 1 and len(label_names) == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ShapeMismatchError(f"labels must be 2-D (stars, labels); got shape {arr.shape}")
        if arr.shape[1] != len(label_names):
            raise ShapeMismatchError(
                f"labels have {arr.shape[1]} columns but the model has {len(label_names)} labels {label_names}"
            )
    if n_expected is not None and arr.shape[0] != n_expected:
        raise ShapeMismatchError(f"labels have {arr.shape[0]} rows but there are {n_expected} spectra")
    bad = ~np.isfinite(arr)
    if bad.any():
        n, k = np.argwhere(bad)[0]
        raise LabelError(
            f"label {label_names[k]} of star {n} is not finite ({arr[n, k]}); "
            f"{int(bad.sum())} non-finite label values in all"
        )
    return arr


def unpack_spectra(flux, ivar, ids, wavelength):
    """Accept arrays or a spectra Dataset; return flux, ivar, ids, wavelength, dataset."""
    ds = None
    if isinstance(flux, xr.Dataset):
        ds = check_spectra(flux)
        if ivar is not None:
            raise InvalidInputError("pass either a spectra Dataset or flux and ivar arrays, not both")
        ivar = ds["ivar"].values
        if ids is None:
            ids = np.asarray(ds["star"].values).astype(str)
        if wavelength is None:
            wavelength = ds["wavelength"].values
        flux = ds["flux"].values
    elif ivar is None:
        raise InvalidInputError("ivar is required when flux is an array")
    return flux, ivar, ids, wavelength, ds


def join_ids(ids, other_ids, *, what: str = "table", require: str = "any"):
    """Rows of ``other_ids`` that hold each of ``ids``: the one join by star id.

    Parameters
    ----------
    ids : array_like (N,)
        Ids to look up (compared as strings).
    other_ids : array_like (M,)
        Ids of the table to join; must be unique.
    what : str
        Name of the joined table, for error messages.
    require : {"any", "all", "none"}
        ``"all"``: every id must be found; ``"any"``: at least one; ``"none"``: no check.

    Returns
    -------
    rows : ndarray of int (N,)
        Row of ``other_ids`` for each id (0 where not found).
    hit : ndarray of bool (N,)
        Whether the id was found.

    Raises
    ------
    CrossMatchError
        Duplicated ids in ``other_ids``, or fewer matches than ``require`` asks for.
    """
    ids = np.asarray(ids).astype(str)
    other = np.asarray(other_ids).astype(str)
    order = np.argsort(other, kind="stable")
    srt = other[order]
    if srt.size > 1 and np.any(srt[1:] == srt[:-1]):
        dup = np.unique(srt[1:][srt[1:] == srt[:-1]])
        raise CrossMatchError(f"{what} has duplicated ids, e.g. {dup[:3].tolist()}")
    if srt.size == 0:
        rows, hit = np.zeros(ids.size, np.int64), np.zeros(ids.size, bool)
    else:
        pos = np.clip(np.searchsorted(srt, ids), 0, srt.size - 1)
        hit = srt[pos] == ids
        rows = np.where(hit, order[pos], 0)
    if require == "all" and not hit.all():
        raise CrossMatchError(
            f"{int((~hit).sum())} of {ids.size} ids are missing from {what}, e.g. {ids[~hit][:3].tolist()}"
        )
    if require == "any" and ids.size and not hit.any():
        raise CrossMatchError(f"no id joins {what} (ids e.g. {ids[:2].tolist()}, {what} e.g. {other[:2].tolist()})")
    return rows, hit
