"""Preprocessing of spectra containers: grids (Doppler shift, rest frame, resampling,
air/vacuum), continuum normalisation, masks and S/N, and chunked survey-scale runs.

Every step is a plain function that takes a spectra container (``docs/guides/conventions.md``)
and returns a new one; inputs are never modified. Inverse variances are propagated
exactly where the step is linear in the flux, and pixels without information
(``ivar = 0``) never leak into pixels that claim information. Stars that end up with no
good pixel are not an error: they get ``all_masked = True`` and a logged warning.

Modules: :mod:`~bayescannon.preprocess.grid`, :mod:`~bayescannon.preprocess.normalise`,
:mod:`~bayescannon.preprocess.masks`, :mod:`~bayescannon.preprocess.chunked`.
"""

from bayescannon.preprocess._container import flag_all_masked
from bayescannon.preprocess.chunked import chunk_files, process_in_chunks, read_chunks
from bayescannon.preprocess.grid import (
    C_KMS,
    air_to_vacuum,
    doppler_factor,
    resample,
    shift_and_resample,
    to_rest_frame,
    vacuum_to_air,
    wavelength_cut,
)
from bayescannon.preprocess.masks import add_snr, mask_bits, mask_windows, snr
from bayescannon.preprocess.normalise import continuum_pixels, normalise_continuum, normalise_ho2017

__all__ = [
    "C_KMS",
    "add_snr",
    "air_to_vacuum",
    "chunk_files",
    "continuum_pixels",
    "doppler_factor",
    "flag_all_masked",
    "mask_bits",
    "mask_windows",
    "normalise_continuum",
    "normalise_ho2017",
    "process_in_chunks",
    "read_chunks",
    "resample",
    "shift_and_resample",
    "snr",
    "to_rest_frame",
    "vacuum_to_air",
    "wavelength_cut",
]
