"""Shared fixtures: simulated data from a *known* quadratic Cannon model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bayescannon.core.vectorizer import PolynomialVectorizer

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LABELS = ["TEFF", "LOGG", "FE_H"]
OFFSET = np.array([4800.0, 2.5, -0.2])
SCALE = np.array([800.0, 1.5, 0.8])


def shared_file(name: str) -> Path:
    """Path of a ../shared/data file, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"reference data {name} not available (../shared/data absent)")
    return path.resolve()


class Truth:
    """A known Cannon model (θ, s²) and a sampler of spectra from it."""

    def __init__(self, n_pixels=300, seed=0, s2_range=(1e-6, 1e-4), zero_s2_fraction=0.2):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.vec = PolynomialVectorizer(LABELS, 2)
        t = self.vec.n_terms
        self.theta = rng.normal(scale=0.05, size=(n_pixels, t))
        self.theta[:, 0] = 1.0 - np.abs(rng.normal(scale=0.1, size=n_pixels))
        self.s2 = np.exp(rng.uniform(*np.log(s2_range), size=n_pixels))
        self.s2[rng.random(n_pixels) < zero_s2_fraction] = 0.0
        self.n_pixels = n_pixels

    def labels(self, n):
        # uniform in the box [-0.5, 0.5] scaled units → physical
        return OFFSET + SCALE * self.rng.uniform(-0.5, 0.5, size=(n, len(LABELS)))

    def scaled(self, labels, offset, scale):
        return (labels - offset) / scale

    def spectra(self, labels, offset, scale, snr=(50.0, 200.0), homoscedastic=False):
        x = self.scaled(labels, offset, scale)
        n = len(labels)
        if homoscedastic:
            s = np.full(n, snr[0])
        else:
            s = self.rng.uniform(*snr, size=n)
        ivar = np.repeat((s**2)[:, None], self.n_pixels, axis=1)
        sigma = np.sqrt(1.0 / ivar + self.s2[None, :])
        flux = self.vec(x) @ self.theta.T + self.rng.normal(size=ivar.shape) * sigma
        return flux, ivar


@pytest.fixture
def truth():
    return Truth()


@pytest.fixture(scope="session")
def trained():
    """A model trained on data from a known truth (shared across tests: read-only)."""
    from bayescannon import CannonModel

    tr = Truth(n_pixels=200, seed=11)
    y = tr.labels(600)
    offset, scale = np.median(y, 0), np.subtract(*np.percentile(y, [97.5, 2.5], 0))
    flux, ivar = tr.spectra(y, offset, scale)
    model = CannonModel(LABELS, 2, random_state=0).fit(flux, ivar, y, wavelength=np.linspace(15100, 15300, 200))
    return tr, model


@pytest.fixture
def small_homogeniser():
    """A factory of one-label homogenisers (FE_H onto REF, S/N as the extra feature), small
    enough for the suite."""
    from bayescannon.homogenise import Homogeniser

    def make():
        return Homogeniser(
            ["FE_H"],
            {"FE_H": ["REF"]},
            features=["SNR"],
            n_estimators=60,
            max_depth=3,
            learning_rate=0.2,
            n_draws=60,
            min_overlap=100,
            random_state=0,
        )

    return make
