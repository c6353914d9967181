"""Single-star records read from survey files, and their stacking into one container.

A survey reader turns one file into a :class:`_Record` (one star's wavelength, flux,
inverse variance, mask bits, per-star columns and attributes). :func:`_records_to_dataset`
stacks records into the spectra container of ``docs/guides/conventions.md``: it cleans all
stars at once (:func:`_sanitise`), checks that they agree on survey, normalisation,
medium and frame, and puts them on one wavelength grid (identical grids, the common
range of grids that differ in extent, or an explicit grid by linear interpolation).
:func:`_read_many_with` runs a single-file reader over many files, collecting the
files that cannot be read when ``on_error="skip"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from astropy.table import Table

from bayescannon.core.grid import interpolate
from bayescannon.errors import GridMismatchError, InvalidInputError, SurveyFormatError
from bayescannon.io.common import append_history, check_regular_file, format_error
from bayescannon.spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = ["SKIPPED_COLUMNS"]

#: Columns of the table of files that could not be read (``return_skipped=True``).
SKIPPED_COLUMNS = ("path", "error", "reason")


@dataclass
class _Record:
    """One star's spectrum as read from a survey file (internal)."""

    id: str
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    wavelength_attrs: dict = field(default_factory=dict)
    path: str = ""
    reject: int = 0  # mask bits whose pixels get ivar = 0 (applied when stacking)


# ---------------------------------------------------------------------------------------
# per-pixel clean-up
# ---------------------------------------------------------------------------------------


def _error_to_ivar(flux, error, max_error: float = np.inf):
    """Flux made finite and ``ivar = 1 / error**2``; ``ivar = 0`` where the error is not
    finite, not positive or at least ``max_error``, or where the flux is not finite."""
    flux = np.asarray(flux, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    good = np.isfinite(flux) & np.isfinite(error) & (error > 0) & (error < max_error)
    ivar = np.zeros_like(error)
    np.divide(1.0, error * error, out=ivar, where=good)
    ivar[~np.isfinite(ivar)] = 0.0
    return np.where(np.isfinite(flux), flux, 0.0), ivar


def _to_uint32_mask(mask) -> np.ndarray:
    """Survey mask bits as uint32 (floats rounded, signed integers reinterpreted)."""
    mask = np.asarray(mask)
    if mask.dtype.kind == "f":
        return np.rint(np.where(np.isfinite(mask), mask, 0)).astype(np.int64).astype(np.uint32)
    if mask.dtype.kind == "i":
        mask = mask.view(mask.dtype.str.replace("i", "u"))
    return mask.astype(np.uint32)


def _sanitise(flux, ivar, mask, rejects):
    """Vectorised clean-up of stacked spectra: ivar = 0 where ivar or flux is not
    finite or ivar <= 0, or where a record's reject bits are set; flux finite."""
    good = np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux)
    if mask is not None:
        rej = np.asarray(rejects, dtype=np.uint32)
        if rej.any():
            good &= (mask & rej[:, None]) == 0
    ivar = np.where(good, ivar, 0.0)
    flux = np.where(np.isfinite(flux), flux, 0.0)
    return flux, ivar, mask


# ---------------------------------------------------------------------------------------
# stacking
# ---------------------------------------------------------------------------------------


def _merge_extras(records: Sequence[_Record]) -> dict:
    keys = list(dict.fromkeys(k for rec in records for k in rec.extras))
    out = {}
    for k in keys:
        values = [rec.extras.get(k, None) for rec in records]
        if any(isinstance(v, (str, np.str_)) for v in values):
            out[k] = np.asarray(["" if v is None else str(v) for v in values], dtype=str)
        elif all(v is not None for v in values):
            out[k] = np.asarray(values)
        else:
            out[k] = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return out


def _check_consistent_attrs(records: Sequence[_Record]) -> None:
    first = records[0]
    for what, keys, attrs in (
        ("", ("survey", "normalised"), lambda r: r.attrs),
        ("wavelength ", ("medium", "frame"), lambda r: r.wavelength_attrs),
    ):
        for key in keys:
            for rec in records[1:]:
                if attrs(rec).get(key) != attrs(first).get(key):
                    raise InvalidInputError(
                        f"cannot combine spectra with different {what}{key!r}: {first.path} has "
                        f"{attrs(first).get(key)!r}, {rec.path} has {attrs(rec).get(key)!r}"
                    )


def _group_by_grid(records: Sequence[_Record]) -> dict[bytes, list[int]]:
    groups: dict[bytes, list[int]] = {}
    for i, rec in enumerate(records):
        key = np.ascontiguousarray(rec.wavelength, dtype=np.float64).tobytes()
        groups.setdefault(key, []).append(i)
    return groups


def _build_dataset(wavelength, flux, ivar, mask, ids, extras, attrs, wavelength_attrs) -> xr.Dataset:
    """The container from its arrays (not checked: callers run ``check_spectra``)."""
    data_vars = {
        "flux": (("star", "pixel"), flux),
        "ivar": (("star", "pixel"), ivar),
    }
    if mask is not None:
        data_vars["mask"] = (("star", "pixel"), mask)
    for k, v in extras.items():
        data_vars[k] = ("star", v)
    ds = xr.Dataset(
        data_vars,
        coords={"star": np.asarray(ids, dtype=str), "wavelength": ("pixel", wavelength)},
        attrs=dict(attrs),
    )
    ds["wavelength"].attrs.update(wavelength_attrs)
    ds["wavelength"].attrs.setdefault("units", "Angstrom")
    return ds


def _stack(records: Sequence[_Record], indices: Iterable[int], has_mask: bool, sl: slice | None = None):
    """Stacked, sanitised (flux, ivar, mask) of ``records[indices]`` (pixels ``sl``)."""
    sl = slice(None) if sl is None else sl
    indices = list(indices)
    width = np.asarray(records[indices[0]].flux[sl]).shape[0]
    f = np.empty((len(indices), width))  # one converting copy per row (float32 files)
    v = np.empty((len(indices), width))
    for row, i in enumerate(indices):
        f[row] = records[i].flux[sl]
        v[row] = records[i].ivar[sl]
    m = None
    if has_mask:
        masks = [records[i].mask for i in indices]
        if len({None if a is None else np.asarray(a).dtype for a in masks}) == 1 and masks[0] is not None:
            m = _to_uint32_mask(np.stack([a[sl] for a in masks]))  # one conversion for all rows
        else:
            m = np.zeros((len(indices), width), np.uint32)
            for row, a in enumerate(masks):
                if a is not None:
                    m[row] = _to_uint32_mask(np.asarray(a)[sl])
    return _sanitise(f, v, m, [records[i].reject for i in indices])


def _interpolate(wl, flux, ivar, mask, new_wl):
    """Linear interpolation of stacked spectra onto ``new_wl``, variance propagated.

    The semantics of :func:`bayescannon.preprocess.resample` on arrays: ``(flux, ivar,
    mask)`` on the new grid; ivar = 0 outside the old grid and next to bad pixels.
    """
    return interpolate(wl, flux, ivar, mask, new_wl, factor=None, variance="propagate")


def _check_new_grid(resample_to) -> np.ndarray:
    new_wl = np.asarray(resample_to, dtype=np.float64)
    if new_wl.ndim != 1 or new_wl.size < 1:
        raise InvalidInputError(f"resample_to must be a non-empty 1-D array; got shape {new_wl.shape}")
    if not np.all(np.isfinite(new_wl)):
        raise InvalidInputError(f"resample_to is not finite at pixel {int(np.argmax(~np.isfinite(new_wl)))}")
    if new_wl.size > 1 and not np.all(np.diff(new_wl) > 0):
        i = int(np.argmax(~(np.diff(new_wl) > 0))) + 1
        raise InvalidInputError(
            f"resample_to must be strictly increasing; it is not at pixel {i} "
            f"({new_wl[i - 1]:.4f} then {new_wl[i]:.4f} A)"
        )
    return new_wl


def _resampled(records, groups, has_mask, resample_to):
    """(wavelength, flux, ivar, mask, history) of every record interpolated onto ``resample_to``."""
    new_wl = _check_new_grid(resample_to)
    n, p = len(records), new_wl.size
    flux = np.zeros((n, p))
    ivar = np.zeros((n, p))
    mask = np.zeros((n, p), np.uint32) if has_mask else None
    for key, idx in groups.items():
        wl = np.frombuffer(key, dtype=np.float64)
        where = f"{records[idx[0]].path} (and {len(idx) - 1} other file(s) on its grid)"
        if wl.size < 2:
            raise InvalidInputError(f"{where}: cannot resample a grid of fewer than 2 pixels")
        if new_wl[-1] < wl[0] or new_wl[0] > wl[-1]:
            raise GridMismatchError(
                f"{where}: resample_to {new_wl[0]:.3f}-{new_wl[-1]:.3f} A does not overlap the "
                f"spectra's grid {wl[0]:.3f}-{wl[-1]:.3f} A"
            )
        f, v, m = _interpolate(wl, *_stack(records, idx, has_mask), new_wl)
        flux[idx], ivar[idx] = f, v
        if has_mask:
            mask[idx] = m
    empty = ~(ivar > 0).any(axis=1)
    if empty.any():
        names = ", ".join(records[i].id for i in np.flatnonzero(empty)[:5])
        logger.warning(
            "read_many: %d star(s) have no pixel with ivar > 0 on the resample_to grid: %s", int(empty.sum()), names
        )
    return new_wl, flux, ivar, mask, f"read_many: resampled onto a {p}-pixel grid"


def _common_range(records, groups, has_mask):
    """(wavelength, flux, ivar, mask, history) cut to the range all grids share.

    Raises
    ------
    GridMismatchError
        When the grids do not overlap or differ inside their common range.
    """
    first_wl = np.frombuffer(next(iter(groups)), dtype=np.float64)
    hint = _grid_hint(records, groups)
    lo = max(float(rec.wavelength[0]) for rec in records)
    hi = min(float(rec.wavelength[-1]) for rec in records)
    if not lo < hi:
        raise GridMismatchError(hint + "; the grids do not overlap: pass resample_to=")
    wl_common = first_wl[(first_wl >= lo) & (first_wl <= hi)]
    parts = []
    for i, rec in enumerate(records):
        w = np.asarray(rec.wavelength, dtype=np.float64)
        i0 = int(np.searchsorted(w, lo, side="left"))
        i1 = int(np.searchsorted(w, hi, side="right"))
        seg = w[i0:i1]
        if seg.size != wl_common.size or not np.allclose(seg, wl_common, rtol=1e-9, atol=0):
            raise GridMismatchError(
                hint + f"; {rec.path} does not share the pixels of {records[0].path} on their "
                f"common range {lo:.3f}-{hi:.3f} A: pass resample_to=<wavelength array>"
            )
        parts.append(_stack(records, [i], has_mask, slice(i0, i1)))
    f = np.concatenate([q[0] for q in parts])
    v = np.concatenate([q[1] for q in parts])
    m = np.concatenate([q[2] for q in parts]) if has_mask else None
    history = f"read_many: cut to the common range {lo:.3f}-{hi:.3f} A ({wl_common.size} pixels)"
    return wl_common, f, v, m, history


def _grid_hint(records, groups) -> str:
    first_wl = np.frombuffer(next(iter(groups)), dtype=np.float64)
    other = records[list(groups.values())[1][0]]
    return (
        f"spectra are on different wavelength grids: {records[0].path} has {first_wl.size} "
        f"pixels {first_wl[0]:.3f}-{first_wl[-1]:.3f} A, {other.path} has "
        f"{other.wavelength.size} pixels {other.wavelength[0]:.3f}-{other.wavelength[-1]:.3f} A"
    )


def _records_to_dataset(records: Sequence[_Record], *, grid: str = "strict", resample_to=None) -> xr.Dataset:
    """Stack single-star records into one container on one wavelength grid.

    Parameters
    ----------
    records : sequence of _Record
    grid : {"strict", "common"}
        ``"strict"``: every record must be on one grid; ``"common"``: grids that
        differ only in extent are cut to their common range.
    resample_to : array_like, optional
        Interpolate every record onto this grid (Angstrom) instead.

    Raises
    ------
    InvalidInputError
        No records, an unknown ``grid``, or records that disagree on survey,
        normalisation, medium or frame.
    GridMismatchError
        Grids that cannot be combined as asked.
    """
    if not records:
        raise InvalidInputError("no spectra to combine (every file failed or none given)")
    if grid not in ("strict", "common"):
        raise InvalidInputError(f"grid must be 'strict' or 'common'; got {grid!r}")
    _check_consistent_attrs(records)
    attrs = dict(records[0].attrs)
    has_mask = any(rec.mask is not None for rec in records)
    groups = _group_by_grid(records)
    if resample_to is not None:
        wl, f, v, m, history = _resampled(records, groups, has_mask, resample_to)
        attrs = append_history(attrs, history)
    elif len(groups) == 1:
        wl = np.asarray(records[0].wavelength, dtype=np.float64)
        f, v, m = _stack(records, range(len(records)), has_mask)
    elif grid == "strict":
        raise GridMismatchError(
            _grid_hint(records, groups) + "; pass grid='common' to keep the shared pixels of grids "
            "that differ only in extent, or resample_to=<wavelength array> to resample every spectrum"
        )
    else:
        wl, f, v, m, history = _common_range(records, groups, has_mask)
        attrs = append_history(attrs, history)
    ids = [rec.id for rec in records]
    ds = _build_dataset(wl, f, v, m, ids, _merge_extras(records), attrs, dict(records[0].wavelength_attrs))
    return check_spectra(ds)


# ---------------------------------------------------------------------------------------
# many files
# ---------------------------------------------------------------------------------------


def _skipped_table(rows: Sequence[tuple[str, str, str]]) -> Table:
    if rows:
        return Table([np.asarray(c, dtype=str) for c in zip(*rows, strict=True)], names=SKIPPED_COLUMNS)
    return Table([np.zeros(0, dtype=str)] * 3, names=SKIPPED_COLUMNS)


def _call_reader(read_one, path, **kwargs):
    """Run a single-file reader; unexpected content errors become SurveyFormatError.

    A path that is not a regular file (a FIFO, a folder) is refused before the reader
    opens it (a FIFO would block it forever).
    """
    if isinstance(path, (str, os.PathLike)) and os.path.lexists(path):
        check_regular_file(path)
    try:
        return read_one(path, **kwargs)
    except (SurveyFormatError, InvalidInputError):
        raise
    except (ValueError, IndexError, KeyError, TypeError, OSError) as exc:
        raise format_error(path, f"unexpected content ({type(exc).__name__}: {exc})") from exc


def _open_one(read_one, path, **kwargs) -> xr.Dataset:
    """The one-star container of one file read with a record reader."""
    return _records_to_dataset([_call_reader(read_one, path, **kwargs)])


def _read_records(
    paths: Sequence,
    read_one: Callable[..., _Record | list[_Record]],
    *,
    on_error: str,
    progressbar: bool,
    what: str,
    **kwargs,
) -> tuple[list[_Record], list[tuple[str, str, str]]]:
    if on_error not in ("raise", "skip"):
        raise InvalidInputError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")
    records: list[_Record] = []
    skipped: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    iterator: Iterable = paths
    if progressbar:
        # an optional display dependency, imported when asked for
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc=f"reading {what}", unit="file")
    for path in iterator:
        try:
            recs = _call_reader(read_one, path, **kwargs)
            recs = recs if isinstance(recs, list) else [recs]
            for rec in recs:
                if rec.id in seen:
                    raise InvalidInputError(
                        f"{os.fspath(path)}: star id {rec.id!r} was already read from {seen[rec.id]}"
                    )
            for rec in recs:
                seen[rec.id] = os.fspath(path)
                records.append(rec)
        except (SurveyFormatError, InvalidInputError) as exc:
            if on_error == "raise":
                raise
            skipped.append((os.fspath(path), type(exc).__name__, str(exc)))
    if skipped:
        logger.warning(
            "skipped %d of %d %s file(s) that could not be read; first: %s",
            len(skipped),
            len(paths),
            what,
            skipped[0][2],
        )
    return records, skipped


def _read_many_with(
    paths,
    read_one,
    *,
    what: str,
    on_error: str = "raise",
    return_skipped: bool = False,
    grid: str = "strict",
    resample_to=None,
    progressbar: bool = False,
    **kwargs,
):
    """Read many files with the record reader ``read_one`` into one container.

    See :func:`bayescannon.io.read_many` for the parameters; ``what`` names the format
    in messages. Returns the container, or ``(container, skipped)`` with
    ``return_skipped=True``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    records, skipped = _read_records(paths, read_one, on_error=on_error, progressbar=progressbar, what=what, **kwargs)
    if not records:
        exc = InvalidInputError(
            f"no spectra to combine: all {len(paths)} {what} file(s) failed"
            + (f"; first: {skipped[0][2]}" if skipped else "")
        )
        exc.skipped = _skipped_table(skipped)  # lets chunked runs record the failures
        raise exc
    ds = _records_to_dataset(records, grid=grid, resample_to=resample_to)
    if return_skipped:
        return ds, _skipped_table(skipped)
    return ds
