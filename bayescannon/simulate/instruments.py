"""Simulated spectrographs: wavelength coverage, resolving power, sampling, masked
windows and the pixel-mask bits of simulated spectra (APOGEE-, LAMOST- and GALAH-like).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from bayescannon.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "APOGEE",
    "GALAH",
    "INSTRUMENTS",
    "LAMOST",
    "MASK_BITS",
    "Instrument",
    "get_instrument",
]


#: Pixel-mask bits written by :func:`simulate_spectra` (``ds["mask"]``).
MASK_BITS: dict[str, int] = {"BADPIX": 1, "WINDOW": 2, "SKYLINE": 4}
_MASK_BITS_DOC = (
    "1=BADPIX: random bad pixel (ivar=0, flux is garbage); "
    "2=WINDOW: instrument masked window - telluric band, bright sky line or detector gap (ivar=0); "
    "4=SKYLINE: sky-line residual in un-normalised spectra (ivar lowered, not zero)"
)


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
