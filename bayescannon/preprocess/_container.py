"""Shared helpers of the preprocessing steps: validated arrays out of a spectra
container, grid checks, history, building the output container, the ``all_masked``
column, wavelength segments and masked medians.

Every step takes a spectra container (``docs/guides/conventions.md``) and returns a new one
built by :func:`new_container`; inputs are never modified.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import xarray as xr

from bayescannon.errors import GridMismatchError, InvalidInputError
from bayescannon.spectra import check_flux_ivar, check_spectra

logger = logging.getLogger(__name__)

__all__ = [
    "append_history",
    "check_grid",
    "flag_all_masked",
    "flux_ivar",
    "masked_median",
    "new_container",
    "segment_indices",
    "wavelength_of",
]


def wavelength_of(ds: xr.Dataset) -> np.ndarray:
    """The validated container's wavelength grid as float64 (Angstrom)."""
    check_spectra(ds)
    return np.asarray(ds["wavelength"].values, dtype=np.float64)


def flux_ivar(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Flux and ivar as float64 arrays, validated; flux at ``ivar == 0`` made finite.

    The checks are those of :func:`bayescannon.spectra.check_flux_ivar` (the one flux/ivar
    validator); finite flux at ``ivar == 0`` is kept, and the container's arrays are
    returned without a copy when nothing needs changing (callers must not modify them).

    Raises
    ------
    NonFiniteError, NegativeIvarError
        For a NaN/inf ivar, a negative ivar, or a non-finite flux where ivar > 0,
        naming the first star and pixel.
    InvalidInputError
        For complex or text data, or an absurd flux or ivar value.
    """
    return check_flux_ivar(
        ds["flux"].values,
        ds["ivar"].values,
        ids=ds["star"].values if "star" in ds.coords else None,
        wavelength=ds["wavelength"].values if "wavelength" in ds.coords else None,
        zero_masked=False,
    )


def check_grid(wavelength, name: str = "new_wavelength") -> np.ndarray:
    """A wavelength grid as a float64 array, checked: 1-D, non-empty, finite, strictly increasing.

    Raises
    ------
    InvalidInputError
        Naming the first offending pixel.
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 1:
        raise InvalidInputError(f"{name} must be a non-empty 1-D array; got shape {wl.shape}")
    if not np.all(np.isfinite(wl)):
        i = int(np.argmax(~np.isfinite(wl)))
        raise InvalidInputError(f"{name} is not finite at pixel {i}")
    if wl.size > 1 and not np.all(np.diff(wl) > 0):
        i = int(np.argmax(~(np.diff(wl) > 0))) + 1
        raise InvalidInputError(
            f"{name} must be strictly increasing; it is not at pixel {i} ({wl[i - 1]:.4f} then {wl[i]:.4f} A)"
        )
    return wl


def append_history(attrs: dict, text: str) -> dict:
    """A copy of ``attrs`` with ``text`` appended as a new line of ``attrs["history"]``."""
    attrs = dict(attrs)
    old = str(attrs.get("history", "")).strip()
    attrs["history"] = f"{old}\n{text}" if old else text
    return attrs


def new_container(
    ds: xr.Dataset,
    *,
    wavelength=None,
    flux,
    ivar,
    mask="keep",
    history: str,
    attrs: dict | None = None,
    wavelength_attrs: dict | None = None,
) -> xr.Dataset:
    """A new container with ``ds``'s per-star columns and attributes, new pixels."""
    wl = np.asarray(ds["wavelength"].values) if wavelength is None else wavelength
    data_vars = {
        "flux": (("star", "pixel"), flux),
        "ivar": (("star", "pixel"), ivar),
    }
    if isinstance(mask, str) and mask == "keep":
        if "mask" in ds:
            data_vars["mask"] = (("star", "pixel"), np.array(ds["mask"].values, copy=True))
    elif mask is not None:
        data_vars["mask"] = (("star", "pixel"), mask)
    dropped = []
    for name, var in ds.data_vars.items():
        if name in ("flux", "ivar", "mask"):
            continue
        if var.dims == ("star",):
            data_vars[name] = var.copy(deep=True)
        else:
            dropped.append(name)
    if dropped:
        logger.debug("%s: dropped per-pixel variables %s", history.split("(")[0], dropped)
    coords = {"star": ds["star"].values.copy(), "wavelength": ("pixel", np.asarray(wl))}
    for name, c in ds.coords.items():
        if name not in ("star", "wavelength") and c.dims == ("star",):
            coords[name] = ("star", c.values.copy())
    new_attrs = append_history(dict(ds.attrs) if attrs is None else attrs, history)
    out = xr.Dataset(data_vars, coords=coords, attrs=new_attrs)
    wl_attrs = dict(ds["wavelength"].attrs)
    wl_attrs.update(wavelength_attrs or {})
    out["wavelength"].attrs = wl_attrs
    return out


def flag_all_masked(ds: xr.Dataset, step: str = "preprocess") -> xr.Dataset:
    """Set the per-star boolean column ``all_masked`` (no pixel with ``ivar > 0``).

    Stars newly found without any good pixel are named in a logged warning; the
    column is (re)computed in place on ``ds`` and ``ds`` is returned (use it on a
    container you own, as every step of this module does on its output).
    """
    ivar = np.asarray(ds["ivar"].values)
    all_masked = ~(ivar > 0).any(axis=1) if ivar.shape[1] else np.ones(ivar.shape[0], bool)
    before = np.asarray(ds["all_masked"].values, dtype=bool) if "all_masked" in ds else np.zeros(ivar.shape[0], bool)
    new = all_masked & ~before
    if new.any():
        ids = np.asarray(ds["star"].values)[new]
        logger.warning(
            "%s: %d star(s) have no unmasked pixel left (all_masked=True): %s%s",
            step,
            int(new.sum()),
            ", ".join(map(str, ids[:5])),
            " ..." if ids.size > 5 else "",
        )
    ds["all_masked"] = ("star", all_masked)
    return ds


def segment_indices(wl: np.ndarray, segments) -> list[np.ndarray]:
    """Pixel indices of each wavelength segment ``(lo, hi)`` (all pixels when None).

    Raises
    ------
    InvalidInputError
        A segment with ``lo >= hi`` or two overlapping segments.
    GridMismatchError
        A segment that holds no pixel.
    """
    if segments is None:
        return [np.arange(wl.size)]
    segs = [tuple(map(float, s)) for s in segments]
    for lo, hi in segs:
        if not lo < hi:
            raise InvalidInputError(f"segment ({lo}, {hi}) must have lo < hi")
    order = sorted(segs)
    for (alo, ahi), (blo, bhi) in itertools.pairwise(order):
        if blo <= ahi:
            raise InvalidInputError(f"segments ({alo}, {ahi}) and ({blo}, {bhi}) overlap")
    out = []
    for lo, hi in segs:
        idx = np.flatnonzero((wl >= lo) & (wl <= hi))
        if idx.size == 0:
            raise GridMismatchError(
                f"segment {lo:.3f}-{hi:.3f} A holds no pixel of the grid {wl[0]:.3f}-{wl[-1]:.3f} A"
            )
        out.append(idx)
    covered = np.zeros(wl.size, bool)
    for idx in out:
        covered[idx] = True
    if not covered.all():
        logger.info("%d pixel(s) outside every segment get ivar = 0", int((~covered).sum()))
    return out


def masked_median(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Median along axis 1 over ``good`` entries; NaN for rows without any."""
    v = np.where(good, values, np.inf)
    v.sort(axis=1)
    k = good.sum(axis=1)
    lo = np.clip((k - 1) // 2, 0, None)
    hi = np.clip(k // 2, 0, None)
    a = np.take_along_axis(v, lo[:, None], axis=1)[:, 0]
    b = np.take_along_axis(v, np.minimum(hi, v.shape[1] - 1)[:, None], axis=1)[:, 0]
    med = 0.5 * (a + b)
    return np.where(k > 0, med, np.nan)
