"""Bitmask flags for pixels and stars, with their documentation.

Bits are stable: new bits are only appended. ``describe(flags, Flag)`` turns an integer
into readable names; ``FLAG_DOC`` is written into model files and catalogue headers.
"""

from __future__ import annotations

import enum

__all__ = ["PixelFlag", "StarFlag", "describe", "flag_doc"]


class PixelFlag(enum.IntFlag):
    """Per-pixel training flags."""

    FEW_STARS = 1  #: fewer stars with ivar > 0 than model terms + 1: neutral model
    SINGULAR = 2  #: design matrix singular at this pixel: neutral model
    NOT_CONVERGED = 4  #: s² optimisation did not converge
    ILL_CONDITIONED = (
        8  #: normal equations became singular after the first pass or gave non-finite values (SINGULAR is set too)
    )


class StarFlag(enum.IntFlag):
    """Per-star test-step flags."""

    NOT_CONVERGED = 1  #: Levenberg–Marquardt did not converge for the best start
    AT_BOUND = 2  #: best fit sits at a search bound
    EXTRAPOLATED = 4  #: best fit far outside the training labels
    FEW_PIXELS = 8  #: fewer usable pixels than twice the number of model terms
    NO_PIXELS = 16  #: no usable pixel: labels are NaN
    SINGULAR_COVARIANCE = 32  #: Fisher matrix singular: errors are NaN
    LARGE_CHI2 = 64  #: reduced χ² above the configured threshold
    FAR_FROM_TRAINING = 128  #: label distance to the training set above the threshold
    OUTSIDE_HULL = 256  #: labels outside the convex hull of the training labels
    LOW_SNR = 512  #: S/N below the configured minimum
    SURVEY_FLAGGED = 1024  #: the survey pipeline flagged this spectrum
    UNDERDETERMINED = 2048  #: fewer usable pixels than labels: labels not identified, errors NaN, not converged


# one table per flag type: PixelFlag.FEW_STARS == StarFlag.NOT_CONVERGED as integers (and
# hash alike), so a single dict keyed by members would give one text for both
_DOC = {
    PixelFlag: {
        "FEW_STARS": "fewer usable training stars than terms+1; neutral model",
        "SINGULAR": "singular design at this pixel; neutral model",
        "NOT_CONVERGED": "scatter optimisation did not converge",
        "ILL_CONDITIONED": "normal equations singular at a later pass or non-finite; neutral model (with SINGULAR)",
    },
    StarFlag: {
        "NOT_CONVERGED": "label fit did not converge",
        "AT_BOUND": "best fit at a search bound",
        "EXTRAPOLATED": "labels far outside the training set",
        "FEW_PIXELS": "fewer usable pixels than 2x model terms",
        "NO_PIXELS": "no usable pixels; labels undefined",
        "SINGULAR_COVARIANCE": "singular Fisher matrix; errors undefined",
        "LARGE_CHI2": "reduced chi2 above threshold",
        "FAR_FROM_TRAINING": "label distance to training set above threshold",
        "OUTSIDE_HULL": "labels outside convex hull of training labels",
        "LOW_SNR": "S/N below the configured minimum",
        "SURVEY_FLAGGED": "survey pipeline flags set (see SURVEY_FLAGS)",
        "UNDERDETERMINED": "fewer usable pixels than labels; labels not identified, errors NaN",
    },
}


def describe(value: int, flag_type=StarFlag) -> list[str]:
    """Names of the bits set in ``value``."""
    return [f.name for f in flag_type if int(value) & int(f)]


def flag_doc(flag_type=StarFlag) -> dict[str, str]:
    """``{"BIT<n> NAME": description}`` for headers and file attributes."""
    return {
        f"{f.name}": f"bit {int(f).bit_length() - 1} (value {int(f)}): {_DOC[flag_type][f.name]}" for f in flag_type
    }


def flag_header(flag_type=StarFlag) -> dict[str, str]:
    """Header cards documenting the flag bits: ``FLAGBT00 = "NOT_CONVERGED: bit 0
    (value 1): ..."`` (keywords of at most 8 characters, as FITS requires)."""
    return {
        f"FLAGBT{int(f).bit_length() - 1:02d}": f"{name}: {doc}"
        for f, (name, doc) in zip(flag_type, flag_doc(flag_type).items())
    }
