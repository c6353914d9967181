"""Validation: cross-validation and bootstrap, summary statistics, quality flags,
repeat-based errors and open clusters.
"""

from .bootstrap import BootstrapResult, bootstrap
from .crossval import (
    CrossValidation,
    cross_validate,
    make_folds,
    mock_quadratic_survey,
    BAD_FIT_FLAGS,
)
from .stats import DEFAULT_SNR_BINS, binned_statistics, summary_statistics

__all__ = [
    "CrossValidation",
    "BootstrapResult",
    "cross_validate",
    "bootstrap",
    "make_folds",
    "summary_statistics",
    "binned_statistics",
    "mock_quadratic_survey",
    "DEFAULT_SNR_BINS",
    "BAD_FIT_FLAGS",
]
