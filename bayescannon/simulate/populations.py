"""Label populations: true labels drawn for giants, dwarfs or both, and the labels that
mock survey pipelines (APOGEE-, LAMOST-like) report for them, offsets and noise included.
"""

from __future__ import annotations

import logging

import numpy as np

from bayescannon.errors import InvalidInputError, LabelError
from bayescannon.simulate.labels import LABEL_NAMES, _as_generator, _check_count, _has_key, _is_table

logger = logging.getLogger(__name__)

__all__ = [
    "PIPELINE_NOISE",
    "POPULATION_LIMITS",
    "draw_labels",
    "lamost_feh_offset",
    "lamost_logg_offset",
    "lamost_teff_offset",
    "pipeline_labels",
]


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


# --------------------------------------------------------------------------------------
# true labels
# --------------------------------------------------------------------------------------


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
