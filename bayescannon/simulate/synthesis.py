"""Mock stellar surveys: realistic labels, spectra and survey-pipeline labels.

This module is the package's built-in source of demo data and the basis of the
two-instrument (label-transfer) tests.  It is *not* a stellar-atmosphere code, but
it keeps the ingredients that make real spectra hard for a quadratic data-driven
model:

* a **line list** (:func:`make_line_list`) of neutral iron-peak lines, ionised iron,
  alpha-element lines (Mg, Si, Ca, Ti), molecular bands and lines (CO, CN, OH, CH,
  MgH, TiO) and hydrogen lines (Brackett series in the H band, Balmer series in the
  optical);
* line strengths that follow a **Boltzmann** factor ``10**(-theta * chi)`` with
  ``theta = 5040 / Teff``, a **Saha** ionisation balance set by ``Teff`` and an
  electron pressure that grows with ``logg``, an H- continuous opacity, and the
  abundances ``10**[Fe/H]`` and ``10**([Fe/H] + [alpha/Fe])`` (see
  :func:`line_strengths`);
* **pseudo-Voigt** profiles (thermal + microturbulent Gaussian core, pressure/Stark
  Lorentzian wings whose width grows with ``logg``);
* a saturating **curve of growth**: the flux is ``exp(-sum_lines tau)`` computed on an
  oversampled log-wavelength grid, then convolved with the instrumental Gaussian of
  resolving power ``R`` (plus a per-star macroturbulence), integrated over the
  detector pixel and resampled onto the instrument's log-linear pixel grid;
* Gaussian noise at a per-star S/N, random bad pixels, the instrument's masked
  windows (telluric bands, sky lines, detector gaps), and, for un-normalised spectra,
  a black-body-like continuum, a per-star flux-calibration polynomial, radial
  velocities and sky-line residuals.

Because of saturation and the exponential label dependences, the flux is not a
quadratic function of the labels: a quadratic Cannon has real model error on these
spectra, as it has on real data.

Model validity
--------------
Spectra can be computed for ``TEFF`` 3000--8000 K, ``LOGG`` -0.5--5.5,
``FE_H`` -4--1 and ``ALPHA_FE`` -0.5--1.0 (:data:`LABEL_LIMITS`); the label
distributions of :func:`draw_labels` stay well inside.

Mask bits
---------
See :data:`MASK_BITS`: ``1`` (``BADPIX``) random bad pixel, ``ivar = 0``;
``2`` (``WINDOW``) the instrument's masked window (telluric band, bright sky line,
detector gap), ``ivar = 0``; ``4`` (``SKYLINE``) sky-line residual (un-normalised
LAMOST-like spectra only), ``ivar`` lowered but not zero.

Examples
--------
>>> from bayescannon.simulate import simulate_survey, pipeline_labels, LAMOST
>>> ds = simulate_survey(100, population="giants", rng=1)      # APOGEE-like
>>> lam = simulate_survey(100, instrument=LAMOST, rng=2, normalised=False)
>>> truth = {k: ds[k].values for k in ("TEFF", "LOGG", "FE_H", "ALPHA_FE")}
>>> reported = pipeline_labels(truth, survey="lamost", rng=3)   # no ALPHA_FE
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from bayescannon.core.grid import C_KMS
from bayescannon.errors import InvalidInputError
from bayescannon.simulate.instruments import _MASK_BITS_DOC, APOGEE, MASK_BITS, Instrument, get_instrument
from bayescannon.simulate.labels import LABEL_NAMES, _as_generator, _check_count, _validate_labels
from bayescannon.simulate.linelist import LineList, default_line_list
from bayescannon.simulate.opacity import _labels_columns, _synthesise
from bayescannon.simulate.populations import draw_labels
from bayescannon.spectra import default_ids, make_spectra

logger = logging.getLogger(__name__)

__all__ = ["simulate_spectra", "simulate_survey"]

_HC_OVER_K = 1.438776877e8  # h c / k in Angstrom K


# --------------------------------------------------------------------------------------
# spectra
# --------------------------------------------------------------------------------------


def _per_star(value, n, name, rng, *, log_uniform=False, positive=True):
    """Turn a scalar, (lo, hi) range or (n,) array into a per-star array."""
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if not (np.isfinite(lo) and np.isfinite(hi)) or (positive and lo <= 0) or hi < lo:
            need = "0 < lo <= hi" if positive else "lo <= hi, both finite"
            raise InvalidInputError(f"{name} range must be (lo, hi) with {need}; got {value}")
        if log_uniform:
            return np.exp(rng.uniform(math.log(lo), math.log(hi), size=n))
        return rng.uniform(lo, hi, size=n)
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise InvalidInputError(
            f"{name} must be a number, a (lo, hi) tuple or an array of {n} values; got shape {arr.shape}"
        )
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else np.zeros(n, bool))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        need = "finite and > 0" if positive else "finite"
        raise InvalidInputError(f"{name} must be {need}; star {i} has {name} = {arr[i]}")
    return arr


def _continuum(wavelength, teff, rng, instrument: Instrument):
    """Smooth un-normalised continuum (N, P): black body x calibration polynomial x scale."""
    lo, hi = instrument.wavelength_range
    mid = 0.5 * (lo + hi)
    x = (wavelength - mid) / (0.5 * (hi - lo))
    n = teff.size

    def planck(wl):
        """Planck B_lambda up to a constant, (n, P)."""
        return wl**-5.0 / np.expm1(_HC_OVER_K / (wl * teff[:, None]))

    shape = planck(wavelength[None, :]) / planck(np.array([[mid]]))
    c1 = rng.normal(0.0, 0.10, size=(n, 1))
    c2 = rng.normal(0.0, 0.05, size=(n, 1))
    c3 = rng.normal(0.0, 0.02, size=(n, 1))
    poly = 1.0 + c1 * x + c2 * (1.5 * x**2 - 0.5) + c3 * (2.5 * x**3 - 1.5 * x)
    poly = np.maximum(poly, 0.2)
    scale = 10.0 ** rng.uniform(2.0, 3.0, size=(n, 1))
    return scale * shape * poly


def simulate_spectra(
    labels,
    instrument=APOGEE,
    snr=(30.0, 250.0),
    rng=None,
    bad_pixel_fraction: float = 0.005,
    normalised: bool = True,
    ids=None,
    *,
    rv=None,
    return_noiseless: bool = False,
    line_list: LineList | None = None,
    bad_flux_value: float = np.nan,
    progressbar: bool = False,
):
    """Simulate observed spectra of stars with known labels.

    Parameters
    ----------
    labels : mapping, xarray.Dataset, structured array or array_like (N, 4)
        ``TEFF``, ``LOGG``, ``FE_H``, ``ALPHA_FE`` per star (an (N, 4) array is in
        that order), inside :data:`LABEL_LIMITS`.
    instrument : Instrument or str, optional
        Spectrograph (default :data:`APOGEE`).
    snr : float, (lo, hi) tuple or array_like (N,), optional
        Signal-to-noise per pixel at the continuum.  A tuple draws each star's S/N
        log-uniformly in ``[lo, hi]`` (default ``(30, 250)``).
    rng : None, int or numpy.random.Generator, optional
        Seed of the noise, S/N, bad pixels, continua and radial velocities (the line
        list is fixed, see :func:`default_line_list`).
    bad_pixel_fraction : float, optional
        Probability that a pixel is bad (``ivar = 0``, mask bit ``BADPIX``, flux set
        to ``bad_flux_value``), default 0.005.
    normalised : bool, optional
        ``True`` (default): continuum-normalised flux (continuum = 1), noise
        ``sigma = 1 / snr``.  ``False``: flux times a smooth continuum (black body of
        Teff x a random quadratic-cubic flux-calibration polynomial x a random
        scale of 100-1000), noise ``sigma = continuum / snr``, and, for instruments
        with ``sky_lines``, sky-subtraction residual spikes (mask bit ``SKYLINE``
        where they matter, their variance included in ``ivar``; pixels in masked
        windows then keep this raw flux instead of ``bad_flux_value``).
    ids : array_like of str, optional
        Unique star identifiers (default ``star000000``, ...).
    rv : None, float, array_like (N,) or "random", optional
        Radial velocities (km/s).  ``None`` (default): spectra in the rest frame.
        Otherwise lines are Doppler shifted, the wavelength frame is "observed" and
        an ``rv`` column is stored; ``"random"`` draws ``rv ~ N(0, 40)`` km/s.
    return_noiseless : bool, optional
        Also store the noise-free flux as ``flux_true`` (and, when not normalised,
        the continuum as ``continuum_true``).
    line_list : LineList, optional
        Lines to use (default :func:`default_line_list` of the instrument).
    bad_flux_value : float, optional
        Flux written at pixels without information (default NaN).
    progressbar : bool, optional
        Show a ``tqdm`` progress bar over stars.

    Returns
    -------
    xarray.Dataset
        Spectra container (:func:`bayescannon.spectra.make_spectra`) with ``flux``,
        ``ivar``, ``mask`` (bits in ``attrs["mask_bits"]``, see :data:`MASK_BITS`),
        per-star truth ``TEFF``, ``LOGG``, ``FE_H``, ``ALPHA_FE``, ``snr`` (and
        ``rv``); attrs ``survey="simulated"``, ``instrument``, ``resolving_power``,
        ``normalised`` (1 or 0), ``mask_bits``, ``history``.

    Raises
    ------
    LabelError
        For missing, non-finite or out-of-range labels (naming star and label).
    InvalidInputError
        For a bad ``snr``, ``rv``, ``bad_pixel_fraction``, ``instrument`` or ``ids``.
    """
    t0 = time.perf_counter()
    inst = get_instrument(instrument)
    lab = _validate_labels(labels)
    n = lab["TEFF"].size
    if n == 0:
        raise InvalidInputError("labels hold no star; at least one star is needed")
    bad_pixel_fraction = float(bad_pixel_fraction)
    if not (0.0 <= bad_pixel_fraction < 1.0):
        raise InvalidInputError(f"bad_pixel_fraction must be in [0, 1); got {bad_pixel_fraction}")
    if line_list is None:
        line_list = default_line_list(inst)
    elif not isinstance(line_list, LineList):
        raise InvalidInputError(f"line_list must be a LineList; got {type(line_list).__name__}")
    if ids is not None:
        ids = np.asarray(ids).astype(str)
        if ids.shape != (n,):
            raise InvalidInputError(f"ids must hold {n} identifiers; got shape {ids.shape}")
    gen = _as_generator(rng)
    g_snr, g_rv, g_cont, g_sky, g_noise, g_bad = gen.spawn(6)

    snr_arr = _per_star(snr, n, "snr", g_snr, log_uniform=True)
    if rv is None:
        rv_arr = np.zeros(n)
    elif isinstance(rv, str):
        if rv != "random":
            raise InvalidInputError(f"rv must be None, a number, an array or 'random'; got {rv!r}")
        rv_arr = g_rv.normal(0.0, 40.0, size=n)
    else:
        rv_arr = _per_star(rv, n, "rv", g_rv, positive=False)
        big = np.abs(rv_arr) > 3000.0
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise InvalidInputError(f"|rv| must be <= 3000 km/s; star {i} has rv = {rv_arr[i]}")

    cols = _labels_columns(lab)
    flux_true = _synthesise(inst, line_list, cols, rv_arr, progressbar=progressbar)
    wavelength = inst.wavelength_grid()
    p = wavelength.size

    mask = np.zeros((n, p), dtype=np.uint32)
    window = inst.window_mask(wavelength)
    mask[:, window] |= MASK_BITS["WINDOW"]

    if normalised:
        continuum = None
        model = flux_true
        var = (1.0 / snr_arr**2)[:, None]  # (n, 1): sigma = 1 / snr
    else:
        continuum = _continuum(wavelength, lab["TEFF"], g_cont, inst)
        model = flux_true * continuum
        var = (continuum / snr_arr[:, None]) ** 2  # sigma = continuum / snr
    sky = None
    if not normalised and inst.sky_lines:
        # sky-subtraction residuals: instrumental-profile spikes of random (mostly
        # positive) amplitude, plus the extra photon noise of the sky line
        sigma_inst = C_KMS / (inst.resolving_power * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        u = C_KMS * np.log(wavelength)
        sky = np.zeros((n, p))
        sky_var = np.zeros((n, p))
        sky_flag = np.zeros(p, dtype=bool)
        for w_sky, strength in inst.sky_lines:
            prof = np.exp(-0.5 * ((u - C_KMS * math.log(w_sky)) / sigma_inst) ** 2)
            prof[strength * prof < 0.01] = 0.0  # residuals below 1% of the continuum: none
            amp = strength * (0.2 + 0.3 * g_sky.standard_normal(n))
            sky += amp[:, None] * prof * continuum
            sky_var += 2.0 * strength * prof * var
            sky_flag |= prof > 0.0
        var = var + sky_var
        del sky_var
        mask[:, sky_flag & ~window] |= MASK_BITS["SKYLINE"]
    flux = g_noise.standard_normal((n, p))
    flux *= np.sqrt(var)
    flux += model
    if sky is not None:
        flux += sky
        del sky
    ivar = np.broadcast_to(1.0 / var, (n, p)).copy()
    bad = g_bad.random((n, p), dtype=np.float32) < bad_pixel_fraction
    mask[bad] |= MASK_BITS["BADPIX"]
    no_info = (mask & (MASK_BITS["BADPIX"] | MASK_BITS["WINDOW"])) != 0
    ivar[no_info] = 0.0
    flux[no_info if normalised else bad] = bad_flux_value
    del no_info, bad

    frame = "rest" if rv is None else "observed"
    extras = {k: lab[k] for k in LABEL_NAMES}
    extras["snr"] = snr_arr
    if rv is not None:
        extras["rv"] = rv_arr
    attrs = {
        "survey": "simulated",
        "instrument": inst.name,
        "resolving_power": float(inst.resolving_power),
        "normalised": int(bool(normalised)),
        "mask_bits": _MASK_BITS_DOC,
        "history": (
            f"bayescannon.simulate.simulate_spectra: {n} stars, {inst.name} "
            f"(R={inst.resolving_power:g}, {p} pixels), {len(line_list)} lines, "
            f"normalised={bool(normalised)}, bad_pixel_fraction={bad_pixel_fraction:g}"
        ),
    }
    ds = make_spectra(
        wavelength,
        flux,
        ivar,
        ids=ids if ids is not None else default_ids(n),
        mask=mask,
        attrs=attrs,
        **extras,
    )
    ds["wavelength"].attrs.update({"units": "Angstrom", "medium": inst.medium, "frame": frame})
    for k, unit in zip(LABEL_NAMES, ("K", "dex", "dex", "dex"), strict=True):
        ds[k].attrs.update({"units": unit, "description": f"true {k} of the simulated star"})
    ds["snr"].attrs["description"] = "requested S/N per pixel at the continuum"
    if rv is not None:
        ds["rv"].attrs.update({"units": "km/s", "description": "true radial velocity"})
    if return_noiseless:
        ds["flux_true"] = (("star", "pixel"), model)
        ds["flux_true"].attrs["description"] = "noise-free flux (without sky residuals)"
        if continuum is not None:
            ds["continuum_true"] = (("star", "pixel"), continuum)
            ds["continuum_true"].attrs["description"] = "true continuum (flux = continuum x normalised flux)"
    logger.info(
        "simulated %d %s spectra (%d pixels, %d lines) in %.2f s",
        n,
        inst.name,
        p,
        len(line_list),
        time.perf_counter() - t0,
    )
    return ds


def simulate_survey(
    n_stars: int,
    instrument=APOGEE,
    population: str = "giants",
    snr=(30.0, 250.0),
    rng=0,
    **kw,
):
    """Draw labels of a stellar population and simulate their spectra.

    Parameters
    ----------
    n_stars : int
        Number of stars (>= 1).
    instrument : Instrument or str, optional
        Spectrograph (default :data:`APOGEE`).
    population : {"giants", "dwarfs", "mixed"}, optional
        Label distribution (:func:`draw_labels`).
    snr : float, (lo, hi) tuple or array_like, optional
        See :func:`simulate_spectra`.
    rng : None, int or numpy.random.Generator, optional
        Seed (default 0: the same survey every call).
    **kw
        Passed to :func:`simulate_spectra` (``bad_pixel_fraction``, ``normalised``,
        ``rv``, ``return_noiseless``, ``ids``, ...).

    Returns
    -------
    xarray.Dataset
        As :func:`simulate_spectra`, with ``attrs["population"]``.

    Raises
    ------
    InvalidInputError
        For a bad ``n_stars``, ``population``, ``instrument`` or ``snr``.
    """
    n_stars = _check_count(n_stars, "n_stars", 1)
    inst = get_instrument(instrument)
    gen = _as_generator(rng)
    g_labels, g_spectra = gen.spawn(2)
    labels = draw_labels(n_stars, rng=g_labels, population=population)
    ds = simulate_spectra(labels, instrument=inst, snr=snr, rng=g_spectra, **kw)
    ds.attrs["population"] = population.lower()
    return ds
