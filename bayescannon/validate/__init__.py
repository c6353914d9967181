"""Validation: cross-validation and bootstrap, model selection by cross-validation, summary statistics, quality flags,
repeat-based errors and open clusters.
"""

from bayescannon.validate.bootstrap import BootstrapResult, bootstrap
from bayescannon.validate.crossval import BAD_FIT_FLAGS, CrossValidation, cross_validate, make_folds
from bayescannon.validate.selection import DEFAULT_REGULARIZATION_GRID, ModelSelection, select_model
from bayescannon.validate.stats import DEFAULT_SNR_BINS, binned_statistics, summary_statistics

__all__ = [
    "CrossValidation",
    "BootstrapResult",
    "cross_validate",
    "bootstrap",
    "make_folds",
    "summary_statistics",
    "binned_statistics",
    "DEFAULT_SNR_BINS",
    "BAD_FIT_FLAGS",
    "ModelSelection",
    "select_model",
    "DEFAULT_REGULARIZATION_GRID",
]
