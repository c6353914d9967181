"""Former home of the container, label and many-file readers (kept for compatibility).

The contents moved to modules that each own one thing:

=============================================  ========================================
name                                           now in
=============================================  ========================================
``read_spectra``, ``read_many``,               :mod:`bayescannon.io.registry`
``detect_format``
``write_spectra``, ``_read_nc``, ``_read_npz``,  :mod:`bayescannon.io.container`
``_read_bc_fits``, ``_restore``
``read_labels``                                :mod:`bayescannon.io.labels`
``SKIPPED_COLUMNS``, ``_Record``,              :mod:`bayescannon.io.records`
``_records_to_dataset``, ``_read_many_with``
``_read_fits_images``                          :mod:`bayescannon.io.fits`
                                               (``read_fits_images``)
=============================================  ========================================

Import from those modules (or from :mod:`bayescannon.io`) in new code; this module
only re-exports the names other code imported from it.
"""

from __future__ import annotations

from bayescannon.io.container import _read_bc_fits, _read_nc, _read_npz, _restore, write_spectra
from bayescannon.io.fits import read_fits_images as _read_fits_images
from bayescannon.io.labels import read_labels
from bayescannon.io.records import SKIPPED_COLUMNS, _read_many_with, _Record, _records_to_dataset
from bayescannon.io.registry import detect_format, read_many, read_spectra

__all__ = [
    "SKIPPED_COLUMNS",
    "_Record",
    "_read_bc_fits",
    "_read_fits_images",
    "_read_many_with",
    "_read_nc",
    "_read_npz",
    "_records_to_dataset",
    "_restore",
    "detect_format",
    "read_labels",
    "read_many",
    "read_spectra",
    "write_spectra",
]
