"""The GALAH microturbulence relation (stand-in for Nandakumar+2022 App. A3)."""

from __future__ import annotations

import numpy as np
import pytest

from bayescannon.errors import ShapeMismatchError
from bayescannon.survey.vmicro import galah_vmic


@pytest.mark.parametrize(
    ("teff", "logg", "expected"),
    [
        (5500.0, 4.5, 1.1),  # ΔT = 0 on either branch
        (4500.0, 2.5, 1.1 - 0.1 + 0.4),  # giant: 1e-4·(−1000) + 4e-7·10⁶
        (6500.0, 4.0, 1.1 + 0.1 + 0.4),  # hot: quadratic branch
        (5000.0, 4.5, 1.1 - 0.08),  # cool dwarf: 1.6e-4·(−500)
        (5000.0, 4.2, 1.1 - 0.05 + 0.1),  # log g = 4.2 is still the quadratic branch
        (5772.0, 4.44, 1.1 + 0.0272 + 4e-7 * 272.0**2),  # the Sun
    ],
)
def test_hand_computed_values(teff, logg, expected):
    assert galah_vmic(teff, logg) == pytest.approx(expected, abs=1e-12)


def test_vectorised_masked_and_broadcast():
    t = np.ma.array([4500.0, 5000.0, 6000.0], mask=[0, 0, 1])
    out = galah_vmic(t, [2.5, 4.5, 4.0])
    np.testing.assert_allclose(out[:2], [1.4, 1.02])
    assert np.isnan(out[2])  # masked input: NaN, not a number from a fill value
    assert np.isnan(galah_vmic(np.nan, 2.0))
    np.testing.assert_allclose(galah_vmic([4500.0, 6500.0], 2.0), [1.4, 1.6])
    # continuous at Teff = 5500 K for dwarfs, a jump of 0 there by construction
    assert galah_vmic(5499.999, 4.5) == pytest.approx(galah_vmic(5500.0, 4.5), abs=1e-6)
    with pytest.raises(ShapeMismatchError, match="logg has shape"):
        galah_vmic([1.0, 2.0, 3.0], [1.0, 2.0])
