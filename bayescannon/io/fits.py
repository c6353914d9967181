"""FITS access for the survey readers and writers.

Reading
    :func:`read_fits_images` returns the headers and image arrays of the first HDUs of
    a file. :mod:`astropy.io.fits` is the reference reader. For plain files (image
    HDUs of floats or of unscaled or unsigned-offset integers without ``BLANK``,
    optionally gzipped) a fast path reads the file with one system call and returns
    zero-copy views of its images, with headers that give the values astropy gives:

    * a header with HIERARCH cards, or keywords that are not upper-case FITS
      keywords, *is* the :class:`astropy.io.fits.Header` of those bytes;
    * otherwise a :class:`FastHeader` answers ``header[key]``, ``header.get(key)``
      and ``key in header`` for ordinary ``KEYWORD = value`` cards (string,
      logical, integer and real values) from the raw bytes, and hands everything
      else to the :class:`astropy.io.fits.Header` parsed from the same bytes:
      COMMENT, HISTORY and blank cards, long strings continued on CONTINUE cards,
      strings with doubled quotes, record-valued keyword cards (``DP1.AXIS.1``),
      undefined, complex or non-standard values, iteration and length.

    Anything else (compressed tiles, scaled data, ``BLANK``, random groups, bzip2)
    is read by astropy. ``tests/test_io_fits.py`` checks card by card and array by
    array that both give the same values. The fast path reads the LAMOST and apStar
    files of this package's writers 15-25 times faster than astropy (CPU time per
    file, headers and images; ``benchmarks/bench_preprocess.py`` times both).
Header helpers
    required keywords, numeric keywords with missing-value sentinels, and the
    wavelength solution (linear or log-linear) of a spectrum HDU.
Writing
    WCS cards, header updates, image and table HDUs, and :func:`write_hdus`, which
    writes an HDU list atomically (see :mod:`bayescannon.pipeline.atomic`).
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from bayescannon.errors import InvalidInputError, SurveyFormatError
from bayescannon.io.common import check_regular_file, format_error, wavelength_unit_factor
from bayescannon.pipeline.atomic import write_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "FastHeader",
    "header_float",
    "header_str",
    "image_hdu",
    "parse_header",
    "read_fits_images",
    "require_keys",
    "set_wcs_cards",
    "table_hdu",
    "update_header",
    "wcs_wavelength",
    "write_hdus",
]

#: Values of the ``engine`` argument of the survey readers.
ENGINES = ("auto", "fast", "astropy")

_BLOCK = 2880
_CARD = 80
_END_CARD = b"END" + b" " * 77
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

# ---------------------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------------------

# The value field (columns 11-80) of an ordinary card, in the FITS fixed or free
# format: a string without lone quotes, T/F, an integer or a real, then an optional
# printable comment. Anything else (undefined or complex values, numbers with blanks,
# non-ASCII bytes ...) is left to astropy, and so are strings with doubled quotes.
_VALUE_RE = re.compile(
    rb" *(?:'(?P<s>(?:[ -&(-~]|'')*)'"
    rb"|(?P<b>[TF])"
    rb"|(?P<i>[+-]?\d+)"
    rb"|(?P<f>[+-]?(?:\.\d+|\d+(?:\.\d*)?)(?:[DEde][+-]?\d+)?))"
    rb" *(?:/[ -~]*)?\Z"
)
_KEYWORD_RE = re.compile(r"[A-Z0-9_-]{1,8}\Z")
_KEYWORD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_- "
_INNER_BLANK = re.compile(rb" [^ |]")  # in "|"-joined keyword fields: a blank before a character
_SLOW = object()  # "ask astropy"
_COMMENTARY = frozenset({"COMMENT", "HISTORY", "CONTINUE", "END"})  # never "KEYWORD = value" cards


def _plain_keywords(keys: list[bytes]) -> bool:
    """Whether every 8-byte keyword field is an upper-case FITS keyword padded with
    blanks (blank cards included) and none is HIERARCH."""
    if b"".join(keys).translate(None, _KEYWORD_CHARS):
        return False  # a byte that is not allowed in a keyword
    return _INNER_BLANK.search(b"|".join(keys)) is None and b"HIERARCH" not in keys


@functools.lru_cache(maxsize=1024)
def _keyword_field(key: str):
    """The 8-byte keyword field that ``header[key]`` looks up, or ``_SLOW`` when astropy
    must answer (HIERARCH-style names, commentary "" and anything else)."""
    key = key.upper()
    if not _KEYWORD_RE.match(key) or key in _COMMENTARY:
        return _SLOW
    return key.encode("ascii").ljust(8)


class FastHeader(Mapping):
    """Read-only keyword → value mapping over the raw bytes of one plain FITS header.

    Built by :func:`parse_header` for headers without HIERARCH cards whose keywords are
    all upper-case FITS keywords. Ordinary ``KEYWORD = value`` cards are parsed here
    (first occurrence of a keyword wins, as in astropy); every other request goes to
    the :class:`astropy.io.fits.Header` of the same bytes, parsed on first need.

    Parameters
    ----------
    buf : bytes
        The header, a whole number of 80-byte cards.
    keys : list of bytes
        The 8-byte keyword field of each card.
    """

    __slots__ = ("_astropy", "_buf", "_cache", "_index")

    def __init__(self, buf: bytes, keys: list[bytes]):
        self._buf = buf
        n = len(keys)
        # reversed so that the first occurrence of a repeated keyword wins
        self._index = dict(zip(keys[::-1], range((n - 1) * _CARD, -1, -_CARD), strict=True))
        self._cache: dict = {}
        self._astropy: fits.Header | None = None

    def to_astropy(self) -> fits.Header:
        """The :class:`astropy.io.fits.Header` of the same bytes (parsed once)."""
        if self._astropy is None:
            self._astropy = fits.Header.fromstring(self._buf)
        return self._astropy

    def _offset(self, key):
        """Card offset of an ordinary keyword, None when absent, ``_SLOW`` for astropy."""
        field = _keyword_field(key) if isinstance(key, str) else _SLOW
        return _SLOW if field is _SLOW else self._index.get(field)

    def _fast_value(self, key):
        j = self._offset(key)
        if j is None:
            raise KeyError(key)
        buf = self._buf
        if j is _SLOW or buf[j + 8 : j + 10] != b"= " or buf[j + _CARD : j + _CARD + 8] == b"CONTINUE":
            return _SLOW
        m = _VALUE_RE.match(buf, j + 10, j + _CARD)
        if m is None:
            return _SLOW
        if (s := m.group("s")) is not None:
            # astropy may end a string at a doubled quote followed by "/": let it decide
            return _SLOW if b"''" in s else s.decode("ascii").rstrip()
        if (b := m.group("b")) is not None:
            return b == b"T"
        if (i := m.group("i")) is not None:
            return int(i)
        return float(m.group("f").replace(b"D", b"E").replace(b"d", b"e"))

    def __getitem__(self, key):
        try:
            return self._cache[key]
        except (KeyError, TypeError):
            pass
        value = self._fast_value(key)
        if value is _SLOW:
            return self.to_astropy()[key]
        self._cache[key] = value
        return value

    def get(self, key, default=None):
        """``header[key]``, or ``default`` when the keyword is absent."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        j = self._offset(key)
        if j is None:
            return False
        if j is _SLOW or self._buf[j + 8 : j + 10] != b"= ":
            return key in self.to_astropy()
        return True

    def __iter__(self):
        return iter(self.to_astropy())

    def __len__(self) -> int:
        return len(self.to_astropy())

    def keys(self):
        """The keywords, as astropy lists them (commentary and repeated ones included)."""
        return self.to_astropy().keys()

    def values(self):
        """The values, as astropy lists them."""
        return self.to_astropy().values()

    def items(self):
        """The (keyword, value) pairs, as astropy lists them."""
        return self.to_astropy().items()

    def __repr__(self) -> str:
        return repr(self.to_astropy())


def parse_header(buf: bytes) -> Mapping:
    """The header in ``buf`` (whole 80-byte cards): a :class:`FastHeader` when plain,
    else the :class:`astropy.io.fits.Header` of the bytes."""
    keys = [buf[i : i + 8] for i in range(0, len(buf) - _CARD + 1, _CARD)]
    if not _plain_keywords(keys):
        return fits.Header.fromstring(buf)
    return FastHeader(buf, keys)


# ---------------------------------------------------------------------------------------
# images: fast path and astropy
# ---------------------------------------------------------------------------------------


class _Fallback(Exception):
    """Internal signal: let astropy.io.fits read this file."""


def _header_end(raw: bytes, off: int, path) -> int:
    """Offset just past the END card of the header starting at ``off``."""
    i = raw.find(_END_CARD, off)
    while i >= 0 and (i - off) % _CARD != 0:
        i = raw.find(_END_CARD, i + 1)
    if i < 0:
        raise format_error(path, "truncated FITS header (file ends before END card)")
    return i + _CARD


def _blocks(nbytes: int) -> int:
    return math.ceil(nbytes / _BLOCK) * _BLOCK


def _is_one(value) -> bool:
    return value is None or (value is not True and value == 1)


def _is_zero(value) -> bool:
    return value is None or (value is not False and value == 0)


def _image_data(raw: bytes, off: int, hdr: Mapping, shape: list[int], bitpix: int, path, h: int):
    """The image of one HDU as a view of ``raw`` (None for NAXIS = 0) and its byte size."""
    if bitpix not in _BITPIX_DTYPES:
        raise _Fallback
    if not (_is_zero(hdr.get("PCOUNT")) and _is_one(hdr.get("GCOUNT"))):
        raise _Fallback
    if bitpix > 0 and "BLANK" in hdr:  # astropy returns floats with NaN at BLANK
        raise _Fallback
    dtype = np.dtype(_BITPIX_DTYPES[bitpix])
    count = math.prod(shape) if shape else 0
    nbytes = dtype.itemsize * count
    if not count:
        return None, 0
    if off + nbytes > len(raw):
        raise format_error(path, f"truncated data in HDU {h}: expected {nbytes} bytes, got {len(raw) - off}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=off).reshape(shape[::-1])
    bscale = hdr.get("BSCALE")
    bzero = hdr.get("BZERO")
    if _is_one(bscale) and _is_zero(bzero):
        return data, nbytes
    if bitpix in (16, 32) and _is_one(bscale) and bzero == 2 ** (bitpix - 1) and not isinstance(bzero, bool):
        # unsigned integers stored with the FITS offset convention
        return (data.astype(np.int64) + int(bzero)).astype(f"u{bitpix // 8}"), nbytes
    raise _Fallback


def _fast_fits_images(path, n_hdus: int) -> list[tuple[Mapping, np.ndarray | None]]:
    """Headers and image data of the first ``n_hdus`` HDUs of a plain FITS file.

    Raises ``_Fallback`` when the file needs astropy (bzip2, tile-compressed or
    scaled images, integer images with BLANK, random groups ...).
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise _Fallback from None
    if not raw.startswith(b"SIMPLE  ="):
        raise _Fallback
    out: list[tuple[Mapping, np.ndarray | None]] = []
    off = 0
    for h in range(n_hdus):
        if off >= len(raw):
            break
        end = _header_end(raw, off, path)
        hdr = parse_header(raw[off:end])
        off += _blocks(end - off)
        try:
            bitpix = int(hdr["BITPIX"])
            naxis = int(hdr["NAXIS"])
            shape = [int(hdr[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        except (KeyError, ValueError, TypeError):
            raise _Fallback from None
        if h == 0 and hdr.get("GROUPS") is True:
            raise _Fallback
        xtension = str(hdr.get("XTENSION", "IMAGE")).strip().upper() if h else "IMAGE"
        if xtension != "IMAGE":
            if hdr.get("ZIMAGE") is True:  # a tile-compressed image: astropy decompresses it
                raise _Fallback
            try:
                pcount = int(hdr.get("PCOUNT", 0) or 0)
                gcount = int(hdr.get("GCOUNT", 1) or 1)
            except (ValueError, TypeError):
                raise _Fallback from None
            off += _blocks(abs(bitpix) // 8 * gcount * (pcount + (math.prod(shape) if shape else 0)))
            out.append((hdr, None))
            continue
        data, nbytes = _image_data(raw, off, hdr, shape, bitpix, path, h)
        off += _blocks(nbytes)
        out.append((hdr, data))
    return out


def _astropy_images(path, n_hdus: int) -> list[tuple[Mapping, np.ndarray | None]]:
    try:
        with fits.open(path, memmap=False) as hdul:
            out = []
            for h in range(min(n_hdus, len(hdul))):
                hdu = hdul[h]
                data = None
                if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None:
                    data = np.array(hdu.data)
                out.append((hdu.header.copy(), data))
            return out
    except SurveyFormatError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise format_error(path, f"not a readable FITS file ({exc})") from exc


def read_fits_images(path, n_hdus: int, engine: str = "auto") -> list[tuple[Mapping, np.ndarray | None]]:
    """Headers and image arrays of the first ``n_hdus`` HDUs (fewer if the file has fewer).

    Parameters
    ----------
    path : str or path-like
    n_hdus : int
    engine : {"auto", "fast", "astropy"}
        ``"auto"`` and ``"fast"`` use the fast path for plain files (see the module
        docstring) and :mod:`astropy.io.fits` for anything else; ``"astropy"``
        always uses astropy.

    Returns
    -------
    list of (header, array or None)
        ``array`` is None for an HDU without image data (a table, NAXIS = 0).

    Raises
    ------
    SurveyFormatError
        When the file is missing, unreadable or truncated.
    InvalidInputError
        For an unknown ``engine``.
    """
    path = os.fspath(path)
    if engine not in ENGINES:
        raise InvalidInputError(f"engine must be 'auto', 'fast' or 'astropy'; got {engine!r}")
    check_regular_file(path)  # missing, or a FIFO that would block the read forever
    if engine != "astropy":
        try:
            return _fast_fits_images(path, n_hdus)
        except _Fallback:
            logger.debug("%s: not a plain FITS file; reading it with astropy", path)
        except SurveyFormatError:
            raise
        except OSError as exc:
            raise format_error(path, f"cannot read file ({exc})") from exc
    return _astropy_images(path, n_hdus)


# ---------------------------------------------------------------------------------------
# header values
# ---------------------------------------------------------------------------------------


def require_keys(header: Mapping, keys: Iterable[str], path, where: str) -> None:
    """Raise a :class:`SurveyFormatError` naming the file when a keyword is absent or undefined."""
    missing = [k for k in keys if header.get(k) is None]
    if missing:
        raise format_error(path, f"missing header keyword(s) {', '.join(missing)} in {where}")


_MISSING_FLOATS = frozenset({-9999.0, math.inf, -math.inf})


def header_float(header: Mapping, key: str, default=math.nan) -> float:
    """A header value as float; ``default`` when absent, not numeric, NaN/inf or -9999."""
    value = header.get(key, None)
    if value is None or isinstance(value, bool):
        return float(default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float(default)
    if math.isnan(value) or value in _MISSING_FLOATS:
        return float(default)
    return value


def header_str(header: Mapping, key: str) -> str:
    """A header value as a stripped string; ``""`` when absent or undefined."""
    value = header.get(key, None)
    return "" if value is None else str(value).strip()


def wcs_wavelength(header: Mapping, npix: int, path, where: str, *, log: bool) -> np.ndarray:
    """Wavelengths (Angstrom) of ``npix`` pixels from the ``CRVAL1``/``CDELT1``/``CRPIX1`` cards.

    ``x_i = CRVAL1 + CDELT1 * (i + 1 - CRPIX1)`` (``i`` from 0; ``CRPIX1`` defaults to
    1); the wavelength is ``x_i`` (``log=False``) or ``10 ** x_i`` (``log=True``,
    unless ``DC-FLAG = 0`` says the dispersion is linear), in the unit of ``CUNIT1``
    (``log(unit)`` accepted for log-linear solutions).

    Raises
    ------
    SurveyFormatError
        Missing or non-numeric cards, a step that is not positive, or an unknown unit.
    """
    require_keys(header, ("CRVAL1", "CDELT1"), path, where)
    try:
        crval1 = float(header["CRVAL1"])
        cdelt1 = float(header["CDELT1"])
        crpix1 = header.get("CRPIX1", None)
        crpix1 = 1.0 if crpix1 is None else float(crpix1)
    except (TypeError, ValueError) as exc:
        raise format_error(path, f"CRVAL1/CDELT1/CRPIX1 in {where} are not numbers") from exc
    if not (math.isfinite(crval1) and math.isfinite(cdelt1) and cdelt1 > 0):
        raise format_error(path, f"CDELT1 in {where} must be positive; got {cdelt1} (CRVAL1 {crval1})")
    unit = header.get("CUNIT1", None)
    if log and unit is not None:
        m = re.fullmatch(r"(?i)log(?:10)?\((.*)\)", str(unit).strip())
        unit = m.group(1) if m else unit
    factor = wavelength_unit_factor(unit, path, f"CUNIT1 of {where}")
    x = crval1 + cdelt1 * (np.arange(npix, dtype=np.float64) + 1.0 - crpix1)
    if log and header.get("DC-FLAG", 1) not in (0, False):
        x = 10.0**x
    return x * factor


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def update_header(header: fits.Header, values: Mapping | None) -> None:
    """Set keywords from ``values``; a value of ``None`` removes the keyword."""
    for key, value in (values or {}).items():
        if value is None:
            if key in header:
                del header[key]
            continue
        header[str(key).upper()] = value


def set_wcs_cards(header: fits.Header, crval1, cdelt1, crpix1, *, log: bool) -> None:
    """Write a linear (Angstrom) or log-linear (log10 Angstrom) wavelength solution."""
    if log:
        header["CRVAL1"] = (float(crval1), "log10 of the first wavelength (Angstrom)")
        header["CDELT1"] = (float(cdelt1), "log10 wavelength step")
        header["CRPIX1"] = (float(crpix1), "reference pixel")
        header["CTYPE1"] = "LOG-LINEAR"
        header["DC-FLAG"] = (1, "log-linear dispersion")
    else:
        header["CRVAL1"] = (float(crval1), "wavelength of the reference pixel (Angstrom)")
        header["CDELT1"] = (float(cdelt1), "wavelength step (Angstrom)")
        header["CRPIX1"] = (float(crpix1), "reference pixel")
        header["CTYPE1"] = "LINEAR"
        header["CUNIT1"] = "Angstroms"


def image_hdu(
    data,
    name: str | None = None,
    dtype=None,
    *,
    cards: Mapping | None = None,
    wcs: Sequence | None = None,
    log: bool = True,
) -> fits.ImageHDU:
    """An image HDU of ``data`` (as ``dtype``) with header ``cards`` and the WCS cards
    ``wcs = (crval1, cdelt1, crpix1)`` (see :func:`set_wcs_cards`)."""
    hdu = fits.ImageHDU(np.asarray(data, dtype=dtype), name=name)
    update_header(hdu.header, cards)
    if wcs is not None:
        set_wcs_cards(hdu.header, *wcs, log=log)
    return hdu


def table_hdu(columns, name: str) -> fits.BinTableHDU:
    """A binary-table HDU named ``name`` from a mapping of columns or a Table."""
    hdu = fits.table_to_hdu(columns if isinstance(columns, Table) else Table(dict(columns)))
    hdu.name = name
    return hdu


def write_hdus(hdus: Sequence, path, overwrite: bool = False) -> Path:
    """Write HDUs to ``path`` atomically (see :func:`bayescannon.pipeline.atomic.write_atomic`)."""
    hdul = fits.HDUList(list(hdus))
    return write_atomic(path, lambda tmp: hdul.writeto(tmp, overwrite=True), overwrite=overwrite)
