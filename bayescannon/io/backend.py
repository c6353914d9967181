"""What a file format declares to the registry (:mod:`bayescannon.io.registry`).

Modelled on xarray's backend entrypoints: each format module (``container``,
``apogee``, ``lamost``, ``galah``) declares one :class:`SpectraFormat` per format with
a cheap ``guess_can_open(path)`` (file name only, no I/O), optionally a
``guess_from_content(probe)`` that looks at a :class:`FitsProbe` of the file, and its
reader. The registry asks each format in turn; no other module tests suffixes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import xarray as xr
from astropy.io import fits

from bayescannon.errors import InvalidInputError
from bayescannon.io.common import format_error
from bayescannon.io.records import _open_one, _Record

__all__ = ["FitsProbe", "SpectraFormat"]


@dataclass(frozen=True)
class FitsProbe:
    """What content sniffers see of a FITS file: HDU names and the first two headers.

    Attributes
    ----------
    path : str
    names : tuple of str
        Upper-case HDU names (``"PRIMARY"`` first).
    primary : astropy.io.fits.Header
    first_extension : astropy.io.fits.Header or None
        Header of HDU 1, when there is one.
    """

    path: str
    names: tuple[str, ...]
    primary: Mapping
    first_extension: Mapping | None

    @classmethod
    def open(cls, path) -> FitsProbe:
        """Read the headers of ``path`` with :mod:`astropy.io.fits`.

        Raises
        ------
        SurveyFormatError
            When the file is not a readable FITS file.
        """
        try:
            with fits.open(path, memmap=False) as hdul:
                names = tuple(str(h.name).upper() for h in hdul)
                first = hdul[1].header.copy() if len(hdul) > 1 else None
                return cls(str(path), names, hdul[0].header.copy(), first)
        except (OSError, ValueError, IndexError) as exc:
            raise format_error(path, f"not a readable FITS file ({exc})") from exc


@dataclass(frozen=True)
class SpectraFormat:
    """One file format known to :func:`bayescannon.io.read_spectra`.

    Attributes
    ----------
    name : str
        The ``format=`` value (e.g. ``"apstar"``).
    description : str
    guess_can_open : callable
        ``guess_can_open(path) -> bool`` from the file name alone.
    read_record : callable, optional
        ``read_record(path, **kwargs) -> _Record`` for formats with one star per file
        (what :func:`bayescannon.io.read_many` uses).
    open_dataset : callable, optional
        ``open_dataset(path, **kwargs) -> xarray.Dataset``; by default the one-star
        container of ``read_record``.
    guess_from_content : callable, optional
        ``guess_from_content(probe: FitsProbe) -> bool`` for FITS files whose name
        says nothing.
    write : callable, optional
        ``write(ds, path)`` for the container formats (:func:`bayescannon.io.write_spectra`).
    write_suffixes : tuple of str
        File-name endings that select this format when writing.
    """

    name: str
    description: str
    guess_can_open: Callable[[str], bool]
    read_record: Callable[..., _Record] | None = None
    open_dataset: Callable[..., xr.Dataset] | None = None
    guess_from_content: Callable[[FitsProbe], bool] | None = None
    write: Callable[[xr.Dataset, Path], None] | None = None
    write_suffixes: tuple[str, ...] = ()

    def open(self, path, **kwargs) -> xr.Dataset:
        """Read ``path`` into a spectra container."""
        if self.open_dataset is not None:
            return self.open_dataset(path, **kwargs)
        if self.read_record is None:
            raise InvalidInputError(f"format {self.name!r} declares no reader")
        return _open_one(self.read_record, path, **kwargs)
