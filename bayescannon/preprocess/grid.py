"""Wavelength grids of spectra containers: Doppler shifts to the rest frame, linear
resampling (flux and variance interpolated; a new pixel that touches a masked or absent
old pixel is masked), wavelength cuts and air/vacuum conversion.

The maths (Doppler factor, refractive index, interpolation kernels) lives in
:mod:`bayescannon.core.grid`; this module applies it to containers.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from bayescannon.core.grid import (
    C_KMS,
    air_to_vacuum_wavelength,
    doppler_factor,
    interpolate,
    vacuum_to_air_wavelength,
)
from bayescannon.errors import GridMismatchError, InvalidInputError
from bayescannon.preprocess._container import check_grid, flag_all_masked, flux_ivar, new_container, wavelength_of
from bayescannon.spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = [
    "C_KMS",
    "air_to_vacuum",
    "doppler_factor",
    "per_star_factor",
    "resample",
    "shift_and_resample",
    "to_rest_frame",
    "vacuum_to_air",
    "wavelength_cut",
]


def per_star_factor(ds: xr.Dataset, rv, redshift, relativistic: bool) -> np.ndarray:
    """Per-star Doppler factors ``1 + z`` from arguments or the container's columns.

    Without ``rv`` and ``redshift`` the container's ``redshift`` column, else its ``rv``
    column, is used. Stars with a non-finite or non-positive factor get NaN and are
    named in a logged warning.
    """
    n = ds.sizes["star"]
    if rv is None and redshift is None:
        if "redshift" in ds:
            redshift = ds["redshift"].values
        elif "rv" in ds:
            rv = ds["rv"].values
        else:
            raise InvalidInputError("no rv or redshift given and the container has no 'redshift' or 'rv' column")
    factor = np.broadcast_to(doppler_factor(rv=rv, redshift=redshift, relativistic=relativistic), (n,)).astype(
        np.float64
    )
    bad = ~np.isfinite(factor) | (factor <= 0)
    if bad.any():
        ids = np.asarray(ds["star"].values)[bad]
        logger.warning(
            "%d star(s) have no valid rv/redshift and are masked: %s",
            int(bad.sum()),
            ", ".join(map(str, ids[:5])),
        )
        factor = np.where(bad, np.nan, factor)
    return factor


def resample(ds: xr.Dataset, new_wavelength, *, variance: str = "propagate") -> xr.Dataset:
    """Linearly resample every star onto ``new_wavelength`` (no Doppler shift).

    Flux is interpolated linearly between the two neighbouring old pixels with
    weights ``(1 - t, t)``. With ``variance="propagate"`` (default) the new variance is
    ``(1 - t)**2 var0 + t**2 var1``, the exact variance of the interpolated value for
    independent pixels (covariances between new pixels are not tracked);
    ``variance="interpolate"`` interpolates the variance linearly as Ho et al. (2017,
    section 2.1) do, which is larger (conservative). A new pixel gets ``ivar = 0``
    when it lies outside the old grid or when a neighbour with non-zero weight has
    ``ivar = 0``; a new pixel that falls exactly on an old one copies it. Mask bits of
    the contributing neighbours are OR-ed.

    Parameters
    ----------
    ds : xarray.Dataset
        Spectra container.
    new_wavelength : array_like, shape (M,)
        Strictly increasing grid in Angstrom.
    variance : {"propagate", "interpolate"}

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    InvalidInputError
        When ``new_wavelength`` is not strictly increasing or the old grid has fewer
        than 2 pixels.
    GridMismatchError
        When the new grid does not overlap the old one.
    """
    wl = wavelength_of(ds)
    new_wl = check_grid(new_wavelength)
    if wl.size < 2:
        raise InvalidInputError("cannot resample a grid of fewer than 2 pixels")
    if new_wl[-1] < wl[0] or new_wl[0] > wl[-1]:
        raise GridMismatchError(
            f"new grid {new_wl[0]:.3f}-{new_wl[-1]:.3f} A does not overlap the spectra's "
            f"grid {wl[0]:.3f}-{wl[-1]:.3f} A"
        )
    mask = np.asarray(ds["mask"].values) if "mask" in ds else None
    flux, ivar, new_mask = interpolate(wl, *flux_ivar(ds), mask, new_wl, None, variance)
    out = new_container(
        ds,
        wavelength=new_wl,
        flux=flux,
        ivar=ivar,
        mask=new_mask,
        history=f"resample({new_wl.size} pixels {new_wl[0]:.3f}-{new_wl[-1]:.3f} A, variance={variance!r})",
    )
    return flag_all_masked(out, "resample")


def shift_and_resample(
    ds: xr.Dataset,
    new_wavelength=None,
    rv=None,
    redshift=None,
    *,
    relativistic: bool = True,
    variance: str = "propagate",
) -> xr.Dataset:
    """Doppler-shift each star by its own velocity and resample onto one grid.

    Star ``n`` observed at ``lambda_obs`` has rest wavelength
    ``lambda_obs / (1 + z_n)``; the new flux at grid point ``lambda`` is the old
    spectrum linearly interpolated at ``lambda * (1 + z_n)``. Flux, variance, masks and
    the masking of pixels that touch bad or absent old pixels follow :func:`resample`.
    All stars are done together: with numba, one fused compiled pass (parallel over
    stars); without, vectorised numpy (one ``np.interp`` on the flattened (star,
    pixel) positions and flat-index gathers).

    Parameters
    ----------
    ds : xarray.Dataset
    new_wavelength : array_like, shape (M,), optional
        Output grid (default: the input grid).
    rv : float or array_like, shape (N,), optional
        Velocities in km/s (positive = receding): shift by ``-rv``.
    redshift : float or array_like, shape (N,), optional
        Redshifts. Without ``rv`` and ``redshift`` the container's ``redshift``
        column, else its ``rv`` column, is used.
    relativistic : bool
        Relativistic (default) or first-order Doppler factor for ``rv``
        (:func:`doppler_factor`).
    variance : {"propagate", "interpolate"}

    Returns
    -------
    xarray.Dataset
        Stars with a non-finite velocity are fully masked (``all_masked``).

    Raises
    ------
    InvalidInputError, GridMismatchError
        As :func:`resample`; ``GridMismatchError`` when no shifted star overlaps the
        new grid.
    """
    wl = wavelength_of(ds)
    new_wl = wl if new_wavelength is None else check_grid(new_wavelength)
    if wl.size < 2:
        raise InvalidInputError("cannot resample a grid of fewer than 2 pixels")
    factor = per_star_factor(ds, rv, redshift, relativistic)
    finite = np.isfinite(factor)
    if ds.sizes["star"] and finite.any():
        lo_obs = new_wl[0] * factor[finite]
        hi_obs = new_wl[-1] * factor[finite]
        if not np.any((hi_obs >= wl[0]) & (lo_obs <= wl[-1])):
            raise GridMismatchError(
                f"new grid {new_wl[0]:.3f}-{new_wl[-1]:.3f} A does not overlap the spectra's "
                f"grid {wl[0]:.3f}-{wl[-1]:.3f} A for any star's Doppler factor"
            )
    mask = np.asarray(ds["mask"].values) if "mask" in ds else None
    flux, ivar, new_mask = interpolate(wl, *flux_ivar(ds), mask, new_wl, factor, variance)
    src = "rv" if rv is not None else "redshift" if redshift is not None else "container column"
    out = new_container(
        ds,
        wavelength=new_wl,
        flux=flux,
        ivar=ivar,
        mask=new_mask,
        history=f"shift_and_resample(per-star {src}, {new_wl.size} pixels "
        f"{new_wl[0]:.3f}-{new_wl[-1]:.3f} A, relativistic={relativistic}, "
        f"variance={variance!r})",
    )
    return flag_all_masked(out, "shift_and_resample")


def to_rest_frame(
    ds: xr.Dataset,
    rv=None,
    redshift=None,
    *,
    new_wavelength=None,
    relativistic: bool = True,
    variance: str = "propagate",
    force: bool = False,
) -> xr.Dataset:
    """Shift observed-frame spectra to the rest frame, keeping one common grid.

    ``lambda_rest = lambda_obs / (1 + z)``; with velocities, ``1 + z`` is relativistic
    by default (:func:`doppler_factor`). Each star is shifted by its own ``z`` and
    resampled onto ``new_wavelength`` (default: the input grid) by
    :func:`shift_and_resample`.

    Parameters
    ----------
    ds : xarray.Dataset
        Observed-frame container (``wavelength.attrs["frame"]`` not ``"rest"``).
    rv : float or array_like, optional
        km/s. Default: the container's ``redshift`` column (e.g. LAMOST ``Z``), else
        its ``rv`` column.
    redshift : float or array_like, optional
    new_wavelength : array_like, optional
    relativistic : bool
    variance : {"propagate", "interpolate"}
    force : bool
        Shift even if the container says it is in the rest frame already.

    Returns
    -------
    xarray.Dataset
        ``wavelength.attrs["frame"] = "rest"``.

    Raises
    ------
    InvalidInputError
        When the container is already in the rest frame (unless ``force``), or no
        velocity is available.
    """
    check_spectra(ds)
    if ds["wavelength"].attrs.get("frame") == "rest" and not force:
        raise InvalidInputError(
            "spectra are already in the rest frame (wavelength.attrs['frame'] == 'rest'); "
            "pass force=True to shift them again"
        )
    out = shift_and_resample(
        ds,
        new_wavelength,
        rv=rv,
        redshift=redshift,
        relativistic=relativistic,
        variance=variance,
    )
    out["wavelength"].attrs["frame"] = "rest"
    return out


def wavelength_cut(ds: xr.Dataset, lo: float | None = None, hi: float | None = None) -> xr.Dataset:
    """Keep the pixels with ``lo <= wavelength <= hi`` (Angstrom; ``None`` = open end).

    Raises
    ------
    GridMismatchError
        When no pixel is left.
    """
    wl = wavelength_of(ds)
    lo_ = -np.inf if lo is None else float(lo)
    hi_ = np.inf if hi is None else float(hi)
    if lo_ > hi_:
        raise InvalidInputError(f"lo ({lo_}) must not exceed hi ({hi_})")
    keep = (wl >= lo_) & (wl <= hi_)
    if not keep.any():
        raise GridMismatchError(f"no pixel in {lo_:.3f}-{hi_:.3f} A: the grid covers {wl[0]:.3f}-{wl[-1]:.3f} A")
    idx = np.flatnonzero(keep)
    out = new_container(
        ds,
        wavelength=wl[idx],
        flux=np.asarray(ds["flux"].values)[:, idx].copy(),
        ivar=np.asarray(ds["ivar"].values)[:, idx].copy(),
        mask=np.asarray(ds["mask"].values)[:, idx].copy() if "mask" in ds else None,
        history=f"wavelength_cut({lo_}, {hi_})",
    )
    return flag_all_masked(out, "wavelength_cut")


def _convert_medium(ds: xr.Dataset, target: str) -> xr.Dataset:
    wl = wavelength_of(ds)
    source = "air" if target == "vacuum" else "vacuum"
    medium = ds["wavelength"].attrs.get("medium")
    if medium == target:
        raise InvalidInputError(f"wavelengths are already in {target}")
    if medium is None:
        logger.warning("wavelength medium unknown; assuming %s", source)
    if np.any(wl < 2000.0):
        logger.warning("air/vacuum conversion applied below 2000 A, where it is not defined")
    if target == "vacuum":
        new = air_to_vacuum_wavelength(wl)
    else:
        new = vacuum_to_air_wavelength(wl)
    out = new_container(
        ds,
        wavelength=new,
        flux=np.array(ds["flux"].values, copy=True),
        ivar=np.array(ds["ivar"].values, copy=True),
        history=f"{source}_to_{target}",
        wavelength_attrs={"medium": target},
    )
    return check_spectra(out)


def air_to_vacuum(ds: xr.Dataset) -> xr.Dataset:
    """Convert air wavelengths to vacuum (IAU standard, Morton 2000 / VALD inverse).

    Only the wavelength coordinate changes (no resampling); ``attrs["medium"]``
    becomes ``"vacuum"``.
    """
    return _convert_medium(ds, "vacuum")


def vacuum_to_air(ds: xr.Dataset) -> xr.Dataset:
    """Convert vacuum wavelengths to air (IAU standard, Morton 2000)."""
    return _convert_medium(ds, "air")
