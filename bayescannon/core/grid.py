"""Wavelength-grid maths, arrays in and arrays out: Doppler factors, air/vacuum and
linear interpolation of flux, inverse variance and pixel masks.

Every other module (preprocessing, simulators, readers) takes these formulas from here,
so that each is written once.

Functions
---------
:func:`doppler_factor`
    ``1 + z`` from velocities (relativistic or first order) or redshifts.
:func:`air_to_vacuum_wavelength`, :func:`vacuum_to_air_wavelength`
    IAU standard conversion (Morton 2000; the air→vacuum direction uses the VALD
    inverse of the same refractive index).
:func:`interpolate`
    Linear interpolation of flux with exact variance propagation and mask bits, onto a
    common grid or per star through a Doppler factor (a compiled numba kernel and a
    numpy reference that a test holds equal).
"""

from __future__ import annotations

import numba
import numpy as np

from bayescannon.errors import InvalidInputError

__all__ = [
    "C_KMS",
    "air_to_vacuum_wavelength",
    "doppler_factor",
    "interpolate",
    "interpolate_numpy",
    "refractive_index_air",
    "refractive_index_vacuum",
    "vacuum_to_air_wavelength",
]

#: Speed of light in km/s.
C_KMS = 299_792.458

#: Use the numba kernel (tests switch this off to check it against numpy).
_USE_NUMBA = True


def doppler_factor(rv=None, redshift=None, *, relativistic: bool = True) -> np.ndarray:
    """``1 + z`` from radial velocities (km/s) or redshifts.

    Parameters
    ----------
    rv : array_like, optional
        Line-of-sight velocities in km/s (positive = receding).
    redshift : array_like, optional
        Redshifts ``z`` (give exactly one of ``rv`` and ``redshift``).
    relativistic : bool
        For ``rv``: ``1 + z = sqrt((1 + b) / (1 - b))`` with ``b = rv / c`` (default),
        else the non-relativistic ``1 + z = 1 + rv / c``.

    Returns
    -------
    numpy.ndarray
        ``1 + z`` (NaN where the input is NaN).

    Raises
    ------
    InvalidInputError
        Neither or both of ``rv`` and ``redshift`` given, or ``|rv| >= c``.
    """
    if (rv is None) == (redshift is None):
        raise InvalidInputError("give exactly one of rv (km/s) and redshift")
    if redshift is not None:
        return 1.0 + np.asarray(redshift, dtype=np.float64)
    beta = np.asarray(rv, dtype=np.float64) / C_KMS
    if np.any(np.abs(beta[np.isfinite(beta)]) >= 1):
        raise InvalidInputError("|rv| must be below the speed of light (km/s expected)")
    if relativistic:
        with np.errstate(invalid="ignore"):
            return np.sqrt((1.0 + beta) / (1.0 - beta))
    return 1.0 + beta


def refractive_index_vacuum(wl_vac) -> np.ndarray:
    """Refractive index of standard air at vacuum wavelengths (Angstrom; Morton 2000)."""
    s2 = (1.0e4 / np.asarray(wl_vac, dtype=np.float64)) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def refractive_index_air(wl_air) -> np.ndarray:
    """Refractive index of standard air at air wavelengths (Angstrom; VALD inverse of Morton 2000)."""
    s2 = (1.0e4 / np.asarray(wl_air, dtype=np.float64)) ** 2
    return (
        1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (38.92568793293 - s2)
    )


def vacuum_to_air_wavelength(wl_vac) -> np.ndarray:
    """Air wavelengths (Angstrom) of vacuum wavelengths: ``wl / n(wl)``."""
    wl = np.asarray(wl_vac, dtype=np.float64)
    return wl / refractive_index_vacuum(wl)


def air_to_vacuum_wavelength(wl_air) -> np.ndarray:
    """Vacuum wavelengths (Angstrom) of air wavelengths: ``wl * n_air(wl)``."""
    wl = np.asarray(wl_air, dtype=np.float64)
    return wl * refractive_index_air(wl)


def interpolate_numpy(wl, flux, ivar, mask, new_wl, factor=None, variance: str = "propagate"):
    """Numpy reference of :func:`interpolate` (same arguments and results)."""
    _check_variance(variance)
    propagate = variance == "propagate"
    n, p = flux.shape
    m = new_wl.size
    idx = np.arange(p, dtype=np.float64)
    if factor is None:
        frac = np.interp(new_wl, wl, idx, left=-1.0, right=-1.0)
    else:
        x = new_wl[None, :] * factor[:, None]
        frac = np.interp(x.ravel(), wl, idx, left=-1.0, right=-1.0).reshape(n, m)
    inside = frac >= 0  # NaN (bad Doppler factor) is outside too
    frac = np.where(inside, frac, 0.0)
    i0 = np.minimum(np.floor(frac).astype(np.intp), p - 2)
    t = frac - i0
    if factor is None:

        def gather(a, k):
            return np.take(a, k, axis=1)
    else:
        offsets = (np.arange(n, dtype=np.intp) * p)[:, None]

        def gather(a, k):
            return np.take(a.reshape(-1), k + offsets)

    f0, f1 = gather(flux, i0), gather(flux, i0 + 1)
    v0, v1 = gather(ivar, i0), gather(ivar, i0 + 1)
    w1 = t
    w0 = 1.0 - t
    new_flux = np.where(inside, w0 * f0 + w1 * f1, 0.0)
    bad = ((v0 <= 0) & (w0 > 0)) | ((v1 <= 0) & (w1 > 0)) | ~inside
    var0 = np.divide(1.0, v0, out=np.zeros_like(v0), where=v0 > 0)
    var1 = np.divide(1.0, v1, out=np.zeros_like(v1), where=v1 > 0)
    var = (w0 * w0 * var0 + w1 * w1 * var1) if propagate else (w0 * var0 + w1 * var1)
    new_ivar = np.divide(1.0, var, out=np.zeros_like(var), where=(var > 0) & ~bad)
    # a new pixel that falls exactly on an old one copies it
    new_ivar = np.where((w1 == 0) & ~bad, v0, np.where((w0 == 0) & ~bad, v1, new_ivar))
    new_flux, new_ivar = np.broadcast_arrays(new_flux, new_ivar)
    new_mask = None
    if mask is not None:
        m0, m1 = gather(mask, i0), gather(mask, i0 + 1)
        zero = np.zeros((), mask.dtype)
        new_mask = np.where(w0 > 0, m0, zero) | np.where(w1 > 0, m1, zero)
        new_mask = np.broadcast_to(np.where(inside, new_mask, zero), (n, m)).astype(np.uint32)
    return np.ascontiguousarray(new_flux), np.ascontiguousarray(new_ivar), new_mask


@numba.njit(parallel=True, cache=True, fastmath=False)
def _interp_kernel(wl, flux, ivar, mask, new_wl, factor, propagate):  # pragma: no cover - compiled
    """Fused :func:`interpolate_numpy` (one pass, a walking pointer per star).

    ``mask`` is (N, P) uint32 or (0, 0) for none; ``factor`` is (N,).
    """
    n, p = flux.shape
    m = new_wl.shape[0]
    has_mask = mask.shape[0] > 0
    out_f = np.zeros((n, m))
    out_i = np.zeros((n, m))
    out_m = np.zeros((n if has_mask else 0, m), dtype=np.uint32)
    lo = wl[0]
    hi = wl[p - 1]
    for s in numba.prange(n):
        z = factor[s]
        if not (z > 0.0 and z < np.inf):
            continue
        i = 0
        for j in range(m):
            x = new_wl[j] * z
            if not (x >= lo and x <= hi):
                continue
            while i < p - 2 and wl[i + 1] <= x:
                i += 1
            t = (x - wl[i]) / (wl[i + 1] - wl[i])
            t = min(t, 1.0)
            w0 = 1.0 - t
            f0 = flux[s, i]
            f1 = flux[s, i + 1]
            v0 = ivar[s, i]
            v1 = ivar[s, i + 1]
            out_f[s, j] = w0 * f0 + t * f1
            if has_mask:
                bits = np.uint32(0)
                if w0 > 0.0:
                    bits |= mask[s, i]
                if t > 0.0:
                    bits |= mask[s, i + 1]
                out_m[s, j] = bits
            if (v0 <= 0.0 and w0 > 0.0) or (v1 <= 0.0 and t > 0.0):
                continue
            if t == 0.0:
                out_i[s, j] = v0
            elif w0 == 0.0:
                out_i[s, j] = v1
            elif propagate:
                out_i[s, j] = 1.0 / (w0 * w0 / v0 + t * t / v1)
            else:
                out_i[s, j] = 1.0 / (w0 / v0 + t / v1)
    return out_f, out_i, out_m


def _check_variance(variance: str) -> None:
    if variance not in ("propagate", "interpolate"):
        raise InvalidInputError(f"variance must be 'propagate' or 'interpolate'; got {variance!r}")


def interpolate(wl, flux, ivar, mask, new_wl, factor=None, variance: str = "propagate"):
    """Linearly interpolate flux, inverse variance and mask bits onto a new grid.

    Star ``n`` is sampled at ``new_wl`` (``factor`` None) or at ``new_wl * factor[n]``
    (per-star Doppler factors ``1 + z``: the result is then in the rest frame). The
    flux is ``(1 - t) f0 + t f1`` between the two neighbouring old pixels. With
    ``variance="propagate"`` the new variance is ``(1 - t)**2 var0 + t**2 var1``, the
    exact variance of the interpolated value for independent pixels;
    ``variance="interpolate"`` interpolates the variance linearly (Ho et al. 2017),
    which is larger. A new pixel gets ``ivar = 0`` when it lies outside the old grid,
    when its star's factor is not finite and positive, or when a neighbour with
    non-zero weight has ``ivar = 0``; one that falls exactly on an old pixel copies it.
    Mask bits of the neighbours with non-zero weight are OR-ed.

    Parameters
    ----------
    wl : numpy.ndarray, shape (P,)
        Old grid, strictly increasing, ``P >= 2``.
    flux, ivar : numpy.ndarray, shape (N, P)
        Flux (finite) and inverse variance (>= 0).
    mask : numpy.ndarray of uint32, shape (N, P), or None
    new_wl : numpy.ndarray, shape (M,)
    factor : numpy.ndarray, shape (N,), optional
        Doppler factors.
    variance : {"propagate", "interpolate"}

    Returns
    -------
    flux, ivar : numpy.ndarray, shape (N, M)
    mask : numpy.ndarray of uint32, shape (N, M), or None (when ``mask`` is None)

    Raises
    ------
    InvalidInputError
        Unknown ``variance`` or an old grid of fewer than 2 pixels.
    """
    _check_variance(variance)
    wl = np.ascontiguousarray(wl, dtype=np.float64)
    new_wl = np.ascontiguousarray(new_wl, dtype=np.float64)
    flux = np.ascontiguousarray(flux, dtype=np.float64)
    ivar = np.ascontiguousarray(ivar, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2:
        raise InvalidInputError(f"cannot interpolate from a grid of shape {wl.shape}: need >= 2 pixels")
    if flux.shape != ivar.shape or flux.ndim != 2 or flux.shape[1] != wl.size:
        raise InvalidInputError(f"flux has shape {flux.shape} and ivar {ivar.shape}; expected (N, {wl.size})")
    if factor is not None:
        factor = np.array(np.broadcast_to(factor, (flux.shape[0],)), dtype=np.float64)  # writable: one kernel type
    if not _USE_NUMBA:
        return interpolate_numpy(wl, flux, ivar, mask, new_wl, factor, variance)
    fac = np.ones(flux.shape[0]) if factor is None else factor
    m_in = np.zeros((0, 0), np.uint32) if mask is None else np.ascontiguousarray(mask, dtype=np.uint32)
    f, iv, m_out = _interp_kernel(wl, flux, ivar, m_in, new_wl, fac, variance == "propagate")
    return f, iv, (None if mask is None else m_out)
