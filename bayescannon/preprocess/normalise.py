"""Continuum normalisation of spectra containers.

:func:`normalise_ho2017`
    Ho et al. (2017) normalisation by an error-weighted Gaussian-smoothed spectrum.
:func:`continuum_pixels`, :func:`normalise_continuum`
    Ness et al. (2015)-style continuum pixels and a weighted least-squares Chebyshev or
    sine/cosine continuum fit on them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import xarray as xr

from bayescannon.errors import InvalidInputError
from bayescannon.pipeline.pool import blas_threads
from bayescannon.preprocess._container import (
    flag_all_masked,
    flux_ivar,
    masked_median,
    new_container,
    segment_indices,
    wavelength_of,
)

logger = logging.getLogger(__name__)

__all__ = ["continuum_pixels", "normalise_continuum", "normalise_ho2017"]

#: Use the numba kernels (tests switch this off to check them against numpy).
_USE_NUMBA = True

# ---------------------------------------------------------------------------------------
# Ho et al. (2017) Gaussian-smoothing normalisation
# ---------------------------------------------------------------------------------------

_KERNEL_CACHE: dict = {}
_KERNEL_CACHE_SIZE = 8


def _gaussian_blocks(wl: np.ndarray, segs: list[np.ndarray], L: float, truncate: float, block: int, dtype=np.float64):
    """Banded Gaussian weight blocks ``[(j0, j1, i0, i1, KT)]`` (cached).

    ``KT[a, b] = g(wl[j0 + a] - wl[i0 + b])`` for output pixels ``j0:j1`` and the input
    pixels ``i0:i1`` within reach (same segment, ``|d| <= truncate * L``).
    """
    key = (
        hashlib.sha1(wl.tobytes()).hexdigest(),
        float(L),
        float(truncate),
        tuple((int(s[0]), int(s[-1]), int(s.size)) for s in segs),
        int(block),
        np.dtype(dtype).str,
    )
    if key in _KERNEL_CACHE:
        return _KERNEL_CACHE[key]
    half = truncate * L
    blocks = []
    for idx in segs:
        s0, s1 = int(idx[0]), int(idx[-1]) + 1  # a wavelength range is contiguous
        for j0 in range(s0, s1, block):
            j1 = min(j0 + block, s1)
            i0 = max(s0, int(np.searchsorted(wl, wl[j0] - half, side="left")))
            i1 = min(s1, int(np.searchsorted(wl, wl[j1 - 1] + half, side="right")))
            d = (wl[None, i0:i1] - wl[j0:j1, None]) / L
            k = np.exp(-0.5 * d * d)
            k[np.abs(d) > truncate] = 0.0
            blocks.append((j0, j1, i0, i1, np.ascontiguousarray(k, dtype=dtype)))
    if len(_KERNEL_CACHE) >= _KERNEL_CACHE_SIZE:
        _KERNEL_CACHE.pop(next(iter(_KERNEL_CACHE)))
    _KERNEL_CACHE[key] = blocks
    return blocks


def _ho_finish_numpy(flux, ivar, smooth):
    """Reference: continuum = smoothed(f w) / smoothed(w); divide it out."""
    n = flux.shape[0]
    num = smooth[:, :n].T.astype(np.float64)
    den = smooth[:, n:].T.astype(np.float64)
    valid = den > 0
    cont = np.divide(num, den, out=np.full(flux.shape, np.nan), where=valid)
    ok = valid & (cont > 0)
    safe = np.where(ok, cont, 1.0)
    new_flux = np.where(ok, flux / safe, 0.0)
    new_ivar = np.where(ok, ivar * safe * safe, 0.0)
    return new_flux, new_ivar, cont


@numba.njit(parallel=True, cache=True, fastmath=False)
def _ho_prepare(flux, ivar, out):  # pragma: no cover - compiled
    """Pixel-major ``[flux * ivar | ivar]`` into ``out`` (P, 2N), by cache-sized tiles."""
    n, p = flux.shape
    tile = 64
    for b in numba.prange((p + tile - 1) // tile):
        k0 = b * tile
        k1 = min(p, k0 + tile)
        for s in range(n):
            for k in range(k0, k1):
                iv = ivar[s, k]
                out[k, s] = flux[s, k] * iv
                out[k, n + s] = iv
    return out


@numba.njit(parallel=True, cache=True, fastmath=False)
def _ho_finish(flux, ivar, smooth, want_cont):  # pragma: no cover - compiled
    """Fused :func:`_ho_finish_numpy` (cont is (0, 0) unless ``want_cont``)."""
    n, p = flux.shape
    out_f = np.zeros((n, p))
    out_i = np.zeros((n, p))
    cont = np.full((n if want_cont else 0, p if want_cont else 0), np.nan)
    tile = 64
    for b in numba.prange((p + tile - 1) // tile):
        k0 = b * tile
        k1 = min(p, k0 + tile)
        for s in range(n):
            for k in range(k0, k1):
                den = float(smooth[k, n + s])  # float64 arithmetic for either precision
                if den > 0.0:
                    c = float(smooth[k, s]) / den
                    if want_cont:
                        cont[s, k] = c
                    if c > 0.0:
                        out_f[s, k] = flux[s, k] / c
                        out_i[s, k] = ivar[s, k] * c * c
    return out_f, out_i, cont


def _n_threads() -> int:
    return int(numba.get_num_threads())


def _parallel_blocks(fn: Callable, blocks: Sequence) -> None:
    """Run ``fn`` on every block, spread over threads, each with one BLAS thread.

    Independent single-threaded matrix products on a thread pool scale as well as
    multi-threaded BLAS on a quiet machine and degrade far more gently when the cores
    are shared (multi-threaded OpenBLAS on small products can be ~10x slower then).
    """
    threads = min(_n_threads(), len(blocks))
    with blas_threads(1):
        if threads <= 1:
            for b in blocks:
                fn(b)
            return
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(fn, blocks):
                pass


def normalise_ho2017(
    ds: xr.Dataset,
    L: float = 50.0,
    *,
    segments=None,
    truncate: float = 4.0,
    block: int = 128,
    return_continuum: bool = False,
    precision: str = "single",
):
    """Normalise by the error-weighted Gaussian-smoothed spectrum (Ho et al. 2017).

    ``cont(l0) = sum_i f_i w_i g(l_i - l0) / sum_i w_i g(l_i - l0)`` with ``w = ivar``
    and ``g(d) = exp(-d**2 / (2 L**2))`` (truncated at ``truncate * L``); then
    ``flux / cont`` and ``ivar * cont**2``. Computed for all stars at once as banded
    matrix products along the pixel axis (exact for any grid, uniform or not).

    Parameters
    ----------
    ds : xarray.Dataset
    L : float
        Gaussian width in Angstrom (Ho et al. 2017 use 50 A for LAMOST).
    segments : sequence of (lo, hi), optional
        Wavelength ranges (e.g. detectors or arms) smoothed separately; pixels outside
        every segment get ``ivar = 0``.
    truncate : float
        Kernel cut-off in units of ``L`` (weights below ``exp(-truncate**2 / 2)`` are
        dropped: 3e-4 at 4).
    block : int
        Output pixels per matrix block (speed only).
    return_continuum : bool
        Also return the (N, P) continuum array.
    precision : {"single", "double"}
        Arithmetic of the banded smoothing products. ``"single"`` (default, twice as
        fast) sums the positive Gaussian weights in float32: the continuum has a relative
        error ≲ 1e-5 (a few 1e-6 measured; tested), far below the noise of any spectrum; the division is done
        in float64. ``"double"`` is exact to float64 rounding.

    Returns
    -------
    xarray.Dataset or (xarray.Dataset, numpy.ndarray)
        ``attrs["normalised"] = True``. Pixels where the continuum is not positive or
        not defined (no weighted pixel within reach) get ``ivar = 0``.
    """
    wl = wavelength_of(ds)
    if not (np.isfinite(L) and L > 0):
        raise InvalidInputError(f"L must be a positive width in Angstrom; got {L}")
    if not truncate > 0 or int(block) < 1:
        raise InvalidInputError("truncate must be positive and block at least 1")
    if ds.attrs.get("normalised") is True:
        logger.warning("normalise_ho2017: spectra are already marked as normalised")
    if precision not in ("single", "double"):
        raise InvalidInputError(f"precision must be 'single' or 'double'; got {precision!r}")
    dtype = np.float32 if precision == "single" else np.float64
    segs = segment_indices(wl, segments)
    blocks = _gaussian_blocks(wl, segs, float(L), float(truncate), int(block), dtype)
    flux, ivar = flux_ivar(ds)
    n, p = flux.shape
    # pixel-major layout so that every block is one contiguous BLAS product
    stacked = np.empty((p, 2 * n), dtype=dtype)
    if _USE_NUMBA:
        _ho_prepare(flux, ivar, stacked)
    else:
        stacked[:, :n] = (flux * ivar).T
        stacked[:, n:] = ivar.T
    smooth = np.empty((p, 2 * n), dtype=dtype)
    covered = np.zeros(p, bool)
    for j0, j1, *_ in blocks:
        covered[j0:j1] = True
    smooth[~covered] = 0.0  # pixels outside every segment: no continuum

    def product(b):
        j0, j1, i0, i1, kt = b
        np.matmul(kt, stacked[i0:i1], out=smooth[j0:j1])

    _parallel_blocks(product, blocks)
    stacked = None  # free the (P, 2N) buffer before the finishing pass
    if _USE_NUMBA:
        new_flux, new_ivar, cont = _ho_finish(flux, ivar, smooth, bool(return_continuum))
    else:
        new_flux, new_ivar, cont = _ho_finish_numpy(flux, ivar, smooth)
    attrs = dict(ds.attrs)
    attrs["normalised"] = True
    out = new_container(
        ds,
        flux=new_flux,
        ivar=new_ivar,
        history=f"normalise_ho2017(L={L}, segments={segments}, truncate={truncate})",
        attrs=attrs,
    )
    out = flag_all_masked(out, "normalise_ho2017")
    if return_continuum:
        return out, cont
    return out


# ---------------------------------------------------------------------------------------
# continuum pixels and polynomial / sinusoid continuum fits
# ---------------------------------------------------------------------------------------


def continuum_pixels(
    ds_or_flux,
    ivar=None,
    *,
    f_cut: float = 0.003,
    sig_cut: float = 0.003,
    fraction: float | None = None,
    segments=None,
    wavelength=None,
    min_good_fraction: float = 0.5,
) -> np.ndarray:
    """Choose continuum pixels from a normalised training set.

    A pixel is a continuum pixel when, across stars (good pixels only), its median
    normalised flux is within ``f_cut`` of 1 and its standard deviation is below
    ``sig_cut`` (Ho et al. 2017, following Ness et al. 2015). With ``fraction``, a
    ranked cut instead keeps that fraction of pixels (per segment) with the smallest
    ``max(rank(|median - 1|), rank(std))``.

    Parameters
    ----------
    ds_or_flux : xarray.Dataset or array_like, shape (N, P)
        Normalised spectra (container, or flux with ``ivar``).
    ivar : array_like, shape (N, P), optional
        Needed with a flux array.
    f_cut, sig_cut : float
        Absolute cuts (used when ``fraction`` is None).
    fraction : float, optional
        Target fraction of continuum pixels (0-1) for the ranked cut.
    segments : sequence of (lo, hi), optional
        Ranked cut applied per segment (needs wavelengths).
    wavelength : array_like, optional
        Wavelengths for ``segments`` when a flux array is given.
    min_good_fraction : float
        Pixels good in fewer than this fraction of stars are never continuum.

    Returns
    -------
    numpy.ndarray of bool, shape (P,)
    """
    if isinstance(ds_or_flux, xr.Dataset):
        wl = wavelength_of(ds_or_flux)
        if ds_or_flux.attrs.get("normalised") is False:
            logger.warning("continuum_pixels: spectra are marked as not normalised")
        flux, iv = flux_ivar(ds_or_flux)
    else:
        if ivar is None:
            raise InvalidInputError("give ivar with a flux array")
        flux = np.asarray(ds_or_flux, dtype=np.float64)
        iv = np.asarray(ivar, dtype=np.float64)
        if flux.ndim != 2 or iv.shape != flux.shape:
            raise InvalidInputError(f"flux {flux.shape} and ivar {iv.shape} must be (N, P)")
        flux = np.where(np.isfinite(flux), flux, 0.0)
        wl = None if wavelength is None else np.asarray(wavelength, dtype=np.float64)
    good = iv > 0
    n, p = flux.shape
    n_good = good.sum(axis=0)
    usable = n_good >= max(1, int(np.ceil(min_good_fraction * n)))
    med = masked_median(flux.T, good.T)
    mean = np.divide((flux * good).sum(0), n_good, out=np.full(p, np.nan), where=n_good > 0)
    sq = ((flux - np.nan_to_num(mean)) ** 2 * good).sum(0)
    std = np.sqrt(np.divide(sq, n_good, out=np.full(p, np.nan), where=n_good > 0))
    dev = np.abs(med - 1.0)
    if fraction is None:
        return usable & (dev <= f_cut) & (std <= sig_cut)
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"fraction must be in (0, 1]; got {fraction}")
    if segments is not None and wl is None:
        raise InvalidInputError("segments need wavelengths (a container or wavelength=)")
    segs = [np.arange(p)] if segments is None else segment_indices(wl, segments)
    chosen = np.zeros(p, bool)
    for idx in segs:
        idx = idx[usable[idx]]
        if idx.size == 0:
            continue
        ra = np.argsort(np.argsort(dev[idx], kind="stable"), kind="stable")
        rs = np.argsort(np.argsort(std[idx], kind="stable"), kind="stable")
        score = np.maximum(ra, rs) + dev[idx] / (dev[idx].max() + 1.0)  # tie-break on dev
        k = max(1, round(fraction * idx.size))
        chosen[idx[np.argsort(score, kind="stable")[:k]]] = True
    return chosen


def _continuum_basis(x: np.ndarray, lo: float, hi: float, order: int, kind: str, L):
    if kind == "chebyshev":
        span = hi - lo if hi > lo else 1.0
        return np.polynomial.chebyshev.chebvander(2.0 * (x - lo) / span - 1.0, order)
    width = (hi - lo) if L is None else float(L)
    if not width > 0:
        width = 1.0
    cols = [np.ones_like(x)]
    for k in range(1, order + 1):
        arg = k * np.pi * (x - lo) / width
        cols += [np.sin(arg), np.cos(arg)]
    return np.stack(cols, axis=1)


def normalise_continuum(
    ds: xr.Dataset,
    continuum_pixels,
    order: int = 3,
    kind: str = "chebyshev",
    *,
    segments=None,
    sincos_L: float | None = None,
    return_continuum: bool = False,
):
    """Fit a continuum per star and segment on continuum pixels and divide it out.

    Weighted least squares (weights ``ivar``) of a Chebyshev polynomial of degree
    ``order`` (``kind="chebyshev"``, x mapped to [-1, 1] over the segment) or of
    ``1, sin(k pi x / L), cos(k pi x / L)``, ``k = 1..order`` (``kind="sincos"``, as in
    Ho et al.'s TheCannon; ``x = lambda - lo``, ``L`` = segment width unless
    ``sincos_L``), on the continuum pixels only. The normal equations of all stars are
    built with one matrix product and solved together. Flux is divided by the
    continuum and ivar multiplied by its square.

    Parameters
    ----------
    ds : xarray.Dataset
    continuum_pixels : array_like of bool, shape (P,), or of int
        Continuum pixel mask (e.g. from :func:`continuum_pixels`) or indices.
    order : int
    kind : {"chebyshev", "sincos"}
    segments : sequence of (lo, hi), optional
        Separate fits per range (e.g. APOGEE's three detectors); pixels outside every
        segment get ``ivar = 0``.
    sincos_L : float, optional
    return_continuum : bool
        Also return the (N, P) continuum.

    Returns
    -------
    xarray.Dataset or (xarray.Dataset, numpy.ndarray)
        Stars whose fit is undetermined in a segment (fewer good continuum pixels than
        terms, or a singular system) get ``ivar = 0`` there and a logged warning.
    """
    wl = wavelength_of(ds)
    if kind not in ("chebyshev", "sincos"):
        raise InvalidInputError(f"kind must be 'chebyshev' or 'sincos'; got {kind!r}")
    if int(order) < 0:
        raise InvalidInputError(f"order must be >= 0; got {order}")
    order = int(order)
    cp = np.asarray(continuum_pixels)
    if cp.dtype == bool:
        if cp.shape != wl.shape:
            raise InvalidInputError(f"continuum_pixels has {cp.size} entries; the grid has {wl.size} pixels")
        cmask = cp
    else:
        cmask = np.zeros(wl.size, bool)
        idx = cp.astype(np.intp).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= wl.size):
            raise InvalidInputError("continuum pixel indices out of range")
        cmask[idx] = True
    segs = segment_indices(wl, segments)
    flux, ivar = flux_ivar(ds)
    n, p = flux.shape
    cont = np.full((n, p), np.nan)
    failed_any = np.zeros(n, bool)
    for idx in segs:
        lo, hi = float(wl[idx[0]]), float(wl[idx[-1]])
        c_idx = idx[cmask[idx]]
        xs = _continuum_basis(wl[idx], lo, hi, order, kind, sincos_L)
        nterm = xs.shape[1]
        if c_idx.size < nterm:
            logger.warning(
                "normalise_continuum: segment %.2f-%.2f A has %d continuum pixels for %d terms; masked for every star",
                lo,
                hi,
                c_idx.size,
                nterm,
            )
            failed_any[:] = True
            continue
        xc = _continuum_basis(wl[c_idx], lo, hi, order, kind, sincos_L)
        w = ivar[:, c_idx]
        f = flux[:, c_idx]
        outer = (xc[:, :, None] * xc[:, None, :]).reshape(c_idx.size, nterm * nterm)
        ata = (w @ outer).reshape(n, nterm, nterm)
        atb = (w * f) @ xc
        d = np.sqrt(np.einsum("nkk->nk", ata))
        d = np.where(d > 0, d, 1.0)
        ata_s = ata / (d[:, :, None] * d[:, None, :])
        atb_s = atb / d
        enough = (w > 0).sum(axis=1) >= nterm
        cond = np.full(n, np.inf)
        if enough.any():
            cond[enough] = np.linalg.cond(ata_s[enough])
        ok = enough & np.isfinite(cond) & (cond < 1e12)
        ata_s[~ok] = np.eye(nterm)
        atb_s[~ok] = 0.0
        coef = np.linalg.solve(ata_s, atb_s[:, :, None])[:, :, 0] / d
        seg_cont = coef @ xs.T
        seg_cont[~ok] = np.nan
        cont[:, idx] = seg_cont
        if (~ok).any():
            bad_ids = np.asarray(ds["star"].values)[~ok]
            logger.warning(
                "normalise_continuum: %d star(s) have too few good continuum pixels in "
                "%.2f-%.2f A for an order-%d %s fit; masked there: %s",
                int((~ok).sum()),
                lo,
                hi,
                order,
                kind,
                ", ".join(map(str, bad_ids[:5])),
            )
            failed_any |= ~ok
    good = np.isfinite(cont) & (cont > 0)
    safe = np.where(good, cont, 1.0)
    new_flux = np.where(good, flux / safe, 0.0)
    new_ivar = np.where(good, ivar * safe * safe, 0.0)
    attrs = dict(ds.attrs)
    attrs["normalised"] = True
    out = new_container(
        ds,
        flux=new_flux,
        ivar=new_ivar,
        history=f"normalise_continuum(order={order}, kind={kind!r}, segments={segments}, "
        f"{int(cmask.sum())} continuum pixels)",
        attrs=attrs,
    )
    out = flag_all_masked(out, "normalise_continuum")
    if return_continuum:
        return out, cont
    return out
