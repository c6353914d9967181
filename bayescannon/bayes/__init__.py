"""The Bayesian layer: PyMC models built from a fitted CannonModel, calibration of the
label uncertainties, latent reference labels (NUTS) and ArviZ diagnostics.

Never imported by :mod:`bayescannon.core` or :mod:`bayescannon.model`.
"""

from bayescannon.bayes.calibration import calibrate, coverage_report
from bayescannon.bayes.latent import sample_latent_labels
from bayescannon.bayes.posterior import (
    LabelPosterior,
    label_log_likelihood,
    prior_bounds,
    sample_labels,
    star_statistics,
)

__all__ = [
    "calibrate",
    "coverage_report",
    "sample_latent_labels",
    "label_log_likelihood",
    "LabelPosterior",
    "sample_labels",
    "star_statistics",
    "prior_bounds",
]
