"""Readers and writers of survey spectra and of the spectra container.

Every reader returns the spectra container of ``docs/guides/conventions.md`` (an
``xarray.Dataset`` with ``flux``/``ivar`` (star, pixel), a ``wavelength`` coordinate
in Angstrom and unique ``star`` ids). Every survey reader has a writer that writes
the real file layout (used by tests and by the mock-survey simulator).

=============================  ======================================================
format                         functions
=============================  ======================================================
APOGEE apStar                  :func:`read_apstar`, :func:`read_apstar_many`,
                               :func:`write_apstar`
APOGEE aspcapStar              :func:`read_aspcapstar`, :func:`read_aspcapstar_many`,
                               :func:`write_aspcapstar`
LAMOST low resolution          :func:`read_lamost`, :func:`read_lamost_many`,
                               :func:`write_lamost`
GALAH DR3 (4 arms per star)    :func:`read_galah`, :func:`read_galah_many`,
                               :func:`write_galah`, :func:`write_galah_arm`
container (.nc, .npz, FITS)    :func:`read_spectra`, :func:`write_spectra`
many survey files              :func:`read_many`
label tables (FITS, CSV)       :func:`read_labels`
=============================  ======================================================

Modules: :mod:`~bayescannon.io.registry` (format detection and dispatch; each format
module declares its formats, :mod:`~bayescannon.io.backend`),
:mod:`~bayescannon.io.container` (the container files), :mod:`~bayescannon.io.apogee`,
:mod:`~bayescannon.io.lamost`, :mod:`~bayescannon.io.galah` (survey layouts),
:mod:`~bayescannon.io.records` (single-star records, stacking, many files),
:mod:`~bayescannon.io.fits` (FITS images and headers), :mod:`~bayescannon.io.labels`,
:mod:`~bayescannon.io.bits` (mask-bit names), :mod:`~bayescannon.pipeline.atomic` (atomic
output files) and :mod:`~bayescannon.io.common`.
"""

from bayescannon.io.apogee import (
    APOGEE_ASPCAPFLAG_BITS,
    APOGEE_PIXMASK_BITS,
    APOGEE_STARFLAG_BITS,
    DEFAULT_REJECT_BITS,
    apogee_wavelength,
    bits_to_int,
    read_apstar,
    read_apstar_many,
    read_aspcapstar,
    read_aspcapstar_many,
    write_apstar,
    write_aspcapstar,
)
from bayescannon.io.container import write_spectra
from bayescannon.io.galah import GALAH_CCDS, galah_path, read_galah, read_galah_many, write_galah, write_galah_arm
from bayescannon.io.labels import read_labels
from bayescannon.io.lamost import LAMOST_MASK_BITS, lamost_wavelength, read_lamost, read_lamost_many, write_lamost
from bayescannon.io.registry import detect_format, read_many, read_spectra

__all__ = [
    "APOGEE_ASPCAPFLAG_BITS",
    "APOGEE_PIXMASK_BITS",
    "APOGEE_STARFLAG_BITS",
    "DEFAULT_REJECT_BITS",
    "GALAH_CCDS",
    "LAMOST_MASK_BITS",
    "apogee_wavelength",
    "bits_to_int",
    "detect_format",
    "galah_path",
    "lamost_wavelength",
    "read_apstar",
    "read_apstar_many",
    "read_aspcapstar",
    "read_aspcapstar_many",
    "read_galah",
    "read_galah_many",
    "read_labels",
    "read_lamost",
    "read_lamost_many",
    "read_many",
    "read_spectra",
    "write_apstar",
    "write_aspcapstar",
    "write_galah",
    "write_galah_arm",
    "write_lamost",
    "write_spectra",
]
