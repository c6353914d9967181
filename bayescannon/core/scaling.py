"""Label scaling (Casey+2016): offset = median, scale = 97.5th − 2.5th percentile."""

from __future__ import annotations

import numpy as np

from bayescannon.errors import LabelError

__all__ = ["fit_scaling", "scale", "unscale"]


def fit_scaling(labels, label_names=None):
    """Offsets and scales of training labels.

    Parameters
    ----------
    labels : ndarray, shape (N, K)
        Training labels in physical units.
    label_names : list of str, optional
        Used in error messages.

    Returns
    -------
    offset, scale : ndarray, shape (K,)

    Raises
    ------
    LabelError
        When a label has no spread (scale 0), which would make it unidentifiable.
    """
    labels = np.asarray(labels, dtype=np.float64)
    offset = np.median(labels, axis=0)
    lo, hi = np.percentile(labels, [2.5, 97.5], axis=0)
    scale = hi - lo
    bad = ~(scale > 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        name = label_names[k] if label_names is not None else f"label {k}"
        raise LabelError(
            f"training label {name} has no spread (97.5th - 2.5th percentile = {scale[k]}); it cannot be a model label"
        )
    return offset, scale


def scale(labels, offset, scale_):
    """Physical → scaled labels: ``(labels - offset) / scale``."""
    return (np.asarray(labels, dtype=np.float64) - offset) / scale_


def unscale(scaled, offset, scale_):
    """Scaled → physical labels: ``scaled * scale + offset``."""
    return np.asarray(scaled, dtype=np.float64) * scale_ + offset
