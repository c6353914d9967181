"""The registry of spectra file formats: detection and dispatch.

Every format module declares its formats (:class:`~bayescannon.io.backend.SpectraFormat`):
:mod:`~bayescannon.io.container` (``nc``, ``npz``, ``bayescannon``),
:mod:`~bayescannon.io.apogee` (``apstar``, ``aspcapstar``), :mod:`~bayescannon.io.lamost`
(``lamost``) and :mod:`~bayescannon.io.galah` (``galah``). :func:`detect_format` asks
each format whether it can open a file from its name, then (FITS files only) from the
file's headers; :func:`read_spectra` and :func:`read_many` read with the format found
or named.
"""

from __future__ import annotations

import logging
import os

import xarray as xr

from bayescannon.errors import InvalidInputError
from bayescannon.io.apogee import APSTAR, ASPCAPSTAR
from bayescannon.io.backend import FitsProbe, SpectraFormat
from bayescannon.io.common import check_regular_file, format_error, has_fits_suffix
from bayescannon.io.container import BAYESCANNON_FITS, NC, NPZ
from bayescannon.io.galah import GALAH
from bayescannon.io.lamost import LAMOST
from bayescannon.io.records import _read_many_with

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "detect_format", "get_format", "read_many", "read_spectra"]

#: The known formats, in the order they are asked (content sniffers: bayescannon
#: table, then LAMOST, then apStar).
FORMATS: tuple[SpectraFormat, ...] = (NC, NPZ, BAYESCANNON_FITS, LAMOST, ASPCAPSTAR, APSTAR, GALAH)


def get_format(name: str) -> SpectraFormat:
    """The format called ``name``.

    Raises
    ------
    InvalidInputError
        For an unknown name.
    """
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    known = ", ".join(repr(f.name) for f in FORMATS)
    raise InvalidInputError(f"unknown format {name!r}; known formats: {known}")


def _detect(path) -> SpectraFormat:
    path = os.fspath(path)
    for fmt in FORMATS:
        if fmt.guess_can_open(path):
            return fmt
    if not has_fits_suffix(path):
        raise format_error(path, "unknown file type: expected .nc, .npz or a FITS file (.fits, .fit, .fits.gz)")
    check_regular_file(path)  # missing, or a FIFO/folder that would hang or fail the probe
    probe = FitsProbe.open(path)
    for fmt in FORMATS:
        if fmt.guess_from_content is not None and fmt.guess_from_content(probe):
            return fmt
    raise format_error(path, "cannot tell which survey format this FITS file is in")


def detect_format(path) -> str:
    """Guess the format of a spectra file.

    The file name is tried first (suffixes of the container formats, survey file-name
    patterns); a FITS file whose name says nothing is recognised from its headers.

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
    return _detect(path).name


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
        When the file is missing, not a regular file (a FIFO, a folder), or not in the
        layout of its format.
    InvalidInputError
        For an unknown ``format``.
    """
    if isinstance(path, (str, os.PathLike)) and os.path.exists(path):
        check_regular_file(path)  # a FIFO named .fits must not hang the reader
    fmt = get_format(format) if format is not None else _detect(path)
    return fmt.open(path, **kwargs)


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

    Raises
    ------
    InvalidInputError
        No files, or a format that is not one star per file (a container).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InvalidInputError("no files given")
    fmt = get_format(format) if format is not None else _detect(paths[0])
    if fmt.read_record is None:
        raise InvalidInputError(f"format {fmt.name!r} is not a survey format (one star per file)")
    return _read_many_with(
        paths,
        fmt.read_record,
        what=fmt.name,
        on_error=on_error,
        return_skipped=return_skipped,
        grid=grid,
        resample_to=resample_to,
        progressbar=progressbar,
        **kwargs,
    )
