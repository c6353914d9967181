"""Generic spectra I/O: container files, label tables and many-file survey reading.

Three container formats round-trip a spectra container exactly (see
``docs/conventions.md``):

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

:func:`read_many` reads many survey files (APOGEE apStar/aspcapStar, LAMOST) into one
container, collecting unreadable files instead of stopping when ``on_error="skip"``.

This module also holds the small helpers shared by the survey readers: a fast
reader for plain FITS image HDUs (falls back to :mod:`astropy.io.fits` for anything
unusual), wavelength-unit parsing, and the stacking of single-star records.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from ..errors import GridMismatchError, InvalidInputError, SurveyFormatError
from ..spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = [
    "read_spectra",
    "write_spectra",
    "read_labels",
    "read_many",
    "detect_format",
    "SKIPPED_COLUMNS",
]

#: Columns of the table of files that could not be read (``return_skipped=True``).
SKIPPED_COLUMNS = ("path", "error", "reason")

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.bz2", ".fz")
_FORMAT_TAG = "bayescannon-spectra"
_BOOL_TAG = "bayescannon_dtype"


# ---------------------------------------------------------------------------------------
# small shared helpers
# ---------------------------------------------------------------------------------------


def _format_error(path, message: str) -> SurveyFormatError:
    """A :class:`SurveyFormatError` whose message starts with the file name."""
    return SurveyFormatError(f"{os.fspath(path)}: {message}")


def _has_fits_suffix(path) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(_FITS_SUFFIXES)


_ANGSTROM_NAMES = {"angstrom", "angstroms", "a", "aa", "ang", "angs", "0.1nm", "1e-10m"}
_UNIT_FACTORS = {
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometers": 10.0,
    "um": 1.0e4,
    "micron": 1.0e4,
    "microns": 1.0e4,
    "micrometer": 1.0e4,
    "micrometers": 1.0e4,
    "m": 1.0e10,
    "cm": 1.0e8,
    "mm": 1.0e7,
}


def _wavelength_unit_factor(unit, path, where: str) -> float:
    """Factor that converts wavelengths in ``unit`` to Angstrom.

    Raises
    ------
    SurveyFormatError
        When the unit is not a length unit this module knows.
    """
    if unit is None:
        return 1.0
    text = str(unit).strip().lower().replace(" ", "")
    if text in ("",):
        return 1.0
    if text in _ANGSTROM_NAMES:
        return 1.0
    if text in _UNIT_FACTORS:
        return _UNIT_FACTORS[text]
    try:  # last resort: astropy's unit parser (e.g. "10**-10 m")
        import astropy.units as u

        factor = float(u.Unit(str(unit).strip(), format="fits").to(u.AA))
    except Exception as exc:
        raise _format_error(
            path, f"unknown wavelength unit {unit!r} in {where}; expected Angstrom, nm or um"
        ) from exc
    return factor


def _as_str_ids(values) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "ascii", errors="replace")
    return np.char.strip(arr.astype(str))


def _append_history(attrs: dict, text: str) -> dict:
    attrs = dict(attrs)
    old = str(attrs.get("history", "")).strip()
    attrs["history"] = f"{old}\n{text}" if old else text
    return attrs


# ---------------------------------------------------------------------------------------
# fast FITS image reader (falls back to astropy.io.fits)
# ---------------------------------------------------------------------------------------

_BLOCK = 2880
_STRING_RE = re.compile(r"'((?:[^']|'')*)'")


def _parse_card_value(raw: bytes):
    """Parse the value field (columns 11-80) of a FITS card."""
    b = raw.lstrip()
    if b[:1] == b"'":
        text = b.decode("ascii", errors="replace")
        m = _STRING_RE.match(text)
        if m is None:
            return text.strip().strip("'").rstrip()
        return m.group(1).replace("''", "'").rstrip()
    value = b.split(b"/", 1)[0].strip()
    if value == b"T":
        return True
    if value == b"F":
        return False
    if not value:
        return None
    # integers are recognised with isdigit (raising exceptions, or scanning the bytes
    # with ``in``, costs microseconds per card); FITS also writes exponents with D
    if value.lstrip(b"+-").isdigit():
        return int(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return float(value.replace(b"D", b"E").replace(b"d", b"e"))
    except ValueError:
        return value.decode("ascii", errors="replace")


@functools.lru_cache(maxsize=512)
def _padded_keyword(key: str) -> bytes:
    return str(key).upper().encode("ascii", errors="replace").ljust(8)


class _FastHeader(Mapping):
    """Read-only keyword → value mapping over the raw bytes of one FITS header.

    An index of card offsets is built once (first occurrence of a keyword wins, as in
    astropy); values are parsed only when asked for.
    """

    __slots__ = ("_buf", "_index", "_cache")

    def __init__(self, buf: bytes):
        self._buf = buf
        n = len(buf) // 80
        keys = np.frombuffer(buf, dtype=np.uint8, count=n * 80).reshape(n, 80)[:, :8]
        keys = np.ascontiguousarray(keys).view("S8").ravel().tolist()  # trailing blanks kept
        # reversed so that the first occurrence of a repeated keyword wins
        self._index = dict(zip(keys[::-1], range((n - 1) * 80, -1, -80)))
        self._cache: dict = {}

    def _offset(self, key):
        j = self._index.get(_padded_keyword(key))
        if j is None or self._buf[j + 8 : j + 10] != b"= ":
            return None
        return j

    def __getitem__(self, key):
        try:
            return self._cache[key]
        except KeyError:
            pass
        j = self._offset(key)
        if j is None:
            raise KeyError(key)
        value = self._cache[key] = _parse_card_value(self._buf[j + 10 : j + 80])
        return value

    def __contains__(self, key) -> bool:
        return self._offset(key) is not None

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self):
        buf = self._buf
        return iter(
            [
                k.rstrip().decode("ascii", errors="replace")
                for k, j in sorted(self._index.items(), key=lambda kv: kv[1])
                if buf[j + 8 : j + 10] == b"= "
            ]
        )

    def __len__(self):
        return sum(1 for _ in self)


_END_CARD = b"END" + b" " * 77


def _header_end(raw: bytes, off: int, path) -> int:
    """Offset just past the END card of the header starting at ``off``."""
    i = raw.find(_END_CARD, off)
    while i >= 0 and (i - off) % 80 != 0:
        i = raw.find(_END_CARD, i + 1)
    if i < 0:
        raise _format_error(path, "truncated FITS header (file ends before END card)")
    return i + 80


_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class _Fallback(Exception):
    """Internal signal: let astropy.io.fits read this file."""


def _fast_fits_images(path, n_hdus: int) -> list[tuple[Mapping, np.ndarray | None]]:
    """Headers and image data of the first ``n_hdus`` HDUs of a plain FITS file.

    The file is read with one system call and the images are zero-copy views of it.
    Raises ``_Fallback`` when the file needs astropy (compressed, scaled data, ...).
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw.startswith(b"SIMPLE  ="):
        raise _Fallback
    out: list[tuple[Mapping, np.ndarray | None]] = []
    off = 0
    for h in range(n_hdus):
        if off >= len(raw):
            break
        end = _header_end(raw, off, path)
        hdr = _FastHeader(raw[off:end])
        off += math.ceil((end - off) / _BLOCK) * _BLOCK
        try:
            bitpix = int(hdr["BITPIX"])
            naxis = int(hdr["NAXIS"])
            shape = [int(hdr[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        except (KeyError, ValueError, TypeError):
            raise _Fallback from None
        xtension = str(hdr.get("XTENSION", "IMAGE")).strip().upper() if h else "IMAGE"
        count = math.prod(shape) if naxis > 0 else 0
        if xtension != "IMAGE":
            nbytes = abs(bitpix) // 8 * count + int(hdr.get("PCOUNT", 0) or 0)
            nbytes *= int(hdr.get("GCOUNT", 1) or 1)
            off += math.ceil(nbytes / _BLOCK) * _BLOCK
            out.append((hdr, None))
            continue
        if bitpix not in _BITPIX_DTYPES:
            raise _Fallback
        dtype = np.dtype(_BITPIX_DTYPES[bitpix])
        nbytes = dtype.itemsize * count
        data = None
        if count:
            if off + nbytes > len(raw):
                raise _format_error(
                    path, f"truncated data in HDU {h}: expected {nbytes} bytes, got {len(raw) - off}"
                )
            data = np.frombuffer(raw, dtype=dtype, count=count, offset=off).reshape(shape[::-1])
            bscale = hdr.get("BSCALE", 1)
            bzero = hdr.get("BZERO", 0)
            if bscale not in (1, 1.0, None) or bzero not in (0, 0.0, None):
                if bitpix in (16, 32) and bscale in (1, 1.0, None) and bzero == 2 ** (bitpix - 1):
                    # unsigned integers stored with the FITS offset convention
                    data = (data.astype(np.int64) + int(bzero)).astype(f"u{bitpix // 8}")
                else:
                    raise _Fallback
        off += math.ceil(nbytes / _BLOCK) * _BLOCK
        out.append((hdr, data))
    return out


def _astropy_images(path, n_hdus: int) -> list[tuple[Mapping, np.ndarray | None]]:
    try:
        with fits.open(path, memmap=False) as hdul:
            out = []
            for h in range(min(n_hdus, len(hdul))):
                hdu = hdul[h]
                header = hdu.header.copy()
                if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)):
                    data = None if hdu.data is None else np.array(hdu.data)
                else:
                    data = None
                out.append((header, data))
            return out
    except SurveyFormatError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise _format_error(path, f"not a readable FITS file ({exc})") from exc


def _read_fits_images(path, n_hdus: int, engine: str = "auto"):
    """Headers and image arrays of the first ``n_hdus`` HDUs (fewer if the file has fewer).

    Parameters
    ----------
    engine : {"auto", "fast", "astropy"}
        ``"auto"`` uses the fast reader for plain uncompressed image HDUs and
        :mod:`astropy.io.fits` otherwise; ``"astropy"`` always uses astropy.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _format_error(path, "file does not exist")
    if engine not in ("auto", "fast", "astropy"):
        raise InvalidInputError(f"engine must be 'auto', 'fast' or 'astropy'; got {engine!r}")
    if engine != "astropy":
        try:
            return _fast_fits_images(path, n_hdus)
        except _Fallback:
            if engine == "fast":
                logger.debug("%s: fast FITS reader cannot read this file; using astropy", path)
        except OSError as exc:
            if isinstance(exc, SurveyFormatError):
                raise
            raise _format_error(path, f"cannot read file ({exc})") from exc
    return _astropy_images(path, n_hdus)


def _require_keys(header: Mapping, keys: Iterable[str], path, where: str) -> None:
    missing = [k for k in keys if k not in header or header.get(k) is None]
    if missing:
        raise _format_error(path, f"missing header keyword(s) {', '.join(missing)} in {where}")


_MISSING_FLOATS = frozenset({-9999.0, math.inf, -math.inf})


def _header_float(header: Mapping, key: str, default=math.nan) -> float:
    """A header value as float; ``default`` when absent, not numeric, NaN/inf or -9999."""
    value = header.get(key, None)
    if value is None or value is True or value is False:
        return float(default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float(default)
    if value != value or value in _MISSING_FLOATS:
        return float(default)
    return value


# ---------------------------------------------------------------------------------------
# single-star records and their stacking
# ---------------------------------------------------------------------------------------


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


def _merge_extras(records: Sequence[_Record]) -> dict:
    keys: list[str] = []
    for rec in records:
        for k in rec.extras:
            if k not in keys:
                keys.append(k)
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
    for key in ("survey", "normalised"):
        for rec in records[1:]:
            if rec.attrs.get(key) != first.attrs.get(key):
                raise InvalidInputError(
                    f"cannot combine spectra with different {key!r}: {first.path} has "
                    f"{first.attrs.get(key)!r}, {rec.path} has {rec.attrs.get(key)!r}"
                )
    for key in ("medium", "frame"):
        for rec in records[1:]:
            if rec.wavelength_attrs.get(key) != first.wavelength_attrs.get(key):
                raise InvalidInputError(
                    f"cannot combine spectra with different wavelength {key!r}: {first.path} "
                    f"has {first.wavelength_attrs.get(key)!r}, {rec.path} has "
                    f"{rec.wavelength_attrs.get(key)!r}"
                )


def _group_by_grid(records: Sequence[_Record]) -> dict[bytes, list[int]]:
    groups: dict[bytes, list[int]] = {}
    for i, rec in enumerate(records):
        key = np.ascontiguousarray(rec.wavelength, dtype=np.float64).tobytes()
        groups.setdefault(key, []).append(i)
    return groups


def _build_dataset(
    wavelength, flux, ivar, mask, ids, extras, attrs, wavelength_attrs
) -> xr.Dataset:
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


def _records_to_dataset(
    records: Sequence[_Record],
    *,
    grid: str = "strict",
    resample_to=None,
) -> xr.Dataset:
    """Stack single-star records into one container on one wavelength grid."""
    if not records:
        raise InvalidInputError("no spectra to combine (every file failed or none given)")
    if grid not in ("strict", "common"):
        raise InvalidInputError(f"grid must be 'strict' or 'common'; got {grid!r}")
    _check_consistent_attrs(records)
    ids = [rec.id for rec in records]
    extras = _merge_extras(records)
    attrs = dict(records[0].attrs)
    wl_attrs = dict(records[0].wavelength_attrs)
    has_mask = any(rec.mask is not None for rec in records)

    def stack(indices, sl=None):
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
            m = _to_uint32_mask(
                np.stack(
                    [
                        np.zeros(f.shape[1], np.uint32)
                        if records[i].mask is None
                        else np.asarray(records[i].mask[sl])
                        for i in indices
                    ]
                )
            )
        return _sanitise(f, v, m, [records[i].reject for i in indices])

    groups = _group_by_grid(records)
    if resample_to is not None:
        from ..preprocess import resample  # lazy: preprocess may import io lazily too

        new_wl = np.asarray(resample_to, dtype=np.float64)
        n, p = len(records), new_wl.size
        flux = np.zeros((n, p))
        ivar = np.zeros((n, p))
        mask = np.zeros((n, p), np.uint32) if has_mask else None
        for key, idx in groups.items():
            wl = np.frombuffer(key, dtype=np.float64)
            f, v, m = stack(idx)
            sub = _build_dataset(wl, f, v, m, [ids[i] for i in idx], {}, attrs, wl_attrs)
            out = resample(sub, new_wl)
            flux[idx] = out["flux"].values
            ivar[idx] = out["ivar"].values
            if has_mask:
                mask[idx] = out["mask"].values
        attrs = _append_history(attrs, f"read_many: resampled onto a {p}-pixel grid")
        ds = _build_dataset(new_wl, flux, ivar, mask, ids, extras, attrs, wl_attrs)
        return check_spectra(ds)

    if len(groups) == 1:
        wl = np.asarray(records[0].wavelength, dtype=np.float64)
        f, v, m = stack(range(len(records)))
        return check_spectra(_build_dataset(wl, f, v, m, ids, extras, attrs, wl_attrs))

    # several grids
    first_key = next(iter(groups))
    first_wl = np.frombuffer(first_key, dtype=np.float64)
    other_idx = next(idx for key, idx in groups.items() if key != first_key)[0]
    other = records[other_idx]
    hint = (
        f"spectra are on different wavelength grids: {records[0].path} has {first_wl.size} "
        f"pixels {first_wl[0]:.3f}-{first_wl[-1]:.3f} A, {other.path} has "
        f"{other.wavelength.size} pixels {other.wavelength[0]:.3f}-{other.wavelength[-1]:.3f} A"
    )
    if grid == "strict":
        raise GridMismatchError(
            hint + "; pass grid='common' to keep the shared pixels of grids that differ only "
            "in extent, or resample_to=<wavelength array> to resample every spectrum"
        )
    lo = max(float(rec.wavelength[0]) for rec in records)
    hi = min(float(rec.wavelength[-1]) for rec in records)
    if not lo < hi:
        raise GridMismatchError(hint + "; the grids do not overlap: pass resample_to=")
    wl_common = first_wl[(first_wl >= lo) & (first_wl <= hi)]
    slices = []
    for rec in records:
        w = np.asarray(rec.wavelength, dtype=np.float64)
        i0 = int(np.searchsorted(w, lo, side="left"))
        i1 = int(np.searchsorted(w, hi, side="right"))
        seg = w[i0:i1]
        if seg.size != wl_common.size or not np.allclose(seg, wl_common, rtol=1e-9, atol=0):
            raise GridMismatchError(
                hint + f"; {rec.path} does not share the pixels of {records[0].path} on their "
                f"common range {lo:.3f}-{hi:.3f} A: pass resample_to=<wavelength array>"
            )
        slices.append(slice(i0, i1))
    parts = [stack([i], sl) for i, sl in enumerate(slices)]
    f = np.concatenate([q[0] for q in parts])
    v = np.concatenate([q[1] for q in parts])
    m = np.concatenate([q[2] for q in parts]) if has_mask else None
    attrs = _append_history(
        attrs, f"read_many: cut to the common range {lo:.3f}-{hi:.3f} A ({wl_common.size} pixels)"
    )
    return check_spectra(_build_dataset(wl_common, f, v, m, ids, extras, attrs, wl_attrs))


def _skipped_table(rows: Sequence[tuple[str, str, str]]) -> Table:
    if rows:
        cols = list(zip(*rows))
        return Table([np.asarray(c, dtype=str) for c in cols], names=SKIPPED_COLUMNS)
    return Table([np.zeros(0, dtype=str)] * 3, names=SKIPPED_COLUMNS)


def _call_reader(read_one, path, **kwargs):
    """Run a single-file reader; unexpected content errors become SurveyFormatError."""
    try:
        return read_one(path, **kwargs)
    except (SurveyFormatError, InvalidInputError):
        raise
    except (ValueError, IndexError, KeyError, TypeError, OSError) as exc:
        raise _format_error(path, f"unexpected content ({type(exc).__name__}: {exc})") from exc


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
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    records, skipped = _read_records(
        paths, read_one, on_error=on_error, progressbar=progressbar, what=what, **kwargs
    )
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


# ---------------------------------------------------------------------------------------
# format detection and dispatch
# ---------------------------------------------------------------------------------------

_GALAH_NAME = re.compile(r"^\d{15}[1-4]\.fits?(\.gz)?$")


def detect_format(path) -> str:
    """Guess the format of a spectra file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        One of ``"nc"``, ``"npz"``, ``"bayescannon"``, ``"apstar"``, ``"aspcapstar"``,
        ``"lamost"``, ``"galah"``.

    Raises
    ------
    SurveyFormatError
        When the file is missing or its format cannot be recognised.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    lower = name.lower()
    if lower.endswith((".nc", ".h5", ".hdf5", ".nc4")):
        return "nc"
    if lower.endswith(".npz"):
        return "npz"
    if not _has_fits_suffix(path):
        raise _format_error(
            path, "unknown file type: expected .nc, .npz or a FITS file (.fits, .fit, .fits.gz)"
        )
    if lower.startswith("aspcapstar"):
        return "aspcapstar"
    if lower.startswith(("apstar", "asstar")):
        return "apstar"
    if lower.startswith(("spec-", "med-")):
        return "lamost"
    if _GALAH_NAME.match(name):
        return "galah"
    if not os.path.exists(path):
        raise _format_error(path, "file does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            names = {str(h.name).upper() for h in hdul}
            primary = hdul[0].header
            if {"FLUX", "IVAR", "WAVELENGTH"} <= names or primary.get("BCFORMAT") == _FORMAT_TAG:
                return "bayescannon"
            if "Z" in primary and ("OBSID" in primary or "DESIG" in primary):
                return "lamost"
            if "OBJID" in primary and len(hdul) >= 4 and "CRVAL1" in hdul[1].header:
                return "apstar"
    except (OSError, ValueError) as exc:
        raise _format_error(path, f"not a readable FITS file ({exc})") from exc
    raise _format_error(path, "cannot tell which survey format this FITS file is in")


def _survey_reader(fmt: str):
    if fmt == "apstar":
        from .apogee import _read_apstar_record

        return _read_apstar_record
    if fmt == "aspcapstar":
        from .apogee import _read_aspcapstar_record

        return _read_aspcapstar_record
    if fmt == "lamost":
        from .lamost import _read_lamost_record

        return _read_lamost_record
    if fmt == "galah":
        from .galah import _read_galah_arm_path_record

        return _read_galah_arm_path_record
    raise InvalidInputError(f"format {fmt!r} is not a survey format")


def read_spectra(path, format: str | None = None, **kwargs) -> xr.Dataset:
    """Read a spectra container or one survey spectrum, dispatching on the file type.

    Parameters
    ----------
    path : str or path-like
        A container file written by :func:`write_spectra` (``.nc``, ``.npz``, FITS
        "bayescannon table") or one survey file (apStar, aspcapStar, LAMOST, one GALAH
        arm file, whose other arms are read from the same folder).
    format : str, optional
        Force the format (see :func:`detect_format`).
    **kwargs
        Passed to the survey reader (e.g. ``reject_bits`` for apStar).

    Returns
    -------
    xarray.Dataset
        The spectra container.

    Raises
    ------
    SurveyFormatError
        When the file is missing or not in the layout of its format.
    """
    fmt = format or detect_format(path)
    if fmt == "nc":
        return _read_nc(path)
    if fmt == "npz":
        return _read_npz(path)
    if fmt == "bayescannon":
        return _read_bc_fits(path)
    if fmt == "galah":
        from .galah import read_galah

        return read_galah(path, **kwargs)
    read_one = _survey_reader(fmt)
    return _records_to_dataset([_call_reader(read_one, path, **kwargs)])


def read_many(
    paths,
    format: str | None = None,
    *,
    on_error: str = "raise",
    return_skipped: bool = False,
    grid: str = "strict",
    resample_to=None,
    progressbar: bool = False,
    **kwargs,
):
    """Read many survey files (one star each) into one container.

    Parameters
    ----------
    paths : sequence of str or path-like
        apStar, aspcapStar or LAMOST files (GALAH: use
        :func:`bayescannon.io.galah.read_galah_many`).
    format : str, optional
        Survey format of every file; guessed from the first file when omitted.
    on_error : {"raise", "skip"}
        ``"skip"`` collects files that cannot be read (format errors, duplicated ids)
        instead of stopping, logs them, and carries on.
    return_skipped : bool
        Also return the table of skipped files (columns ``path``, ``error``, ``reason``).
    grid : {"strict", "common"}
        ``"strict"``: all files must share one wavelength grid
        (else :class:`~bayescannon.errors.GridMismatchError`); ``"common"``: grids that
        differ only in extent are cut to their common range.
    resample_to : array_like, optional
        Linearly resample every spectrum onto this grid (Angstrom) instead.
    progressbar : bool
        Show a tqdm progress bar.
    **kwargs
        Passed to the single-file reader.

    Returns
    -------
    xarray.Dataset or (xarray.Dataset, astropy.table.Table)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InvalidInputError("no files given")
    fmt = format or detect_format(paths[0])
    read_one = _survey_reader(fmt)
    return _read_many_with(
        paths,
        read_one,
        what=fmt,
        on_error=on_error,
        return_skipped=return_skipped,
        grid=grid,
        resample_to=resample_to,
        progressbar=progressbar,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------
# container formats
# ---------------------------------------------------------------------------------------


def _per_star_vars(ds: xr.Dataset) -> list[str]:
    return [k for k, v in ds.data_vars.items() if v.dims == ("star",)]


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_spectra(ds: xr.Dataset, path, format: str | None = None, overwrite: bool = False) -> Path:
    """Write a spectra container to ``.nc``, ``.npz`` or a FITS "bayescannon table".

    The file is written to a temporary name and moved into place, so a reader never
    sees a half-written file.

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
    if format is None:
        lower = path.name.lower()
        if lower.endswith((".nc", ".h5", ".nc4")):
            format = "nc"
        elif lower.endswith(".npz"):
            format = "npz"
        elif lower.endswith((".fits", ".fit")):
            format = "bayescannon"
        else:
            raise InvalidInputError(
                f"{path}: cannot tell the format from the suffix; use .nc, .npz or .fits"
            )
    if format not in ("nc", "npz", "bayescannon"):
        raise InvalidInputError(f"format must be 'nc', 'npz' or 'bayescannon'; got {format!r}")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; pass overwrite=True to replace it")
    tmp = _atomic_target(path)
    try:
        if format == "nc":
            _write_nc(ds, tmp)
        elif format == "npz":
            _write_npz(ds, tmp)
        else:
            _write_bc_fits(ds, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.debug("wrote %d spectra to %s", ds.sizes["star"], path)
    return path


def _write_nc(ds: xr.Dataset, path: Path) -> None:
    out = ds.copy()
    for k in list(out.data_vars):
        if out[k].dtype == bool:
            attrs = dict(out[k].attrs)
            attrs[_BOOL_TAG] = "bool"
            out[k] = out[k].astype(np.int8)
            out[k].attrs = attrs
    out.attrs = {k: _netcdf_attr(v) for k, v in out.attrs.items()}
    out.to_netcdf(path, engine="h5netcdf")


def _netcdf_attr(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value)
    return json.dumps(value, default=str)


def _restore(ds: xr.Dataset, path) -> xr.Dataset:
    for k in list(ds.data_vars):
        if ds[k].attrs.get(_BOOL_TAG) == "bool":
            attrs = {a: b for a, b in ds[k].attrs.items() if a != _BOOL_TAG}
            ds[k] = ds[k].astype(bool)
            ds[k].attrs = attrs
    if "star" in ds.coords:
        ds = ds.assign_coords(star=np.asarray(ds["star"].values).astype(str))
    for k in _per_star_vars(ds):
        if ds[k].dtype == object:
            ds[k] = ("star", np.asarray(ds[k].values).astype(str))
    for attr in ("normalised",):
        if attr in ds.attrs and isinstance(ds.attrs[attr], (int, np.integer)):
            ds.attrs[attr] = bool(ds.attrs[attr])
    return ds


def _read_nc(path) -> xr.Dataset:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _format_error(path, "file does not exist")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as src:
            ds = src.load()
    except (OSError, ValueError) as exc:
        raise _format_error(path, f"not a readable netCDF/HDF5 file ({exc})") from exc
    for var in ("flux", "ivar"):
        if var not in ds:
            raise _format_error(path, f"no '{var}' variable: not a spectra container")
    if "wavelength" not in ds.coords:
        raise _format_error(path, "no 'wavelength' coordinate: not a spectra container")
    return check_spectra(_restore(ds, path))


def _json_safe(d: Mapping) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[str(k)] = v
    return out


def _write_npz(ds: xr.Dataset, path: Path) -> None:
    arrays = {
        "wavelength": np.asarray(ds["wavelength"].values, dtype=np.float64),
        "flux": np.asarray(ds["flux"].values, dtype=np.float64),
        "ivar": np.asarray(ds["ivar"].values, dtype=np.float64),
        "ids": np.asarray(ds["star"].values).astype(str),
        "attrs_json": np.asarray(json.dumps(_json_safe(ds.attrs), default=str)),
        "wavelength_attrs_json": np.asarray(
            json.dumps(_json_safe(ds["wavelength"].attrs), default=str)
        ),
    }
    if "mask" in ds:
        arrays["mask"] = np.asarray(ds["mask"].values, dtype=np.uint32)
    for k in _per_star_vars(ds):
        v = np.asarray(ds[k].values)
        if v.dtype == object:
            v = v.astype(str)
        arrays[f"star__{k}"] = v
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _read_npz(path) -> xr.Dataset:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _format_error(path, "file does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            content = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise _format_error(path, f"not a readable .npz file ({exc})") from exc
    missing = [k for k in ("wavelength", "flux", "ivar", "ids") if k not in content]
    if missing:
        raise _format_error(path, f"missing array(s) {', '.join(missing)} in .npz")
    flux, ivar, wl = content["flux"], content["ivar"], content["wavelength"]
    if flux.ndim != 2 or ivar.shape != flux.shape or wl.shape != (flux.shape[1],):
        raise _format_error(
            path,
            f"inconsistent shapes: flux {flux.shape}, ivar {ivar.shape}, wavelength {wl.shape}",
        )
    if content["ids"].shape != (flux.shape[0],):
        raise _format_error(path, f"ids has shape {content['ids'].shape}; expected ({flux.shape[0]},)")
    attrs = json.loads(str(content["attrs_json"])) if "attrs_json" in content else {}
    wl_attrs = (
        json.loads(str(content["wavelength_attrs_json"]))
        if "wavelength_attrs_json" in content
        else {"units": "Angstrom"}
    )
    factor = _wavelength_unit_factor(wl_attrs.get("units"), path, "wavelength units")
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


def _write_bc_fits(ds: xr.Dataset, path: Path) -> None:
    primary = fits.PrimaryHDU()
    primary.header["BCFORMAT"] = (_FORMAT_TAG, "bayescannon spectra container")
    primary.header["BCATTRS"] = json.dumps(_json_safe(ds.attrs), default=str)
    hdus = [
        primary,
        fits.ImageHDU(np.asarray(ds["flux"].values, dtype=np.float64), name="FLUX"),
        fits.ImageHDU(np.asarray(ds["ivar"].values, dtype=np.float64), name="IVAR"),
    ]
    if "mask" in ds:
        hdus.append(fits.ImageHDU(np.asarray(ds["mask"].values, dtype=np.uint32), name="MASK"))
    wl_hdu = fits.ImageHDU(np.asarray(ds["wavelength"].values, dtype=np.float64), name="WAVELENGTH")
    wl_hdu.header["BUNIT"] = "Angstrom"
    wl_hdu.header["BCWATTRS"] = json.dumps(_json_safe(ds["wavelength"].attrs), default=str)
    hdus.append(wl_hdu)
    cols = {"STAR": np.asarray(ds["star"].values).astype(str)}
    for k in _per_star_vars(ds):
        v = np.asarray(ds[k].values)
        cols[k] = v.astype(str) if v.dtype == object else v
    table = Table(cols)
    ids_hdu = fits.table_to_hdu(table)
    ids_hdu.name = "IDS"
    hdus.append(ids_hdu)
    fits.HDUList(hdus).writeto(path)


def _read_bc_fits(path) -> xr.Dataset:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _format_error(path, "file does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [str(h.name).upper() for h in hdul]
            missing = [n for n in ("FLUX", "IVAR", "WAVELENGTH", "IDS") if n not in names]
            if missing:
                raise _format_error(
                    path, f"missing HDU(s) {', '.join(missing)} (found {', '.join(names)})"
                )
            flux = np.array(hdul["FLUX"].data, dtype=np.float64)
            ivar = np.array(hdul["IVAR"].data, dtype=np.float64)
            mask = np.array(hdul["MASK"].data, dtype=np.uint32) if "MASK" in names else None
            wl_hdu = hdul["WAVELENGTH"]
            if wl_hdu.data is None:
                raise _format_error(path, "WAVELENGTH HDU holds no data")
            wl = np.array(wl_hdu.data, dtype=np.float64).ravel()
            factor = _wavelength_unit_factor(
                wl_hdu.header.get("BUNIT"), path, "BUNIT of the WAVELENGTH HDU"
            )
            wl_attrs = json.loads(wl_hdu.header.get("BCWATTRS", "{}"))
            table = Table.read(hdul["IDS"])
            attrs = json.loads(hdul[0].header.get("BCATTRS", "{}"))
    except SurveyFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _format_error(path, f"not a readable bayescannon FITS table ({exc})") from exc
    if flux.ndim != 2 or ivar.shape != flux.shape or wl.shape != (flux.shape[1],):
        raise _format_error(
            path,
            f"inconsistent shapes: FLUX {flux.shape}, IVAR {ivar.shape}, WAVELENGTH {wl.shape}",
        )
    if "STAR" not in table.colnames or len(table) != flux.shape[0]:
        raise _format_error(path, f"IDS table must have a STAR column and {flux.shape[0]} rows")
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


# ---------------------------------------------------------------------------------------
# label tables
# ---------------------------------------------------------------------------------------


def read_labels(
    path,
    id_column: str | None = None,
    *,
    missing_values: Sequence[float] = (-9999.0,),
    format: str | None = None,
) -> Table:
    """Read a FITS or CSV label table into an :class:`astropy.table.Table`.

    Parameters
    ----------
    path : str or path-like
        ``.fits``/``.fit`` (first table HDU) or ``.csv``/``.ecsv``/``.txt`` file.
    id_column : str, optional
        Column holding star identifiers: must exist; ids are converted to stripped
        strings.
    missing_values : sequence of float
        Sentinel values (e.g. ``-9999``) turned into masked entries in numeric columns.
    format : str, optional
        astropy format name to force (e.g. ``"ascii.csv"``).

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    SurveyFormatError
        When the file is missing, unreadable, or lacks ``id_column``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _format_error(path, "file does not exist")
    lower = path.lower()
    if format is None:
        if _has_fits_suffix(path):
            format = "fits"
        elif lower.endswith(".ecsv"):
            format = "ascii.ecsv"
        elif lower.endswith((".csv", ".csv.gz")):
            format = "ascii.csv"
        else:
            format = "ascii"
    try:
        table = Table.read(path, format=format)
    except (OSError, ValueError, TypeError) as exc:
        raise _format_error(path, f"cannot read label table ({exc})") from exc
    if id_column is not None:
        if id_column not in table.colnames:
            raise _format_error(
                path,
                f"no id column {id_column!r}; columns are {', '.join(table.colnames[:20])}",
            )
        table[id_column] = _as_str_ids(table[id_column])
        ids = np.asarray(table[id_column])
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            logger.warning(
                "%s: %d duplicated id(s) in column %s (e.g. %s)",
                path,
                int((counts > 1).sum()),
                id_column,
                ", ".join(uniq[counts > 1][:3]),
            )
    if missing_values:
        table = Table(table, masked=True, copy=False)
        for name in table.colnames:
            col = table[name]
            if col.dtype.kind in "fiu" and col.ndim == 1:
                bad = np.isin(np.asarray(col), np.asarray(missing_values, dtype=float))
                if col.dtype.kind == "f":
                    bad |= ~np.isfinite(np.asarray(col, dtype=float))
                if bad.any():
                    col.mask = np.asarray(col.mask) | bad
    return table
