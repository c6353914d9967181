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

The formats :data:`APSTAR` and :data:`ASPCAPSTAR` are declared to the registry
(:mod:`bayescannon.io.registry`): file names starting ``apStar``/``asStar`` and
``aspcapStar``, or a primary header with ``OBJID`` and an HDU1 with ``CRVAL1``.
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

from bayescannon.errors import InvalidInputError
from bayescannon.io.backend import FitsProbe, SpectraFormat
from bayescannon.io.bits import bits_to_int, mask_bits_attr
from bayescannon.io.common import format_error, has_fits_suffix
from bayescannon.io.fits import (
    header_float,
    header_str,
    image_hdu,
    read_fits_images,
    table_hdu,
    update_header,
    wcs_wavelength,
    write_hdus,
)
from bayescannon.io.records import (
    _call_reader,
    _error_to_ivar,
    _read_many_with,
    _Record,
    _records_to_dataset,
    _to_uint32_mask,
)

logger = logging.getLogger(__name__)

__all__ = [
    "APOGEE_ASPCAPFLAG_BITS",
    "APOGEE_PIXMASK_BITS",
    "APOGEE_STARFLAG_BITS",
    "APSTAR",
    "ASPCAPSTAR",
    "DEFAULT_REJECT_BITS",
    "apogee_wavelength",
    "bits_to_int",
    "mask_bits_attr",
    "read_apstar",
    "read_apstar_many",
    "read_aspcapstar",
    "read_aspcapstar_many",
    "write_apstar",
    "write_aspcapstar",
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
_APOGEE_ATTRS = {"survey": "APOGEE", "instrument": "APOGEE", "resolving_power": 22500.0}
_APOGEE_WAVELENGTH_ATTRS = {"units": "Angstrom", "medium": "vacuum", "frame": "rest"}
_PIXMASK_ATTR = mask_bits_attr(APOGEE_PIXMASK_BITS)


def apogee_wavelength(
    crval1: float = 4.179, cdelt1: float = 6.0e-6, npix: int = 8575, crpix1: float = 1.0
) -> np.ndarray:
    """The APOGEE log-linear vacuum wavelength grid in Angstrom.

    ``10 ** (crval1 + cdelt1 * (i + 1 - crpix1))`` for ``i = 0 .. npix-1``; the
    defaults are the apStar/aspcapStar grid (15,100-17,000 A, 8575 pixels).
    """
    i = np.arange(int(npix), dtype=np.float64)
    return 10.0 ** (float(crval1) + float(cdelt1) * (i + 1.0 - float(crpix1)))


# ---------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------


def _apogee_id(header: Mapping, path, id_from: str) -> str:
    if id_from not in ("header", "filename"):
        raise InvalidInputError(f"id_from must be 'header' or 'filename'; got {id_from!r}")
    if id_from == "header":
        for key in ("OBJID", "APOGEE_ID", "OBJECT"):
            if value := header_str(header, key):
                return value
    name = os.path.basename(os.fspath(path))
    m = _APOGEE_ID.search(name)
    if m:
        return m.group(0)
    for suffix in (".gz", ".fits", ".fit"):
        name = name.removesuffix(suffix)
    return name


def _check_shapes(path, **arrays) -> None:
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise format_error(path, f"HDU shapes do not agree: {desc}")


def _apogee_hdus(path, engine: str, what: str, names: Sequence[str]):
    """Header 0, header 1 and the images of HDU1-3 of an apStar/aspcapStar file."""
    hdus = read_fits_images(path, 4, engine)
    if len(hdus) < 4:
        raise format_error(path, f"an {what} file has at least 4 HDUs (header, {', '.join(names)}); found {len(hdus)}")
    return hdus[0][0], hdus[1][0], [data for _, data in hdus[1:4]]


def _apogee_record(path, h0, h1, flux, error, *, max_error, id_from, extras, attrs, mask=None, reject=0):
    """The record of one APOGEE spectrum (1-D flux and error) with its wavelengths from HDU1."""
    wl = wcs_wavelength(h1, flux.shape[-1], path, "HDU1 (flux) header", log=True)
    flux, ivar = _error_to_ivar(flux, error, max_error)
    extras = {
        **extras,
        "snr": header_float(h0, "SNR"),
        "ra": header_float(h0, "RA"),
        "dec": header_float(h0, "DEC"),
        "filename": os.path.basename(os.fspath(path)),
    }
    return _Record(
        id=_apogee_id(h0, path, id_from),
        wavelength=wl,
        flux=flux,
        ivar=ivar,
        mask=mask,
        reject=reject,
        extras=extras,
        attrs={**_APOGEE_ATTRS, **attrs},
        wavelength_attrs=dict(_APOGEE_WAVELENGTH_ATTRS),
        path=os.fspath(path),
    )


def _read_apstar_record(
    path,
    *,
    row: int = 0,
    reject_bits=DEFAULT_REJECT_BITS,
    max_error: float = 1.0e8,
    id_from: str = "header",
    engine: str = "auto",
) -> _Record:
    h0, h1, (flux, error, mask) = _apogee_hdus(path, engine, "apStar", ("flux", "error", "mask"))
    missing = [n for n, a in (("1 (flux)", flux), ("2 (error)", error), ("3 (mask)", mask)) if a is None]
    if missing:
        raise format_error(path, f"HDU {', '.join(missing)} holds no image data")
    _check_shapes(path, flux=flux, error=error, mask=mask)
    if flux.ndim not in (1, 2):
        raise format_error(path, f"flux HDU must be 1-D or 2-D; got shape {flux.shape}")
    nrows = 1 if flux.ndim == 1 else flux.shape[0]
    if not 0 <= int(row) < nrows:
        raise format_error(path, f"has {nrows} spectrum row(s); row={row} was requested")
    if flux.ndim == 2:
        flux, error, mask = flux[row], error[row], mask[row]
    naxis1 = h1.get("NAXIS1", flux.shape[-1])
    if int(naxis1) != flux.shape[-1]:
        raise format_error(path, f"NAXIS1={naxis1} but the flux HDU holds {flux.shape[-1]} pixels")
    reject = bits_to_int(reject_bits, APOGEE_PIXMASK_BITS)
    extras = {
        "rv": header_float(h0, "VHELIO"),
        "nvisits": int(h0.get("NVISITS", nrows if nrows == 1 else nrows - 2) or 0),
        "telescope": header_str(h0, "TELESCOP"),
    }
    attrs = {
        "normalised": False,
        "mask_bits": _PIXMASK_ATTR,
        "history": f"read_apstar(row={int(row)}, reject_bits={reject:#x})",
    }
    return _apogee_record(
        path,
        h0,
        h1,
        flux,
        error,
        max_error=max_error,
        id_from=id_from,
        extras=extras,
        attrs=attrs,
        mask=_to_uint32_mask(mask),
        reject=reject,
    )


def _read_aspcapstar_record(
    path,
    *,
    max_error: float = 1.0e8,
    id_from: str = "header",
    engine: str = "auto",
    _want_model: bool = False,
):
    h0, h1, (flux, error, model) = _apogee_hdus(path, engine, "aspcapStar", ("normalised flux", "error", "model"))
    if flux is None or error is None:
        raise format_error(path, "HDU1 (flux) or HDU2 (error) holds no image data")
    _check_shapes(path, flux=flux, error=error)
    if flux.ndim != 1:
        raise format_error(path, f"aspcapStar flux must be 1-D; got shape {flux.shape}")
    rec = _apogee_record(
        path,
        h0,
        h1,
        flux,
        error,
        max_error=max_error,
        id_from=id_from,
        extras={},
        attrs={"normalised": True, "history": "read_aspcapstar"},
    )
    if _want_model:
        if model is None or np.shape(model) != np.shape(flux):
            raise format_error(path, "HDU3 (best-fitting model) is missing or has the wrong shape")
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
        FITS reading (see :func:`bayescannon.io.fits.read_fits_images`): ``"auto"``
        reads plain files with a fast path that returns what astropy returns,
        ``"astropy"`` always uses :mod:`astropy.io.fits`.

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
        See :func:`read_apstar`.
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
        See :func:`bayescannon.io.read_many`; grids must match unless told
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
# format entries
# ---------------------------------------------------------------------------------------


def _name_starts(*prefixes: str):
    def guess_can_open(path) -> bool:
        return has_fits_suffix(path) and os.path.basename(os.fspath(path)).lower().startswith(prefixes)

    return guess_can_open


def _looks_like_apstar(probe: FitsProbe) -> bool:
    ext = probe.first_extension
    return "OBJID" in probe.primary and len(probe.names) >= 4 and ext is not None and "CRVAL1" in ext


APSTAR = SpectraFormat(
    name="apstar",
    description="APOGEE apStar (combined and visit spectra)",
    guess_can_open=_name_starts("apstar", "asstar"),
    read_record=_read_apstar_record,
    guess_from_content=_looks_like_apstar,
)
ASPCAPSTAR = SpectraFormat(
    name="aspcapstar",
    description="APOGEE aspcapStar (continuum-normalised spectra)",
    guess_can_open=_name_starts("aspcapstar"),
    read_record=_read_aspcapstar_record,
)


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------


def _writer_arrays(flux, error, other, other_name: str, default, ndims: tuple[int, ...]):
    """flux, error and a third array (``default`` where None) checked to be one shape."""
    flux = np.asarray(flux)
    error = np.asarray(error)
    if flux.ndim not in ndims or error.shape != flux.shape:
        raise InvalidInputError(
            f"flux must be {' or '.join(f'{n}-D' for n in ndims)} and error the same shape; "
            f"got {flux.shape} and {error.shape}"
        )
    other = default(flux.shape) if other is None else np.asarray(other)
    if other.shape != flux.shape:
        raise InvalidInputError(f"{other_name} has shape {other.shape}; expected {flux.shape}")
    return flux, error, other


def _mask_hdu(mask, name: str, wcs) -> fits.ImageHDU:
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= 2**31):
        raise InvalidInputError(f"{name} values must be within 0 .. 2**31-1")
    dtype = np.int16 if (mask.size == 0 or mask.max() < 2**15) else np.int32
    return image_hdu(mask, name, dtype, wcs=wcs)


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
    """Write an apStar file in the real layout (atomically).

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
        Replace an existing file (else :class:`~bayescannon.errors.InvalidInputError`).

    Returns
    -------
    pathlib.Path
    """
    flux, error, mask = _writer_arrays(flux, error, mask, "mask", lambda s: np.zeros(s, np.int16), (1, 2))
    nrows = 1 if flux.ndim == 1 else flux.shape[0]
    primary = fits.PrimaryHDU()
    h0 = primary.header
    h0["TELESCOP"] = ("apo25m", "telescope")
    h0["NVISITS"] = (1 if nrows == 1 else max(nrows - 2, 1), "number of visits")
    h0["SNR"] = (0.0, "S/N of the combined spectrum")
    h0["VHELIO"] = (0.0, "mean heliocentric velocity (km/s)")
    h0["RA"] = 0.0
    h0["DEC"] = 0.0
    update_header(h0, header)
    wcs = (crval1, cdelt1, crpix1)
    bunit = {"BUNIT": _FLUX_BUNIT}
    zeros = np.zeros(flux.shape)
    nvisit_rows = max(nrows - 2, 1)
    hdus = [
        primary,
        image_hdu(flux, "FLUX", dtype, cards=bunit, wcs=wcs),
        image_hdu(error, "ERROR", dtype, cards=bunit, wcs=wcs),
        _mask_hdu(mask, "MASK", wcs),
        image_hdu(zeros, "SKY", dtype, wcs=wcs),
        image_hdu(zeros, "SKYERR", dtype, wcs=wcs),
        image_hdu(np.ones(flux.shape), "TELLURIC", dtype, wcs=wcs),
        image_hdu(zeros, "TELLURICERR", dtype, wcs=wcs),
        image_hdu(np.zeros((nrows, 26)), "LSF", np.float64),
        table_hdu(
            {
                "VHELIO": np.full(nvisit_rows, float(h0.get("VHELIO", 0.0))),
                "SNR": np.full(nvisit_rows, float(h0.get("SNR", 0.0))),
            },
            "RV",
        ),
    ]
    return write_hdus(hdus, path, overwrite=overwrite)


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
    """Write an aspcapStar file in the real layout (HDU1 flux, HDU2 error, HDU3 model; atomically).

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
        Replace an existing file (else :class:`~bayescannon.errors.InvalidInputError`).

    Returns
    -------
    pathlib.Path
    """
    flux, error, model = _writer_arrays(flux, error, model, "model", np.ones, (1,))
    primary = fits.PrimaryHDU()
    update_header(primary.header, header)
    wcs = (crval1, cdelt1, crpix1)
    objid = str(primary.header.get("OBJID", ""))
    hdus = [
        primary,
        image_hdu(flux, "FLUX", dtype, wcs=wcs),
        image_hdu(error, "ERROR", dtype, wcs=wcs),
        image_hdu(model, "MODEL", dtype, wcs=wcs),
        table_hdu({"APOGEE_ID": np.asarray([objid]), "SNR": [float(primary.header.get("SNR", 0.0))]}, "ASPCAP"),
    ]
    return write_hdus(hdus, path, overwrite=overwrite)
