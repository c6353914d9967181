"""Typed exceptions and warnings raised by bayescannon.

Every exception derives from :class:`BayesCannonError` *and* from the builtin
exception a caller would naturally catch (``ValueError``, ``OSError``, ...), so
``except ValueError`` keeps working while ``except BayesCannonError`` catches
everything the package raises on purpose.

Messages say what was expected, what arrived, and name the offending star,
pixel or label.
"""

from __future__ import annotations

__all__ = [
    "BayesCannonError",
    "InvalidInputError",
    "ShapeMismatchError",
    "NonFiniteError",
    "NegativeIvarError",
    "LabelError",
    "InsufficientDataError",
    "GridMismatchError",
    "NotFittedError",
    "ModelFileError",
    "SurveyFormatError",
    "CrossMatchError",
    "ConvergenceWarning",
    "BayesCannonWarning",
    "NotCalibratedError",
    "SamplingError",
    "OutputPathError",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputNotWritableError",
    "DaskSpecError",
    "MissingDependencyError",
]


class BayesCannonError(Exception):
    """Base class of every error raised on purpose by bayescannon."""


class InvalidInputError(BayesCannonError, ValueError):
    """An argument has the wrong type, value or content."""


class ShapeMismatchError(InvalidInputError):
    """Array shapes do not agree (e.g. flux and ivar, or labels and stars)."""


class NonFiniteError(InvalidInputError):
    """NaN or inf where a finite value is required (e.g. flux where ivar > 0)."""


class NegativeIvarError(InvalidInputError):
    """An inverse variance is negative."""


class LabelError(InvalidInputError):
    """Label names or values are wrong: unknown names, NaN, out of range."""


class InsufficientDataError(InvalidInputError):
    """Too little data for the requested fit (e.g. fewer stars than terms)."""


class GridMismatchError(InvalidInputError):
    """A wavelength grid differs from the one a model was trained on."""


class NotFittedError(BayesCannonError, ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""


class ModelFileError(BayesCannonError, OSError):
    """A model file is missing, corrupted, or not a bayescannon model."""


class SurveyFormatError(BayesCannonError, OSError):
    """A survey file is not in the layout it claims (HDUs, keywords, units)."""


class CrossMatchError(BayesCannonError, ValueError):
    """A cross-match is ambiguous or fails (duplicated ids, multiple candidates)."""


class BayesCannonWarning(UserWarning):
    """Base class of warnings issued by bayescannon."""


class ConvergenceWarning(BayesCannonWarning):
    """An optimiser or sampler did not converge for some stars or pixels."""


class NotCalibratedError(BayesCannonError, ValueError):
    """Calibrated uncertainties were requested from a model that has no calibration
    (see :mod:`bayescannon.core.uncertainty`)."""


class SamplingError(BayesCannonError, RuntimeError):
    """A sampler could not be built or run (e.g. no usable pixel for a star)."""


class OutputPathError(InvalidInputError):
    """An output path cannot be used: unsupported suffix, an existing file, an input of the
    same run, or a folder that cannot be written. Raised before any work is done."""


class OutputExistsError(OutputPathError, FileExistsError):
    """An output file exists and replacing it was not asked for (``overwrite=False``,
    no ``--overwrite``)."""


class OutputIsInputError(OutputPathError):
    """An output is also an input of the same run (the same file, by path, symlink or hard
    link): it is never replaced, even with ``--overwrite``."""


class OutputNotWritableError(OutputPathError, PermissionError):
    """The folder of an output does not exist as a folder or cannot be written."""


class DaskSpecError(InvalidInputError):
    """A ``--dask`` specification cannot be used: not ``local:N``, ``tcp://HOST:PORT`` or a
    readable dask-jobqueue YAML file with the keys expected."""


class MissingDependencyError(BayesCannonError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it
    (e.g. ``pip install 'bayescannon[dask]'``)."""
