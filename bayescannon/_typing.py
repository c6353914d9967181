"""Type aliases of the public API (for annotations only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr

__all__ = ["ArrayLike", "LabelNames", "LabelsLike", "PathLikeStr", "RandomState", "SpectraLike"]

#: Anything numpy turns into an array.
type ArrayLike = npt.ArrayLike
#: Fluxes as an (N, P) array or a spectra container (``xarray.Dataset``).
type SpectraLike = npt.ArrayLike | xr.Dataset
#: Labels as an (N, K) array, a mapping of columns, a table or a Dataset.
type LabelsLike = npt.ArrayLike | Mapping[str, Any] | xr.Dataset | Any
#: A file-system path.
type PathLikeStr = str | PathLike[str]
#: A seed, a generator or None (fresh entropy).
type RandomState = int | np.random.Generator | None
#: Label names.
type LabelNames = Sequence[str]
