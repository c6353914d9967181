"""LAMOST low-resolution spectra: reader and writer of the real layouts.

DR2-DR7 layout ("dr5")
    The primary HDU holds a (5, P) float32 image whose rows are
    ``[flux, ivar, wavelength, andmask, ormask]``; its header carries ``OBSID``,
    ``DESIG``, ``RA``, ``DEC``, ``Z`` (redshift), ``Z_ERR``, ``SNRU`` ... ``SNRZ``,
    ``CLASS``, ``VACUUM`` (``T``: vacuum wavelengths) and the log-linear wavelength
    solution (``COEFF0``, ``COEFF1``).
DR8+ layout ("dr8")
    The primary HDU holds the same keywords and no data; HDU1 is a one-row binary
    table with array columns ``FLUX``, ``IVAR``, ``WAVELENGTH``, ``ANDMASK``,
    ``ORMASK`` (and ``NORMALIZATION``).

Wavelengths are heliocentric, observed frame (shift with
:func:`bayescannon.preprocess.to_rest_frame`, which uses the ``redshift`` column read
from ``Z``), vacuum unless ``VACUUM = F``. The pipeline already sets ``ivar = 0`` on
bad pixels; ``reject_bits`` can also mask pixels by their and/or-mask bits.

The format :data:`LAMOST` is declared to the registry (:mod:`bayescannon.io.registry`):
file names starting ``spec-`` or ``med-``, or a primary header with ``Z`` and
``OBSID`` or ``DESIG``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from bayescannon.errors import InvalidInputError, SurveyFormatError
from bayescannon.io.backend import FitsProbe, SpectraFormat
from bayescannon.io.bits import bits_to_int, mask_bits_attr
from bayescannon.io.common import format_error, has_fits_suffix, wavelength_unit_factor
from bayescannon.io.fits import header_float, header_str, read_fits_images, table_hdu, update_header, write_hdus
from bayescannon.io.records import _call_reader, _read_many_with, _Record, _records_to_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "LAMOST",
    "LAMOST_MASK_BITS",
    "lamost_wavelength",
    "read_lamost",
    "read_lamost_many",
    "write_lamost",
]

#: LAMOST and/or-mask bits (same for both masks).
LAMOST_MASK_BITS: dict[int, str] = {
    0: "BADCCD",
    1: "BADPROFILE",
    2: "NOSKY",
    3: "BRIGHTSKY",
    4: "BADCENTER",
    5: "NODATA",
}

_ROWS = ("flux", "ivar", "wavelength", "andmask", "ormask")
_TABLE_COLUMNS = ("FLUX", "IVAR", "WAVELENGTH", "ANDMASK", "ORMASK")

# The other keywords of a LAMOST DR5 low-resolution header, written with neutral
# values so that mock files have the size and shape of real ones.
_DR5_KEYWORDS = (
    ("TELESCOP", "LAMOST", "GuoShouJing Telescope"),
    ("LONGITUD", 117.58, "[deg] Longitude of site"),
    ("LATITUDE", 40.39, "[deg] Latitude of site"),
    ("FOCUS", 19964.0, "[mm] Telescope focus"),
    ("CAMPRO", "NEWCAM", "Camera program name"),
    ("CAMVERS", "v2.0", "Camera program version"),
    ("DATE-OBS", "2014-01-01T12:00:00.0", "The observation median UTC"),
    ("DATE-BEG", "2014-01-01T11:40:00.0", "The observation start local time"),
    ("DATE-END", "2014-01-01T12:20:00.0", "The observation end local time"),
    ("LMJD", 56659, "Local Modified Julian Day"),
    ("MJD", 56658, "Modified Julian Day"),
    ("LMJMLIST", "80199600-80199640", "Local Modified Julian Minute list"),
    ("PLANID", "HD000000N000000B01", "Plan ID in use"),
    ("RA_OBS", 0.0, "[deg] Fiber pointing RA"),
    ("DEC_OBS", 0.0, "[deg] Fiber pointing DEC"),
    ("OFFSET", False, "Whether there is an offset"),
    ("OFFSET_V", 0.0, "[arcsec] Offset value"),
    ("FIBERID", 1, "Fiber ID"),
    ("CELL_ID", "A0101", "Fiber unit ID on the focal plane"),
    ("X_VALUE", 0.0, "[mm] X coordinate of object on focal plane"),
    ("Y_VALUE", 0.0, "[mm] Y coordinate of object on focal plane"),
    ("OBJNAME", "000000000000000", "Name of object"),
    ("OBJTYPE", "Star", "Object type from input catalog"),
    ("TSOURCE", "LEGAS", "Name of input catalog"),
    ("TCOMMENT", "", "Target information"),
    ("TFROM", "PPMXL", "Target catalog"),
    ("FIBERTYP", "Obj", "Fiber type of object"),
    ("MAGTYPE", "gri", "Magnitude type of object"),
    ("MAG1", 99.0, "[mag] magnitude 1"),
    ("MAG2", 99.0, "[mag] magnitude 2"),
    ("MAG3", 99.0, "[mag] magnitude 3"),
    ("MAG4", 99.0, "[mag] magnitude 4"),
    ("MAG5", 99.0, "[mag] magnitude 5"),
    ("MAG6", 99.0, "[mag] magnitude 6"),
    ("MAG7", 99.0, "[mag] magnitude 7"),
    ("OBS_TYPE", "OBJ", "Type of observation"),
    ("OBSCOMM", "Science", "Science or Test"),
    ("RADECSYS", "FK5", "Equatorial coordinate system"),
    ("EQUINOX", 2000.0, "Equinox in years"),
    ("SPID", 1, "Spectrograph ID"),
    ("SPRA", 0.0, "[deg] Average RA of this spectrograph"),
    ("SPDEC", 0.0, "[deg] Average DEC of this spectrograph"),
    ("SLIT_MOD", "x2/3", "Slit mode"),
    ("EXPID01", "01 b 80199600 1800", "ID of exposure 1"),
    ("EXPID02", "02 b 80199630 1800", "ID of exposure 2"),
    ("EXPID03", "03 b 80199660 1800", "ID of exposure 3"),
    ("EXPID04", "01 r 80199600 1800", "ID of exposure 4"),
    ("EXPID05", "02 r 80199630 1800", "ID of exposure 5"),
    ("EXPID06", "03 r 80199660 1800", "ID of exposure 6"),
    ("NEXP", 3, "Number of valid exposures"),
    ("NEXP_B", 3, "Number of valid blue exposures"),
    ("NEXP_R", 3, "Number of valid red exposures"),
    ("EXPT_B", 5400.0, "[s] Blue exposure duration"),
    ("EXPT_R", 5400.0, "[s] Red exposure duration"),
    ("EXPTIME", 5400.0, "[s] Minimum of exposure time for all cameras"),
    ("BESTEXP", 80199630, "MJM of the best exposure"),
    ("SCAMEAN", 0.0, "[ADU] Mean level of scatter light"),
    ("EXTRACT", "aperture", "Extraction method"),
    ("SFLATTEN", True, "Super flat has been applied"),
    ("PCASKYSB", True, "PCA sky subtraction has been applied"),
    ("NSKIES", 20, "Sky fiber number"),
    ("SKYCHI2", 1.0, "Mean chi^2 of sky subtraction"),
    ("SCHIOK", 1, "Sky subtraction quality"),
    ("NBADPIX", 0, "Bad pixel number"),
    ("NSATUR", 0, "Saturated pixel number"),
    ("NDATAPIX", 0, "Number of pixels with data"),
    ("WFITTYPE", "LOG-LINEAR", "Linear-log10 coefficients"),
    ("CTYPE1", "LINEAR", "Center wavelength (log10) of first pixel"),
    ("SUBCLASS", "G5", "Subclass"),
    ("ZFLAG", "LASP", "Which method computes the redshift"),
    ("VERSPIPE", "v2.9.7", "Version of the pipeline"),
    ("HELIO_RV", 0.0, "[km/s] Heliocentric correction"),
)


def lamost_wavelength(coeff0: float = 3.5682, coeff1: float = 1.0e-4, npix: int = 3909) -> np.ndarray:
    """The LAMOST low-resolution log-linear grid ``10 ** (coeff0 + coeff1 * i)`` (Angstrom)."""
    return 10.0 ** (float(coeff0) + float(coeff1) * np.arange(int(npix), dtype=np.float64))


_LAMOST_MASK_BITS_ATTR = mask_bits_attr(LAMOST_MASK_BITS)

# ---------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------


def _lamost_id(header: Mapping, path, id_from: str) -> str:
    if id_from not in ("obsid", "filename", "desig"):
        raise InvalidInputError(f"id_from must be 'obsid', 'filename' or 'desig'; got {id_from!r}")
    if id_from == "obsid" and header_str(header, "OBSID"):
        value = header["OBSID"]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).strip()
    if id_from == "desig" and header_str(header, "DESIG"):
        return header_str(header, "DESIG")
    return os.path.basename(os.fspath(path)).removesuffix(".gz")


def _obsid(header: Mapping) -> int:
    try:
        return int(header["OBSID"])
    except (KeyError, TypeError, ValueError):
        return -1


def _read_table_layout(path):
    """The rows (flux, ivar, wavelength, masks) and wavelength unit of the DR8+ table layout."""
    try:
        with fits.open(path, memmap=False) as hdul:
            if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
                raise format_error(
                    path,
                    "primary HDU holds no (5, P) image and HDU1 is not a binary table: "
                    "neither the DR2-DR7 nor the DR8+ LAMOST layout",
                )
            table = hdul[1]
            names = [c.name.upper() for c in table.columns]
            missing = [c for c in _TABLE_COLUMNS[:3] if c not in names]
            if missing:
                raise format_error(path, f"table HDU1 lacks column(s) {', '.join(missing)}")
            if table.data is None or len(table.data) < 1:
                raise format_error(path, "table HDU1 has no rows")
            rows = {c.lower(): np.asarray(table.data[c][0]).ravel() for c in _TABLE_COLUMNS if c in names}
            unit = table.columns["WAVELENGTH"].unit
    except SurveyFormatError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise format_error(path, f"cannot read the LAMOST table HDU ({exc})") from exc
    return rows, unit


def _check_pixels(path, rows: Mapping, names, npix: int) -> None:
    for name in names:
        if np.shape(rows[name]) != (npix,):
            raise format_error(path, f"{name} has {np.size(rows[name])} pixels; wavelength has {npix}")


def _read_lamost_record(
    path,
    *,
    mask: str | None = "andmask",
    reject_bits=None,
    id_from: str = "obsid",
    require_redshift: bool = True,
    engine: str = "auto",
) -> _Record:
    if mask not in ("andmask", "ormask", None):
        raise InvalidInputError(f"mask must be 'andmask', 'ormask' or None; got {mask!r}")
    hdus = read_fits_images(path, 1, engine)
    if not hdus:
        raise format_error(path, "empty FITS file")
    h0, data = hdus[0]
    unit = h0.get("CUNIT1", None)
    if data is not None:
        if data.ndim != 2 or data.shape[0] != 5:
            raise format_error(
                path,
                f"primary image has shape {data.shape}; the LAMOST DR2-DR7 layout is (5, P) "
                "with rows flux, ivar, wavelength, andmask, ormask",
            )
        rows = {name: data[i] for i, name in enumerate(_ROWS)}
    else:
        rows, table_unit = _read_table_layout(path)
        unit = table_unit or unit
    if require_redshift and h0.get("Z") is None:
        raise format_error(path, "missing header keyword Z (redshift) in the primary header")
    wl = np.asarray(rows["wavelength"], dtype=np.float64)
    npix = wl.size
    _check_pixels(path, rows, ("flux", "ivar"), npix)
    factor = wavelength_unit_factor(unit, path, "the wavelength unit")
    if factor != 1.0:
        wl = wl * factor
    if not (wl[0] > 0 and np.all(np.diff(wl) > 0)):  # NaN fails too
        raise format_error(path, "wavelength row is not finite, positive and strictly increasing")
    mask_arr = None
    reject = bits_to_int(reject_bits, LAMOST_MASK_BITS)
    if mask is not None and mask in rows:
        _check_pixels(path, rows, (mask,), npix)
        mask_arr = rows[mask]
    elif reject:
        raise InvalidInputError("reject_bits needs mask='andmask' or 'ormask'")
    medium = "air" if h0.get("VACUUM", True) in (False, "F", 0) else "vacuum"
    extras = {
        "redshift": header_float(h0, "Z"),
        "redshift_err": header_float(h0, "Z_ERR"),
        **{f"snr_{band}": header_float(h0, f"SNR{band.upper()}") for band in "ugriz"},
        "ra": header_float(h0, "RA"),
        "dec": header_float(h0, "DEC"),
        "obsid": _obsid(h0),
        "desig": header_str(h0, "DESIG"),
        "lamost_class": header_str(h0, "CLASS"),
        "filename": os.path.basename(os.fspath(path)),
    }
    attrs = {
        "survey": "LAMOST",
        "instrument": "LAMOST LRS",
        "resolving_power": 1800.0,
        "normalised": False,
        "history": f"read_lamost(mask={mask!r})",
    }
    if mask is not None:
        attrs["mask_bits"] = _LAMOST_MASK_BITS_ATTR
    # flux/ivar/mask stay raw here; they are cleaned for all stars at once when stacked
    return _Record(
        id=_lamost_id(h0, path, id_from),
        wavelength=wl,
        flux=rows["flux"],
        ivar=rows["ivar"],
        mask=mask_arr,
        reject=reject,
        extras=extras,
        attrs=attrs,
        wavelength_attrs={"units": "Angstrom", "medium": medium, "frame": "observed"},
        path=os.fspath(path),
    )


def read_lamost(
    path,
    *,
    mask: str | None = "andmask",
    reject_bits=None,
    id_from: str = "obsid",
    require_redshift: bool = True,
    engine: str = "auto",
) -> xr.Dataset:
    """Read one LAMOST low-resolution spectrum (DR2-DR7 image or DR8+ table layout).

    Parameters
    ----------
    path : str or path-like
    mask : {"andmask", "ormask", None}
        Which pixel mask becomes the container's ``mask`` variable.
    reject_bits : iterable of int or str, optional
        Mask bits (numbers or :data:`LAMOST_MASK_BITS` names) whose pixels get
        ``ivar = 0`` (the pipeline's ivar already excludes bad pixels).
    id_from : {"obsid", "filename", "desig"}
        Identifier source (``OBSID`` keyword by default, falling back to the file name).
    require_redshift : bool
        Raise when the ``Z`` keyword is missing (a value of -9999 becomes NaN).
    engine : {"auto", "fast", "astropy"}
        FITS reading (see :func:`bayescannon.io.fits.read_fits_images`).

    Returns
    -------
    xarray.Dataset
        One-star container, observed frame, with per-star ``redshift`` (``Z``),
        ``redshift_err``, ``snr_u`` ... ``snr_z``, ``ra``, ``dec``, ``obsid``,
        ``desig``, ``lamost_class``, ``filename``.

    Raises
    ------
    SurveyFormatError
        Missing file, a primary image not shaped (5, P) and no DR8 table, missing ``Z``,
        a wavelength row that is not increasing, or an unknown wavelength unit.
    """
    rec = _call_reader(
        _read_lamost_record,
        path,
        mask=mask,
        reject_bits=reject_bits,
        id_from=id_from,
        require_redshift=require_redshift,
        engine=engine,
    )
    return _records_to_dataset([rec])


def read_lamost_many(
    paths: Sequence,
    *,
    on_error: str = "raise",
    return_skipped: bool = False,
    grid: str = "strict",
    resample_to=None,
    progressbar: bool = False,
    **kwargs,
):
    """Read many LAMOST files into one container (see :func:`read_lamost`).

    LAMOST spectra share one log-linear lattice but differ in length; use
    ``grid="common"`` to keep the common pixels, or ``resample_to=`` for an explicit
    grid. ``on_error="skip"`` with ``return_skipped=True`` returns ``(ds, skipped)``.
    """
    return _read_many_with(
        paths,
        _read_lamost_record,
        what="LAMOST",
        on_error=on_error,
        return_skipped=return_skipped,
        grid=grid,
        resample_to=resample_to,
        progressbar=progressbar,
        **kwargs,
    )


def _guess_lamost(path) -> bool:
    return has_fits_suffix(path) and os.path.basename(os.fspath(path)).lower().startswith(("spec-", "med-"))


def _looks_like_lamost(probe: FitsProbe) -> bool:
    return "Z" in probe.primary and ("OBSID" in probe.primary or "DESIG" in probe.primary)


LAMOST = SpectraFormat(
    name="lamost",
    description="LAMOST low-resolution spectrum (DR2-DR7 image or DR8+ table layout)",
    guess_can_open=_guess_lamost,
    read_record=_read_lamost_record,
    guess_from_content=_looks_like_lamost,
)

# ---------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------


def _lamost_header(wavelength: np.ndarray, header: Mapping | None) -> fits.Header:
    hdr = fits.Header()
    for key, value, comment in _DR5_KEYWORDS:
        hdr[key] = (value, comment)
    hdr["OBSID"] = (0, "unique spectrum id")
    hdr["DESIG"] = ("", "designation")
    hdr["RA"] = (0.0, "right ascension (deg)")
    hdr["DEC"] = (0.0, "declination (deg)")
    hdr["CLASS"] = ("STAR", "spectral class")
    hdr["Z"] = (0.0, "redshift")
    hdr["Z_ERR"] = (0.0, "redshift error")
    for band in "UGRIZ":
        hdr[f"SNR{band}"] = (0.0, f"S/N in {band.lower()}")
    hdr["VACUUM"] = (True, "wavelengths in vacuum")
    hdr["HELIO"] = (True, "heliocentric correction applied")
    p = wavelength.size
    if p > 1 and np.all(wavelength > 0):
        logw = np.log10(wavelength)
        step = (logw[-1] - logw[0]) / (p - 1)
        hdr["COEFF0"] = (float(logw[0]), "log10 of the first wavelength")
        hdr["COEFF1"] = (float(step), "log10 wavelength step")
        hdr["CRVAL1"] = float(logw[0])
        hdr["CD1_1"] = float(step)
        hdr["CRPIX1"] = 1.0
        hdr["DC-FLAG"] = 1
    update_header(hdr, header)
    return hdr


def write_lamost(
    path,
    wavelength,
    flux,
    ivar,
    andmask=None,
    ormask=None,
    *,
    header: Mapping | None = None,
    layout: str = "dr5",
    dtype=np.float32,
    overwrite: bool = False,
) -> Path:
    """Write a LAMOST low-resolution spectrum in the real layout (atomically).

    Parameters
    ----------
    path : str or path-like
    wavelength, flux, ivar : array_like, shape (P,)
        Vacuum wavelength (Angstrom), flux and inverse variance.
    andmask, ormask : array_like of int, shape (P,), optional
        Pixel masks (default 0).
    header : mapping, optional
        Primary-header keywords (``OBSID``, ``DESIG``, ``RA``, ``DEC``, ``Z``,
        ``Z_ERR``, ``SNRG`` ...). ``Z`` defaults to 0; give ``Z=None`` to omit it.
    layout : {"dr5", "dr8"}
        ``"dr5"``: (5, P) primary image; ``"dr8"``: one-row binary table in HDU1.
    dtype : numpy dtype
        Data type (``float32`` as in the survey; ``float64`` for exact round trips).
    overwrite : bool
        Replace an existing file (else :class:`~bayescannon.errors.InvalidInputError`).

    Returns
    -------
    pathlib.Path
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux)
    ivar = np.asarray(ivar)
    p = wavelength.size
    if wavelength.ndim != 1 or flux.shape != (p,) or ivar.shape != (p,):
        raise InvalidInputError(
            f"wavelength, flux and ivar must be 1-D of one length; got {wavelength.shape}, {flux.shape}, {ivar.shape}"
        )
    andmask = np.zeros(p) if andmask is None else np.asarray(andmask)
    ormask = np.zeros(p) if ormask is None else np.asarray(ormask)
    if andmask.shape != (p,) or ormask.shape != (p,):
        raise InvalidInputError(
            f"andmask and ormask must have the shape of flux ({p},); got {andmask.shape}, {ormask.shape}"
        )
    if layout not in ("dr5", "dr8"):
        raise InvalidInputError(f"layout must be 'dr5' or 'dr8'; got {layout!r}")
    hdr = _lamost_header(wavelength, header)
    if layout == "dr5":
        data = np.vstack([flux, ivar, wavelength, andmask, ormask]).astype(dtype)
        return write_hdus([fits.PrimaryHDU(data, header=hdr)], path, overwrite=overwrite)
    table = Table(
        {
            "FLUX": np.asarray(flux, dtype=dtype)[None, :],
            "IVAR": np.asarray(ivar, dtype=dtype)[None, :],
            "WAVELENGTH": np.asarray(wavelength, dtype=dtype)[None, :],
            "ANDMASK": np.asarray(andmask, dtype=np.int32)[None, :],
            "ORMASK": np.asarray(ormask, dtype=np.int32)[None, :],
            "NORMALIZATION": np.ones((1, p), dtype=dtype),
        }
    )
    table["WAVELENGTH"].unit = "Angstrom"
    return write_hdus([fits.PrimaryHDU(header=hdr), table_hdu(table, "COADD")], path, overwrite=overwrite)
