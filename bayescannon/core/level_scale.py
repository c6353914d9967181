"""A lower-variance estimate of a label's overall interval scale (the 68 % quantile of ``|z|``).

The split-conformal quantile of ``m`` standardised absolute residuals ``|z|`` at level ``p``
(:func:`bayescannon.core.uncertainty.conformal_quantiles`) is distribution-free, but it uses
only the order statistics around rank ``pm``: its coverage scatters by the binomial sd
``√(p(1−p)/m)`` (0.0104 at ``p = 0.68``, ``m = 2,000``) from one calibration set to the next,
and that overall level is about two thirds of the between-draw variance of the per-region
coverage (``docs/guides/calibration.md``, "Where the misses come from").

A parametric scale fitted to *all* the ``|z|`` by maximum likelihood is less noisy: for
Gaussian ``z`` the coverage of its 68 % quantile scatters by ``2φ(1)/√(2m)`` ≈ 0.0077 at
``m = 2,000``. Because ``z`` is standardised by the fitted widths, only a scale and a shape are
left: :func:`parametric_quantile` fits a location-free (symmetric about 0) family by maximum
likelihood to ``|z|`` and returns its ``p`` quantile of ``|z|``:

- ``"student-t"``: Student t with scale σ and ν ∈ [1, 1000] degrees of freedom (heavy tails
  down to Cauchy; Gaussian at the upper bound);
- ``"parametric"``: the better (higher likelihood, both have two parameters) of that t and a
  generalised normal (exponential power, ``∝ exp(−|x/σ|^β)``, β ∈ [0.3, 20]), which also
  represents residuals *lighter*-tailed than a Gaussian (a deterministic, label-dependent
  model bias added to noise) that the t family cannot.

**The guard** (:func:`level_quantile`): the parametric quantile ``q̂`` is used only when the
fraction of the calibration stars it covers, ``F̂(q̂)``, is within ``guard_sd`` binomial sd of
``p``; else the split-conformal quantile is used and the record says so. A heavy-tailed,
bimodal or otherwise misfitted ``z`` can therefore not move the level further than
``guard_sd`` binomial sd from the conformal one *on the calibration stars* (on new stars the
conformal level's own noise comes on top: a misfit just inside the guard can come out up to
~3.4 binomial sd off, measured with the Student t on platykurtic mocks, where the generalised
normal fits), and where the family fits, the two agree to well inside it (under a good fit
``F̂(q̂) − p`` has sd ≈ √(0.0104² − 0.0077²) ≈ 0.007 at ``m = 2,000``, against a threshold of
0.021). Measured on the bench's cases: ``docs/guides/calibration.md`` ("A lower-variance
overall level"); not the default.

:func:`rescale_quantile_table` carries the new level into the tabulated ``z`` quantiles
used for intervals at other levels: levels up to ``p`` are scaled by ``q̂ / q_conformal(p)``
(the same overall scale), the factor goes linearly to 1 at ``upper`` (0.95, which stays
split-conformal) and the table is kept non-decreasing.
"""

from __future__ import annotations

import logging

import numpy as np

from bayescannon.core.uncertainty import conformal_quantiles
from bayescannon.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LEVEL_ESTIMATOR",
    "GUARD_SD",
    "LEVEL_ESTIMATORS",
    "check_level_estimator",
    "level_quantile",
    "parametric_quantile",
    "rescale_quantile_table",
]

#: ``"conformal"``: the split-conformal quantile (distribution-free; the default);
#: ``"student-t"`` / ``"parametric"``: a maximum-likelihood scale (t, or the better of t and a
#: generalised normal) behind the guard of :func:`level_quantile`.
LEVEL_ESTIMATORS = ("conformal", "student-t", "parametric")
DEFAULT_LEVEL_ESTIMATOR = "conformal"
#: Fall back to the conformal quantile when the parametric one's calibration-set coverage is
#: further than this many binomial sd from the level.
GUARD_SD = 2.0
_MIN_STARS = 50
_NU_BOUNDS = (1.0, 1000.0)
_BETA_BOUNDS = (0.3, 20.0)


def check_level_estimator(name):
    """``name`` if it is one of :data:`LEVEL_ESTIMATORS`, else :class:`InvalidInputError`."""
    if name not in LEVEL_ESTIMATORS:
        raise InvalidInputError(f"level_estimator must be one of {list(LEVEL_ESTIMATORS)}; got {name!r}")
    return name


def _t_nll(params, a):
    """Negative log-likelihood of ``|z|`` under a location-free Student t, ``params = [ln σ, ln ν]``."""
    from scipy import special  # lazy: ~0.8 s of import that fit and infer do not need

    sigma, nu = np.exp(params)
    m = a.size
    return float(
        m * (special.gammaln(0.5 * nu) - special.gammaln(0.5 * (nu + 1)) + 0.5 * np.log(np.pi * nu) + np.log(sigma))
        + 0.5 * (nu + 1) * np.sum(np.log1p((a / sigma) ** 2 / nu))
    )


def _gennorm_nll(params, a):
    """Negative log-likelihood of ``|z|`` under a generalised normal, ``params = [ln σ, ln β]``."""
    from scipy import special  # lazy

    sigma, beta = np.exp(params)
    m = a.size
    return float(m * (np.log(2.0 * sigma) + special.gammaln(1.0 / beta) - np.log(beta)) + np.sum((a / sigma) ** beta))


def _fit(nll, a, shape0, bounds):
    from scipy import optimize  # lazy

    s0 = max(float(np.median(a)) / 0.6745, 1e-300)
    res = optimize.minimize(
        nll,
        [np.log(s0), np.log(shape0)],
        args=(a,),
        method="L-BFGS-B",
        bounds=[(np.log(s0) - 5.0, np.log(s0) + 5.0), (np.log(bounds[0]), np.log(bounds[1]))],
    )
    return res.x, float(res.fun)


def parametric_quantile(scores, level, family="student-t"):
    """Maximum-likelihood ``level`` quantile of ``|z|`` under a location-free symmetric family.

    Parameters
    ----------
    scores : ndarray, shape (m,)
        Standardised absolute residuals ``|z|`` (finite, ≥ 0).
    level : float
        Central-interval level p: the returned q has ``P(``|z|`` ≤ q)`` = p under the fit.
    family : {"student-t", "parametric"}
        Student t (scale, ν), or the better by likelihood of that and a generalised normal
        (scale, β).

    Returns
    -------
    q : float
        The fitted family's ``level`` quantile of ``|z|``.
    fitted : str
        ``"student-t"`` or ``"gennorm"``.
    shape : float
        ν of the t, or β of the generalised normal.
    """
    from scipy import stats  # lazy

    a = np.abs(np.asarray(scores, dtype=np.float64))
    xt, ft = _fit(_t_nll, a, 10.0, _NU_BOUNDS)
    best = ("student-t", xt, ft)
    if family == "parametric":
        xg, fg = _fit(_gennorm_nll, a, 2.0, _BETA_BOUNDS)
        if fg < ft:
            best = ("gennorm", xg, fg)
    elif family != "student-t":
        raise InvalidInputError(f"parametric family must be 'student-t' or 'parametric'; got {family!r}")
    name, x, _ = best
    sigma, shape = np.exp(x)
    p = 0.5 + 0.5 * level
    q = sigma * (stats.t.ppf(p, shape) if name == "student-t" else stats.gennorm.ppf(p, shape))
    return float(q), name, float(shape)


def level_quantile(scores, level, estimator=DEFAULT_LEVEL_ESTIMATOR, guard_sd=GUARD_SD):
    """The ``level`` quantile of ``|z|`` by ``estimator``, with the fall-back guard.

    Parameters
    ----------
    scores : ndarray, shape (m,)
        Standardised absolute residuals ``|z|`` of the calibration stars.
    level : float
    estimator : {"conformal", "student-t", "parametric"}
    guard_sd : float
        The parametric quantile q̂ is used only when the calibration stars' coverage
        ``F̂(q̂) = mean(|z| ≤ q̂)`` is within ``guard_sd`` × √(p(1−p)/m) of p.

    Returns
    -------
    q : float
        The quantile to use.
    record : dict
        ``used`` (``"conformal"`` or ``estimator``), ``conformal`` (the split-conformal
        quantile), ``parametric`` (q̂; None for ``"conformal"`` or a failed fit), ``family``
        and ``shape`` of the fit, ``disagreement_sd`` ((F̂(q̂) − p) in binomial sd).
    """
    check_level_estimator(estimator)
    z = np.abs(np.asarray(scores, dtype=np.float64))
    z = z[np.isfinite(z)]
    qc = float(conformal_quantiles(z, [level])[0])
    record = {"used": "conformal", "conformal": qc, "parametric": None, "family": None, "shape": None}
    record["disagreement_sd"] = None  # (F̂(q̂) − p) / binomial sd, once there is a q̂
    if estimator == "conformal":
        return qc, record
    if z.size < _MIN_STARS:
        logger.warning("%d calibration stars are too few for a parametric level; split-conformal used", z.size)
        return qc, record
    with np.errstate(all="ignore"):
        q, family, shape = parametric_quantile(z, level, estimator)
    if not (np.isfinite(q) and q > 0):
        logger.warning("the parametric level fit failed (q = %s); split-conformal used", q)
        return qc, record
    sd = np.sqrt(level * (1.0 - level) / z.size)
    dis = (float(np.mean(z <= q)) - level) / sd
    record.update(parametric=q, family=family, shape=shape, disagreement_sd=float(dis))
    if abs(dis) <= guard_sd:
        record["used"] = estimator
        return q, record
    return qc, record


def rescale_quantile_table(levels, quantiles, level, q, upper=0.95):
    """The tabulated quantiles of ``|z|`` with the ``level`` entry moved to ``q``.

    Entries at levels ≤ ``level`` are multiplied by ``c = q / quantiles(level)`` (one overall
    scale), the factor goes linearly in the level from ``c`` to 1 at ``upper`` and entries at
    levels ≥ ``upper`` are unchanged; the result is made non-decreasing (a running maximum,
    which can only raise entries above ``level``).

    Parameters
    ----------
    levels : ndarray, shape (L,)
        Increasing levels of the table (``level`` among them, or interpolated).
    quantiles : ndarray, shape (L,)
        Non-decreasing quantiles of ``|z|`` at ``levels``.
    level, q : float
    upper : float

    Returns
    -------
    ndarray, shape (L,)
    """
    lv = np.asarray(levels, dtype=np.float64)
    zq = np.asarray(quantiles, dtype=np.float64)
    q0 = float(np.interp(level, lv, zq))
    if not q0 > 0:
        return zq.copy()
    c = q / q0
    factor = np.interp(lv, [level, upper], [c, 1.0])  # c below level, 1 above upper
    return np.maximum.accumulate(zq * factor)
