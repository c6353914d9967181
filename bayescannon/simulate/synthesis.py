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

import dataclasses
import functools
import logging
import math
import numbers
import time
from dataclasses import dataclass
from collections.abc import Mapping

import numpy as np
import scipy.fft

from bayescannon.core.grid import C_KMS, vacuum_to_air_wavelength
from bayescannon.errors import InvalidInputError, LabelError
from bayescannon.spectra import default_ids, make_spectra

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_NAMES",
    "LABEL_LIMITS",
    "POPULATION_LIMITS",
    "MASK_BITS",
    "Instrument",
    "APOGEE",
    "LAMOST",
    "GALAH",
    "INSTRUMENTS",
    "get_instrument",
    "LineList",
    "make_line_list",
    "default_line_list",
    "line_strengths",
    "draw_labels",
    "simulate_spectra",
    "simulate_survey",
    "pipeline_labels",
    "PIPELINE_NOISE",
    "lamost_teff_offset",
    "lamost_logg_offset",
    "lamost_feh_offset",
]

#: Label names, in the order used for (N, 4) label arrays.
LABEL_NAMES: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "ALPHA_FE")

#: Range of labels for which spectra can be simulated (inclusive).
LABEL_LIMITS: dict[str, tuple[float, float]] = {
    "TEFF": (3000.0, 8000.0),
    "LOGG": (-0.5, 5.5),
    "FE_H": (-4.0, 1.0),
    "ALPHA_FE": (-0.5, 1.0),
}

#: Ranges (inclusive) of the labels drawn by :func:`draw_labels`, per population.
POPULATION_LIMITS: dict[str, dict[str, tuple[float, float]]] = {
    "giants": {
        "TEFF": (3900.0, 5300.0),
        "LOGG": (0.8, 3.6),
        "FE_H": (-1.5, 0.5),
        "ALPHA_FE": (-0.2, 0.5),
    },
    "dwarfs": {
        "TEFF": (4300.0, 6800.0),
        "LOGG": (4.0, 4.7),
        "FE_H": (-1.5, 0.5),
        "ALPHA_FE": (-0.2, 0.5),
    },
}
POPULATION_LIMITS["mixed"] = {
    k: (
        min(POPULATION_LIMITS["giants"][k][0], POPULATION_LIMITS["dwarfs"][k][0]),
        max(POPULATION_LIMITS["giants"][k][1], POPULATION_LIMITS["dwarfs"][k][1]),
    )
    for k in LABEL_NAMES
}

#: Pixel-mask bits written by :func:`simulate_spectra` (``ds["mask"]``).
MASK_BITS: dict[str, int] = {"BADPIX": 1, "WINDOW": 2, "SKYLINE": 4}
_MASK_BITS_DOC = (
    "1=BADPIX: random bad pixel (ivar=0, flux is garbage); "
    "2=WINDOW: instrument masked window - telluric band, bright sky line or detector gap (ivar=0); "
    "4=SKYLINE: sky-line residual in un-normalised spectra (ivar lowered, not zero)"
)

_LN10 = math.log(10.0)
_K_OVER_AMU = 8.314462618e-3  # Boltzmann constant / atomic mass unit in (km/s)^2 / K
_HC_OVER_K = 1.438776877e8  # h c / k in Angstrom K
_FINE_STEP_KMS = 1.2  # step of the grid on which exp(-tau) is evaluated
_CHUNK_ELEMENTS = 10_000_000  # doubles per star-chunk work array (bounds memory, ~80 MB)
_DEFAULT_LINE_SEED = 20_240_917
_REFERENCE_STAR = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": 0.0, "ALPHA_FE": 0.0}

# Label box over which line windows are sized (label-independent windows keep the
# spectra smooth in the labels and independent of the chunking).
_WINDOW_ENVELOPE = {
    "TEFF": (3500.0, 7000.0),
    "LOGG": (0.0, 5.0),
    "FE_H": (-2.5, 0.5),
    "ALPHA_FE": (-0.2, 0.5),
}


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _as_generator(rng) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from ``None``, an int seed or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        if rng is not None and rng < 0:
            raise InvalidInputError(f"rng seed must be a non-negative integer; got {rng}")
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise InvalidInputError(
        f"rng must be None, a non-negative int seed or a numpy.random.Generator; got {type(rng).__name__}"
    )


def _check_count(n, name: str, minimum: int) -> int:
    """Validate a count argument (int >= ``minimum``)."""
    if isinstance(n, bool):
        raise InvalidInputError(f"{name} must be an integer; got {n!r}")
    if not isinstance(n, numbers.Integral):
        if isinstance(n, numbers.Real) and float(n).is_integer():
            n = int(n)
        else:
            raise InvalidInputError(f"{name} must be an integer; got {n!r}")
    n = int(n)
    if n < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {n}")
    return n


# --------------------------------------------------------------------------------------
# instruments
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    """A spectrograph: wavelength coverage, resolution, sampling and masked windows.

    Pixels are sampled log-linearly: ``ln(lambda)`` steps by
    ``1 / (resolving_power * pixels_per_resolution)`` inside each arm.

    Parameters
    ----------
    name : str
        Instrument name (written to ``ds.attrs["instrument"]``).
    arms : tuple of (float, float)
        Wavelength range(s) in Angstrom, one per arm (camera/chip), increasing and
        non-overlapping.  A single-range instrument has one arm.
    resolving_power : float
        ``R = lambda / FWHM`` of the instrumental (Gaussian) line-spread function.
    pixels_per_resolution : float, optional
        Pixels per resolution element (FWHM), default 3.
    masked_windows : tuple of (float, float), optional
        Wavelength windows (Angstrom) that the survey masks for every star (telluric
        bands, bright sky lines, detector gaps): ``ivar = 0`` and mask bit ``WINDOW``.
    sky_lines : tuple of (float, float), optional
        ``(wavelength, strength)`` of night-sky emission lines whose imperfect
        subtraction leaves residual spikes in un-normalised spectra; ``strength`` is
        the typical residual peak relative to the stellar continuum.
    medium : {"vacuum", "air"}, optional
        Medium of the wavelength scale.

    Attributes
    ----------
    wavelength_range : tuple of float
        Smallest and largest wavelength covered.
    log_step : float
        Pixel step in ``ln(lambda)``.
    n_pixels : int
        Number of pixels of :meth:`wavelength_grid`.
    """

    name: str
    arms: tuple[tuple[float, float], ...]
    resolving_power: float
    pixels_per_resolution: float = 3.0
    masked_windows: tuple[tuple[float, float], ...] = ()
    sky_lines: tuple[tuple[float, float], ...] = ()
    medium: str = "vacuum"

    def __post_init__(self):
        """Validate the fields and store them as tuples of floats."""
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"instrument name must be a non-empty string; got {self.name!r}")
        try:
            arms = tuple((float(lo), float(hi)) for lo, hi in self.arms)
            windows = tuple((float(lo), float(hi)) for lo, hi in self.masked_windows)
            sky = tuple((float(w), float(s)) for w, s in self.sky_lines)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"instrument {self.name}: arms, masked_windows and sky_lines must be sequences of pairs ({exc})"
            ) from None
        if not arms:
            raise InvalidInputError(f"instrument {self.name}: at least one arm (wavelength range) is needed")
        for i, (lo, hi) in enumerate(arms):
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
                raise InvalidInputError(
                    f"instrument {self.name}: arm {i} must be (lo, hi) with 0 < lo < hi Angstrom; got ({lo}, {hi})"
                )
            if i and lo <= arms[i - 1][1]:
                raise InvalidInputError(
                    f"instrument {self.name}: arm {i} ({lo}-{hi} A) overlaps or precedes arm {i - 1}"
                )
        for i, (lo, hi) in enumerate(windows):
            if not lo < hi:
                raise InvalidInputError(
                    f"instrument {self.name}: masked window {i} must have lo < hi; got ({lo}, {hi})"
                )
        for w, s in sky:
            if not (w > 0 and s >= 0):
                raise InvalidInputError(
                    f"instrument {self.name}: sky line ({w}, {s}) needs wavelength > 0 and strength >= 0"
                )
        r, ppr = float(self.resolving_power), float(self.pixels_per_resolution)
        if not (np.isfinite(r) and r > 0):
            raise InvalidInputError(f"instrument {self.name}: resolving_power must be > 0; got {self.resolving_power}")
        if not (np.isfinite(ppr) and ppr > 0):
            raise InvalidInputError(
                f"instrument {self.name}: pixels_per_resolution must be > 0; got {self.pixels_per_resolution}"
            )
        if self.medium not in ("vacuum", "air"):
            raise InvalidInputError(f"instrument {self.name}: medium must be 'vacuum' or 'air'; got {self.medium!r}")
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "masked_windows", windows)
        object.__setattr__(self, "sky_lines", sky)
        object.__setattr__(self, "resolving_power", r)
        object.__setattr__(self, "pixels_per_resolution", ppr)

    @property
    def wavelength_range(self) -> tuple[float, float]:
        """Smallest and largest wavelength of the arms (Angstrom)."""
        return self.arms[0][0], self.arms[-1][1]

    @property
    def log_step(self) -> float:
        """Pixel step in natural-log wavelength."""
        return 1.0 / (self.resolving_power * self.pixels_per_resolution)

    def arm_grids(self) -> list[np.ndarray]:
        """Wavelength grid (Angstrom) of each arm.

        Returns
        -------
        list of ndarray
            One log-linear grid per arm, starting at the arm's lower edge.
        """
        grids = []
        for lo, hi in self.arms:
            n = math.floor(math.log(hi / lo) / self.log_step + 1e-9) + 1
            grids.append(lo * np.exp(self.log_step * np.arange(n)))
        return grids

    def wavelength_grid(self) -> np.ndarray:
        """Wavelength of every pixel (Angstrom), all arms concatenated.

        Returns
        -------
        ndarray, shape (P,)
        """
        return np.concatenate(self.arm_grids())

    @property
    def n_pixels(self) -> int:
        """Number of pixels."""
        return int(sum(g.size for g in self.arm_grids()))

    def window_mask(self, wavelength=None) -> np.ndarray:
        """Pixels inside the masked windows.

        Parameters
        ----------
        wavelength : array_like, optional
            Wavelengths to test (default: :meth:`wavelength_grid`).

        Returns
        -------
        ndarray of bool
        """
        wl = self.wavelength_grid() if wavelength is None else np.asarray(wavelength, dtype=float)
        out = np.zeros(wl.shape, dtype=bool)
        for lo, hi in self.masked_windows:
            out |= (wl >= lo) & (wl <= hi)
        return out


#: APOGEE-like H-band spectrograph (vacuum).  ~7,200 pixels; the two detector gaps
#: are masked windows, as in the ``aspcapStar`` format.
APOGEE = Instrument(
    name="APOGEE",
    arms=((15150.0, 16950.0),),
    resolving_power=22500.0,
    pixels_per_resolution=2.85,
    masked_windows=((15808.0, 15858.0), (16433.0, 16474.0)),
    medium="vacuum",
)

#: LAMOST-like low-resolution optical spectrograph (vacuum).  ~3,900 pixels; the
#: brightest night-sky lines and the telluric O2 A and B bands are masked windows,
#: weaker OH lines leave residuals in un-normalised spectra.
LAMOST = Instrument(
    name="LAMOST",
    arms=((3900.0, 8900.0),),
    resolving_power=1800.0,
    pixels_per_resolution=2.65,
    masked_windows=(
        (5570.0, 5586.0),  # [O I] 5577 sky line
        (5882.0, 5904.0),  # Na D sky emission
        (6294.0, 6310.0),  # [O I] 6300 sky line
        (6358.0, 6372.0),  # [O I] 6364 sky line
        (6864.0, 6935.0),  # telluric O2 B band
        (7592.0, 7700.0),  # telluric O2 A band
    ),
    sky_lines=(
        (5578.9, 3.0),
        (5891.6, 1.0),
        (5897.6, 0.8),
        (6302.0, 1.2),
        (6365.5, 0.5),
        (6865.0, 0.3),
        (7316.3, 0.15),
        (7343.0, 0.12),
        (7753.2, 0.12),
        (7796.0, 0.15),
        (7856.0, 0.12),
        (7915.0, 0.15),
        (7966.0, 0.12),
        (8346.0, 0.2),
        (8401.0, 0.2),
        (8432.0, 0.15),
        (8467.0, 0.15),
        (8829.0, 0.25),
        (8888.0, 0.25),
    ),
    medium="vacuum",
)

#: GALAH/HERMES-like four-arm high-resolution spectrograph (air wavelengths).
GALAH = Instrument(
    name="GALAH",
    arms=((4713.0, 4903.0), (5648.0, 5873.0), (6478.0, 6737.0), (7585.0, 7887.0)),
    resolving_power=28000.0,
    pixels_per_resolution=3.5,
    masked_windows=((7590.0, 7680.0),),  # telluric O2 A band in the IR arm
    medium="air",
)

#: Preset instruments by lower-case name.
INSTRUMENTS: dict[str, Instrument] = {"apogee": APOGEE, "lamost": LAMOST, "galah": GALAH}


def get_instrument(instrument) -> Instrument:
    """Return an :class:`Instrument` from an instance or a preset name.

    Parameters
    ----------
    instrument : Instrument or str
        An instrument, or one of ``"apogee"``, ``"lamost"``, ``"galah"``
        (case-insensitive).

    Returns
    -------
    Instrument

    Raises
    ------
    InvalidInputError
        For an unknown name or a wrong type.
    """
    if isinstance(instrument, Instrument):
        return instrument
    if isinstance(instrument, str):
        try:
            return INSTRUMENTS[instrument.strip().lower()]
        except KeyError:
            raise InvalidInputError(
                f"unknown instrument {instrument!r}; expected one of {sorted(INSTRUMENTS)} or an Instrument"
            ) from None
    raise InvalidInputError(f"instrument must be an Instrument or a preset name; got {type(instrument).__name__}")


# --------------------------------------------------------------------------------------
# line list
# --------------------------------------------------------------------------------------

_KINDS = ("fe1", "fe2", "alpha", "molecule", "hydrogen")


@dataclass(frozen=True, eq=False)
class LineList:
    """Spectral lines of the mock atmosphere.

    All attributes are arrays of equal length ``L`` (one entry per line).

    Attributes
    ----------
    wavelength : ndarray of float
        Line centre (Angstrom) in ``medium``.
    species : ndarray of str
        ``"Fe I"``, ``"Fe II"``, ``"Mg I"``, ``"CO"``, ``"H I"``, ...
    kind : ndarray of str
        Class: ``"fe1"`` (neutral iron-peak, strength ~ 10**[Fe/H]), ``"fe2"``
        (ionised iron, gravity sensitive), ``"alpha"`` (Mg, Si, Ca, Ti: strength ~
        10**([Fe/H] + [alpha/Fe])), ``"molecule"`` (strongly Teff dependent, strong in
        cool giants), ``"hydrogen"`` (Teff dependent, Stark wings growing with logg).
    excitation : ndarray of float
        Lower-level excitation potential ``chi`` (eV).
    ionisation : ndarray of float
        First ionisation potential of the element (eV; atoms only, else 0).
    stage : ndarray of int
        1 = neutral, 2 = singly ionised (0 for molecules).
    mass : ndarray of float
        Mass of the absorber (amu), sets the thermal width.
    log_strength : ndarray of float
        ``log10`` of the integrated opacity ``S`` (km/s; the equivalent width of the
        line in the weak-line limit) in the reference star (Teff 4750 K, logg 2.5,
        [Fe/H] = [alpha/Fe] = 0).
    log_damping : ndarray of float
        ``log10`` of the Lorentzian half width (km/s) at Teff 5777 K, logg 4.44.
    damping_logg_power, damping_teff_power : ndarray of float
        The Lorentzian width scales as ``10**(p_g (logg - 4.44)) (Teff/5777)**p_T``.
    metal_weight, alpha_weight : ndarray of float
        The abundance of the absorber is ``10**(w_m [Fe/H] + w_a [alpha/Fe])``.
    dissociation : ndarray of float
        Effective dissociation energy (eV) of molecules (strength ~ 10**(theta D)).
    gravity_power : ndarray of float
        Molecules only: strength ~ 10**(gravity_power * logg).
    max_window : ndarray of float
        Largest half width (km/s) over which the Lorentzian wings are computed (they
        are tapered smoothly to zero at the window edge).
    medium : str
        ``"vacuum"`` or ``"air"``.
    """

    wavelength: np.ndarray
    species: np.ndarray
    kind: np.ndarray
    excitation: np.ndarray
    ionisation: np.ndarray
    stage: np.ndarray
    mass: np.ndarray
    log_strength: np.ndarray
    log_damping: np.ndarray
    damping_logg_power: np.ndarray
    damping_teff_power: np.ndarray
    metal_weight: np.ndarray
    alpha_weight: np.ndarray
    dissociation: np.ndarray
    gravity_power: np.ndarray
    max_window: np.ndarray
    medium: str = "vacuum"

    def __post_init__(self):
        """Store read-only 1-D copies of the fields and check their lengths."""
        sizes = set()
        for f in dataclasses.fields(self):
            if f.name == "medium":
                continue
            value = np.array(getattr(self, f.name))  # private, read-only copies
            if value.ndim != 1:
                raise InvalidInputError(f"LineList.{f.name} must be 1-D; got shape {value.shape}")
            value.setflags(write=False)
            object.__setattr__(self, f.name, value)
            sizes.add(value.size)
        if len(sizes) > 1:
            raise InvalidInputError(f"LineList fields differ in length: {sorted(sizes)}")
        if self.medium not in ("vacuum", "air"):
            raise InvalidInputError(f"LineList.medium must be 'vacuum' or 'air'; got {self.medium!r}")

    def __len__(self) -> int:
        """Number of lines."""
        return int(self.wavelength.size)

    def select(self, keep) -> LineList:
        """Return the sub-list of lines where ``keep`` (bool array or indices) holds."""
        fields = {
            f.name: (getattr(self, f.name)[keep] if f.name != "medium" else self.medium)
            for f in dataclasses.fields(self)
        }
        return LineList(**fields)


# Element data: (species, kind, ionisation potential eV, stage, mass amu, metal w, alpha w)
_ATOMS = {
    "Fe I": ("fe1", 7.90, 1, 55.85, 1.0, 0.0),
    "Ni I": ("fe1", 7.64, 1, 58.69, 1.0, 0.0),
    "Cr I": ("fe1", 6.77, 1, 52.00, 1.0, 0.0),
    "Mn I": ("fe1", 7.43, 1, 54.94, 1.0, 0.0),
    "Fe II": ("fe2", 7.90, 2, 55.85, 1.0, 0.0),
    "Mg I": ("alpha", 7.65, 1, 24.31, 1.0, 1.0),
    "Si I": ("alpha", 8.15, 1, 28.09, 1.0, 1.0),
    "Ca I": ("alpha", 6.11, 1, 40.08, 1.0, 1.0),
    "Ti I": ("alpha", 6.83, 1, 47.87, 1.0, 1.0),
    "Ca II": ("alpha", 6.11, 2, 40.08, 1.0, 1.0),
}
# Excitation-potential ranges (eV) of the random lines: (infrared, optical)
_CHI_RANGE = {
    "Fe I": ((3.0, 6.5), (0.0, 5.0)),
    "Ni I": ((3.5, 6.0), (1.5, 4.5)),
    "Cr I": ((2.5, 5.0), (0.9, 4.0)),
    "Mn I": ((4.0, 6.0), (2.0, 5.0)),
    "Fe II": ((5.5, 8.0), (2.5, 4.5)),
    "Mg I": ((5.0, 6.8), (2.7, 5.5)),
    "Si I": ((5.0, 6.8), (4.9, 6.0)),
    "Ca I": ((2.5, 5.0), (1.9, 4.5)),
    "Ti I": ((0.8, 2.5), (0.0, 2.5)),
}
# Random atomic lines: species and relative frequency
_RANDOM_ATOMS = (
    ("Fe I", 0.40),
    ("Ni I", 0.07),
    ("Cr I", 0.05),
    ("Mn I", 0.03),
    ("Fe II", 0.06),
    ("Mg I", 0.09),
    ("Si I", 0.12),
    ("Ca I", 0.08),
    ("Ti I", 0.10),
)
# Molecules: (mass amu, metal w, alpha w, effective dissociation eV, gravity power)
_MOLECULES = {
    "CO": (28.0, 1.0, 0.0, 3.0, -0.25),
    "CN": (26.0, 1.0, 0.0, 3.0, -0.25),
    "OH": (17.0, 1.0, 1.0, 4.0, -0.20),
    "CH": (13.0, 1.0, 0.0, 2.0, -0.20),
    "MgH": (25.3, 1.0, 1.0, 2.5, 0.40),
    "TiO": (63.9, 1.0, 1.0, 6.0, -0.10),
}
# Band heads (vacuum Angstrom): species, head, direction (+1 degraded to the red),
# span (A), number of lines, peak log10 S_ref (km/s), vibrational excitation (eV),
# rotational constant (eV)
_BANDS = (
    ("CN", 3884.5, -1, 30.0, 50, 1.2, 0.00, 2.4e-4),
    ("CN", 4217.3, -1, 40.0, 50, 0.8, 0.00, 2.4e-4),
    ("CH", 4315.0, -1, 40.0, 50, 1.0, 0.00, 1.8e-3),
    ("MgH", 5213.0, -1, 150.0, 60, 0.0, 0.00, 7.0e-4),
    ("TiO", 7055.5, +1, 120.0, 60, 0.3, 0.00, 6.6e-5),
    ("TiO", 7591.5, +1, 120.0, 60, 0.1, 0.00, 6.6e-5),
    ("CN", 7877.0, +1, 100.0, 50, 0.3, 0.00, 2.4e-4),
    ("TiO", 8434.5, +1, 100.0, 50, -0.2, 0.00, 6.6e-5),
    ("CO", 15582.0, +1, 180.0, 70, 0.55, 0.00, 2.4e-4),
    ("CO", 15780.0, +1, 180.0, 70, 0.45, 0.26, 2.4e-4),
    ("CO", 15982.0, +1, 180.0, 70, 0.35, 0.52, 2.4e-4),
    ("CO", 16189.0, +1, 180.0, 70, 0.25, 0.78, 2.4e-4),
    ("CO", 16401.5, +1, 180.0, 70, 0.15, 1.03, 2.4e-4),
    ("CO", 16618.0, +1, 180.0, 70, 0.05, 1.28, 2.4e-4),
    ("CO", 16840.0, +1, 160.0, 60, -0.05, 1.53, 2.4e-4),
)
# Named strong lines (vacuum Angstrom): species, wavelength, chi, log10 S_ref, log10 damping
_STRONG_LINES = (
    ("Ca II", 3934.8, 0.00, 5.8, -0.6),
    ("Ca II", 3969.6, 0.00, 5.5, -0.6),
    ("Ca I", 4227.9, 0.00, 4.3, -0.8),
    ("Mg I", 5168.8, 2.71, 4.2, -0.7),
    ("Mg I", 5174.1, 2.71, 4.4, -0.7),
    ("Mg I", 5185.0, 2.72, 4.6, -0.7),
    ("Fe I", 5271.2, 1.61, 3.2, -1.0),
    ("Fe I", 5329.5, 1.56, 3.0, -1.0),
    ("Ca I", 6124.0, 1.89, 3.0, -0.9),
    ("Ca I", 6163.8, 2.52, 3.0, -0.9),
    ("Ca II", 8500.4, 1.69, 4.2, -0.5),
    ("Ca II", 8544.4, 1.70, 4.6, -0.5),
    ("Ca II", 8664.5, 1.69, 4.5, -0.5),
    ("Fe I", 15211.7, 3.21, 1.7, -0.9),
    ("Fe I", 15298.7, 5.31, 1.5, -0.9),
    ("Mg I", 15745.0, 5.93, 2.1, -0.5),
    ("Mg I", 15753.3, 5.93, 2.2, -0.5),
    ("Mg I", 15770.2, 5.93, 2.3, -0.5),
    ("Ti I", 15548.0, 2.27, 1.3, -1.0),
    ("Si I", 15964.4, 5.98, 1.9, -0.6),
    ("Fe I", 16044.9, 5.87, 1.5, -0.9),
    ("Si I", 16064.4, 5.95, 2.0, -0.6),
    ("Ca I", 16155.2, 4.53, 1.5, -0.7),
    ("Ca I", 16161.8, 4.53, 1.4, -0.7),
    ("Ti I", 16639.7, 2.34, 1.2, -1.0),
    ("Si I", 16685.3, 5.98, 1.9, -0.6),
    ("Mg I", 15886.2, 5.95, 1.6, -0.5),
)
# Hydrogen (vacuum Angstrom): wavelength, effective lower-level excitation (eV),
# log10 S_ref, log10 Stark half width (km/s) at the Sun, line window half width (km/s).
# The effective excitation of the Brackett lines is lowered from 12.75 eV to the
# Balmer value so that their Teff sensitivity stays moderate, as in real H-band spectra.
_HYDROGEN = (
    (3890.2, 10.20, 0.50, 1.30, 2500.0),  # H8
    (3971.2, 10.20, 0.65, 1.40, 2500.0),  # H epsilon
    (4102.9, 10.20, 0.80, 1.50, 2500.0),  # H delta
    (4341.7, 10.20, 0.95, 1.55, 2500.0),  # H gamma
    (4862.7, 10.20, 1.10, 1.60, 2500.0),  # H beta
    (6564.6, 10.20, 1.20, 1.65, 2500.0),  # H alpha
    (15196.0, 10.20, -0.35, 1.10, 1500.0),  # Br 20
    (15265.0, 10.20, -0.28, 1.10, 1500.0),  # Br 19
    (15345.99, 10.20, -0.20, 1.15, 1500.0),  # Br 18
    (15443.1, 10.20, -0.12, 1.15, 1500.0),  # Br 17
    (15560.7, 10.20, -0.04, 1.20, 1500.0),  # Br 16
    (15704.9, 10.20, 0.05, 1.20, 1500.0),  # Br 15
    (15884.9, 10.20, 0.13, 1.25, 1500.0),  # Br 14
    (16113.7, 10.20, 0.22, 1.25, 1500.0),  # Br 13
    (16411.7, 10.20, 0.31, 1.30, 1500.0),  # Br 12
    (16811.1, 10.20, 0.40, 1.30, 1500.0),  # Br 11
)
_BLOCK_ANGSTROM = 50.0
_MARGIN_KMS = 3000.0


def _atomic_density(wavelength):
    """Random atomic lines per Angstrom (before ``density`` scaling): 0.4 (15,500 A / lambda)**1.8."""
    return 0.40 * (15500.0 / np.asarray(wavelength, dtype=float)) ** 1.8


def _molecular_density(wavelength):
    """Random molecular (CN, OH in the IR; CN, CH in the blue) lines per Angstrom."""
    wl = np.asarray(wavelength, dtype=float)
    return np.where(wl > 10000.0, 0.18, np.where(wl < 4600.0, 0.10, 0.02))


_LINE_FIELDS = (
    "wavelength species kind excitation ionisation stage mass log_strength log_damping damping_logg_power "
    "damping_teff_power metal_weight alpha_weight dissociation gravity_power max_window"
).split()


def _new_columns():
    """Empty per-field lists that line-list builders append to."""
    return {name: [] for name in _LINE_FIELDS}


def _append_lines(cols, wavelength, **values):
    """Append lines to the column lists; scalars are broadcast to every line."""
    wavelength = np.atleast_1d(np.asarray(wavelength, dtype=float))
    n = wavelength.size
    cols["wavelength"].append(wavelength)
    for name in _LINE_FIELDS[1:]:
        v = np.asarray(values[name])
        cols[name].append(np.broadcast_to(v.astype(object) if v.dtype.kind in "US" else v, (n,)))


def _add_atom(cols, species, wavelength, chi, log_s, log_damp, window=400.0):
    """Append atomic lines of ``species`` (a key of ``_ATOMS``)."""
    kind, chi_ion, stage, mass, wm, wa = _ATOMS[species]
    _append_lines(
        cols, wavelength, species=species, kind=kind, excitation=chi, ionisation=chi_ion, stage=stage,
        mass=mass, log_strength=log_s, log_damping=log_damp, damping_logg_power=0.4,
        damping_teff_power=0.3, metal_weight=wm, alpha_weight=wa, dissociation=0.0, gravity_power=0.0,
        max_window=window,
    )  # fmt: skip


def _add_molecule(cols, species, wavelength, chi, log_s, log_damp):
    """Append molecular lines of ``species`` (a key of ``_MOLECULES``)."""
    mass, wm, wa, d_eff, g_pow = _MOLECULES[species]
    _append_lines(
        cols, wavelength, species=species, kind="molecule", excitation=chi, ionisation=0.0, stage=0,
        mass=mass, log_strength=log_s, log_damping=log_damp, damping_logg_power=0.4,
        damping_teff_power=0.3, metal_weight=wm, alpha_weight=wa, dissociation=d_eff,
        gravity_power=g_pow, max_window=400.0,
    )  # fmt: skip


def _add_hydrogen(cols, wavelength, chi, log_s, log_damp, window):
    """Append one hydrogen line."""
    _append_lines(
        cols, wavelength, species="H I", kind="hydrogen", excitation=chi, ionisation=13.6, stage=1,
        mass=1.008, log_strength=log_s, log_damping=log_damp, damping_logg_power=0.3,
        damping_teff_power=1.0, metal_weight=0.0, alpha_weight=0.0, dissociation=0.0, gravity_power=0.0,
        max_window=window,
    )  # fmt: skip


def _random_block(cols, lo, hi, rng, density):
    """Random atomic and molecular lines between ``lo`` and ``hi`` (vacuum A)."""
    mid = 0.5 * (lo + hi)
    ir = mid > 10000.0
    n_atom = rng.poisson(density * float(_atomic_density(mid)) * (hi - lo))
    names = [s for s, _ in _RANDOM_ATOMS]
    p = np.array([f for _, f in _RANDOM_ATOMS])
    which = rng.choice(len(names), size=n_atom, p=p / p.sum())
    wl = rng.uniform(lo, hi, size=n_atom)
    # log10 S_ref: exponential tail above a floor -> many weak, few strong lines
    log_s = -1.5 + rng.exponential(0.95, size=n_atom)
    log_s = np.minimum(log_s, 2.6)
    log_damp = rng.normal(math.log10(0.08), 0.3, size=n_atom)
    u = rng.random(n_atom)
    for i, name in enumerate(names):
        sel = which == i
        if not sel.any():
            continue
        c_lo, c_hi = _CHI_RANGE[name][0 if ir else 1]
        chi = c_lo + (c_hi - c_lo) * u[sel]
        _add_atom(cols, name, wl[sel], chi, log_s[sel], log_damp[sel])
    n_mol = rng.poisson(density * float(_molecular_density(mid)) * (hi - lo))
    if n_mol:
        species = np.where(rng.random(n_mol) < 0.5, "OH", "CN") if ir else np.where(rng.random(n_mol) < 0.5, "CH", "CN")
        wl = rng.uniform(lo, hi, size=n_mol)
        chi = rng.uniform(0.0, 1.5, size=n_mol)
        log_s = -1.2 + rng.exponential(0.6, size=n_mol)
        log_s = np.minimum(log_s, 1.6)
        log_damp = np.full(n_mol, math.log10(0.03))
        for name in ("OH", "CN", "CH"):
            sel = species == name
            if sel.any():
                _add_molecule(cols, name, wl[sel], chi[sel], log_s[sel], log_damp[sel])


def _band_lines(cols, lo, hi):
    """Molecular band lines (rotational ladders from each band head) in [lo, hi]."""
    for species, head, direction, span, n_lines, log_peak, chi_vib, b_rot in _BANDS:
        if min(head, head + direction * span) > hi or max(head, head + direction * span) < lo:
            continue
        j = np.arange(1, n_lines + 1, dtype=float)
        wl = head + direction * span * (j / n_lines) ** 2
        chi = chi_vib + b_rot * j * (j + 1)
        theta_ref = 5040.0 / _REFERENCE_STAR["TEFF"]
        rel = np.log10(2 * j + 1) - theta_ref * (chi - chi_vib)
        log_s = log_peak + rel - rel.max()
        keep = (wl >= lo) & (wl <= hi) & (log_s > -2.0)
        if keep.any():
            _add_molecule(cols, species, wl[keep], chi[keep], log_s[keep], np.full(keep.sum(), math.log10(0.03)))


def _line_list_seed(rng) -> int:
    """Base seed of the line-list blocks from ``None`` (default list), an int or a Generator."""
    if rng is None:
        return _DEFAULT_LINE_SEED
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**62))
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    raise InvalidInputError(f"rng must be None, a non-negative int seed or a numpy.random.Generator; got {rng!r}")


def make_line_list(instrument_or_range, rng=None, density: float = 1.0, margin_kms: float = _MARGIN_KMS) -> LineList:
    """Build the line list of the mock atmosphere over a wavelength range.

    Random atomic and molecular lines are drawn in fixed 50-A blocks of vacuum
    wavelength, each from its own seed derived from ``rng`` and the block number:
    two instruments that overlap in wavelength see the same lines there.  Named
    strong lines, molecular band heads and hydrogen lines are fixed lists.

    Parameters
    ----------
    instrument_or_range : Instrument, str or (float, float)
        An instrument (or preset name), or a ``(lo, hi)`` wavelength range in
        Angstrom (vacuum).
    rng : None, int or numpy.random.Generator, optional
        Seed of the random lines.  ``None`` gives the package's default line list.
    density : float, optional
        Multiplier of the density of random lines (default 1: about 0.4 lines per A
        at 15,500 A, 3 per A at 5,000 A, plus molecular lines).
    margin_kms : float, optional
        Lines are generated this far (km/s) beyond the range, so that wings of lines
        just outside still reach in.

    Returns
    -------
    LineList
        Sorted by wavelength; wavelengths in the instrument's medium (vacuum for a
        plain range).

    Raises
    ------
    InvalidInputError
        For a bad range, density or seed.
    """
    medium = "vacuum"
    if isinstance(instrument_or_range, (Instrument, str)):
        inst = get_instrument(instrument_or_range)
        lo, hi = inst.wavelength_range
        medium = inst.medium
    else:
        try:
            lo, hi = (float(v) for v in instrument_or_range)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"expected an Instrument, a preset name or a (lo, hi) range in Angstrom; got {instrument_or_range!r}"
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
            raise InvalidInputError(f"wavelength range must satisfy 0 < lo < hi; got ({lo}, {hi})")
    density = float(density)
    if not (np.isfinite(density) and density >= 0):
        raise InvalidInputError(f"density must be a finite number >= 0; got {density}")
    margin_kms = float(margin_kms)
    if not (np.isfinite(margin_kms) and margin_kms >= 0):
        raise InvalidInputError(f"margin_kms must be >= 0; got {margin_kms}")
    seed = _line_list_seed(rng)
    if medium == "air":  # generate in vacuum, covering the air range
        lo, hi = lo * 1.0003, hi * 1.0003
    lo_m = lo * math.exp(-margin_kms / C_KMS)
    hi_m = hi * math.exp(margin_kms / C_KMS)

    cols = _new_columns()
    for b in range(int(lo_m // _BLOCK_ANGSTROM), int(hi_m // _BLOCK_ANGSTROM) + 1):
        block_rng = np.random.default_rng([seed, b])
        b_lo, b_hi = b * _BLOCK_ANGSTROM, (b + 1) * _BLOCK_ANGSTROM
        _random_block(cols, b_lo, b_hi, block_rng, density)
    _band_lines(cols, lo_m, hi_m)
    for species, wl, chi, log_s, log_damp in _STRONG_LINES:
        if lo_m <= wl <= hi_m:
            _add_atom(cols, species, wl, chi, log_s, log_damp, window=3000.0)
    for wl, chi, log_s, log_damp, window in _HYDROGEN:
        if lo_m <= wl <= hi_m:
            _add_hydrogen(cols, wl, chi, log_s, log_damp, window)

    arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    wl = arrays["wavelength"].astype(float)
    keep = (wl >= lo_m) & (wl <= hi_m)
    order = np.argsort(wl[keep], kind="stable")
    out = {}
    for k, v in arrays.items():
        v = v[keep][order]
        if k in ("species", "kind"):
            v = v.astype(str)
        elif k == "stage":
            v = v.astype(int)
        else:
            v = v.astype(float)
        out[k] = v
    if medium == "air":
        out["wavelength"] = vacuum_to_air_wavelength(out["wavelength"])
    lines = LineList(**out, medium=medium)
    logger.debug(
        "line list %.0f-%.0f A (%s): %d lines (%s)",
        lo_m,
        hi_m,
        medium,
        len(lines),
        ", ".join(f"{k}={int(np.sum(lines.kind == k))}" for k in _KINDS),
    )
    return lines


@functools.lru_cache(maxsize=16)
def default_line_list(instrument=APOGEE) -> LineList:
    """The package's default (fixed-seed) line list of an instrument, cached.

    Every call of :func:`simulate_spectra` without an explicit ``line_list`` uses it,
    so that spectra simulated with different random seeds share the same physics.

    Parameters
    ----------
    instrument : Instrument or str, optional

    Returns
    -------
    LineList
    """
    return make_line_list(get_instrument(instrument), rng=None)


# --------------------------------------------------------------------------------------
# line physics
# --------------------------------------------------------------------------------------


def _log_electron_pressure(teff, logg, feh):
    """log10 electron pressure (dyn cm^-2) of the line-forming layers (a mock relation)."""
    return 1.25 + 0.5 * (logg - 4.44) + 8.0 * np.log10(teff / 5777.0) + 0.3 * feh


def _log_line_number(lines: LineList, teff, logg, feh, alpha):
    """log10 of the (relative) number of absorbers per unit continuous opacity.

    Shapes: labels (n, 1), result (n, L).
    """
    theta = 5040.0 / teff
    log_pe = _log_electron_pressure(teff, logg, feh)
    log_kappa = log_pe + 2.5 * np.log10(theta) + 0.754 * theta  # H- bound-free
    log_n = lines.metal_weight * feh + lines.alpha_weight * alpha - theta * lines.excitation
    is_mol = lines.kind == "molecule"
    is_h = lines.kind == "hydrogen"
    is_metal_atom = ~(is_mol | is_h)
    # Saha: log10(N_II / N_I) = log10(Phi(T)) - log10(Pe)
    log_phi = -0.1762 + math.log10(2.0) + 2.5 * np.log10(teff) - theta * lines.ionisation
    x = (log_phi - log_pe) * _LN10
    log_one_plus_r = np.logaddexp(0.0, x) / _LN10
    log_frac = np.where(lines.stage == 2, x / _LN10 - log_one_plus_r, -log_one_plus_r)
    atom_term = np.where(is_metal_atom, log_frac, 0.0) - log_kappa
    mol_term = theta * lines.dissociation + lines.gravity_power * logg
    return log_n + np.where(is_mol, mol_term, atom_term)


def _microturbulence(teff, logg):
    """Microturbulent velocity (km/s), a smooth mock relation."""
    return np.clip(0.9 + 0.25 * (4.5 - logg) + 0.3 * (teff - 5000.0) / 1000.0, 0.5, 3.0)


def _macroturbulence(teff, logg):
    """Gaussian sigma (km/s) of the macroturbulent broadening, a smooth mock relation."""
    return np.clip(1.8 + 0.8 * (teff - 5000.0) / 1000.0 + 0.35 * (3.5 - logg), 1.0, 6.0)


def _labels_columns(labels: Mapping[str, np.ndarray]):
    """Label columns as (N, 1) float arrays, in ``LABEL_NAMES`` order."""
    return tuple(np.asarray(labels[k], dtype=float)[:, None] for k in LABEL_NAMES)


def line_strengths(lines: LineList, labels) -> dict[str, np.ndarray]:
    """Per-star, per-line strength and profile parameters.

    With ``theta = 5040 / Teff`` and the mock electron pressure
    ``log10 Pe = 1.25 + 0.5 (logg - 4.44) + 8 log10(Teff / 5777) + 0.3 [Fe/H]``:

    * atoms: ``log10 S = log10 S_ref + Delta[ w_m [Fe/H] + w_a [alpha/Fe] - theta chi
      + log10 f_stage(Teff, Pe) - log10 kappa_c ]`` with the Saha ionisation fraction
      ``f_stage`` (``N_II / N_I = Phi(T) / Pe``, ``log10 Phi = 2.5 log10 T - theta
      chi_ion + log10(2) - 0.1762``) and the H- opacity
      ``log10 kappa_c = log10 Pe + 2.5 log10 theta + 0.754 theta``;
    * hydrogen: ``- theta chi - log10 kappa_c`` (no metallicity dependence);
    * molecules: ``w_m [Fe/H] + w_a [alpha/Fe] + theta (D - chi) + gravity_power logg``;

    where ``Delta[...]`` is the difference to the reference star (Teff 4750, logg 2.5,
    [Fe/H] = [alpha/Fe] = 0), at which ``S = S_ref``.

    Profiles are pseudo-Voigt (Thompson, Cox & Hastings 1987): Gaussian
    ``sigma_G**2 = k Teff / m + xi**2 / 2`` with microturbulence ``xi``; Lorentzian
    half width ``gamma = 10**log_damping 10**(p_g (logg - 4.44)) (Teff / 5777)**p_T``,
    times ``lambda / 5000 A`` for metal lines (velocity units).

    Parameters
    ----------
    lines : LineList
    labels : mapping or array_like
        Labels (see :func:`simulate_spectra`).

    Returns
    -------
    dict of ndarray, shape (N, L)
        ``S`` (integrated opacity, km/s), ``sigma`` (Gaussian sigma of the
        pseudo-Voigt, km/s), ``hwhm`` (Lorentzian half width of the pseudo-Voigt,
        km/s), ``eta`` (Lorentzian fraction) and ``tau0`` (line-centre optical depth).
    """
    lab = _validate_labels(labels)
    teff, logg, feh, alpha = _labels_columns(lab)
    return _line_parameters(lines, teff, logg, feh, alpha)


def _line_parameters(lines: LineList, teff, logg, feh, alpha):
    """Strength and pseudo-Voigt parameters, (n, L), for (n, 1) label columns (see :func:`line_strengths`)."""
    ref = [np.array([[_REFERENCE_STAR[k]]]) for k in LABEL_NAMES]
    log_n_ref = _log_line_number(lines, *ref)
    log_s = lines.log_strength + _log_line_number(lines, teff, logg, feh, alpha) - log_n_ref
    s = 10.0 ** np.clip(log_s, -12.0, 7.0)

    xi = _microturbulence(teff, logg)
    sigma_g = np.sqrt(_K_OVER_AMU * teff / lines.mass + 0.5 * xi**2)
    is_h = lines.kind == "hydrogen"
    lam_factor = np.where(is_h, 1.0, lines.wavelength / 5000.0)
    gamma = (
        10.0**lines.log_damping
        * lam_factor
        * 10.0 ** (lines.damping_logg_power * (logg - 4.44))
        * (teff / 5777.0) ** lines.damping_teff_power
    )
    f_g = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma_g
    f_l = 2.0 * gamma
    f = (
        f_g**5
        + 2.69269 * f_g**4 * f_l
        + 2.42843 * f_g**3 * f_l**2
        + 4.47163 * f_g**2 * f_l**3
        + 0.07842 * f_g * f_l**4
        + f_l**5
    ) ** 0.2
    r = f_l / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    sigma = f / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    hwhm = 0.5 * f
    tau0 = s * ((1.0 - eta) / (math.sqrt(2.0 * math.pi) * sigma) + eta / (math.pi * hwhm))
    return {"S": s, "sigma": sigma, "hwhm": hwhm, "eta": eta, "tau0": tau0}


def _line_windows(lines: LineList):
    """Label-independent half widths (km/s) of the Gaussian and Lorentzian windows."""
    corners = np.array(np.meshgrid(*[_WINDOW_ENVELOPE[k] for k in LABEL_NAMES], indexing="ij")).reshape(4, -1)
    p = _line_parameters(lines, *(c[:, None] for c in corners))
    s_max = p["S"].max(axis=0)
    sigma_max = p["sigma"].max(axis=0)
    wing = (p["S"] * p["eta"] * p["hwhm"]).max(axis=0)
    w_gauss = 6.0 * sigma_max
    # Lorentzian wings down to tau = 3e-4, at most the line's max_window
    w_lor = np.sqrt(wing / (math.pi * 3e-4))
    w_lor = np.maximum(np.minimum(w_lor, lines.max_window), w_gauss)
    return w_gauss, w_lor, s_max


# --------------------------------------------------------------------------------------
# synthesis
# --------------------------------------------------------------------------------------


@dataclass
class _ArmGrid:
    """Grids of one arm: output pixels, intermediate (FFT) grid and fine grid."""

    u_out: np.ndarray  # output pixel centres, c ln(lambda) (km/s)
    h_out: float
    k: int  # intermediate points per output pixel
    m: int  # fine points per intermediate point
    h_int: float
    h_fine: float
    n_int: int
    j0: int  # intermediate index of the first output pixel
    u_fine0: float  # first fine-grid point

    @property
    def n_fine(self) -> int:
        """Number of fine-grid points."""
        return self.n_int * self.m


def _arm_grid(
    wavelength: np.ndarray, log_step: float, sigma_kernel_min: float, sigma_kernel_max: float, max_shift: float
) -> _ArmGrid:
    """Grids of one arm.

    The intermediate (FFT) grid has ``k`` points per output pixel, at least 4 per
    sigma of the narrowest convolution kernel; the fine grid, on which
    ``exp(-tau)`` is evaluated, has ``m`` points per intermediate point and a step of
    at most ``_FINE_STEP_KMS`` (about the thermal + microturbulent width of heavy
    atoms); both extend beyond the arm by 7 kernel sigmas plus the largest Doppler
    shift, so that the periodic FFT convolution does not wrap around.
    """
    u_out = C_KMS * np.log(wavelength)
    h_out = C_KMS * log_step
    # intermediate (FFT) grid: >= 4 points per sigma of the narrowest kernel
    k = max(1, math.ceil(h_out / (sigma_kernel_min / 4.0) - 1e-9))
    h_int = h_out / k
    m = max(1, math.ceil(h_int / _FINE_STEP_KMS - 1e-9))
    h_fine = h_int / m
    pad = 7.0 * sigma_kernel_max + max_shift + 2.0 * h_out
    n_pad = math.ceil(pad / h_int)
    n_core = (u_out.size - 1) * k + 1
    n_int = scipy.fft.next_fast_len(n_core + 2 * n_pad, real=True)
    u_int0 = u_out[0] - n_pad * h_int
    u_fine0 = u_int0 - 0.5 * (m - 1) * h_fine
    return _ArmGrid(u_out, h_out, k, m, h_int, h_fine, n_int, n_pad, u_fine0)


_CORE_CLASSES = np.unique(np.ceil(4.0 * 1.25 ** np.arange(60)).astype(int))
_WING_TERMS = 3  # terms of the expansion of the far Lorentzian wings


@dataclass
class _OpacityOperator:
    """Label-independent sparse operator that turns line coefficients into tau.

    ``tau(star, fine pixel) = D(star, :) @ matrix`` where the columns of ``D`` are

    * for each group of lines sharing a core half-window of ``c`` fine pixels: the
      exact pseudo-Voigt opacity of every line at its ``2 c + 1`` core pixels;
    * for the far Lorentzian wings (beyond the core, within the line's window):
      ``_WING_TERMS`` coefficients per line, from
      ``1 / (x**2 + h**2) = sum_k (-h**2)**k / x**(2k + 2)`` (relative error
      ``(h / x)**6 < 6e-5`` since the core spans 6 sigma of the widest profile).

    The taper that brings the Lorentzian smoothly to zero at the window edge is part
    of the (fixed) core offsets and wing basis.
    """

    groups: list  # (line indices, x**2 (L_g, W), taper (L_g, W), first column)
    n_lines: int
    wing_col0: int
    n_cols: int
    matrix: object  # scipy.sparse CSR, (n_cols, n_fine)


def _taper(x, w):
    """1 inside ``|x| < w / 2``, cosine roll-off to 0 at ``|x| = w``."""
    t = np.clip((np.abs(x) / w - 0.5) * 2.0, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _opacity_operator(grid: _ArmGrid, centres_u, w_gauss, w_lor) -> _OpacityOperator:
    """Build the sparse operator of the lines centred at ``centres_u`` (km/s) on the fine grid."""
    import scipy.sparse

    h = grid.h_fine
    n_fine = grid.n_fine
    n_lines = centres_u.size
    q_centre = np.rint((centres_u - grid.u_fine0) / h).astype(np.int64)
    c_need = np.ceil(w_gauss / h).astype(np.int64)
    cls = _CORE_CLASSES[np.minimum(np.searchsorted(_CORE_CLASSES, c_need), _CORE_CLASSES.size - 1)]
    cls = np.maximum(cls, c_need)
    rows, cols, vals = [], [], []
    groups = []
    col0 = 0
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        offs = np.arange(-c, c + 1)
        q = q_centre[idx, None] + offs[None, :]
        x = grid.u_fine0 + h * q - centres_u[idx, None]
        taper = _taper(x, w_lor[idx, None])
        n_w = offs.size
        r = col0 + np.arange(idx.size * n_w).reshape(idx.size, n_w)
        ok = (q >= 0) & (q < n_fine)
        rows.append(r[ok])
        cols.append(q[ok])
        vals.append(np.ones(int(ok.sum())))
        groups.append((idx, x * x, taper, col0))
        col0 += idx.size * n_w
    wing_col0 = col0
    core_half = cls  # wings start beyond the core window
    # far wings: positions with core_half < |q - q_centre| and |x| <= w_lor
    n_wing = np.maximum(np.floor(w_lor / h).astype(np.int64) + 1 - core_half, 0)
    total = int(n_wing.sum())
    if total:
        line_of = np.repeat(np.arange(n_lines), n_wing)
        start = np.cumsum(n_wing) - n_wing
        step = np.arange(total) - np.repeat(start, n_wing) + np.repeat(core_half, n_wing) + 1
        for sign in (-1, 1):
            q = q_centre[line_of] + sign * step
            x = grid.u_fine0 + h * q - centres_u[line_of]
            ok = (q >= 0) & (q < n_fine) & (np.abs(x) <= w_lor[line_of])
            base = _taper(x[ok], w_lor[line_of[ok]]) / x[ok] ** 2
            x2 = x[ok] ** 2
            for k in range(_WING_TERMS):
                rows.append(wing_col0 + k * n_lines + line_of[ok])
                cols.append(q[ok])
                vals.append(base / x2**k)
    n_cols = wing_col0 + _WING_TERMS * n_lines
    matrix = scipy.sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_cols, n_fine)
    )
    # transposed layout: tau.T = matrix.T @ D.T runs over contiguous star vectors
    matrix_t = matrix.T.tocsr()
    return _OpacityOperator(groups, n_lines, wing_col0, n_cols, matrix_t)


def _absorption_fine(op: _OpacityOperator, params):
    """``1 - exp(-tau)`` on the fine grid, shape (n, n_fine), from line parameters."""
    n = params["S"].shape[0]
    # per-line rows, stars last: (L, n)
    a_g = (params["S"] * (1.0 - params["eta"]) / (math.sqrt(2.0 * math.pi) * params["sigma"])).T
    b_g = (-0.5 / params["sigma"] ** 2).T
    a_l = (params["S"] * params["eta"] * params["hwhm"] / math.pi).T
    hw2 = (params["hwhm"] ** 2).T
    d = np.empty((op.n_cols, n))  # transposed coefficient matrix D.T
    for idx, x2, taper, col0 in op.groups:
        x2_ = x2[:, :, None]
        core = np.exp(b_g[idx, None, :] * x2_)
        core *= a_g[idx, None, :]
        core += a_l[idx, None, :] * taper[:, :, None] / (x2_ + hw2[idx, None, :])
        d[col0 : col0 + core.shape[0] * core.shape[1]] = core.reshape(-1, n)
    coef = np.ascontiguousarray(a_l)
    for k in range(_WING_TERMS):
        d[op.wing_col0 + k * op.n_lines : op.wing_col0 + (k + 1) * op.n_lines] = coef
        coef = coef * (-hw2)
    tau = op.matrix @ d  # (n_fine, n)
    np.negative(tau, out=tau)
    np.expm1(tau, out=tau)
    np.negative(tau, out=tau)  # 1 - exp(-tau)
    return np.ascontiguousarray(tau.T)


def _synthesise_arm(grid: _ArmGrid, lines: LineList, labels_cols, sigma_kernel, shift_u, progress=None):
    """Continuum-normalised flux (N, P_arm) of one arm; rest-frame physics, shifted."""
    teff, logg, feh, alpha = labels_cols
    n = teff.shape[0]
    p_out = grid.u_out.size
    out = np.empty((n, p_out))
    # lines that can touch the fine grid
    centres_u = C_KMS * np.log(lines.wavelength)
    w_gauss, w_lor, _ = _line_windows(lines)
    u_lo = grid.u_fine0
    u_hi = grid.u_fine0 + grid.h_fine * (grid.n_fine - 1)
    near = (centres_u + w_lor >= u_lo) & (centres_u - w_lor <= u_hi)
    lines_n = lines.select(near)
    op = _opacity_operator(grid, centres_u[near], w_gauss[near], w_lor[near])
    chunk = max(1, min(n, _CHUNK_ELEMENTS // (2 * grid.n_fine + op.n_cols)))
    logger.debug(
        "arm %.0f-%.0f A: %d pixels, %d lines, fine step %.3f km/s (%d points), operator %d x %d (%d nonzeros), "
        "%d stars per chunk",
        math.exp(grid.u_out[0] / C_KMS),
        math.exp(grid.u_out[-1] / C_KMS),
        p_out,
        len(lines_n),
        grid.h_fine,
        grid.n_fine,
        op.n_cols,
        grid.n_fine,
        op.matrix.nnz,
        chunk,
    )
    freq = scipy.fft.rfftfreq(grid.n_int, d=grid.h_int)
    box_var = (grid.m**2 - 1) * grid.h_fine**2 / 12.0
    pix = grid.j0 + grid.k * np.arange(p_out)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        params = _line_parameters(lines_n, teff[rows], logg[rows], feh[rows], alpha[rows])
        absorb = _absorption_fine(op, params)
        if grid.m > 1:
            absorb = absorb.reshape(absorb.shape[0], grid.n_int, grid.m).mean(axis=2)
        spec = scipy.fft.rfft(absorb, axis=1)
        del absorb
        # instrument + macroturbulence Gaussian, pixel box, Doppler shift
        var = np.maximum(sigma_kernel[rows, None] ** 2 - box_var, 0.0)
        spec *= np.exp(-2.0 * math.pi**2 * var * freq**2) * np.sinc(freq * grid.h_out)
        if np.any(shift_u[rows] != 0.0):
            phase = -2.0 * math.pi * freq * shift_u[rows, None]
            spec *= np.cos(phase) + 1j * np.sin(phase)
        conv = scipy.fft.irfft(spec, n=grid.n_int, axis=1)
        out[rows] = 1.0 - conv[:, pix]
        if progress is not None:
            progress.update(rows.stop - rows.start)
    return out


def _synthesise(instrument: Instrument, lines: LineList, labels_cols, rv, progressbar=False):
    """Noise-free continuum-normalised flux (N, P) in the observed frame."""
    teff, logg, _, _ = labels_cols
    n = teff.shape[0]
    sigma_inst = C_KMS / (instrument.resolving_power * 2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma_mac = _macroturbulence(teff[:, 0], logg[:, 0])
    sigma_kernel = np.sqrt(sigma_inst**2 + sigma_mac**2)
    shift_u = C_KMS * np.log1p(rv / C_KMS)
    max_shift = float(np.max(np.abs(shift_u))) if n else 0.0
    sigma_kernel_min = math.sqrt(sigma_inst**2 + 1.0)  # macroturbulence sigma is within [1, 6]
    sigma_kernel_max = math.sqrt(sigma_inst**2 + 6.0**2)
    pieces = []
    progress = None
    if progressbar:
        from tqdm import tqdm

        unit = "star" if len(instrument.arms) == 1 else "star-arm"
        progress = tqdm(total=n * len(instrument.arms), desc=f"simulating {instrument.name}", unit=unit)
    try:
        for wl in instrument.arm_grids():
            grid = _arm_grid(wl, instrument.log_step, sigma_kernel_min, sigma_kernel_max, max_shift)
            pieces.append(_synthesise_arm(grid, lines, labels_cols, sigma_kernel, shift_u, progress))
    finally:
        if progress is not None:
            progress.close()
    return np.concatenate(pieces, axis=1)


# --------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------


def _validate_labels(labels) -> dict[str, np.ndarray]:
    """Turn labels into a dict of 1-D float arrays and check them."""
    if _is_table(labels):
        missing = [k for k in LABEL_NAMES if not _has_key(labels, k)]
        if missing:
            raise LabelError(f"labels lack {', '.join(missing)}; expected columns {', '.join(LABEL_NAMES)}")
        cols = {k: np.asarray(labels[k], dtype=float).reshape(-1) for k in LABEL_NAMES}
    else:
        try:
            arr = np.asarray(labels, dtype=float)
        except (TypeError, ValueError):
            raise LabelError(
                f"labels must be a mapping with {', '.join(LABEL_NAMES)} or an (N, 4) array; "
                f"got {type(labels).__name__}"
            ) from None
        if arr.ndim == 1 and arr.size == len(LABEL_NAMES):
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(LABEL_NAMES):
            raise LabelError(f"label array must have shape (N, 4) in order {LABEL_NAMES}; got {arr.shape}")
        cols = {k: arr[:, i] for i, k in enumerate(LABEL_NAMES)}
    sizes = {k: v.size for k, v in cols.items()}
    if len(set(sizes.values())) != 1:
        raise LabelError(f"label columns differ in length: {sizes}")
    for k, v in cols.items():
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LabelError(f"label {k} is not finite for star {i} ({v[i]}); {int(bad.sum())} stars in all")
        lo, hi = LABEL_LIMITS[k]
        out = (v < lo) | (v > hi)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise LabelError(
                f"label {k} = {v[i]:g} for star {i} is outside the simulator's range [{lo:g}, {hi:g}]; "
                f"{int(out.sum())} stars in all"
            )
    return cols


def _is_table(obj) -> bool:
    """Whether ``obj`` holds named label columns (mapping, Dataset, DataFrame, structured array)."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.names is not None
    return isinstance(obj, Mapping) or hasattr(obj, "keys")


def _has_key(obj, key) -> bool:
    """Whether the label table ``obj`` has a column ``key``."""
    if isinstance(obj, np.ndarray):
        return key in (obj.dtype.names or ())
    try:
        return key in obj
    except TypeError:
        return False


def _truncated_normal(rng, mean, sd, lo, hi, size):
    """Draws from N(mean, sd) truncated to [lo, hi] (inverse-CDF; mean may be an array)."""
    from scipy.special import ndtr, ndtri

    mean = np.broadcast_to(np.asarray(mean, dtype=float), (size,))
    a = ndtr((lo - mean) / sd)
    b = ndtr((hi - mean) / sd)
    u = rng.uniform(size=size)
    z = ndtri(np.clip(a + u * (b - a), 1e-300, 1.0 - 1e-16))
    return np.clip(mean + sd * z, lo, hi)


def _draw_metallicity(rng, n):
    """[Fe/H] ~ N(-0.15, 0.3) truncated to [-1.5, 0.5]; [alpha/Fe] on two sequences."""
    feh = _truncated_normal(rng, -0.15, 0.3, -1.5, 0.5, n)
    # probability of the high-alpha (thick disc) sequence: high at low [Fe/H]
    p_high = 0.08 + 0.62 / (1.0 + np.exp((feh + 0.45) / 0.15))
    high = rng.random(n) < p_high
    alpha_low = np.clip(0.02 - 0.12 * feh, -0.05, 0.15)  # thin disc
    alpha_high = 0.30 - 0.22 * np.clip(feh + 0.7, 0.0, None)  # thick disc, knee at -0.7
    mean = np.where(high, alpha_high, alpha_low)
    lo, hi = POPULATION_LIMITS["giants"]["ALPHA_FE"]
    alpha = _truncated_normal(rng, mean, 0.035, lo, hi, n)
    return feh, alpha


def _draw_giants(rng, n):
    """Teff, logg, [Fe/H], [alpha/Fe] of ``n`` red giants (see :func:`draw_labels`)."""
    lim = POPULATION_LIMITS["giants"]
    feh, alpha = _draw_metallicity(rng, n)
    teff = np.empty(n)
    logg = np.empty(n)
    todo = np.arange(n)
    for _ in range(200):
        if todo.size == 0:
            break
        m = todo.size
        f = feh[todo]
        # red clump (only for [Fe/H] > -0.9; metal-poor He-burning stars are bluer)
        clump = (rng.random(m) < 0.3) & (f > -0.9)
        # RGB: logg density rising towards the base of the giant branch
        g_rgb = lim["LOGG"][0] + (lim["LOGG"][1] - lim["LOGG"][0]) * np.sqrt(rng.random(m))
        t_rgb = 4570.0 + 350.0 * (g_rgb - 2.5) - 280.0 * f + rng.normal(0.0, 60.0, m)
        g_rc = 2.45 + rng.normal(0.0, 0.08, m)
        t_rc = 4680.0 - 350.0 * f + rng.normal(0.0, 70.0, m)
        t = np.where(clump, t_rc, t_rgb)
        g = np.where(clump, g_rc, g_rgb) + rng.normal(0.0, 0.05, m)
        ok = (t >= lim["TEFF"][0]) & (t <= lim["TEFF"][1]) & (g >= lim["LOGG"][0]) & (g <= lim["LOGG"][1])
        teff[todo[ok]] = t[ok]
        logg[todo[ok]] = g[ok]
        todo = todo[~ok]
    if todo.size:  # pathological [Fe/H] with no valid giant: put it on the clipped relation
        teff[todo] = np.clip(4570.0 - 280.0 * feh[todo], *lim["TEFF"])
        logg[todo] = np.clip(2.5 + (teff[todo] - 4570.0 + 280.0 * feh[todo]) / 350.0, *lim["LOGG"])
    return teff, logg, feh, alpha


def _draw_dwarfs(rng, n):
    """Teff, logg, [Fe/H], [alpha/Fe] of ``n`` dwarfs (see :func:`draw_labels`)."""
    lim = POPULATION_LIMITS["dwarfs"]
    feh, alpha = _draw_metallicity(rng, n)
    teff = _truncated_normal(rng, 5600.0, 550.0, *lim["TEFF"], n)
    x = (teff - 4300.0) / 2500.0
    logg_zams = 4.66 - 0.40 * x - 0.04 * feh
    evolved = rng.exponential(0.04 + 0.12 * x)  # hotter dwarfs are more evolved
    mean = logg_zams - evolved
    logg = _truncated_normal(rng, mean, 0.03, *lim["LOGG"], n)
    return teff, logg, feh, alpha


def draw_labels(n: int, rng=None, population: str = "giants") -> dict[str, np.ndarray]:
    """Draw a realistic joint distribution of stellar labels.

    * ``[Fe/H]`` ~ N(-0.15, 0.3) truncated to [-1.5, 0.5].
    * ``[alpha/Fe]`` on two sequences: a low-alpha (thin disc) sequence
      ``0.02 - 0.12 [Fe/H]`` (within [-0.05, 0.15]) and a high-alpha (thick disc)
      sequence at 0.30 declining by 0.22 per dex above [Fe/H] = -0.7; the chance of
      the high-alpha sequence is ``0.08 + 0.62 / (1 + exp(([Fe/H] + 0.45) / 0.15))``;
      scatter 0.035, truncated to [-0.2, 0.5].
    * ``giants``: 70 % red-giant branch with ``Teff = 4570 + 350 (logg - 2.5) -
      280 [Fe/H] + N(0, 60)`` (density rising towards higher logg), 30 % red clump
      (``logg = 2.45 +- 0.08``, ``Teff = 4680 - 350 [Fe/H] +- 70``, only for
      [Fe/H] > -0.9); kept within Teff 3900--5300 K and logg 0.8--3.6.
    * ``dwarfs``: ``Teff`` ~ N(5600, 550) truncated to 4300--6800 K, ``logg`` a main
      sequence ``4.66 - 0.40 (Teff - 4300) / 2500 - 0.04 [Fe/H]`` minus an exponential
      evolutionary offset (larger for hotter stars), kept within 4.0--4.7.
    * ``mixed``: each star is a giant with probability 0.6, else a dwarf.

    The ranges are :data:`POPULATION_LIMITS`.

    Parameters
    ----------
    n : int
        Number of stars (>= 0).
    rng : None, int or numpy.random.Generator, optional
        Random seed or generator.
    population : {"giants", "dwarfs", "mixed"}, optional

    Returns
    -------
    dict of str to ndarray, shape (n,)
        Keys ``TEFF`` (K), ``LOGG`` (dex, cgs), ``FE_H`` (dex), ``ALPHA_FE`` (dex).

    Raises
    ------
    InvalidInputError
        For a negative or non-integer ``n``, a bad ``rng`` or an unknown population.
    """
    n = _check_count(n, "n", 0)
    gen = _as_generator(rng)
    if not isinstance(population, str) or population.lower() not in POPULATION_LIMITS:
        raise InvalidInputError(f"unknown population {population!r}; expected one of {sorted(POPULATION_LIMITS)}")
    population = population.lower()
    if population == "giants":
        cols = _draw_giants(gen, n)
    elif population == "dwarfs":
        cols = _draw_dwarfs(gen, n)
    else:
        is_giant = gen.random(n) < 0.6
        g = _draw_giants(gen, int(is_giant.sum()))
        d = _draw_dwarfs(gen, int((~is_giant).sum()))
        cols = []
        for a, b in zip(g, d, strict=True):
            c = np.empty(n)
            c[is_giant] = a
            c[~is_giant] = b
            cols.append(c)
    return {k: np.asarray(v, dtype=float) for k, v in zip(LABEL_NAMES, cols, strict=True)}


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


# --------------------------------------------------------------------------------------
# survey pipelines
# --------------------------------------------------------------------------------------

#: Random errors (1 sigma) of the mock survey pipelines.
PIPELINE_NOISE: dict[str, dict[str, float]] = {
    "apogee": {"TEFF": 50.0, "LOGG": 0.05, "FE_H": 0.03, "ALPHA_FE": 0.02},
    "lamost": {"TEFF": 110.0, "LOGG": 0.18, "FE_H": 0.10},
}


def lamost_teff_offset(teff, logg=None, feh=None):
    """Systematic Teff offset (K) of the mock LAMOST pipeline: ``80 + 0.06 (Teff - 4800)``.

    Parameters
    ----------
    teff : array_like
        True effective temperature (K).
    logg, feh : array_like, optional
        Unused (accepted for a uniform signature).

    Returns
    -------
    ndarray
        Reported minus true Teff, before noise.
    """
    return 80.0 + 0.06 * (np.asarray(teff, dtype=float) - 4800.0)


def lamost_logg_offset(teff, logg, feh=None):
    """Systematic logg offset of the mock LAMOST pipeline.

    ``0.20 + 0.08 (logg - 2.5) + 1e-4 (Teff - 4800)``: gravities of giants are
    over-estimated, more so for less evolved and hotter stars.

    Parameters
    ----------
    teff, logg : array_like
        True Teff (K) and logg.
    feh : array_like, optional
        Unused.

    Returns
    -------
    ndarray
    """
    teff = np.asarray(teff, dtype=float)
    logg = np.asarray(logg, dtype=float)
    return 0.20 + 0.08 * (logg - 2.5) + 1e-4 * (teff - 4800.0)


def lamost_feh_offset(feh, teff=None, logg=None):
    """Systematic [Fe/H] offset of the mock LAMOST pipeline: ``-0.08 - 0.1 ([Fe/H] + 0.3)``.

    The reported metallicity scale is lower overall and compressed towards [Fe/H] = -0.3.
    The sizes of these offsets are of the order seen between LAMOST DR2 and APOGEE giants
    (Ho+2017), not calibrated to them.

    Parameters
    ----------
    feh : array_like
        True [Fe/H].
    teff, logg : array_like, optional
        Unused.

    Returns
    -------
    ndarray
    """
    return -0.08 - 0.1 * (np.asarray(feh, dtype=float) + 0.3)


def pipeline_labels(true_labels, survey: str = "lamost", rng=None) -> dict[str, np.ndarray]:
    """Labels as a survey's own pipeline would report them for the simulated stars.

    * ``"apogee"``: truth + Gaussian noise of sd 50 K (``TEFF``), 0.05 (``LOGG``),
      0.03 (``FE_H``), 0.02 (``ALPHA_FE``); no systematic offset.
    * ``"lamost"``: truth + :func:`lamost_teff_offset` (``80 + 0.06 (Teff - 4800)``
      K), :func:`lamost_logg_offset` (``0.20 + 0.08 (logg - 2.5) + 1e-4 (Teff -
      4800)``), :func:`lamost_feh_offset` (``-0.08 - 0.1 ([Fe/H] + 0.3)``), all evaluated
      on the true labels, + Gaussian noise of sd 110 K, 0.18, 0.10.  The LAMOST
      pipeline reports no ``ALPHA_FE``.

    Noise levels are :data:`PIPELINE_NOISE`; the reported errors are returned as
    ``e_TEFF``, ... columns.

    Parameters
    ----------
    true_labels : mapping, xarray.Dataset or array_like (N, 4)
        True ``TEFF``, ``LOGG``, ``FE_H``, ``ALPHA_FE`` (an (N, 4) array is in that
        order; ``ALPHA_FE`` may be absent for ``"lamost"``).
    survey : {"lamost", "apogee"}, optional
    rng : None, int or numpy.random.Generator, optional

    Returns
    -------
    dict of str to ndarray, shape (N,)
        ``TEFF``, ``LOGG``, ``FE_H`` (and ``ALPHA_FE`` for APOGEE), plus ``e_X`` errors.

    Raises
    ------
    InvalidInputError
        For an unknown survey.
    LabelError
        For missing or non-finite labels.
    """
    if not isinstance(survey, str) or survey.strip().lower() not in PIPELINE_NOISE:
        raise InvalidInputError(f"unknown survey {survey!r}; expected one of {sorted(PIPELINE_NOISE)}")
    survey = survey.strip().lower()
    needed = LABEL_NAMES if survey == "apogee" else LABEL_NAMES[:3]
    if _is_table(true_labels):
        missing = [k for k in needed if not _has_key(true_labels, k)]
        if missing:
            raise LabelError(f"true_labels lack {', '.join(missing)}; {survey} needs {', '.join(needed)}")
        truth = {k: np.asarray(true_labels[k], dtype=float).reshape(-1) for k in needed}
    else:
        arr = np.asarray(true_labels, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != len(LABEL_NAMES):
            raise LabelError(f"true_labels array must have shape (N, 4) in order {LABEL_NAMES}; got {arr.shape}")
        truth = {k: arr[:, i] for i, k in enumerate(LABEL_NAMES) if k in needed}
    sizes = {v.size for v in truth.values()}
    if len(sizes) != 1:
        raise LabelError(f"true label columns differ in length: { {k: v.size for k, v in truth.items()} }")
    for k, v in truth.items():
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LabelError(f"true label {k} is not finite for star {i}; {int(bad.sum())} stars in all")
    gen = _as_generator(rng)
    noise = PIPELINE_NOISE[survey]
    n = next(iter(sizes))
    if survey == "apogee":
        reported = {k: truth[k].copy() for k in LABEL_NAMES}
    else:
        t, g, f = truth["TEFF"], truth["LOGG"], truth["FE_H"]
        reported = {
            "TEFF": t + lamost_teff_offset(t, g, f),
            "LOGG": g + lamost_logg_offset(t, g, f),
            "FE_H": f + lamost_feh_offset(f, t, g),
        }
    out = {}
    for k in reported:
        out[k] = reported[k] + gen.normal(0.0, noise[k], size=n)
    for k in reported:
        out[f"e_{k}"] = np.full(n, noise[k])
    return out
