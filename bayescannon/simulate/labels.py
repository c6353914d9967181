"""The simulator's labels: names, the range spectra can be computed for, and validation
of label tables and of the random-number and count arguments.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping

import numpy as np

from bayescannon.errors import InvalidInputError, LabelError

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_LIMITS",
    "LABEL_NAMES",
]


#: Label names, in the order used for (N, 4) label arrays.
LABEL_NAMES: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "ALPHA_FE")

#: Range of labels for which spectra can be simulated (inclusive).
LABEL_LIMITS: dict[str, tuple[float, float]] = {
    "TEFF": (3000.0, 8000.0),
    "LOGG": (-0.5, 5.5),
    "FE_H": (-4.0, 1.0),
    "ALPHA_FE": (-0.5, 1.0),
}


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _as_generator(rng) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from ``None``, an int seed or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        if rng is not None and rng < 0:
            raise InvalidInputError(f"rng seed must be a non-negative integer; got {rng}")
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise InvalidInputError(
        f"rng must be None, a non-negative int seed or a numpy.random.Generator; got {type(rng).__name__}"
    )


def _check_count(n, name: str, minimum: int) -> int:
    """Validate a count argument (int >= ``minimum``)."""
    if isinstance(n, bool):
        raise InvalidInputError(f"{name} must be an integer; got {n!r}")
    if not isinstance(n, numbers.Integral):
        if isinstance(n, numbers.Real) and float(n).is_integer():
            n = int(n)
        else:
            raise InvalidInputError(f"{name} must be an integer; got {n!r}")
    n = int(n)
    if n < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {n}")
    return n


# --------------------------------------------------------------------------------------
# label tables
# --------------------------------------------------------------------------------------


def _validate_labels(labels) -> dict[str, np.ndarray]:
    """Turn labels into a dict of 1-D float arrays and check them."""
    if _is_table(labels):
        missing = [k for k in LABEL_NAMES if not _has_key(labels, k)]
        if missing:
            raise LabelError(f"labels lack {', '.join(missing)}; expected columns {', '.join(LABEL_NAMES)}")
        cols = {k: np.asarray(labels[k], dtype=float).reshape(-1) for k in LABEL_NAMES}
    else:
        try:
            arr = np.asarray(labels, dtype=float)
        except (TypeError, ValueError):
            raise LabelError(
                f"labels must be a mapping with {', '.join(LABEL_NAMES)} or an (N, 4) array; "
                f"got {type(labels).__name__}"
            ) from None
        if arr.ndim == 1 and arr.size == len(LABEL_NAMES):
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(LABEL_NAMES):
            raise LabelError(f"label array must have shape (N, 4) in order {LABEL_NAMES}; got {arr.shape}")
        cols = {k: arr[:, i] for i, k in enumerate(LABEL_NAMES)}
    sizes = {k: v.size for k, v in cols.items()}
    if len(set(sizes.values())) != 1:
        raise LabelError(f"label columns differ in length: {sizes}")
    for k, v in cols.items():
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LabelError(f"label {k} is not finite for star {i} ({v[i]}); {int(bad.sum())} stars in all")
        lo, hi = LABEL_LIMITS[k]
        out = (v < lo) | (v > hi)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise LabelError(
                f"label {k} = {v[i]:g} for star {i} is outside the simulator's range [{lo:g}, {hi:g}]; "
                f"{int(out.sum())} stars in all"
            )
    return cols


def _is_table(obj) -> bool:
    """Whether ``obj`` holds named label columns (mapping, Dataset, DataFrame, structured array)."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.names is not None
    return isinstance(obj, Mapping) or hasattr(obj, "keys")


def _has_key(obj, key) -> bool:
    """Whether the label table ``obj`` has a column ``key``."""
    if isinstance(obj, np.ndarray):
        return key in (obj.dtype.names or ())
    try:
        return key in obj
    except TypeError:
        return False
