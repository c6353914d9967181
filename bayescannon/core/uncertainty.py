"""Calibrated label uncertainties: θ-uncertainty propagation and a fitted error model.

The formal error of the test step (inverse Fisher matrix, :mod:`bayescannon.core.labelfit`)
assumes that the quadratic model is exact and that θ is known. Neither is true: on
emulator spectra formal 1σ errors cover only ~15–30 % of stars. This module adds the two
missing pieces, each with a stated model (see ``docs/guides/bayes.md`` for the derivations):

1. **θ uncertainty** (from the training fit). The per-pixel Laplace covariance of θ is
   ``Σ_θ,λ = G_λ⁻¹`` with ``G_λ = Σ_n w_nλ v_n v_nᵀ``. Writing ``w_nλ ≈ w̄_λ ρ_n`` (pixel
   profile × star weight) gives ``G_λ ≈ w̄_λ G₀`` with ``G₀ = Σ_n ρ_n v_n v_nᵀ``, so the
   extra flux variance at a test star is ``v(ℓ)ᵀ Σ_θ,λ v(ℓ) = h(ℓ)/w̄_λ`` where
   ``h(ℓ) = v(ℓ)ᵀ G₀⁻¹ v(ℓ)`` is the regression *leverage* of ℓ. Relative to the star's
   own pixel variance ``1/w_λ`` this is ``ε = κ h(ℓ)`` with
   ``κ = Σ_λ w_λ²/w̄_λ / Σ_λ w_λ`` (the star's weight relative to the training weights).
   The likelihood becomes ``−½ χ²(ℓ)/(1+ε(ℓ)) − ½ n_pix ln(1+ε(ℓ))`` (used by the PyMC
   models), and the Laplace covariance grows by ``1 + ε``: stars far from the training
   set (large leverage) get wider intervals. ``G₀⁻¹`` and ``w̄`` are stored with the
   model (``extra_theta_leverage``, ``extra_train_weight``).

2. **Model error**, fitted on held-out stars. For label k of star n the calibrated error
   is ``σ²_nk = a_k² (1 + ε_n) Σ^formal_n,kk + exp(β_k · [1, x̂_n])``: a scale ``a_k ≥ 1``
   on the noise term (the formal error is a Cramér–Rao lower bound on the noise part, so
   calibration may widen it, never shrink it), and a model-error variance that is log-linear in the star's
   (scaled) labels x̂. The residual ``ℓ̂ − ℓ_ref`` is modelled as Student-t with ν_k
   degrees of freedom and standard deviation ``sqrt(σ²_nk + e²_ref,nk)`` (reference
   label errors, when known, are part of the residual, not of our error). ``a_k``,
   ``β_k`` and ``ν_k`` are maximum-likelihood estimates from cross-validated residuals
   (K-fold on the training set) or from a held-out set with known labels. The t form is
   a scale mixture of Gaussians (a hierarchical scatter): model error is a deterministic
   function of ℓ and its distribution over label space has heavier tails than a Gaussian.

3. **Interval shape**, by split-conformal calibration (normalised non-conformity score;
   Papadopoulos et al. 2008, Lei et al. 2018). The fitted σ_nk sets each star's *scale*;
   the half-width of the central ``p`` interval is ``q_k(p) σ_nk`` where ``q_k(p)`` is the
   finite-sample-corrected empirical quantile (rank ``⌈(m+1)p⌉`` of ``m``) of
   ``|z| = |ℓ̂ − ℓ_ref| / sqrt(σ²_nk + e²_ref,nk)`` on the held-out residuals. The t
   family cannot represent residuals that are *lighter*-tailed than a Gaussian, which is
   what a deterministic, label-dependent model bias added to noise produces (on emulator
   [Fe/H] the t form gave 0.65 at 68 % and 0.97 at 95 %); the empirical quantiles make
   the marginal coverage exact for stars exchangeable with the calibration set, whatever
   the shape. ``q_k`` is tabulated on levels 0.01 … 0.99 (``quantile_levels``,
   ``z_quantiles``) and interpolated; calibrations without the table fall back to the t
   quantiles.

4. **Conditional calibration** (version 3, :mod:`bayescannon.core.conditional`): a smooth
   label-dependent bias ``b(x̂)`` learned from the held-out residuals is subtracted from
   the estimates, and Mondrian width factors ``s_nk`` (per quintile of each estimated
   label and of the noise fraction) rescale σ_nk so that every bin covers at the
   global rate; the conformal quantiles ``q_k`` are those of ``|z|/s``.

Reported: ``labels`` = ``ℓ̂ − b(x̂)`` (``labels_uncorrected``, ``label_bias``),
``covariance`` = ``S (D (1+ε) Σ^formal D + diag(floor)) S`` with ``D = diag(a)``,
``S = diag(s)`` (so ``errors`` is a standard deviation) and symmetric 68 % / 95 %
interval half-widths ``half_width_68``, ``half_width_95`` from the conformal quantiles.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import xarray as xr

from bayescannon.core import scaling
from bayescannon.core._kernels import kappa_kernel, weight_sums
from bayescannon.core.conditional import predict_bias, width_factors
from bayescannon.core.likelihood import adjusted_ivar
from bayescannon.errors import (
    InsufficientDataError,
    InvalidInputError,
    LabelError,
    NotCalibratedError,
    ShapeMismatchError,
)
from bayescannon.flags import PixelFlag
from bayescannon.results import numpy_variable, set_label_units

logger = logging.getLogger(__name__)

__all__ = [
    "LEVELS",
    "theta_uncertainty_state",
    "leverage",
    "error_model_covariance",
    "inverse_train_weight",
    "kappa",
    "epsilon",
    "fit_error_model",
    "calibrated_errors",
    "calibrated_intervals",
    "interval_factor",
    "apply_calibration",
    "coverage",
    "coverage_curve",
    "check_label_errors",
    "calibration_bias",
]

LEVELS = (0.68, 0.95)
CALIBRATION_KIND = "bayescannon.core.uncertainty"
#: 3: bias correction (``bias``) and Mondrian width factors (``mondrian``); 4: the bias may
#: add per-label piecewise-linear terms (``splines``, ``knots``) and the Mondrian effects are
#: shrunk by empirical Bayes (``statistic``). Versions 2 (zero bias, unit factors) and 3
#: (same storage, less accurate) are still read. 5: smooth log-width model (``width``).
#: 6: fold-size correction of cross-validated residuals (``fold_size``, a record: the stored
#: widths already include it, so versions 2-5 are read and applied exactly as before).
#: 7: the smooth log-width model may add label x noise-fraction terms (``width.interaction``);
#: versions 5-6 (no ``interaction``: additive) are read and give the intervals they gave.
CALIBRATION_VERSION = 7
_READABLE_VERSIONS = (2, 3, 4, 5, 6, 7)
_Z_LEVELS = np.round(np.arange(0.01, 0.9951, 0.01), 2)
_LEVERAGE = "extra_theta_leverage"
_TRAIN_WEIGHT = "extra_train_weight"
_MAX_DOF = 1000.0


# --------------------------------------------------------------------------- validation
def check_label_errors(label_errors, n, label_names):
    """Validate reference-label uncertainties: an (N, K) array of finite values > 0.

    Raises
    ------
    ShapeMismatchError
        Wrong shape.
    LabelError
        Zeros, negatives or non-finite values (the star and label are named).
    """
    k = len(label_names)
    err = np.array(label_errors, dtype=np.float64, copy=True)
    if err.ndim == 1 and k == 1:
        err = err[:, None]
    if err.shape != (n, k):
        raise ShapeMismatchError(f"label_errors have shape {err.shape}; expected ({n}, {k}) for labels {label_names}")
    bad = ~np.isfinite(err) | (err <= 0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise LabelError(
            f"label error of {label_names[j]} for star {i} is {err[i, j]}; label errors must be finite "
            f"and > 0 ({int(bad.sum())} bad values; use a tiny value for labels known exactly)"
        )
    return err


# --------------------------------------------------------------------------- θ uncertainty
def _pixel_ok(model):
    return ~(np.asarray(model.pixel_flags_) & (PixelFlag.FEW_STARS | PixelFlag.SINGULAR)).astype(bool)


def theta_uncertainty_state(ivar, s2, design, pixel_ok=None, chunk_size: int = 1000, pixel_major: bool = False):
    """Compact summary of the per-pixel Laplace covariance of θ, for propagation.

    Parameters
    ----------
    ivar : ndarray, shape (N, P)
        Training inverse variances.
    s2 : ndarray, shape (P,)
        Fitted intrinsic scatter.
    design : ndarray, shape (N, T)
        Design matrix of the (scaled) training labels.
    pixel_ok : ndarray of bool, shape (P,), optional
        Pixels with a fitted model.
    chunk_size : int
        Stars processed at once.
    pixel_major : bool
        ``ivar`` is given transposed, (P, N), C-contiguous (one compiled pass, no copy).

    Returns
    -------
    dict
        ``{"extra_theta_leverage": (("term", "term2"), G₀⁻¹),
        "extra_train_weight": (("pixel",), w̄)}`` (the model keeps them as ``theta_leverage_`` and ``train_weight_``).
    """
    if pixel_major:
        p, n = ivar.shape
        ok = np.ones(p, dtype=bool) if pixel_ok is None else np.asarray(pixel_ok, dtype=bool)
        wsum, rowsum = weight_sums(np.ascontiguousarray(ivar), np.asarray(s2, dtype=np.float64), ok)
    else:
        n, p = ivar.shape
        ok = np.ones(p, dtype=bool) if pixel_ok is None else np.asarray(pixel_ok, dtype=bool)
        wsum = np.zeros(p)
        rowsum = np.empty(n)
        for a in range(0, n, chunk_size):  # chunks bound memory; vectorised inside
            w = adjusted_ivar(ivar[a : a + chunk_size], s2[None, :]) * ok
            wsum += w.sum(axis=0)
            rowsum[a : a + chunk_size] = w.sum(axis=1)
    wbar = wsum / n
    mean_row = rowsum.mean()
    rho = rowsum / mean_row if mean_row > 0 else np.ones(n)
    g0 = (design * rho[:, None]).T @ design
    g0inv = np.linalg.pinv(g0, hermitian=True)
    return {_LEVERAGE: (("term", "term2"), g0inv), _TRAIN_WEIGHT: (("pixel",), wbar)}


def theta_state(model):
    """``(G₀⁻¹, w̄)`` of a fitted model (its ``theta_leverage_`` and ``train_weight_``), or
    ``(None, None)`` when the model carries no θ-uncertainty state."""
    g0inv = getattr(model, "theta_leverage_", None)
    wbar = getattr(model, "train_weight_", None)
    if g0inv is None or wbar is None:
        return None, None
    return np.asarray(g0inv, dtype=np.float64), np.asarray(wbar, dtype=np.float64)


def leverage(model, x_scaled):
    """Leverage ``h(x) = v(x)ᵀ G₀⁻¹ v(x)`` of scaled labels (N, K) → (N,); 0 if unknown."""
    g0inv, _ = theta_state(model)
    x_scaled = np.atleast_2d(x_scaled)
    if g0inv is None:
        return np.zeros(x_scaled.shape[0])
    v = model.vectorizer(np.nan_to_num(x_scaled))
    return np.einsum("nt,tu,nu->n", v, g0inv, v)


def inverse_train_weight(model):
    """``1/w̄`` per pixel of the training weights (P,): 0 where unknown or unusable."""
    _, wbar = theta_state(model)
    if wbar is None:
        return np.zeros(np.asarray(model.s2_).shape[0])
    ok = _pixel_ok(model) & (wbar > 0)
    return np.where(ok, 1.0 / np.where(ok, wbar, 1.0), 0.0)


def kappa(model, ivar, chunk_size: int = 2000):
    """Weight of each test star relative to the training weights, ``Σ w²/w̄ / Σ w`` (N,).

    The compiled :func:`bayescannon.core._kernels.kappa_kernel` (the same sums as the test
    step's weighting pass, :func:`bayescannon.core._kernels.test_weights`); pixels with
    ``ivar`` 0 or not finite are skipped.
    """
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    inv_wbar = inverse_train_weight(model)
    if not inv_wbar.any():
        return np.zeros(ivar.shape[0])
    return kappa_kernel(np.ascontiguousarray(ivar), np.ascontiguousarray(model.s2_, dtype=np.float64), inv_wbar)


def epsilon(model, x_scaled, ivar, kappa_=None):
    """Relative extra pixel variance from θ uncertainty, ``ε = κ h(x)`` (N,); ``kappa_``:
    κ when already known (the test step computes it in its weighting pass)."""
    k = kappa(model, ivar) if kappa_ is None else np.asarray(kappa_, dtype=np.float64)
    return k * leverage(model, x_scaled)


# --------------------------------------------------------------------------- error model
def _t_nll(resid, noise_var, x1, ref_var, params):
    """Negative log-likelihood of the Student-t error model and its gradient.

    ``var = a² noise_var + exp(x1·β) + ref_var`` is the variance (ν > 2) and
    ``params = [ln a, β, ln(ν − 2)]``. With ``u = r²/(var (ν − 2))`` each star contributes
    ``−ln Γ((ν+1)/2) + ln Γ(ν/2) + ½ ln(π var (ν − 2)) + (ν+1)/2 ln(1 + u)``.
    """
    from scipy import special  # lazy: ~0.8 s of import that fit and infer do not need

    loga, beta, lognu = params[0], params[1:-1], params[-1]
    nu = 2.0 + np.exp(lognu)
    floor = np.exp(x1 @ beta)
    scaled_noise = np.exp(2 * loga) * noise_var
    var = scaled_noise + floor + ref_var
    u = resid * resid / (var * (nu - 2.0))
    log1pu = np.log1p(u)
    nll = np.sum(
        special.gammaln(0.5 * nu)
        - special.gammaln(0.5 * (nu + 1))
        + 0.5 * np.log(np.pi * var * (nu - 2.0))
        + 0.5 * (nu + 1) * log1pu
    )
    frac = u / (1.0 + u)
    d_var = 0.5 / var - 0.5 * (nu + 1) * frac / var  # ∂nll/∂var per star
    d_nu = np.sum(
        0.5 * special.digamma(0.5 * nu)
        - 0.5 * special.digamma(0.5 * (nu + 1))
        + 0.5 / (nu - 2.0)
        + 0.5 * log1pu
        - 0.5 * (nu + 1) * frac / (nu - 2.0)
    )
    grad = np.concatenate([[np.sum(d_var * 2.0 * scaled_noise)], (d_var * floor) @ x1, [d_nu * (nu - 2.0)]])
    return nll, grad


def fit_error_model(residuals, formal_var, eps, x_scaled, label_names, *, ref_var=None):
    """Maximum-likelihood calibration of the error model on held-out residuals.

    Parameters
    ----------
    residuals : ndarray, shape (N, K)
        Estimated minus reference labels (physical units).
    formal_var : ndarray, shape (N, K)
        Formal (inverse Fisher) variances of the estimates.
    eps : ndarray, shape (N,)
        θ-uncertainty factor ``ε`` of each star (0 to ignore).
    x_scaled : ndarray, shape (N, K)
        Estimated labels in the model's scaled units (predictors of the model error).
    label_names : list of str
    ref_var : ndarray, shape (N, K), optional
        Variances of the reference labels (their squared errors).

    Returns
    -------
    dict
        ``noise_scale`` (K,), ``floor_coefficients`` (K, K+1), ``dof`` (K,),
        ``n_stars`` (K,), ``neg_log_likelihood`` (K,), ``quantile_levels`` (L,) and
        ``z_quantiles`` (K, L): conformal quantiles of the standardised absolute residuals.
    """
    from scipy import optimize  # lazy: ~0.8 s of import that fit and infer do not need

    residuals = np.asarray(residuals, dtype=np.float64)
    n, k = residuals.shape
    ref_var = np.zeros_like(residuals) if ref_var is None else np.asarray(ref_var, dtype=np.float64)
    eps = np.zeros(n) if eps is None else np.asarray(eps, dtype=np.float64)
    x1 = np.column_stack([np.ones(n), np.asarray(x_scaled, dtype=np.float64)])
    n_par = k + 3
    out = {
        "noise_scale": [],
        "floor_coefficients": [],
        "dof": [],
        "n_stars": [],
        "neg_log_likelihood": [],
        "quantile_levels": [float(v) for v in _Z_LEVELS],
        "z_quantiles": [],
    }
    for j in range(k):  # a few labels: a small optimisation each
        good = (
            np.isfinite(residuals[:, j])
            & np.isfinite(formal_var[:, j])
            & (formal_var[:, j] > 0)
            & np.all(np.isfinite(x1), axis=1)
            & np.isfinite(eps)
        )
        m = int(good.sum())
        if m < 10 * n_par:
            raise InsufficientDataError(
                f"calibrating {label_names[j]} needs at least {10 * n_par} held-out stars with "
                f"finite estimates; got {m}"
            )
        r = residuals[good, j]
        nv = (1.0 + eps[good]) * formal_var[good, j]
        rv = ref_var[good, j]
        xx = x1[good]
        excess = max(np.mean(r * r) - np.median(nv) - np.median(rv), 1e-6 * np.mean(r * r) + 1e-300)
        p0 = np.zeros(n_par)
        p0[1] = np.log(excess)
        p0[-1] = np.log(8.0)
        bounds = [(0.0, 5.0)] + [(None, None)] + [(-20.0, 20.0)] * k + [(np.log(0.5), np.log(_MAX_DOF - 2.0))]
        res = optimize.minimize(
            lambda prm, r=r, nv=nv, xx=xx, rv=rv: _t_nll(r, nv, xx, rv, prm),
            p0,
            method="L-BFGS-B",
            bounds=bounds,
            jac=True,
        )
        if not np.isfinite(res.fun):
            raise InsufficientDataError(f"the error model of {label_names[j]} could not be fitted: {res.message}")
        out["noise_scale"].append(float(np.exp(res.x[0])))
        out["floor_coefficients"].append([float(v) for v in res.x[1:-1]])
        out["dof"].append(float(2.0 + np.exp(res.x[-1])))
        out["n_stars"].append(m)
        out["neg_log_likelihood"].append(float(res.fun))
        var = np.exp(2 * res.x[0]) * nv + np.exp(xx @ res.x[1:-1]) + rv
        out["z_quantiles"].append([float(v) for v in conformal_quantiles(np.abs(r) / np.sqrt(var), _Z_LEVELS)])
        logger.info(
            "calibrated %s on %d stars: noise scale %.3g, median model-error sd %.4g, dof %.3g",
            label_names[j],
            m,
            out["noise_scale"][-1],
            float(np.sqrt(np.median(np.exp(xx @ res.x[1:-1])))),
            out["dof"][-1],
        )
    return out


def conformal_quantiles(scores, levels):
    """Split-conformal quantiles of non-conformity scores.

    For ``m`` scores the quantile at level ``p`` is the ``⌈(m+1)p⌉``-th smallest (capped at
    the largest), so that a new exchangeable score falls below it with probability ≥ p.

    Parameters
    ----------
    scores : ndarray, shape (m,)
    levels : array_like, shape (L,)

    Returns
    -------
    ndarray, shape (L,)
    """
    z = np.sort(np.asarray(scores, dtype=np.float64))
    m = z.size
    rank = np.minimum(np.ceil((m + 1) * np.asarray(levels, dtype=np.float64)).astype(int), m)
    return z[np.maximum(rank, 1) - 1]


def interval_factor(cal, level):
    """Half-width of the central ``level`` interval in units of the calibrated sd, (K,).

    Conformal quantiles (interpolated in level) when the calibration has them, else the
    quantile of a unit-variance Student t with the fitted degrees of freedom.
    """
    if cal.get("z_quantiles"):
        lv = np.asarray(cal["quantile_levels"], dtype=np.float64)
        zq = np.asarray(cal["z_quantiles"], dtype=np.float64)
        if not lv[0] <= level <= lv[-1]:
            raise InvalidInputError(f"interval level {level} is outside the calibrated range {lv[0]}..{lv[-1]}")
        return np.array([np.interp(level, lv, row) for row in zq])
    return _quantile_factor(level, np.asarray(cal["dof"]))


def _quantile_factor(level, dof):
    """Half-width of the central ``level`` interval of a unit-variance Student t."""
    from scipy import stats  # lazy: ~0.8 s of import that fit and infer do not need

    dof = np.asarray(dof, dtype=np.float64)
    q = stats.t.ppf(0.5 + 0.5 * level, dof)
    return q * np.sqrt((dof - 2.0) / dof)


def check_calibrated(model):
    """The model's calibration dict; raises NotCalibratedError when it has none, when it
    is for other labels, or when its ``version`` is not one this release reads."""
    cal = getattr(model, "calibration_", None)
    if not cal or cal.get("kind") != CALIBRATION_KIND:
        raise NotCalibratedError(
            "this model has no calibration of its uncertainties: call bayescannon.bayes.calibrate(model, ...) on held-out "
            "stars with known labels (or with n_folds for cross-validation) first"
        )
    if cal.get("version") not in _READABLE_VERSIONS:
        raise NotCalibratedError(
            f"the model's calibration has version {cal.get('version')!r}; this release reads versions "
            f"{list(_READABLE_VERSIONS)}: recalibrate the model (bayescannon calibrate)"
        )
    if list(cal["label_names"]) != list(model.label_names):
        raise NotCalibratedError(
            f"the calibration is for labels {cal['label_names']}, the model has {model.label_names}"
        )
    return cal


def calibration_bias(cal, x_scaled):
    """Learned bias ``b(x̂)`` (N, K, physical units) of the estimates at scaled labels x̂:
    the calibrated estimate is ``ℓ̂ − b``; zeros for a calibration without a bias model."""
    return predict_bias(cal.get("bias"), x_scaled)


def error_model_covariance(noise_cov, x_scaled, noise_scale, floor_coefficients, eps=None):
    """``D (1+ε) Σ D + diag(exp(β_k·[1, x̂]))``: the error model's covariance (N, K, K).

    Parameters
    ----------
    noise_cov : ndarray, shape (N, K, K)
        Noise (formal) covariance Σ.
    x_scaled : ndarray, shape (N, K)
        Estimated labels (scaled units), predictors of the model-error floor.
    noise_scale : array_like, shape (K,)
        ``a`` (``D = diag(a)``).
    floor_coefficients : array_like, shape (K, K+1)
        ``β``.
    eps : ndarray, shape (N,), optional
        θ-uncertainty factor (default 0).
    """
    a = np.asarray(noise_scale, dtype=np.float64)
    x_scaled = np.atleast_2d(x_scaled)
    n = x_scaled.shape[0]
    floor = np.exp(np.column_stack([np.ones(n), x_scaled]) @ np.asarray(floor_coefficients, dtype=np.float64).T)
    fac = a[None, :] * (1.0 if eps is None else np.sqrt(1.0 + np.asarray(eps))[:, None])
    cov = noise_cov * fac[:, :, None] * fac[:, None, :]
    idx = np.arange(a.size)
    cov[:, idx, idx] += floor
    return cov


def calibrated_errors(model, noise_cov, x_scaled, eps):
    """Calibrated covariance, standard deviations and 68 %/95 % half-widths.

    Parameters
    ----------
    model : CannonModel
        A calibrated model.
    noise_cov : ndarray, shape (N, K, K)
        Noise covariance in physical units: the formal covariance, or a posterior
        covariance (then pass ``eps = 0`` if the posterior already propagated θ).
    x_scaled : ndarray, shape (N, K)
        Estimated labels (scaled units).
    eps : ndarray, shape (N,)
        θ-uncertainty factor.

    Returns
    -------
    cov, sd, half68, half95 : ndarray
        (N, K, K), (N, K), (N, K), (N, K).
    """
    return calibrated_intervals(check_calibrated(model), noise_cov, x_scaled, eps)


def calibrated_intervals(cal, noise_cov, x_scaled, eps):
    """:func:`calibrated_errors` from a calibration dict (no model): covariance, sd and
    68 %/95 % half-widths, (N, K, K), (N, K), (N, K), (N, K)."""
    cov = error_model_covariance(noise_cov, x_scaled, cal["noise_scale"], cal["floor_coefficients"], eps)
    var = np.einsum("nkk->nk", cov)
    if cal.get("mondrian") or cal.get("width"):
        floor = np.exp(
            np.column_stack([np.ones(var.shape[0]), np.atleast_2d(x_scaled)])
            @ np.asarray(cal["floor_coefficients"], dtype=np.float64).T
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            u = 1.0 - floor / var
        s = width_factors(cal.get("width"), cal.get("mondrian"), x_scaled, u)
        cov = cov * s[:, :, None] * s[:, None, :]
        var = var * s * s
    sd = np.sqrt(var)
    return cov, sd, sd * interval_factor(cal, LEVELS[0]), sd * interval_factor(cal, LEVELS[1])


def apply_calibration(model, ds: xr.Dataset, ivar, kappa=None) -> xr.Dataset:
    """Turn a formal ``infer`` result into a calibrated one (used by ``infer``; ``kappa``:
    the θ-uncertainty weights when already computed, else from ``ivar``).

    Replaces ``labels`` by the bias-corrected estimate (``labels_uncorrected`` keeps the
    maximum-likelihood one, ``label_bias`` the correction), ``covariance`` and ``errors``,
    and adds ``errors_formal``, ``half_width_68``, ``half_width_95`` and
    ``theta_variance`` (the factor ``1 + ε``).
    """
    labels = ds["labels"].values
    x = scaling.scale(labels, model.label_offset_, model.label_scale_)
    eps = epsilon(model, x, ivar, kappa)
    cov, sd, h68, h95 = calibrated_errors(model, ds["covariance"].values, x, eps)
    bias = calibration_bias(model.calibration_, x)
    out = ds.copy()
    out["labels"] = numpy_variable(("star", "label_name"), labels - bias)
    out["labels_uncorrected"] = numpy_variable(("star", "label_name"), labels)
    out["label_bias"] = numpy_variable(("star", "label_name"), bias)
    out["errors_formal"] = numpy_variable(("star", "label_name"), ds["errors"].values)
    out["covariance"] = numpy_variable(("star", "label_name", "label_name_2"), cov)
    out["errors"] = numpy_variable(("star", "label_name"), sd)
    out["half_width_68"] = numpy_variable(("star", "label_name"), h68)
    out["half_width_95"] = numpy_variable(("star", "label_name"), h95)
    out["theta_variance"] = numpy_variable("star", 1.0 + eps)
    out["labels"].attrs["description"] = "calibrated estimate: the maximum-likelihood labels minus label_bias"
    out["labels_uncorrected"].attrs["description"] = "maximum-likelihood labels before the bias correction"
    out["label_bias"].attrs["description"] = "learned bias of the maximum-likelihood labels (subtracted in labels)"
    out["errors"].attrs["description"] = "calibrated standard deviation (physical units)"
    out["errors_formal"].attrs["description"] = "formal inverse-Fisher errors (too small: model error omitted)"
    out["half_width_68"].attrs["description"] = "half-width of the calibrated central 68% interval"
    out["half_width_95"].attrs["description"] = "half-width of the calibrated central 95% interval"
    out["theta_variance"].attrs["description"] = "1 + eps: variance inflation from theta uncertainty"
    out.attrs["uncertainty"] = (
        "calibrated: labels corrected by the learned bias; a^2 (1+eps) formal covariance + log-linear "
        "model-error floor, Mondrian width factors, conformal intervals (bayescannon.core.uncertainty)"
    )
    out.attrs["calibration"] = json.dumps(model.calibration_)
    return set_label_units(out)


# --------------------------------------------------------------------------- coverage
def coverage(truth, center, half_width):
    """Fraction of stars whose interval ``center ± half_width`` holds the truth, per label."""
    truth = np.asarray(truth, dtype=np.float64)
    inside = np.abs(np.asarray(center) - truth) <= np.asarray(half_width)
    return inside.mean(axis=0)


def coverage_curve(residuals, sd, dof=None, levels=None, calibration=None):
    """Empirical coverage of central intervals at many nominal levels.

    Parameters
    ----------
    residuals, sd : ndarray, shape (N, K)
        Estimate minus truth, and the reported standard deviation.
    dof : array_like (K,), optional
        Student-t degrees of freedom per label (Gaussian when None and no calibration).
    levels : ndarray, optional
        Nominal levels (default 0.05 … 0.99).
    calibration : dict, optional
        A model's ``calibration_``: interval half-widths from its quantile factors
        (:func:`interval_factor`), as reported by ``infer(..., uncertainty="calibrated")``.

    Returns
    -------
    levels : ndarray, shape (L,)
    empirical : ndarray, shape (L, K)
    """
    from scipy import stats  # lazy: ~0.8 s of import that fit and infer do not need

    levels = np.linspace(0.05, 0.99, 48) if levels is None else np.asarray(levels, dtype=np.float64)
    z = np.abs(np.asarray(residuals) / np.asarray(sd))
    k = z.shape[1]
    if calibration is not None:
        q = np.vstack([interval_factor(calibration, lv) for lv in levels])
    elif dof is None:
        q = stats.norm.ppf(0.5 + 0.5 * levels)[:, None] * np.ones(k)
    else:
        q = np.column_stack([_quantile_factor(levels, d) for d in np.broadcast_to(dof, (k,))])
    ok = np.all(np.isfinite(z), axis=1)
    return levels, (z[ok][None, :, :] <= q[:, None, :]).mean(axis=1)
