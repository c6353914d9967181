"""Validation: cross-validation and bootstrap, summary statistics, quality flags,
repeat-based errors and open clusters.
"""

from .crossval import (
    CrossValidation,
    BootstrapResult,
    cross_validate,
    bootstrap,
    make_folds,
    summary_statistics,
    binned_statistics,
    clone_model,
    model_params,
    DEFAULT_SNR_BINS,
    BAD_FIT_FLAGS,
)

__all__ = [
    "CrossValidation",
    "BootstrapResult",
    "cross_validate",
    "bootstrap",
    "make_folds",
    "summary_statistics",
    "binned_statistics",
    "clone_model",
    "model_params",
    "DEFAULT_SNR_BINS",
    "BAD_FIT_FLAGS",
]
