"""Small helpers every :mod:`bayescannon.io` module uses.

The error that names a file, the FITS file-name test, the ``history`` attribute,
identifier strings and wavelength units.
"""

from __future__ import annotations

import os
import stat

import astropy.units as u
import numpy as np

from bayescannon.errors import SurveyFormatError

__all__ = [
    "FITS_SUFFIXES",
    "append_history",
    "as_str_ids",
    "check_regular_file",
    "format_error",
    "has_fits_suffix",
    "wavelength_unit_factor",
]

#: File-name endings of FITS files (plain and compressed).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.bz2", ".fz")


def format_error(path, message: str) -> SurveyFormatError:
    """A :class:`~bayescannon.errors.SurveyFormatError` whose message starts with the file name."""
    return SurveyFormatError(f"{os.fspath(path)}: {message}")


def check_regular_file(path) -> str:
    """``path`` as a string, checked to be an existing regular file (links followed).

    A FIFO, socket, device or folder is refused before anything opens it: reading a
    FIFO named ``x.fits`` would block forever.

    Raises
    ------
    SurveyFormatError
        Naming the file: missing, or not a regular file.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise format_error(path, "file does not exist") from None
    except OSError as exc:
        raise format_error(path, f"cannot access file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        raise format_error(path, f"is {kind}, not a regular file; refusing to read it")
    return path


def has_fits_suffix(path) -> bool:
    """Whether the file name ends like a FITS file (see :data:`FITS_SUFFIXES`)."""
    return os.fspath(path).lower().endswith(FITS_SUFFIXES)


def as_str_ids(values) -> np.ndarray:
    """Identifiers as stripped unicode strings (bytes decoded as ASCII)."""
    arr = np.asarray(values).ravel()
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "ascii", errors="replace")
    return np.char.strip(arr.astype(str))


def append_history(attrs: dict, text: str) -> dict:
    """A copy of ``attrs`` with ``text`` appended as a new line of ``attrs["history"]``."""
    attrs = dict(attrs)
    old = str(attrs.get("history", "")).strip()
    attrs["history"] = f"{old}\n{text}" if old else text
    return attrs


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


def wavelength_unit_factor(unit, path, where: str) -> float:
    """Factor that converts wavelengths in ``unit`` to Angstrom.

    Parameters
    ----------
    unit : str or None
        The unit as written in the file (``None`` or empty: Angstrom).
    path : str or path-like
        The file, named in the error.
    where : str
        Where the unit was found (e.g. ``"CUNIT1 of HDU1"``), named in the error.

    Returns
    -------
    float

    Raises
    ------
    SurveyFormatError
        When the unit is not a length unit.
    """
    if unit is None:
        return 1.0
    text = str(unit).strip().lower().replace(" ", "")
    if text == "" or text in _ANGSTROM_NAMES:
        return 1.0
    if text in _UNIT_FACTORS:
        return _UNIT_FACTORS[text]
    try:  # last resort: astropy's unit parser (e.g. "10**-10 m")
        return float(u.Unit(str(unit).strip(), format="fits").to(u.AA))
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise format_error(path, f"unknown wavelength unit {unit!r} in {where}; expected Angstrom, nm or um") from exc
