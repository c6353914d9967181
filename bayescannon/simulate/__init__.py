"""Simulated data with known labels: instruments, line lists, spectrum synthesis, label
populations, mock survey files and the APOGEE spectrum emulator.
"""

from .instruments import APOGEE, GALAH, INSTRUMENTS, LAMOST, MASK_BITS, Instrument, get_instrument
from .labels import LABEL_LIMITS, LABEL_NAMES
from .linelist import LineList, default_line_list, make_line_list
from .opacity import line_strengths
from .populations import (
    PIPELINE_NOISE,
    POPULATION_LIMITS,
    draw_labels,
    lamost_feh_offset,
    lamost_logg_offset,
    lamost_teff_offset,
    pipeline_labels,
)
from .synthesis import simulate_spectra, simulate_survey

__all__ = [
    "LABEL_NAMES",
    "LABEL_LIMITS",
    "POPULATION_LIMITS",
    "MASK_BITS",
    "Instrument",
    "APOGEE",
    "LAMOST",
    "GALAH",
    "INSTRUMENTS",
    "get_instrument",
    "LineList",
    "make_line_list",
    "default_line_list",
    "line_strengths",
    "draw_labels",
    "simulate_spectra",
    "simulate_survey",
    "pipeline_labels",
    "PIPELINE_NOISE",
    "lamost_teff_offset",
    "lamost_logg_offset",
    "lamost_feh_offset",
]
