"""Simulated data with known labels: instruments, line lists, spectrum synthesis, label
populations, mock survey files and the APOGEE spectrum emulator.
"""

from bayescannon.simulate.instruments import APOGEE, GALAH, INSTRUMENTS, LAMOST, MASK_BITS, Instrument, get_instrument
from bayescannon.simulate.labels import LABEL_LIMITS, LABEL_NAMES
from bayescannon.simulate.linelist import LineList, default_line_list, make_line_list
from bayescannon.simulate.opacity import line_strengths
from bayescannon.simulate.populations import (
    PIPELINE_NOISE,
    POPULATION_LIMITS,
    draw_labels,
    lamost_feh_offset,
    lamost_logg_offset,
    lamost_teff_offset,
    pipeline_labels,
)
from bayescannon.simulate.quadratic import MOCK_LABEL_RANGES, mock_quadratic_survey
from bayescannon.simulate.synthesis import simulate_spectra, simulate_survey

__all__ = [
    "APOGEE",
    "GALAH",
    "INSTRUMENTS",
    "LABEL_LIMITS",
    "LABEL_NAMES",
    "LAMOST",
    "MASK_BITS",
    "MOCK_LABEL_RANGES",
    "PIPELINE_NOISE",
    "POPULATION_LIMITS",
    "Instrument",
    "LineList",
    "default_line_list",
    "draw_labels",
    "get_instrument",
    "lamost_feh_offset",
    "lamost_logg_offset",
    "lamost_teff_offset",
    "line_strengths",
    "make_line_list",
    "mock_quadratic_survey",
    "pipeline_labels",
    "simulate_spectra",
    "simulate_survey",
]
