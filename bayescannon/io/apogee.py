"""APOGEE ``apStar`` and ``aspcapStar`` files: readers and writers of the real layout.

apStar (combined spectra, DR12-DR17)
    HDU0 header only (``OBJID``, ``SNR``, ``VHELIO``, ``RA``, ``DEC``, ``NVISITS``, ...);
    HDU1 flux, HDU2 error, HDU3 pixel mask (``APOGEE_PIXMASK`` bits), then sky, sky
    error, telluric, telluric error, LSF coefficients and an RV table. When a star has
    more than one visit, HDU1-3 are 2-D with rows ``[combined (pixel-weighted),
    combined (global-weighted), visit 1, visit 2, ...]``; with one visit they are 1-D.
aspcapStar
    HDU1 continuum-normalised flux, HDU2 error, HDU3 best-fitting ASPCAP model,
    HDU4 a table of ASPCAP results.

Wavelengths are log-linear, vacuum, in the stellar rest frame:
``lambda_i = 10 ** (CRVAL1 + CDELT1 * (i + 1 - CRPIX1))`` Angstrom (``i`` from 0),
with ``CRVAL1``/``CDELT1`` (``CRPIX1`` defaults to 1) read from the flux HDU header.

Errors become inverse variances: ``ivar = 1 / error**2``, and ``ivar = 0`` where the
error is 0, negative, non-finite or above ``max_error``, where the flux is non-finite,
or where the pixel mask has any of ``reject_bits`` set.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from ..errors import InvalidInputError
from .generic import (
    _call_reader,
    _format_error,
    _header_float,
    _read_fits_images,
    _read_many_with,
    _Record,
    _records_to_dataset,
    _require_keys,
    _to_uint32_mask,
    _wavelength_unit_factor,
)

logger = logging.getLogger(__name__)

__all__ = [
    "APOGEE_PIXMASK_BITS",
    "APOGEE_ASPCAPFLAG_BITS",
    "APOGEE_STARFLAG_BITS",
    "DEFAULT_REJECT_BITS",
    "apogee_wavelength",
    "read_apstar",
    "read_apstar_many",
    "read_aspcapstar",
    "read_aspcapstar_many",
    "write_apstar",
    "write_aspcapstar",
    "bits_to_int",
    "mask_bits_attr",
]

#: ``APOGEE_PIXMASK`` bit numbers and names (DR12 data model).
APOGEE_PIXMASK_BITS: dict[int, str] = {
    0: "BADPIX",
    1: "CRPIX",
    2: "SATPIX",
    3: "UNFIXABLE",
    4: "BADDARK",
    5: "BADFLAT",
    6: "BADERR",
    7: "NOSKY",
    8: "LITTROW_GHOST",
    9: "PERSIST_HIGH",
    10: "PERSIST_MED",
    11: "PERSIST_LOW",
    12: "SIG_SKYLINE",
    13: "SIG_TELLURIC",
    14: "NOT_ENOUGH_PSF",
}

#: ``APOGEE_ASPCAPFLAG`` bit numbers and names (DR12-DR13).
APOGEE_ASPCAPFLAG_BITS: dict[int, str] = {
    0: "TEFF_WARN",
    1: "LOGG_WARN",
    2: "VMICRO_WARN",
    3: "M_H_WARN",
    4: "ALPHA_M_WARN",
    5: "C_M_WARN",
    6: "N_M_WARN",
    7: "STAR_WARN",
    8: "CHI2_WARN",
    9: "COLORTE_WARN",
    10: "ROTATION_WARN",
    11: "SN_WARN",
    12: "SPEC_HOLE_WARN",
    13: "ATMOS_HOLE_WARN",
    14: "VSINI_WARN",
    16: "TEFF_BAD",
    17: "LOGG_BAD",
    18: "VMICRO_BAD",
    19: "M_H_BAD",
    20: "ALPHA_M_BAD",
    21: "C_M_BAD",
    22: "N_M_BAD",
    23: "STAR_BAD",
    24: "CHI2_BAD",
    25: "COLORTE_BAD",
    26: "ROTATION_BAD",
    27: "SN_BAD",
    28: "SPEC_HOLE_BAD",
    29: "ATMOS_HOLE_BAD",
    30: "VSINI_BAD",
    31: "NO_ASPCAP_RESULT",
}

#: ``APOGEE_STARFLAG`` bit numbers and names (DR12-DR13).
APOGEE_STARFLAG_BITS: dict[int, str] = {
    0: "BAD_PIXELS",
    1: "COMMISSIONING",
    2: "BRIGHT_NEIGHBOR",
    3: "VERY_BRIGHT_NEIGHBOR",
    4: "LOW_SNR",
    9: "PERSIST_HIGH",
    10: "PERSIST_MED",
    11: "PERSIST_LOW",
    12: "PERSIST_JUMP_POS",
    13: "PERSIST_JUMP_NEG",
    16: "SUSPECT_RV_COMBINATION",
    17: "SUSPECT_BROAD_LINES",
    18: "BAD_RV_COMBINATION",
    24: "MTPFLUX_LT_75",
    25: "MTPFLUX_LT_50",
}

#: PIXMASK bits whose pixels get ``ivar = 0`` by default: BADPIX, CRPIX, SATPIX,
#: UNFIXABLE, BADDARK, BADFLAT, BADERR and SIG_SKYLINE.
DEFAULT_REJECT_BITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 12)

_APOGEE_ID = re.compile(r"2M\d{8}[+-]\d{7}")
_FLUX_BUNIT = "Flux (10^-17 erg/s/cm^2/Ang)"


def mask_bits_attr(bits: Mapping[int, str]) -> str:
    """Encode a bit-number → name mapping as the ``mask_bits`` attribute string.

    The container stores survey mask-bit names as ``"0:BADPIX,1:CRPIX,..."`` (a
    string survives netCDF and FITS).
    """
    return ",".join(f"{int(b)}:{name}" for b, name in sorted(bits.items()))


def _parse_bits_attr(text) -> dict[str, int]:
    """Bit name → bit number from a ``mask_bits`` attribute.

    Understands ``"0:BADPIX,1:CRPIX"`` (bit numbers, as written by the readers) and
    ``"1=BADPIX: description; 2=WINDOW: ..."`` (bit values, as written by the
    simulator); also a mapping in either direction.
    """
    if isinstance(text, Mapping):
        out = {}
        for k, v in text.items():
            if isinstance(k, str):
                out[k.strip().upper()] = int(v).bit_length() - 1 if int(v) > 0 else 0
            else:
                out[str(v).strip().upper()] = int(k)
        return out
    out: dict[str, int] = {}
    for item in re.split(r"[;,]", str(text or "")):
        item = item.strip()
        try:
            if "=" in item:
                value, rest = item.split("=", 1)
                value = int(value)
                if value <= 0 or value & (value - 1):
                    continue
                out[rest.split(":", 1)[0].strip().upper()] = value.bit_length() - 1
            elif ":" in item:
                b, name = item.split(":", 1)
                out[name.strip().upper()] = int(b)
        except ValueError:
            continue
    return out


def bits_to_int(bits, names: Mapping[int, str] | str | None = None) -> int:
    """Combine bit numbers and/or bit names into one integer bit mask.

    Parameters
    ----------
    bits : int, str or iterable of int/str, or None
        Bit numbers (0-31) or names (e.g. ``"BADPIX"``). ``None`` or empty → 0.
    names : mapping or str, optional
        Bit number → name mapping (or a ``mask_bits`` attribute string) used to
        resolve names.

    Returns
    -------
    int

    Raises
    ------
    InvalidInputError
        For an unknown name or a bit number outside 0-31.
    """
    if bits is None:
        return 0
    if isinstance(bits, (int, np.integer, str)):
        bits = [bits]
    lookup = _parse_bits_attr(names) if names is not None else {}
    value = 0
    for b in bits:
        if isinstance(b, (str, np.str_)):
            key = str(b).strip().upper()
            if key.isdigit():
                b = int(key)
            elif key in lookup:
                b = lookup[key]
            else:
                known = ", ".join(sorted(lookup)) or "none"
                raise InvalidInputError(f"unknown mask bit name {b!r}; known names: {known}")
        b = int(b)
        if not 0 <= b < 32:
            raise InvalidInputError(f"mask bit numbers must be 0-31; got {b}")
        value |= 1 << b
    return value


def apogee_wavelength(
    crval1: float = 4.179, cdelt1: float = 6.0e-6, npix: int = 8575, crpix1: float = 1.0
) -> np.ndarray:
    """The APOGEE log-linear vacuum wavelength grid in Angstrom.

    ``10 ** (crval1 + cdelt1 * (i + 1 - crpix1))`` for ``i = 0 .. npix-1``; the
    defaults are the apStar/aspcapStar grid (15,100-17,000 A, 8575 pixels).
    """
    i = np.arange(int(npix), dtype=np.float64)
    return 10.0 ** (float(crval1) + float(cdelt1) * (i + 1.0 - float(crpix1)))


def _log_linear_wavelength(header: Mapping, npix: int, path, where: str) -> np.ndarray:
    _require_keys(header, ("CRVAL1", "CDELT1"), path, where)
    try:
        crval1 = float(header["CRVAL1"])
        cdelt1 = float(header["CDELT1"])
        crpix1 = float(header.get("CRPIX1", 1.0) or 1.0)
    except (TypeError, ValueError) as exc:
        raise _format_error(path, f"CRVAL1/CDELT1/CRPIX1 in {where} are not numbers") from exc
    if not (np.isfinite(crval1) and np.isfinite(cdelt1)) or cdelt1 <= 0:
        raise _format_error(path, f"CDELT1 in {where} must be positive; got {cdelt1}")
    unit = header.get("CUNIT1", None)
    if unit is not None:
        text = str(unit).strip()
        m = re.fullmatch(r"(?i)log(?:10)?\((.*)\)", text)
        unit = m.group(1) if m else text
    factor = _wavelength_unit_factor(unit, path, f"CUNIT1 of {where}")
    dcflag = header.get("DC-FLAG", 1)
    if dcflag in (0, False):  # linear dispersion (not APOGEE's usual)
        wl = crval1 + cdelt1 * (np.arange(npix) + 1.0 - crpix1)
    else:
        wl = 10.0 ** (crval1 + cdelt1 * (np.arange(npix) + 1.0 - crpix1))
    return wl * factor


def _error_to_ivar(flux, error, max_error: float):
    flux = np.asarray(flux, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    good = np.isfinite(flux) & np.isfinite(error) & (error > 0) & (error < max_error)
    ivar = np.zeros_like(error)
    np.divide(1.0, error * error, out=ivar, where=good)
    ivar[~np.isfinite(ivar)] = 0.0
    flux = np.where(np.isfinite(flux), flux, 0.0)
    return flux, ivar


def _apogee_id(header: Mapping, path, id_from: str) -> str:
    if id_from not in ("header", "filename"):
        raise InvalidInputError(f"id_from must be 'header' or 'filename'; got {id_from!r}")
    if id_from == "header":
        for key in ("OBJID", "APOGEE_ID", "OBJECT"):
            value = header.get(key, None)
            if value not in (None, ""):
                return str(value).strip()
    name = os.path.basename(os.fspath(path))
    m = _APOGEE_ID.search(name)
    if m:
        return m.group(0)
    for suffix in (".gz", ".fits", ".fit"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _check_shapes(path, **arrays) -> None:
    shapes = {k: (None if v is None else np.shape(v)) for k, v in arrays.items()}
    ref = next(iter(shapes.values()))
    if any(s != ref for s in shapes.values()):
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise _format_error(path, f"HDU shapes do not agree: {desc}")


def _read_apstar_record(
    path,
    *,
    row: int = 0,
    reject_bits=DEFAULT_REJECT_BITS,
    max_error: float = 1.0e8,
    id_from: str = "header",
    engine: str = "auto",
) -> _Record:
    hdus = _read_fits_images(path, 4, engine)
    if len(hdus) < 4:
        raise _format_error(
            path,
            f"an apStar file has at least 4 HDUs (header, flux, error, mask); found {len(hdus)}",
        )
    h0, _ = hdus[0]
    h1, flux = hdus[1]
    _, error = hdus[2]
    _, mask = hdus[3]
    if flux is None or error is None or mask is None:
        missing = [n for n, a in (("1 (flux)", flux), ("2 (error)", error), ("3 (mask)", mask)) if a is None]
        raise _format_error(path, f"HDU {', '.join(missing)} holds no image data")
    _check_shapes(path, flux=flux, error=error, mask=mask)
    if flux.ndim not in (1, 2):
        raise _format_error(path, f"flux HDU must be 1-D or 2-D; got shape {flux.shape}")
    nrows = 1 if flux.ndim == 1 else flux.shape[0]
    if not 0 <= int(row) < nrows:
        raise _format_error(path, f"has {nrows} spectrum row(s); row={row} was requested")
    if flux.ndim == 2:
        flux, error, mask = flux[row], error[row], mask[row]
    npix = flux.shape[-1]
    naxis1 = h1.get("NAXIS1", npix)
    if int(naxis1) != npix:
        raise _format_error(path, f"NAXIS1={naxis1} but the flux HDU holds {npix} pixels")
    wl = _log_linear_wavelength(h1, npix, path, "HDU1 (flux) header")
    mask = _to_uint32_mask(mask)
    flux, ivar = _error_to_ivar(flux, error, max_error)
    reject = bits_to_int(reject_bits, APOGEE_PIXMASK_BITS)
    extras = {
        "snr": _header_float(h0, "SNR"),
        "rv": _header_float(h0, "VHELIO"),
        "ra": _header_float(h0, "RA"),
        "dec": _header_float(h0, "DEC"),
        "nvisits": int(h0.get("NVISITS", nrows if nrows == 1 else nrows - 2) or 0),
        "telescope": str(h0.get("TELESCOP", "") or ""),
        "filename": os.path.basename(os.fspath(path)),
    }
    attrs = {
        "survey": "APOGEE",
        "instrument": "APOGEE",
        "resolving_power": 22500.0,
        "normalised": False,
        "mask_bits": mask_bits_attr(APOGEE_PIXMASK_BITS),
        "history": f"read_apstar(row={int(row)}, reject_bits={reject:#x})",
    }
    return _Record(
        id=_apogee_id(h0, path, id_from),
        wavelength=wl,
        flux=flux,
        ivar=ivar,
        mask=mask,
        reject=reject,
        extras=extras,
        attrs=attrs,
        wavelength_attrs={"units": "Angstrom", "medium": "vacuum", "frame": "rest"},
        path=os.fspath(path),
    )


def _read_aspcapstar_record(
    path,
    *,
    max_error: float = 1.0e8,
    id_from: str = "header",
    engine: str = "auto",
    _want_model: bool = False,
):
    hdus = _read_fits_images(path, 4, engine)
    if len(hdus) < 4:
        raise _format_error(
            path,
            "an aspcapStar file has at least 4 HDUs (header, normalised flux, error, model); "
            f"found {len(hdus)}",
        )
    h0, _ = hdus[0]
    h1, flux = hdus[1]
    _, error = hdus[2]
    _, model = hdus[3]
    if flux is None or error is None:
        raise _format_error(path, "HDU1 (flux) or HDU2 (error) holds no image data")
    _check_shapes(path, flux=flux, error=error)
    if flux.ndim != 1:
        raise _format_error(path, f"aspcapStar flux must be 1-D; got shape {flux.shape}")
    wl = _log_linear_wavelength(h1, flux.shape[0], path, "HDU1 (flux) header")
    flux, ivar = _error_to_ivar(flux, error, max_error)
    extras = {
        "snr": _header_float(h0, "SNR"),
        "ra": _header_float(h0, "RA"),
        "dec": _header_float(h0, "DEC"),
        "filename": os.path.basename(os.fspath(path)),
    }
    rec = _Record(
        id=_apogee_id(h0, path, id_from),
        wavelength=wl,
        flux=flux,
        ivar=ivar,
        mask=None,
        extras=extras,
        attrs={
            "survey": "APOGEE",
            "instrument": "APOGEE",
            "resolving_power": 22500.0,
            "normalised": True,
            "history": "read_aspcapstar",
        },
        wavelength_attrs={"units": "Angstrom", "medium": "vacuum", "frame": "rest"},
        path=os.fspath(path),
    )
    if _want_model:
        if model is None or np.shape(model) != np.shape(flux):
            raise _format_error(path, "HDU3 (best-fitting model) is missing or has the wrong shape")
        return rec, np.asarray(model, dtype=np.float64)
    return rec


def read_apstar(
    path,
    *,
    row: int = 0,
    reject_bits=DEFAULT_REJECT_BITS,
    max_error: float = 1.0e8,
    id_from: str = "header",
    engine: str = "auto",
) -> xr.Dataset:
    """Read one APOGEE apStar file.

    Parameters
    ----------
    path : str or path-like
    row : int
        Spectrum row: 0 = combined with pixel-based weighting (default), 1 = combined
        with global weighting, 2+ = individual visits.
    reject_bits : iterable of int or str, optional
        ``APOGEE_PIXMASK`` bits (numbers or names) whose pixels get ``ivar = 0``;
        default :data:`DEFAULT_REJECT_BITS`. ``None`` rejects on no bit.
    max_error : float
        Errors at or above this value mark pixels without information.
    id_from : {"header", "filename"}
        Identifier from ``OBJID`` (default) or from the 2MASS-style id in the file name.
    engine : {"auto", "fast", "astropy"}
        FITS reading engine (``"auto"``: a fast reader for plain image HDUs, astropy
        otherwise).

    Returns
    -------
    xarray.Dataset
        One-star container with ``mask`` (PIXMASK bits) and per-star ``snr`` (``SNR``),
        ``rv`` (``VHELIO``, km/s), ``ra``, ``dec``, ``nvisits``, ``telescope``,
        ``filename``. Wavelengths are vacuum, rest frame.

    Raises
    ------
    SurveyFormatError
        Missing file, fewer than 4 HDUs, HDU shapes that disagree, missing
        ``CRVAL1``/``CDELT1``, an unknown ``CUNIT1``, or a row that does not exist.
    """
    rec = _call_reader(
        _read_apstar_record,
        path,
        row=row,
        reject_bits=reject_bits,
        max_error=max_error,
        id_from=id_from,
        engine=engine,
    )
    return _records_to_dataset([rec])


def read_aspcapstar(
    path,
    *,
    max_error: float = 1.0e8,
    id_from: str = "header",
    engine: str = "auto",
    return_model: bool = False,
):
    """Read one APOGEE aspcapStar file (continuum-normalised flux).

    Parameters
    ----------
    path : str or path-like
    max_error : float
        Errors at or above this value mark pixels without information.
    id_from : {"header", "filename"}
    engine : {"auto", "fast", "astropy"}
    return_model : bool
        Also return the best-fitting ASPCAP model spectrum (HDU3), shape (1, P).

    Returns
    -------
    xarray.Dataset or (xarray.Dataset, numpy.ndarray)
        ``attrs["normalised"]`` is True.

    Raises
    ------
    SurveyFormatError
        As :func:`read_apstar`.
    """
    out = _call_reader(
        _read_aspcapstar_record,
        path,
        max_error=max_error,
        id_from=id_from,
        engine=engine,
        _want_model=return_model,
    )
    if return_model:
        rec, model = out
        return _records_to_dataset([rec]), model[None, :]
    return _records_to_dataset([out])


def read_apstar_many(
    paths: Sequence,
    *,
    on_error: str = "raise",
    return_skipped: bool = False,
    grid: str = "strict",
    resample_to=None,
    progressbar: bool = False,
    **kwargs,
):
    """Read many apStar files into one container (see :func:`read_apstar`).

    Parameters
    ----------
    paths : sequence of path-like
    on_error : {"raise", "skip"}
        ``"skip"`` logs and collects unreadable files (and duplicated ids) instead of
        stopping.
    return_skipped : bool
        Return ``(ds, skipped)``, ``skipped`` an astropy Table with columns ``path``,
        ``error``, ``reason``.
    grid, resample_to
        See :func:`bayescannon.io.generic.read_many`; grids must match unless told
        otherwise (:class:`~bayescannon.errors.GridMismatchError`).
    progressbar : bool
    **kwargs
        Passed to :func:`read_apstar` (``row``, ``reject_bits``, ...).
    """
    return _read_many_with(
        paths,
        _read_apstar_record,
        what="apStar",
        on_error=on_error,
        return_skipped=return_skipped,
        grid=grid,
        resample_to=resample_to,
        progressbar=progressbar,
        **kwargs,
    )


def read_aspcapstar_many(
    paths: Sequence,
    *,
    on_error: str = "raise",
    return_skipped: bool = False,
    grid: str = "strict",
    resample_to=None,
    progressbar: bool = False,
    **kwargs,
):
    """Read many aspcapStar files into one container (see :func:`read_apstar_many`)."""
    return _read_many_with(
        paths,
        _read_aspcapstar_record,
        what="aspcapStar",
        on_error=on_error,
        return_skipped=return_skipped,
        grid=grid,
        resample_to=resample_to,
        progressbar=progressbar,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------


def _prepare_output(path, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _wcs_cards(header: fits.Header, crval1, cdelt1, crpix1) -> None:
    header["CRVAL1"] = (float(crval1), "log10 of the first wavelength (Angstrom)")
    header["CDELT1"] = (float(cdelt1), "log10 wavelength step")
    header["CRPIX1"] = (float(crpix1), "reference pixel")
    header["CTYPE1"] = "LOG-LINEAR"
    header["DC-FLAG"] = (1, "log-linear dispersion")


def _update_header(header: fits.Header, values: Mapping | None) -> None:
    for key, value in (values or {}).items():
        if value is None:
            if key in header:
                del header[key]
            continue
        header[str(key).upper()] = value


def _mask_hdu(mask, name: str) -> fits.ImageHDU:
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= 2**31):
        raise InvalidInputError(f"{name} values must be within 0 .. 2**31-1")
    dtype = np.int16 if (mask.size == 0 or mask.max() < 2**15) else np.int32
    return fits.ImageHDU(mask.astype(dtype), name=name)


def write_apstar(
    path,
    flux,
    error,
    mask=None,
    *,
    header: Mapping | None = None,
    crval1: float = 4.179,
    cdelt1: float = 6.0e-6,
    crpix1: float = 1.0,
    dtype=np.float32,
    overwrite: bool = False,
) -> Path:
    """Write an apStar file in the real layout.

    Parameters
    ----------
    path : str or path-like
    flux, error : array_like, shape (P,) or (R, P)
        One spectrum (a one-visit star: 1-D HDUs) or rows ``[combined pixel-weighted,
        combined global-weighted, visit 1, ...]``.
    mask : array_like of int, same shape, optional
        ``APOGEE_PIXMASK`` bits (default 0).
    header : mapping, optional
        Primary-header keywords (``OBJID``, ``SNR``, ``VHELIO``, ``RA``, ``DEC``,
        ``NVISITS``, ``TELESCOP`` ...); a value of ``None`` removes a default keyword.
    crval1, cdelt1, crpix1 : float
        Log-linear wavelength solution (see :func:`apogee_wavelength`).
    dtype : numpy dtype
        Data type of flux/error images (``float32`` as in the survey; ``float64`` for
        bit-exact round trips).
    overwrite : bool

    Returns
    -------
    pathlib.Path
    """
    flux = np.asarray(flux)
    error = np.asarray(error)
    if flux.ndim not in (1, 2) or error.shape != flux.shape:
        raise InvalidInputError(
            f"flux must be 1-D or 2-D and error the same shape; got {flux.shape} and {error.shape}"
        )
    mask = np.zeros(flux.shape, np.int16) if mask is None else np.asarray(mask)
    if mask.shape != flux.shape:
        raise InvalidInputError(f"mask has shape {mask.shape}; expected {flux.shape}")
    path = _prepare_output(path, overwrite)
    nrows = 1 if flux.ndim == 1 else flux.shape[0]
    primary = fits.PrimaryHDU()
    h0 = primary.header
    h0["TELESCOP"] = ("apo25m", "telescope")
    h0["NVISITS"] = (1 if nrows == 1 else max(nrows - 2, 1), "number of visits")
    h0["SNR"] = (0.0, "S/N of the combined spectrum")
    h0["VHELIO"] = (0.0, "mean heliocentric velocity (km/s)")
    h0["RA"] = 0.0
    h0["DEC"] = 0.0
    _update_header(h0, header)
    hdus: list = [primary]
    for name, data, bunit in (
        ("FLUX", flux, _FLUX_BUNIT),
        ("ERROR", error, _FLUX_BUNIT),
    ):
        hdu = fits.ImageHDU(np.asarray(data, dtype=dtype), name=name)
        hdu.header["BUNIT"] = bunit
        _wcs_cards(hdu.header, crval1, cdelt1, crpix1)
        hdus.append(hdu)
    mhdu = _mask_hdu(mask, "MASK")
    _wcs_cards(mhdu.header, crval1, cdelt1, crpix1)
    hdus.append(mhdu)
    zeros = np.zeros(flux.shape, dtype=dtype)
    for name, data in (
        ("SKY", zeros),
        ("SKYERR", zeros),
        ("TELLURIC", np.ones(flux.shape, dtype=dtype)),
        ("TELLURICERR", zeros),
    ):
        hdu = fits.ImageHDU(data, name=name)
        _wcs_cards(hdu.header, crval1, cdelt1, crpix1)
        hdus.append(hdu)
    hdus.append(fits.ImageHDU(np.zeros((nrows, 26), dtype=np.float64), name="LSF"))
    rv = Table(
        {
            "VHELIO": np.full(max(nrows - 2, 1), float(h0.get("VHELIO", 0.0))),
            "SNR": np.full(max(nrows - 2, 1), float(h0.get("SNR", 0.0))),
        }
    )
    rv_hdu = fits.table_to_hdu(rv)
    rv_hdu.name = "RV"
    hdus.append(rv_hdu)
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)
    return path


def write_aspcapstar(
    path,
    flux,
    error,
    model=None,
    *,
    header: Mapping | None = None,
    crval1: float = 4.179,
    cdelt1: float = 6.0e-6,
    crpix1: float = 1.0,
    dtype=np.float32,
    overwrite: bool = False,
) -> Path:
    """Write an aspcapStar file in the real layout (HDU1 flux, HDU2 error, HDU3 model).

    Parameters
    ----------
    path : str or path-like
    flux, error : array_like, shape (P,)
        Continuum-normalised flux and its error.
    model : array_like, shape (P,), optional
        Best-fitting model spectrum (default: ones).
    header : mapping, optional
        Primary-header keywords (``OBJID``, ``SNR``, ...).
    crval1, cdelt1, crpix1 : float
    dtype : numpy dtype
    overwrite : bool

    Returns
    -------
    pathlib.Path
    """
    flux = np.asarray(flux)
    error = np.asarray(error)
    if flux.ndim != 1 or error.shape != flux.shape:
        raise InvalidInputError(
            f"flux must be 1-D and error the same shape; got {flux.shape} and {error.shape}"
        )
    model = np.ones(flux.shape) if model is None else np.asarray(model)
    if model.shape != flux.shape:
        raise InvalidInputError(f"model has shape {model.shape}; expected {flux.shape}")
    path = _prepare_output(path, overwrite)
    primary = fits.PrimaryHDU()
    _update_header(primary.header, header)
    hdus: list = [primary]
    for name, data in (("FLUX", flux), ("ERROR", error), ("MODEL", model)):
        hdu = fits.ImageHDU(np.asarray(data, dtype=dtype), name=name)
        _wcs_cards(hdu.header, crval1, cdelt1, crpix1)
        hdus.append(hdu)
    objid = str(primary.header.get("OBJID", ""))
    table = Table({"APOGEE_ID": np.asarray([objid]), "SNR": [float(primary.header.get("SNR", 0.0))]})
    thdu = fits.table_to_hdu(table)
    thdu.name = "ASPCAP"
    hdus.append(thdu)
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)
    return path
