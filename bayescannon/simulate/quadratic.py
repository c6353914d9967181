"""Spectra drawn from a known quadratic Cannon model (random θ, s²): the truth against
which validation code is tested and benchmarked.

Unlike :mod:`bayescannon.simulate.synthesis`, whose spectra a quadratic model cannot
describe exactly, these spectra are exactly quadratic in the labels plus Gaussian
intrinsic scatter and noise, so a fitted model's θ, s² and labels can be compared with
the truth.
"""

from __future__ import annotations

import numpy as np

from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import LabelError, ShapeMismatchError
from bayescannon.spectra import make_spectra

__all__ = ["MOCK_LABEL_RANGES", "mock_quadratic_survey"]

#: Label ranges (physical units) of :func:`mock_quadratic_survey`.
MOCK_LABEL_RANGES = {
    "TEFF": (4000.0, 5400.0),
    "LOGG": (1.0, 3.5),
    "FE_H": (-1.2, 0.4),
    "ALPHA_FE": (-0.1, 0.35),
    "VMACRO": (3.0, 12.0),
    "C_FE": (-0.3, 0.3),
}


def mock_quadratic_survey(
    n_stars: int,
    n_pixels: int = 200,
    label_names=("TEFF", "LOGG", "FE_H"),
    *,
    snr=(20.0, 200.0),
    scatter: float = 0.005,
    coefficient_scale: float = 0.05,
    theta=None,
    s2=None,
    labels=None,
    wavelength=None,
    rng=0,
    ids=None,
):
    """Spectra drawn from a known quadratic Cannon model (random θ, s²).

    The truth: scaled labels ``x = (ℓ − mid)/width`` uniform in [−0.5, 0.5] (physical
    ranges :data:`MOCK_LABEL_RANGES`, else [0, 1]); θ has a constant term ``1 − depth``
    (depth uniform in [0, 0.3]), linear terms ``N(0, coefficient_scale)`` and quadratic
    terms ``N(0, coefficient_scale/2)``; s² per pixel is exponential with mean
    ``scatter²``. Flux = ``θ·v(x) + N(0, s²) + N(0, 1/S/N²)``; ivar = ``S/N²``.

    Parameters
    ----------
    n_stars, n_pixels : int
    label_names : sequence of str
    snr : float, (lo, hi) or array_like (N,)
        S/N per pixel; a pair is drawn log-uniformly.
    scatter : float
        Typical intrinsic scatter s.
    coefficient_scale : float
        Size of the linear coefficients.
    theta : ndarray (P, T), optional
        Use this truth (in the mock's scaled units) instead of drawing one — e.g. the
        same stars seen by a second "survey" with other coefficients.
    s2 : ndarray (P,), optional
    labels : ndarray (N, K), optional
        Physical labels to use instead of drawing them.
    wavelength : ndarray (P,), optional
        Default: 15,200 … 16,900 Angstrom.
    rng : int or numpy.random.Generator
    ids : array_like, optional

    Returns
    -------
    xarray.Dataset
        The spectra container with label columns, ``snr``, ``true_theta`` (pixel,
        term) and ``true_s2`` (pixel); attrs ``label_mid`` and ``label_width`` give the
        truth's scaling.
    """

    gen = np.random.default_rng(rng)
    label_names = [str(n) for n in label_names]
    vec = PolynomialVectorizer(label_names, 2)
    k, t = len(label_names), vec.n_terms
    ranges = np.array([MOCK_LABEL_RANGES.get(n, (0.0, 1.0)) for n in label_names])
    mid, width = ranges.mean(axis=1), ranges[:, 1] - ranges[:, 0]
    if labels is None:
        x = gen.uniform(-0.5, 0.5, size=(n_stars, k))
        labels = mid + width * x
    else:
        labels = np.asarray(labels, dtype=float)
        if labels.shape != (n_stars, k):
            raise LabelError(f"labels must have shape ({n_stars}, {k}); got {labels.shape}")
        x = (labels - mid) / width
    if theta is None:
        theta = np.empty((n_pixels, t))
        theta[:, 0] = 1.0 - gen.uniform(0.0, 0.3, size=n_pixels)
        lin = 1 + np.arange(k)
        theta[:, lin] = gen.normal(0.0, coefficient_scale, size=(n_pixels, k))
        theta[:, 1 + k :] = gen.normal(0.0, coefficient_scale / 2.0, size=(n_pixels, t - 1 - k))
    theta = np.asarray(theta, dtype=float)
    if theta.shape != (n_pixels, t):
        raise ShapeMismatchError(f"theta must have shape ({n_pixels}, {t}); got {theta.shape}")
    if s2 is None:
        s2 = gen.exponential(scatter**2, size=n_pixels)
    s2 = np.asarray(s2, dtype=float)
    if np.ndim(snr) == 0:
        snr_arr = np.full(n_stars, float(snr))
    elif np.shape(snr) == (2,) and n_stars != 2:
        lo, hi = snr
        snr_arr = np.exp(gen.uniform(np.log(lo), np.log(hi), size=n_stars))
    else:
        snr_arr = np.asarray(snr, dtype=float)
    if snr_arr.shape != (n_stars,):
        raise ShapeMismatchError(f"snr must be a number, a (lo, hi) pair or ({n_stars},); got {np.shape(snr)}")
    clean = vec(x) @ theta.T
    sigma = 1.0 / snr_arr[:, None]
    flux = clean + gen.normal(size=clean.shape) * np.sqrt(s2)[None, :] + gen.normal(size=clean.shape) * sigma
    ivar = np.broadcast_to(snr_arr[:, None] ** 2, flux.shape).copy()
    if wavelength is None:
        wavelength = np.linspace(15200.0, 16900.0, n_pixels)
    extras = {name: labels[:, i] for i, name in enumerate(label_names)}
    ds = make_spectra(wavelength, flux, ivar, ids=ids, attrs={"survey": "mock-quadratic"}, snr=snr_arr, **extras)
    ds["true_theta"] = (("pixel", "term"), theta)
    ds["true_s2"] = ("pixel", s2)
    ds = ds.assign_coords(term=vec.term_names)
    ds.attrs["label_names"] = " ".join(label_names)
    ds.attrs["label_mid"] = mid.tolist()
    ds.attrs["label_width"] = width.tolist()
    return ds
