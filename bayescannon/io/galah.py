"""GALAH DR3 per-camera spectra: reader and writer of the real layout.

Each star (``sobject_id``) has up to four files ``<sobject_id><ccd>.fits``, one per
HERMES camera (1 blue ~4,718-4,903 A, 2 green ~5,649-5,873 A, 3 red ~6,481-6,739 A,
4 near-infrared ~7,590-7,890 A). Each file has five HDUs (GALAH DR3 documentation):

0. unnormalised spectrum with sky subtraction (counts);
1. relative error of that spectrum (absolute error = relative error x flux, also for
   the normalised spectrum);
2. unnormalised spectrum without sky subtraction;
3. its sigma;
4. pseudo-continuum normalised spectrum with sky subtraction.

Wavelengths are linear, ``lambda_i = CRVAL1 + CDELT1 * (i + 1 - CRPIX1)`` (``i`` from
0) from the header of the HDU that is read, in air (HERMES reductions), heliocentric.
:func:`read_galah` combines one star's arms into one container, pixels concatenated in
wavelength order.

The format :data:`GALAH` is declared to the registry (:mod:`bayescannon.io.registry`):
file names ``<15-digit sobject_id><ccd>.fits``; reading one arm file reads its star.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from bayescannon.errors import InvalidInputError
from bayescannon.io.backend import SpectraFormat
from bayescannon.io.common import format_error
from bayescannon.io.fits import (
    header_float,
    image_hdu,
    read_fits_images,
    set_wcs_cards,
    update_header,
    wcs_wavelength,
    write_hdus,
)
from bayescannon.io.records import _call_reader, _error_to_ivar, _read_many_with, _Record, _records_to_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "GALAH",
    "GALAH_CCDS",
    "galah_path",
    "read_galah",
    "read_galah_many",
    "write_galah",
    "write_galah_arm",
]

#: HERMES cameras: ccd number → name.
GALAH_CCDS: dict[int, str] = {1: "blue", 2: "green", 3: "red", 4: "ir"}

_ARM_NAME = re.compile(r"^(\d+)([1-4])\.fits?(\.gz)?$")
_DR3_ARM_NAME = re.compile(r"^\d{15}[1-4]\.fits?(\.gz)?$")


def galah_path(directory, sobject_id, ccd: int) -> Path:
    """Path of one GALAH arm file: ``<directory>/<sobject_id><ccd>.fits``."""
    return Path(directory) / f"{str(sobject_id).strip()}{int(ccd)}.fits"


def _check_ccd(ccd) -> int:
    if int(ccd) not in GALAH_CCDS:
        raise InvalidInputError(f"GALAH ccd numbers are 1-4; got {ccd}")
    return int(ccd)


# ---------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------


def _read_arm(path, *, normalised: bool, engine: str):
    """(wavelength, flux, ivar, primary header) of one arm file."""
    hdus = read_fits_images(path, 5, engine)
    if len(hdus) < 5:
        raise format_error(
            path,
            f"a GALAH DR3 arm file has 5 HDUs (flux, relative error, no-sky flux, no-sky "
            f"sigma, normalised flux); found {len(hdus)}",
        )
    ext = 4 if normalised else 0
    header, flux = hdus[ext]
    _, rel = hdus[1]
    if flux is None or rel is None:
        raise format_error(path, f"HDU {ext} (flux) or HDU 1 (relative error) holds no data")
    if flux.ndim != 1 or rel.shape != flux.shape:
        raise format_error(path, f"flux HDU {ext} has shape {flux.shape}, relative error HDU 1 {rel.shape}")
    wl = wcs_wavelength(header, flux.shape[0], path, f"HDU {ext} header", log=False)
    f = np.asarray(flux, dtype=np.float64)
    r = np.asarray(rel, dtype=np.float64)
    # absolute error = relative error x flux; a relative error <= 0 marks no information
    f, ivar = _error_to_ivar(f, np.where(r > 0, np.abs(r * f), np.nan))
    return wl, f, ivar, hdus[0][0]


def _split_star(star, directory):
    """(sobject_id, directory) from a sobject_id + directory or one arm file path."""
    text = os.fspath(star) if isinstance(star, os.PathLike) else str(star)
    name = os.path.basename(text)
    m = _ARM_NAME.match(name)
    if m:
        folder = os.path.dirname(text) or (os.fspath(directory) if directory is not None else ".")
        return m.group(1), folder
    if directory is None:
        raise InvalidInputError(
            f"{star!r} is not a GALAH arm file name (<sobject_id><ccd>.fits); "
            "give a sobject_id together with directory="
        )
    return text.strip(), os.fspath(directory)


def _read_galah_record(
    star,
    directory=None,
    *,
    normalised: bool = True,
    ccds: Sequence[int] = (1, 2, 3, 4),
    missing_arms: str = "raise",
    engine: str = "auto",
) -> _Record:
    if missing_arms not in ("raise", "skip"):
        raise InvalidInputError(f"missing_arms must be 'raise' or 'skip'; got {missing_arms!r}")
    sobject_id, directory = _split_star(star, directory)
    arms = []
    for ccd in map(_check_ccd, ccds):
        path = galah_path(directory, sobject_id, ccd)
        if not path.exists():
            if missing_arms == "raise":
                raise format_error(path, f"missing arm file for ccd {ccd} of star {sobject_id}")
            logger.info("%s: missing arm file for ccd %d; skipped", path, ccd)
            continue
        arms.append((*_read_arm(path, normalised=normalised, engine=engine), path))
    if not arms:
        raise format_error(galah_path(directory, sobject_id, ccds[0]), f"no arm file found for star {sobject_id}")
    arms.sort(key=lambda a: a[0][0])
    for (wa, *_, pa), (wb, *_, pb) in itertools.pairwise(arms):
        if wb[0] <= wa[-1]:
            raise format_error(
                pb,
                f"its wavelengths ({wb[0]:.2f}-{wb[-1]:.2f} A) overlap those of {pa} ({wa[0]:.2f}-{wa[-1]:.2f} A)",
            )
    h0 = arms[0][3]
    extras = {
        "sobject_id": sobject_id,
        "ra": header_float(h0, "RA", header_float(h0, "RA_OBJ")),
        "dec": header_float(h0, "DEC", header_float(h0, "DEC_OBJ")),
        "n_arms": len(arms),
    }
    history = f"read_galah(normalised={bool(normalised)}, ccds={tuple(int(c) for c in ccds)})"
    return _Record(
        id=sobject_id,
        wavelength=np.concatenate([a[0] for a in arms]),
        flux=np.concatenate([a[1] for a in arms]),
        ivar=np.concatenate([a[2] for a in arms]),
        mask=None,
        extras=extras,
        attrs={
            "survey": "GALAH",
            "instrument": "HERMES",
            "resolving_power": 28000.0,
            "normalised": bool(normalised),
            "history": history,
        },
        wavelength_attrs={"units": "Angstrom", "medium": "air", "frame": "observed"},
        path=os.fspath(arms[0][4]),
    )


def _read_galah_arm_path_record(path, **kwargs) -> _Record:
    return _read_galah_record(path, None, **kwargs)


def read_galah(
    star,
    directory=None,
    *,
    normalised: bool = True,
    ccds: Sequence[int] = (1, 2, 3, 4),
    missing_arms: str = "raise",
    engine: str = "auto",
) -> xr.Dataset:
    """Read one GALAH DR3 star (its four arm files) into one container.

    Parameters
    ----------
    star : str, int or path-like
        A ``sobject_id`` (with ``directory``) or the path of one of its arm files.
    directory : str or path-like, optional
        Folder holding ``<sobject_id><ccd>.fits``.
    normalised : bool
        Read the normalised spectrum (HDU4, default) or the unnormalised counts (HDU0).
        Errors come from the relative error (HDU1) times the flux read.
    ccds : sequence of int
        Cameras to read (1-4).
    missing_arms : {"raise", "skip"}
        What to do when an arm file is absent.
    engine : {"auto", "fast", "astropy"}
        FITS reading (see :func:`bayescannon.io.fits.read_fits_images`).

    Returns
    -------
    xarray.Dataset
        One-star container, pixels of all arms in wavelength order, air wavelengths,
        observed (heliocentric) frame; per-star ``sobject_id``, ``ra``, ``dec``,
        ``n_arms``.

    Raises
    ------
    SurveyFormatError
        A missing arm file (``missing_arms="raise"``), fewer than 5 HDUs, missing
        ``CRVAL1``/``CDELT1``, mismatched shapes, or arms whose wavelengths overlap.
    """
    rec = _call_reader(
        lambda s, **kw: _read_galah_record(s, directory, **kw),
        star,
        normalised=normalised,
        ccds=ccds,
        missing_arms=missing_arms,
        engine=engine,
    )
    return _records_to_dataset([rec])


def read_galah_many(
    sobject_ids: Sequence,
    directory,
    *,
    on_error: str = "raise",
    return_skipped: bool = False,
    grid: str = "strict",
    resample_to=None,
    progressbar: bool = False,
    **kwargs,
):
    """Read many GALAH stars into one container.

    Each star has its own wavelength solution, so pass ``resample_to=<grid>`` unless the
    files share one grid (:class:`~bayescannon.errors.GridMismatchError` otherwise).

    Parameters
    ----------
    sobject_ids : sequence
    directory : str or path-like
    on_error : {"raise", "skip"}
    return_skipped : bool
        Return ``(ds, skipped)`` (``skipped`` lists the sobject_id in ``path``).
    grid, resample_to, progressbar
        See :func:`bayescannon.io.read_many`.
    **kwargs
        Passed to :func:`read_galah`.
    """

    def read_one(sid, **kw):
        return _read_galah_record(sid, directory, **kw)

    return _read_many_with(
        [str(s) for s in sobject_ids],
        read_one,
        what="GALAH",
        on_error=on_error,
        return_skipped=return_skipped,
        grid=grid,
        resample_to=resample_to,
        progressbar=progressbar,
        **kwargs,
    )


GALAH = SpectraFormat(
    name="galah",
    description="GALAH DR3 arm file <sobject_id><ccd>.fits (reads the star's arms from its folder)",
    guess_can_open=lambda path: bool(_DR3_ARM_NAME.match(os.path.basename(os.fspath(path)))),
    read_record=_read_galah_arm_path_record,
    open_dataset=lambda path, **kwargs: read_galah(path, **kwargs),
)

# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------


def write_galah_arm(
    path,
    flux,
    relative_error,
    normalised_flux=None,
    *,
    crval1: float,
    cdelt1: float,
    crpix1: float = 1.0,
    normalised_crval1: float | None = None,
    normalised_cdelt1: float | None = None,
    header: Mapping | None = None,
    dtype=np.float32,
    overwrite: bool = False,
) -> Path:
    """Write one GALAH DR3 arm file (five HDUs; atomically).

    Parameters
    ----------
    path : str or path-like
    flux : array_like, shape (P,)
        Unnormalised sky-subtracted spectrum (HDU0).
    relative_error : array_like, shape (P,)
        Relative error (HDU1).
    normalised_flux : array_like, shape (P,), optional
        Normalised spectrum (HDU4; default ``flux / median(flux)``).
    crval1, cdelt1, crpix1 : float
        Linear wavelength solution (Angstrom).
    normalised_crval1, normalised_cdelt1 : float, optional
        Wavelength solution of HDU4 when it differs (default: the same).
    header : mapping, optional
        Primary-header keywords (``RA``, ``DEC``, ...).
    dtype : numpy dtype
    overwrite : bool
        Replace an existing file (else :class:`~bayescannon.errors.InvalidInputError`).

    Returns
    -------
    pathlib.Path
    """
    flux = np.asarray(flux)
    rel = np.asarray(relative_error)
    if flux.ndim != 1 or rel.shape != flux.shape:
        raise InvalidInputError(f"flux and relative_error must be 1-D of one length; got {flux.shape}, {rel.shape}")
    if normalised_flux is None:
        med = np.nanmedian(flux) if flux.size else 1.0
        normalised_flux = flux / (med if med else 1.0)
    norm = np.asarray(normalised_flux)
    if norm.shape != flux.shape:
        raise InvalidInputError(f"normalised_flux has shape {norm.shape}; expected {flux.shape}")
    wcs = (crval1, cdelt1, crpix1)
    primary = fits.PrimaryHDU(np.asarray(flux, dtype=dtype))
    set_wcs_cards(primary.header, *wcs, log=False)
    update_header(primary.header, header)
    norm_wcs = (
        crval1 if normalised_crval1 is None else normalised_crval1,
        cdelt1 if normalised_cdelt1 is None else normalised_cdelt1,
        crpix1,
    )
    hdus = [
        primary,
        image_hdu(rel, "input_sigma", dtype, wcs=wcs, log=False),
        image_hdu(flux, "no_sky_subspectrum", dtype, wcs=wcs, log=False),
        image_hdu(rel, "no_sky_sigma", dtype, wcs=wcs, log=False),
        image_hdu(norm, "normalised_spectrum", dtype, wcs=norm_wcs, log=False),
    ]
    return write_hdus(hdus, path, overwrite=overwrite)


def write_galah(
    directory,
    sobject_id,
    arms: Mapping[int, Mapping],
    *,
    header: Mapping | None = None,
    dtype=np.float32,
    overwrite: bool = False,
) -> list[Path]:
    """Write one GALAH star as ``<sobject_id><ccd>.fits`` arm files.

    Parameters
    ----------
    directory : str or path-like
    sobject_id : int or str
    arms : mapping ccd → mapping
        Per camera the keyword arguments of :func:`write_galah_arm` (``flux``,
        ``relative_error``, ``crval1``, ``cdelt1``, optional ``normalised_flux`` ...).
    header : mapping, optional
        Primary-header keywords written to every arm.
    dtype : numpy dtype
    overwrite : bool

    Returns
    -------
    list of pathlib.Path
    """
    paths = []
    for ccd, arm in sorted(arms.items()):
        kw = dict(arm)
        arm_header = dict(header or {})
        arm_header.update(kw.pop("header", None) or {})
        paths.append(
            write_galah_arm(
                galah_path(directory, sobject_id, _check_ccd(ccd)),
                kw.pop("flux"),
                kw.pop("relative_error"),
                kw.pop("normalised_flux", None),
                header=arm_header,
                dtype=dtype,
                overwrite=overwrite,
                **kw,
            )
        )
    return paths
