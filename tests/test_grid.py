"""bayescannon.core.grid: the one place of the Doppler, air/vacuum and interpolation maths."""

import numpy as np
import pytest

from bayescannon.core import grid
from bayescannon.errors import InvalidInputError


def test_numba_kernel_agrees_with_numpy_reference():
    rng = np.random.default_rng(3)
    wl = np.sort(rng.uniform(4000, 4100, 400))
    n = 9
    flux = rng.normal(1, 0.1, (n, wl.size))
    ivar = rng.uniform(0.5, 2, (n, wl.size))
    ivar[rng.random(ivar.shape) < 0.05] = 0
    mask = rng.integers(0, 16, (n, wl.size)).astype(np.uint32)
    new = np.concatenate([wl[5:15], np.linspace(3990, 4110, 700)])  # exact hits and both edges
    new.sort()
    factor = np.array([1.0, 0.999, 1.001, 1.0003, np.nan, -1.0, 0.0, 1.01, 0.98])
    for fac in (None, factor):
        for variance in ("propagate", "interpolate"):
            for m in (mask, None):
                a = grid.interpolate(wl, flux, ivar, m, new, fac, variance)
                b = grid.interpolate_numpy(wl, flux, ivar, m, new, fac, variance)
                np.testing.assert_allclose(a[0], b[0], rtol=1e-13, atol=1e-13)
                np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=0)
                np.testing.assert_array_equal(a[1] > 0, b[1] > 0)
                if m is None:
                    assert a[2] is None and b[2] is None
                else:
                    np.testing.assert_array_equal(a[2], b[2])
    # stars with a non-finite or non-positive factor get nothing
    _, iv, _ = grid.interpolate(wl, flux, ivar, None, new, factor)
    assert not iv[[4, 5, 6]].any()


def test_interpolation_exact_cases():
    wl = np.array([1.0, 2.0, 3.0])
    flux = np.array([[1.0, 3.0, 5.0]])
    ivar = np.array([[1.0, 4.0, 0.0]])
    f, iv, _ = grid.interpolate(wl, flux, ivar, None, np.array([1.5, 2.0, 2.5, 3.5]))
    np.testing.assert_array_equal(f[0, :3], [2.0, 3.0, 4.0])
    # var = 0.25 * 1 + 0.25 * 0.25 at 1.5; exact copy at 2.0; a masked neighbour masks 2.5; outside: 0
    np.testing.assert_allclose(iv[0], [1 / 0.3125, 4.0, 0.0, 0.0])
    _, iv2, _ = grid.interpolate(wl, flux, ivar, None, np.array([1.5]), variance="interpolate")
    np.testing.assert_allclose(iv2[0], [1 / (0.5 + 0.125)])
    with pytest.raises(InvalidInputError, match="variance"):
        grid.interpolate(wl, flux, ivar, None, wl, variance="linear")


def test_doppler_and_air_vacuum():
    assert grid.C_KMS == 299_792.458
    rv = np.array([-300.0, 0.0, 250.0])
    np.testing.assert_allclose(grid.doppler_factor(rv=rv, relativistic=False), 1 + rv / grid.C_KMS, rtol=0, atol=1e-15)
    b = rv / grid.C_KMS
    np.testing.assert_allclose(grid.doppler_factor(rv=rv), np.sqrt((1 + b) / (1 - b)), rtol=1e-15)
    np.testing.assert_array_equal(grid.doppler_factor(redshift=[0.1]), [1.1])
    with pytest.raises(InvalidInputError):
        grid.doppler_factor(rv=[3e5])
    vac = np.linspace(3000, 17000, 50)
    air = grid.vacuum_to_air_wavelength(vac)
    # Hα: 6564.614 A vacuum is 6562.801 A in air (IAU)
    np.testing.assert_allclose(grid.vacuum_to_air_wavelength(6564.614), 6562.801, atol=2e-3)
    # the two directions invert each other far below a pixel (1e-8 relative)
    np.testing.assert_allclose(grid.air_to_vacuum_wavelength(air), vac, rtol=1e-8)
