"""Calibration of the label uncertainties on stars with known labels.

Fits the error model of :mod:`bayescannon.core.uncertainty` (noise scale, model-error
floor, conformal interval factors) on cross-validated or held-out residuals and stores it
with the model as ``calibration_``; :func:`coverage_report` measures how often the
intervals cover.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr
from scipy import stats

from bayescannon.core import scaling
from bayescannon.core.uncertainty import (
    CALIBRATION_KIND,
    CALIBRATION_VERSION,
    LEVELS,
    calibrated_errors,
    check_label_errors,
    coverage,
    epsilon,
    fit_error_model,
)
from bayescannon.errors import (
    InsufficientDataError,
    InvalidInputError,
    ShapeMismatchError,
)
from bayescannon.flags import StarFlag
from bayescannon.spectra import as_label_array

logger = logging.getLogger(__name__)

__all__ = ["calibrate", "coverage_report"]


# --------------------------------------------------------------------------- calibration runs
def _usable(result):
    bad = StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED | StarFlag.SINGULAR_COVARIANCE
    return (np.asarray(result["flags"].values) & int(bad)) == 0


def calibrate(
    model,
    flux,
    ivar,
    labels,
    *,
    label_errors=None,
    n_folds: int = 0,
    random_state=0,
    fit_kwargs=None,
    fit_label_errors: bool = False,
    progressbar: bool = False,
) -> dict:
    """Fit the calibrated error model and store it in ``model.calibration_``.

    Parameters
    ----------
    model : CannonModel
        A fitted model.
    flux, ivar : ndarray, shape (N, P)
        Spectra with known reference labels. With ``n_folds = 0`` they must be held out
        from the model's training set; with ``n_folds >= 2`` they are normally the
        training set itself and the residuals come from K-fold cross-validation (the
        model is refitted on K−1 folds and the held-out fold inferred).
    labels : ndarray, shape (N, K)
        Reference labels (physical units).
    label_errors : ndarray, shape (N, K), optional
        1σ errors of the reference labels: they are part of the residuals and are
        removed from the calibrated error.
    n_folds : int
        0 for a held-out set, else the number of cross-validation folds.
    random_state : int
        Seed of the fold assignment.
    fit_kwargs : dict, optional
        Extra keyword arguments of ``fit`` in cross-validation.
    fit_label_errors : bool
        In cross-validation, train each fold with ``label_errors`` (errors-in-variables).
    progressbar : bool

    Returns
    -------
    dict
        The calibration (also stored as ``model.calibration_``; saved with the model).
    """
    model._check_fitted()

    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.ndim != 2 or flux.shape != ivar.shape:
        raise ShapeMismatchError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape}")
    n = flux.shape[0]
    y = as_label_array(labels, model.label_names, n)
    ref_var = None
    if label_errors is not None:
        ref_var = check_label_errors(label_errors, n, model.label_names) ** 2
    k = len(model.label_names)
    resid = np.full((n, k), np.nan)
    fvar = np.full((n, k), np.nan)
    eps = np.zeros(n)
    est = np.full((n, k), np.nan)
    if n_folds == 0:
        res = model.infer(flux, ivar)
        ok = _usable(res)
        est[ok] = res["labels"].values[ok]
        fvar[ok] = np.einsum("nkk->nk", res["covariance"].values)[ok]
        eps = epsilon(
            model, scaling.scale(np.nan_to_num(res["labels"].values), model.label_offset_, model.label_scale_), ivar
        )
        source = "holdout"
    elif n_folds >= 2:
        if n < 2 * n_folds:
            raise InsufficientDataError(f"{n} stars are too few for {n_folds}-fold cross-validation")
        rng = np.random.default_rng(random_state)
        fold = rng.permutation(n) % n_folds
        folds = range(n_folds)
        if progressbar:
            from tqdm.auto import tqdm

            folds = tqdm(folds, desc="cross-validation", unit="fold")
        kw = dict(fit_kwargs or {})
        for f in folds:
            tr, te = fold != f, fold == f
            sub = model.clone()
            if fit_label_errors and label_errors is not None:
                kw["label_errors"] = np.asarray(label_errors)[tr]
            sub.fit(flux[tr], ivar[tr], y[tr], wavelength=model.wavelength_, **kw)
            res = sub.infer(flux[te], ivar[te])
            ok = _usable(res)
            rows = np.flatnonzero(te)[ok]
            est[rows] = res["labels"].values[ok]
            fvar[rows] = np.einsum("nkk->nk", res["covariance"].values)[ok]
            xs = scaling.scale(np.nan_to_num(res["labels"].values), sub.label_offset_, sub.label_scale_)
            eps[np.flatnonzero(te)] = epsilon(sub, xs, ivar[te])
        source = f"cv-{n_folds}"
    else:
        raise InvalidInputError(f"n_folds must be 0 (held-out set) or >= 2; got {n_folds}")
    resid = est - y
    x = scaling.scale(np.nan_to_num(est), model.label_offset_, model.label_scale_)
    params = fit_error_model(resid, fvar, eps, x, model.label_names, ref_var=ref_var)
    cal = {
        "kind": CALIBRATION_KIND,
        "version": CALIBRATION_VERSION,
        "error_model": "var = a^2 (1+eps) formal + exp(beta . [1, x_scaled]) (student-t ML); "
        "intervals q(level) * sd with split-conformal quantiles q of |residual| / sd",
        "label_names": list(model.label_names),
        "source": source,
        "levels": list(LEVELS),
        **params,
    }
    model.calibration_ = cal
    # in-sample coverage of the calibrated intervals, for the record
    ok = np.all(np.isfinite(resid), axis=1)
    cov = np.zeros((n, k, k))
    cov[:, np.arange(k), np.arange(k)] = np.nan_to_num(fvar)
    _, sd, h68, h95 = calibrated_errors(model, cov, x, eps)
    extra = np.zeros_like(sd) if ref_var is None else ref_var
    fac = np.sqrt(1.0 + extra / sd**2)
    cal["coverage_in_sample"] = {
        "68": [float(v) for v in coverage(resid[ok], 0.0, (h68 * fac)[ok])],
        "95": [float(v) for v in coverage(resid[ok], 0.0, (h95 * fac)[ok])],
    }
    logger.info(
        "calibration (%s) in-sample coverage 68%%: %s; 95%%: %s",
        source,
        cal["coverage_in_sample"]["68"],
        cal["coverage_in_sample"]["95"],
    )
    return cal


def coverage_report(model, flux, ivar, labels, *, label_errors=None) -> xr.Dataset:
    """Coverage of formal and calibrated 68 %/95 % intervals on held-out stars.

    Returns
    -------
    xarray.Dataset
        ``coverage`` (kind, level, label) with kinds ``formal`` and (when the model is
        calibrated) ``calibrated``; ``target`` (level); ``median_error`` (kind, label);
        ``n_stars``.
    """

    n = np.shape(flux)[0]
    y = as_label_array(labels, model.label_names, n)
    extra = 0.0
    if label_errors is not None:
        extra = check_label_errors(label_errors, n, model.label_names) ** 2
    calibrated = bool(getattr(model, "calibration_", None))
    res = model.infer(flux, ivar, uncertainty="calibrated" if calibrated else "formal")
    ok = _usable(res)
    d = res["labels"].values - y
    kinds = ["formal"] + (["calibrated"] if calibrated else [])
    cov = np.zeros((len(kinds), len(LEVELS), len(model.label_names)))
    med = np.zeros((len(kinds), len(model.label_names)))
    ferr = res["errors_formal"].values if calibrated else res["errors"].values
    for i, kind in enumerate(kinds):
        for j, level in enumerate(LEVELS):
            if kind == "formal":
                sd = np.sqrt(ferr**2 + extra)
                hw = stats.norm.ppf(0.5 + 0.5 * level) * sd
                med[i] = np.median(ferr[ok], axis=0)
            else:
                h = res["half_width_68" if j == 0 else "half_width_95"].values
                sdc = res["errors"].values
                hw = h * np.sqrt(1.0 + extra / sdc**2)
                med[i] = np.median(sdc[ok], axis=0)
            cov[i, j] = coverage(y[ok], res["labels"].values[ok], hw[ok])
    return xr.Dataset(
        {
            "coverage": (("kind", "level", "label_name"), cov),
            "target": ("level", np.asarray(LEVELS)),
            "median_error": (("kind", "label_name"), med),
            "n_stars": int(ok.sum()),
            "bias": ("label_name", np.mean(d[ok], axis=0)),
            "rms": ("label_name", np.sqrt(np.mean(d[ok] ** 2, axis=0))),
        },
        coords={"kind": kinds, "level": list(LEVELS), "label_name": list(model.label_names)},
        attrs={"description": "fraction of held-out stars whose interval holds the reference label"},
    )
