"""Masks and signal-to-noise of spectra containers.

:func:`mask_windows`, :func:`mask_bits`
    ``ivar = 0`` in wavelength windows (own or observed frame) or where survey mask
    bits are set.
:func:`snr`, :func:`add_snr`
    Per-star S/N (median of ``flux * sqrt(ivar)`` over good pixels).
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from bayescannon.errors import GridMismatchError, InvalidInputError
from bayescannon.io import bits_to_int
from bayescannon.preprocess._container import (
    append_history,
    flag_all_masked,
    flux_ivar,
    masked_median,
    new_container,
    wavelength_of,
)
from bayescannon.preprocess.grid import per_star_factor
from bayescannon.spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = ["add_snr", "mask_bits", "mask_windows", "snr"]


def mask_windows(
    ds: xr.Dataset,
    windows,
    *,
    frame: str | None = None,
    rv=None,
    redshift=None,
    relativistic: bool = True,
) -> xr.Dataset:
    """Set ``ivar = 0`` inside wavelength windows (telluric bands, sky lines, ...).

    Parameters
    ----------
    ds : xarray.Dataset
    windows : sequence of (lo, hi)
        Angstrom, inclusive.
    frame : {None, "observed"}
        ``None``: windows are in the container's own frame. ``"observed"`` with a
        rest-frame container: windows are in the observed frame (e.g. telluric bands)
        and are mapped per star with ``lambda_obs = lambda_rest * (1 + z)``, ``z`` from
        ``rv``/``redshift`` or the container's ``redshift``/``rv`` column.
    rv, redshift, relativistic
        See :func:`doppler_factor`.

    Returns
    -------
    xarray.Dataset
    """
    wl = wavelength_of(ds)
    wins = [tuple(map(float, w)) for w in windows]
    for lo, hi in wins:
        if not lo <= hi:
            raise InvalidInputError(f"window ({lo}, {hi}) must have lo <= hi")
    if frame not in (None, "observed"):
        raise InvalidInputError(f"frame must be None or 'observed'; got {frame!r}")
    ivar = np.array(ds["ivar"].values, dtype=np.float64, copy=True)
    if frame == "observed" and ds["wavelength"].attrs.get("frame") == "rest":
        factor = per_star_factor(ds, rv, redshift, relativistic)
        obs = wl[None, :] * factor[:, None]
        hit = np.zeros(ivar.shape, bool)
        for lo, hi in wins:
            hit |= (obs >= lo) & (obs <= hi)
        hit |= ~np.isfinite(obs)
    else:
        hit1 = np.zeros(wl.size, bool)
        for lo, hi in wins:
            hit1 |= (wl >= lo) & (wl <= hi)
        hit = np.broadcast_to(hit1, ivar.shape)
    ivar[hit] = 0.0
    out = new_container(
        ds,
        flux=np.array(ds["flux"].values, copy=True),
        ivar=ivar,
        history=f"mask_windows({len(wins)} windows, frame={frame!r})",
    )
    return flag_all_masked(out, "mask_windows")


def mask_bits(ds: xr.Dataset, bits) -> xr.Dataset:
    """Set ``ivar = 0`` where the survey pixel mask has any of ``bits`` set.

    Parameters
    ----------
    ds : xarray.Dataset
        Container with a ``mask`` variable.
    bits : int, str or iterable of int/str
        Bit numbers, or names listed in ``ds.attrs["mask_bits"]``.

    Raises
    ------
    InvalidInputError
        When the container has no ``mask`` or a bit name is unknown.
    """
    check_spectra(ds)
    if "mask" not in ds:
        raise InvalidInputError("container has no 'mask' variable to take bits from")

    value = bits_to_int(bits, ds.attrs.get("mask_bits"))
    mask = np.asarray(ds["mask"].values).astype(np.uint32)
    ivar = np.array(ds["ivar"].values, dtype=np.float64, copy=True)
    ivar[(mask & np.uint32(value)) != 0] = 0.0
    out = new_container(
        ds,
        flux=np.array(ds["flux"].values, copy=True),
        ivar=ivar,
        history=f"mask_bits({value:#x})",
    )
    return flag_all_masked(out, "mask_bits")


def snr(ds: xr.Dataset, band=None) -> np.ndarray:
    """Per-star S/N: median of ``flux * sqrt(ivar)`` over pixels with ``ivar > 0``.

    Parameters
    ----------
    ds : xarray.Dataset
    band : (lo, hi), optional
        Only pixels in this wavelength range (e.g. ``(4000, 5500)`` for Ho et al.'s
        g-band S/N of LAMOST spectra).

    Returns
    -------
    numpy.ndarray, shape (N,)
        NaN for stars without a good pixel (in the band).
    """
    wl = wavelength_of(ds)
    flux, ivar = flux_ivar(ds)
    if band is not None:
        lo, hi = map(float, band)
        sel = (wl >= lo) & (wl <= hi)
        if not sel.any():
            raise GridMismatchError(f"S/N band {lo:.1f}-{hi:.1f} A holds no pixel of {wl[0]:.1f}-{wl[-1]:.1f} A")
        flux, ivar = flux[:, sel], ivar[:, sel]
    good = ivar > 0
    return masked_median(flux * np.sqrt(np.where(good, ivar, 0.0)), good)


def add_snr(ds: xr.Dataset, band=None, name: str = "snr") -> xr.Dataset:
    """Return a copy of ``ds`` with a per-star S/N column ``name`` (see :func:`snr`)."""
    values = snr(ds, band=band)
    out = ds.copy(deep=True)
    out[name] = ("star", values)
    out.attrs = append_history(dict(ds.attrs), f"add_snr(band={band}, name={name!r})")
    return out
