"""Split-normal distributions: sampling, quantiles, fitting from percentiles, combination.

A split normal (two-piece normal with a continuous density) with mode ``mu``, lower
scale ``s1`` and upper scale ``s2`` has the density

.. math:: p(x) = \\frac{2}{\\sqrt{2\\pi}(s_1+s_2)} \\exp\\left(-\\frac{(x-\\mu)^2}{2 s^2}\\right),
   \\quad s = s_1 \\text{ if } x < \\mu \\text{ else } s_2 .

It puts the mass ``s1 / (s1 + s2)`` below the mode, and exactly 68.27 % of it in
``[mu - s1, mu + s2]`` whatever the asymmetry: that is the convention by which a
catalogue's ``(value, P16, P84)`` is read (``mu = value``, ``s1 = value - P16``,
``s2 = P84 - value``) and written back (see ``docs/guides/homogenise.md``).

Every function works on arrays of stars at once (no Python loop over stars).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from bayescannon.errors import InvalidInputError
from bayescannon.homogenise.kernels import combine_stars

__all__ = [
    "split_normal_sample",
    "split_normal_ppf",
    "split_normal_nll",
    "fit_split_normal",
    "combine_split_normal",
    "combine_chained",
    "DELTA_NLL_68",
    "DELTA_NLL_95",
]

#: ΔNLL of the 68.27 % (1σ) and 95 % intervals of a combination.
DELTA_NLL_68 = 0.5
DELTA_NLL_95 = 0.5 * 1.959963984540054**2


def _ndtri(p):
    return special.ndtri(p)


def split_normal_ppf(p, mu, s1, s2):
    """Quantile function: the value below which the fraction ``p`` of the mass lies.

    Parameters
    ----------
    p : float or array
        Probabilities in (0, 1).
    mu, s1, s2 : array-like
        Mode, lower and upper scales (broadcast against ``p``).

    Returns
    -------
    numpy.ndarray
    """
    p, mu, s1, s2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (p, mu, s1, s2)))
    r = s1 / (s1 + s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = mu + s1 * _ndtri(np.clip(p / (2.0 * r), 0.0, 1.0))
        right = mu + s2 * _ndtri(np.clip(1.0 - (1.0 - p) / (2.0 * (1.0 - r)), 0.0, 1.0))
    return np.where(p <= r, left, right)


def split_normal_sample(rng: np.random.Generator, mu, s1, s2, n_draws: int) -> np.ndarray:
    """Draws from split normals, shape ``mu.shape + (n_draws,)``.

    The side is chosen with probability ``s1 / (s1 + s2)`` for the lower one, then a
    half-normal of that side's scale is drawn.
    """
    mu, s1, s2 = (np.asarray(a, dtype=float)[..., None] for a in (mu, s1, s2))
    shape = np.broadcast_shapes(mu.shape, s1.shape, s2.shape)[:-1] + (n_draws,)
    z = np.abs(rng.standard_normal(shape))
    lower = rng.random(shape) < s1 / (s1 + s2)
    return np.where(lower, mu - s1 * z, mu + s2 * z)


def split_normal_nll(x, mu, s1, s2):
    """Negative log-likelihood of ``x`` (constant terms included), broadcast."""
    x, mu, s1, s2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x, mu, s1, s2)))
    s = np.where(x < mu, s1, s2)
    return 0.5 * ((x - mu) / s) ** 2 + np.log(0.5 * np.sqrt(2.0 * np.pi) * (s1 + s2))


def _ratio_stat(log_rho):
    """(q84 - q50) / (q50 - q16) of a split normal with s1 = 1, s2 = exp(log_rho)."""
    s2 = np.exp(log_rho)
    q = [split_normal_ppf(p, 0.0, 1.0, s2) for p in (special.ndtr(-1.0), 0.5, special.ndtr(1.0))]
    return (q[2] - q[1]) / (q[1] - q[0]), q


def fit_split_normal(p16, p50, p84, *, n_iter: int = 50):
    """The split normal whose 15.87/50/84.13 percentiles are ``p16, p50, p84``.

    Solved by bisection on ``log(s2/s1)`` (the ratio ``(p84 - p50) / (p50 - p16)`` grows
    monotonically with it), vectorised over stars; the asymmetry is limited to
    ``s2/s1`` in [1/50, 50].

    Returns
    -------
    mu, s1, s2 : numpy.ndarray
    """
    p16, p50, p84 = (np.asarray(a, dtype=float) for a in (p16, p50, p84))
    lo_w = np.maximum(p50 - p16, 1e-300)
    target = np.clip((p84 - p50) / lo_w, 1e-6, 1e6)
    a = np.full(target.shape, -np.log(50.0))
    b = np.full(target.shape, np.log(50.0))
    for _ in range(n_iter):
        m = 0.5 * (a + b)
        stat, _ = _ratio_stat(m)
        up = stat < target
        a = np.where(up, m, a)
        b = np.where(up, b, m)
    log_rho = 0.5 * (a + b)
    _, q = _ratio_stat(log_rho)
    s1 = (p84 - p16) / (q[2] - q[0])
    s2 = s1 * np.exp(log_rho)
    mu = p50 - s1 * q[1]
    return mu, s1, s2


def combine_split_normal(mu, s1, s2, *, delta_nll=(DELTA_NLL_68, DELTA_NLL_95), n_iter: int = 42):
    """Combine several split-normal measurements per star by minimising their summed NLL.

    Parameters
    ----------
    mu, s1, s2 : array, shape (n_stars, n_measurements)
        Modes and scales; NaN marks a missing measurement.
    delta_nll : sequence of float
        Interval levels: the interval is where the summed NLL is within ``delta_nll`` of
        its minimum (0.5: 68.27 %, 1.92: 95 %).

    Returns
    -------
    value : numpy.ndarray, shape (n_stars,)
        The minimum (NaN where a star has no measurement).
    intervals : list of (lower, upper) arrays, one per ``delta_nll``.
    n : numpy.ndarray
        Measurements combined.
    chi2 : numpy.ndarray
        ``2 * (NLL_min)`` without constants: a χ² with ``n - 1`` degrees of freedom when
        the measurements agree.

    Notes
    -----
    The summed NLL is convex and piecewise quadratic with breaks at the modes: on each of
    the ``n + 1`` segments the minimum of the quadratic is computed in closed form and the
    one inside its segment is the global minimum. Each interval end is the root of the
    quadratic of the segment where the NLL crosses its minimum plus ``delta_nll``, found
    by walking the segments outward from the minimum: exact, in one compiled pass over the
    stars (:func:`~bayescannon.homogenise.kernels.combine_stars`). ``n_iter`` is no longer
    used (the ends were found by bisection before) and kept for compatibility.
    """
    mu, s1, s2 = (np.ascontiguousarray(np.atleast_2d(np.asarray(a, dtype=float))) for a in (mu, s1, s2))
    mu, s1, s2 = np.broadcast_arrays(mu, s1, s2)
    levels = np.atleast_1d(np.asarray(delta_nll, dtype=float))
    best, ends, n, chi2 = combine_stars(*(np.ascontiguousarray(a) for a in (mu, s1, s2)), levels)
    intervals = [(ends[i, 0], ends[i, 1]) for i in range(len(levels))]
    return best, intervals, n, chi2


def combine_chained(mu, s1, s2, tau, parent, *, delta_nll=(DELTA_NLL_68, DELTA_NLL_95)):
    """Combine measurements that share the errors of the links of a calibration tree.

    Measurement ``i`` of a star is ``x + e_i + sum of d_l`` over the links ``l`` on the path
    from survey ``i`` to the reference: ``e_i`` its own noise (split normal ``mu, s1, s2``,
    *without* any model uncertainty) and ``d_l ~ N(0, tau_l²)`` the error of link ``l``'s
    offset model at that star, the *same* draw for every measurement whose path holds the
    link (a survey chained through ``B`` inherits ``B``'s calibration error). Combining them
    as independent counts each shared ``d_l`` once per measurement and under-covers.

    The tree is combined from the leaves: at node ``i`` the survey's own measurement and the
    combined estimates passed up by its children (each with its own link error added) all
    measure ``x + sum of d_l`` above ``i`` with independent errors, so they are combined
    with :func:`combine_split_normal`; the result, its 68 % interval read as a split normal
    and ``tau_i`` added in quadrature to both scales, is passed up to the parent. Exact for
    normal errors; with no chain (every parent the root) it is :func:`combine_split_normal`
    of the measurements with ``tau`` added in quadrature.

    Parameters
    ----------
    mu, s1, s2 : arrays (n_stars, m)
        Noise-only split normals of the ``m`` surveys' calibrated values (NaN: absent).
    tau : array (n_stars, m) or (m,)
        Each survey's own link error (0 for the reference anchor).
    parent : sequence of int, length m
        Column of each survey's parent in the tree, ``-1`` for the root level.
    delta_nll : sequence of float
        Interval levels of the final combination.

    Returns
    -------
    value, intervals, n, chi2
        As :func:`combine_split_normal`; ``chi2`` is the sum of the node combinations' χ²
        (``N - 1`` degrees of freedom in all).
    """
    mu, s1, s2 = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (mu, s1, s2))
    n_stars, m = mu.shape
    tau = np.broadcast_to(np.asarray(tau, dtype=float), (n_stars, m))
    parent = [int(p) for p in parent]
    if len(parent) != m or any(p < -1 or p >= m or p == i for i, p in enumerate(parent)):
        raise InvalidInputError(f"parent must give, for each of the {m} columns, another column or -1; got {parent}")

    def depth(i, seen=()):
        if parent[i] < 0:
            return 0
        if i in seen:
            raise InvalidInputError(f"parent {parent} has a cycle through column {i}")
        return 1 + depth(parent[i], (*seen, i))

    order = sorted(range(m), key=depth, reverse=True)  # leaves first
    up: dict = {}
    chi2 = np.zeros(n_stars)
    count = np.zeros(n_stars, dtype=int)
    for i in order:  # a handful of surveys
        kids = [c for c in range(m) if parent[c] == i]
        cols = [(mu[:, i], s1[:, i], s2[:, i])] + [up[c] for c in kids]
        if kids:
            v, (iv,), nn, c2 = combine_split_normal(
                *(np.column_stack([c[k] for c in cols]) for k in range(3)), delta_nll=(DELTA_NLL_68,)
            )
            chi2 += np.where(nn >= 2, c2, 0.0)
            own = (v, v - iv[0], iv[1] - v)
        else:
            own = cols[0]
        ok = np.isfinite(mu[:, i]) & np.isfinite(s1[:, i]) & np.isfinite(s2[:, i]) & (s1[:, i] > 0) & (s2[:, i] > 0)
        count += ok
        t2 = np.nan_to_num(tau[:, i]) ** 2
        up[i] = (own[0], np.sqrt(own[1] ** 2 + t2), np.sqrt(own[2] ** 2 + t2))
    roots = [i for i in range(m) if parent[i] < 0]
    value, intervals, n_root, c2 = combine_split_normal(
        *(np.column_stack([up[i][k] for i in roots]) for k in range(3)), delta_nll=delta_nll
    )
    chi2 = np.where(n_root > 0, chi2 + np.where(n_root >= 2, c2, 0.0), np.nan)
    return value, intervals, count, chi2
