"""Readers and writers of survey spectra and of the spectra container.

Every reader returns the spectra container of ``docs/conventions.md`` (an
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
"""

from .apogee import (
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
from .galah import GALAH_CCDS, galah_path, read_galah, read_galah_many, write_galah, write_galah_arm
from .generic import detect_format, read_labels, read_many, read_spectra, write_spectra
from .lamost import LAMOST_MASK_BITS, lamost_wavelength, read_lamost, read_lamost_many, write_lamost

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
