"""APOGEE spectrum emulator (The Payne's per-pixel neural network) for realistic tests.

The emulator file is reference data kept *outside* the package (``../shared/data/
apogee_payne_emulator.npz`` beside the project root, or the path in the environment
variable ``BAYESCANNON_EMULATOR``). It maps 5 labels (TEFF, LOGG, FE_H, ALPHA_FE,
VMACRO) to a continuum-normalised APOGEE spectrum on 7,214 pixels. Its response is not
a quadratic in the labels, so a quadratic Cannon has real model error on it, as on real
stars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bayescannon.errors import InvalidInputError, LabelError
from bayescannon.spectra import make_spectra

__all__ = ["EMULATOR_LABELS", "Emulator", "find_emulator", "load_emulator"]

EMULATOR_LABELS = ("TEFF", "LOGG", "FE_H", "ALPHA_FE", "VMACRO")


def find_emulator() -> Path | None:
    """Path of the emulator file, or None when it is not available."""
    env = os.environ.get("BAYESCANNON_EMULATOR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [
        Path.cwd() / ".." / "shared" / "data" / "apogee_payne_emulator.npz",
        here / ".." / "shared" / "data" / "apogee_payne_emulator.npz",
    ]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return None


@dataclass
class Emulator:
    """The emulator's weights and grids."""

    w0: np.ndarray
    b0: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    x_min: np.ndarray
    x_max: np.ndarray
    wavelength: np.ndarray
    bad_pixel_mask: np.ndarray
    continuum_pixels: np.ndarray

    def flux(self, labels, chunk: int = 500) -> np.ndarray:
        """Noise-free normalised flux (N, 7214) for labels (N, 5) in physical units."""
        labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
        if labels.shape[1] != 5:
            raise LabelError(f"the emulator takes 5 labels {EMULATOR_LABELS}; got {labels.shape[1]}")
        s = (labels - self.x_min) / (self.x_max - self.x_min) - 0.5
        out = np.empty((labels.shape[0], self.w0.shape[0]))
        for a in range(0, labels.shape[0], chunk):  # chunks of stars bound memory
            z = np.einsum("pjk,nk->npj", self.w0, s[a : a + chunk]) + self.b0
            h = 1.0 / (1.0 + np.exp(-z))
            out[a : a + chunk] = np.einsum("pj,npj->np", self.w1, h) + self.b1
        return out

    def draw_labels(self, n: int, rng=None, margin: float = 0.05, vmacro=None) -> np.ndarray:
        """Uniform labels inside the emulator's range (shrunk by ``margin`` of its width).

        ``vmacro`` fixes the 5th label (km/s) when given.
        """
        rng = np.random.default_rng(rng)
        lo = self.x_min + margin * (self.x_max - self.x_min)
        hi = self.x_max - margin * (self.x_max - self.x_min)
        out = rng.uniform(lo, hi, size=(n, 5))
        if vmacro is not None:
            out[:, 4] = vmacro
        return out

    def survey(self, labels, snr=(30.0, 250.0), rng=None, ids=None):
        """Noisy spectra container for ``labels`` (N, 5); S/N log-uniform in ``snr``.

        APOGEE's bad pixels get ivar = 0.
        """
        rng = np.random.default_rng(rng)
        labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
        n = labels.shape[0]
        if np.ndim(snr) == 0:
            s = np.full(n, float(snr))
        elif len(snr) == 2 and n != 2:
            if not (0 < snr[0] <= snr[1]):
                raise InvalidInputError(f"snr range must be positive and increasing; got {snr}")
            s = np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]), n))
        else:
            s = np.asarray(snr, dtype=float)
        flux = self.flux(labels)
        sigma = 1.0 / s[:, None]
        noisy = flux + rng.normal(size=flux.shape) * sigma
        ivar = np.broadcast_to(1.0 / sigma**2, flux.shape).copy()
        ivar[:, self.bad_pixel_mask] = 0.0
        extras = {name: labels[:, k] for k, name in enumerate(EMULATOR_LABELS)}
        return make_spectra(
            self.wavelength, noisy, ivar, ids=ids, snr=s, attrs={"survey": "emulated APOGEE (The Payne)"}, **extras
        )


def load_emulator(path=None) -> Emulator:
    """Load the emulator (default: :func:`find_emulator`).

    Raises
    ------
    FileNotFoundError
        When the file is not available.
    """
    path = Path(path) if path is not None else find_emulator()
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            "apogee_payne_emulator.npz not found (looked in ../shared/data and $BAYESCANNON_EMULATOR)"
        )
    d = np.load(path)
    return Emulator(
        w0=d["w0"].astype(np.float64),
        b0=d["b0"].astype(np.float64),
        w1=d["w1"].astype(np.float64),
        b1=d["b1"].astype(np.float64),
        x_min=d["x_min"],
        x_max=d["x_max"],
        wavelength=d["wavelength"],
        bad_pixel_mask=d["bad_pixel_mask"].astype(bool),
        continuum_pixels=d["continuum_pixels"].astype(bool),
    )
