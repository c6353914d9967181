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
from bayescannon.core.conditional import (
    binned_coverage,
    fit_bias_model,
    fit_fold_size_correction,
    fit_mondrian_scales,
    fit_smooth_width,
    smooth_log_scales,
    spectrum_snr,
    width_factors,
)
from bayescannon.core.level_scale import (
    DEFAULT_LEVEL_ESTIMATOR,
    GUARD_SD,
    check_level_estimator,
    level_quantile,
    rescale_quantile_table,
)
from bayescannon.core.selection import DEFAULT_SELECTION
from bayescannon.core.uncertainty import (
    CALIBRATION_KIND,
    CALIBRATION_VERSION,
    LEVELS,
    calibrated_intervals,
    check_label_errors,
    conformal_quantiles,
    coverage,
    epsilon,
    error_model_covariance,
    fit_error_model,
)
from bayescannon.errors import (
    InsufficientDataError,
    InvalidInputError,
    ShapeMismatchError,
)
from bayescannon.flags import StarFlag
from bayescannon.pipeline.pool import blas_threads
from bayescannon.results import set_label_units
from bayescannon.spectra import as_label_array

logger = logging.getLogger(__name__)

__all__ = [
    "calibrate",
    "calibrate_from_predictions",
    "holdout_predictions",
    "binned_coverage_arrays",
    "coverage_by_bin",
    "coverage_report",
    "fit_calibration",
    "interval_inside",
    "refuse_seen_stars",
    "same_stars",
    "training_stars",
]


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
    fold_size_correction: bool = False,
    progressbar: bool = False,
    selection=DEFAULT_SELECTION,
    level_estimator: str = DEFAULT_LEVEL_ESTIMATOR,
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
    fold_size_correction : bool
        With ``n_folds >= 3``: also run a 2-fold cross-validation (models on N/2 stars;
        20–40 % more calibration time) and extrapolate the residual variances, as
        ``A + B/m`` in the training-set size m, from the fold models' (K−1)/K·N stars to
        the final model's N where the difference is significant
        (:func:`bayescannon.core.conditional.fit_fold_size_correction`); recorded as the
        calibration's ``fold_size``. Off by default: the ``1/m`` law does not hold on every
        data set (on simulator spectra it over-corrects into under-coverage; see
        ``docs/guides/calibration.md``); a held-out calibration set (``n_folds = 0``) has no
        fold-size effect at all. Ignored for ``n_folds = 0`` and ``n_folds = 2``.
    progressbar : bool
    selection : {"best", "one-se", "one-se-classic"}
        How the bias and width models' own cross-validation picks their form and ridge
        (see :func:`fit_calibration`).
    level_estimator : {"conformal", "student-t", "parametric"}
        Estimator of each label's overall 68 % interval scale (see :func:`fit_calibration`).

    Returns
    -------
    dict
        The calibration (also stored as ``model.calibration_``; saved with the model): the
        error-model parameters, ``bias`` (the learned label bias, see
        :func:`bayescannon.core.conditional.fit_bias_model`), ``mondrian`` (width factors),
        ``coverage_in_sample`` (68/95 → per label) and ``coverage_by_bin``: for ``snr``
        and each label, the quintile ranges (``lo``, ``hi``), counts ``n`` and coverage
        ``"68"``/``"95"`` (bin × label) of the calibrated intervals on the held-out
        (cross-fitted, bias-corrected, fold-size-corrected) residuals; ``fold_size`` (None
        without the correction).
    """
    model._check_fitted()
    check_level_estimator(level_estimator)
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
    fvar = np.full((n, k), np.nan)
    eps = np.zeros(n)
    est = np.full((n, k), np.nan)
    fold_size = None
    if n_folds == 0:
        _check_held_out(model, y)
        est, fvar, eps = holdout_predictions(model, flux, ivar)
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
        fit = dict(kw=kw, label_errors=label_errors if fit_label_errors else None)
        for f in folds:
            _cv_fold(model, flux, ivar, y, fold == f, fit, est, fvar, eps)
        source = f"cv-{n_folds}"
        if fold_size_correction and n_folds >= 3:
            # a cheaper second cross-validation on half the stars: the slope of the residual
            # variance with the training-set size (fold-size correction)
            fold2 = rng.permutation(n) % 2
            est2, fvar2, eps2 = np.full((n, k), np.nan), np.full((n, k), np.nan), np.zeros(n)
            for f in range(2):
                _cv_fold(model, flux, ivar, y, fold2 == f, fit, est2, fvar2, eps2)
            sizes = (n - np.bincount(fold).mean(), n - np.bincount(fold2).mean(), n)
            fold_size = {"estimates": est2, "sizes": sizes}
        elif fold_size_correction:
            logger.warning("fold-size correction needs n_folds >= 3 (a second, 2-fold CV); none applied")
    else:
        raise InvalidInputError(f"n_folds must be 0 (held-out set) or >= 2; got {n_folds}")
    return calibrate_from_predictions(
        model,
        est,
        fvar,
        y,
        eps=eps,
        snr=spectrum_snr(flux, ivar),
        ref_var=ref_var,
        random_state=random_state,
        source=source,
        fold_size=fold_size,
        selection=selection,
        level_estimator=level_estimator,
    )


def same_stars(model, labels, other) -> np.ndarray:
    """Rows of ``labels`` (N, K) whose reference labels equal a row of ``other`` (M, K)
    exactly (to 1e-9 in the model's scaled units; rows with a missing label never match):
    the same stars, e.g. a "held-out" set that is the calibration or training set."""
    if len(labels) == 0 or len(other) == 0:
        return np.zeros(len(labels), dtype=bool)
    x = scaling.scale(np.asarray(labels, dtype=np.float64), model.label_offset_, model.label_scale_)
    o = scaling.scale(np.asarray(other, dtype=np.float64), model.label_offset_, model.label_scale_)
    return _row_isin(x, o)


def training_stars(model, labels) -> np.ndarray:
    """Rows of ``labels`` (N, K) with exactly the reference labels of one of ``model``'s
    training stars (all False for a model saved without them)."""
    train = getattr(model, "training_labels_scaled_", None)
    if train is None or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    x = scaling.scale(np.asarray(labels, dtype=np.float64), model.label_offset_, model.label_scale_)
    return _row_isin(x, train)


def _row_isin(x, ref) -> np.ndarray:
    def rows(a):
        a = np.ascontiguousarray(np.round(np.asarray(a, dtype=np.float64), 9) + 0.0)  # + 0.0: -0.0 -> 0.0
        return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()

    return np.isin(rows(x), rows(ref)) & np.all(np.isfinite(x), axis=1)


def holdout_predictions(model, flux, ivar):
    """Estimates, formal variances (N, K; NaN for unusable stars) and ε (N,) of held-out
    stars, as :func:`calibrate` with ``n_folds=0`` draws them (for
    :func:`calibrate_from_predictions`)."""
    res = model.infer(flux, ivar)
    ok = _usable(res)
    n, k = res["labels"].shape
    est = np.full((n, k), np.nan)
    fvar = np.full((n, k), np.nan)
    est[ok] = res["labels"].values[ok]
    fvar[ok] = np.einsum("nkk->nk", res["covariance"].values)[ok]
    eps = epsilon(
        model, scaling.scale(np.nan_to_num(res["labels"].values), model.label_offset_, model.label_scale_), ivar
    )
    return est, fvar, eps


def refuse_seen_stars(seen, stars: str, what: str, consequence: str, remedy: str, leave_out: str) -> None:
    """A set whose stars are mostly ones already used (``seen``, a boolean mask from
    :func:`training_stars` or :func:`same_stars`): :class:`InvalidInputError` ending in
    ``remedy``; a few: a warning naming their rows. ``stars`` names the set's stars, ``what``
    the stars they repeat, ``consequence`` why it matters, ``leave_out`` the set to leave
    them out of."""
    seen = np.asarray(seen, dtype=bool)
    n_seen, n = int(seen.sum()), len(seen)
    if not n_seen:
        return
    first = ", ".join(str(i) for i in np.flatnonzero(seen)[:5])
    msg = (
        f"{n_seen} of {n} {stars} have exactly the reference labels of {what} stars "
        f"(rows {first}{', ...' if n_seen > 5 else ''}){consequence}"
    )
    if n_seen > n // 2:
        raise InvalidInputError(msg + remedy)
    logger.warning("%s; leave them out of the %s", msg, leave_out)


def _check_held_out(model, y):
    """Refuse a "held-out" calibration set that is mostly the training set, warn about a few
    training stars in it: their residuals are in-sample (too small), so the calibrated
    intervals would come out too narrow without any sign. A star counts as a training star
    when its reference labels equal one training star's exactly (to 1e-9 in scaled units)."""
    refuse_seen_stars(
        training_stars(model, y),
        "calibration stars",
        "training",
        ": with n_folds=0 (--n-folds 0) their residuals are in-sample and too small, and the calibrated intervals "
        "too narrow",
        "; calibrate on stars held out from training, or on the training set with n_folds >= 2 (cross-validation "
        "refits the model without each fold)",
        "calibration set",
    )


def _cv_fold(model, flux, ivar, y, te, fit, est, fvar, eps):
    """Refit ``model`` without the rows ``te`` and fill their estimates, formal variances
    and ε (in place; unusable stars keep NaN)."""
    tr = ~te
    sub = model.clone()
    kw = dict(fit["kw"])
    if fit["label_errors"] is not None:
        kw["label_errors"] = np.asarray(fit["label_errors"])[tr]
    sub.fit(flux[tr], ivar[tr], y[tr], wavelength=model.wavelength_, **kw)
    res = sub.infer(flux[te], ivar[te])
    ok = _usable(res)
    rows = np.flatnonzero(te)[ok]
    est[rows] = res["labels"].values[ok]
    fvar[rows] = np.einsum("nkk->nk", res["covariance"].values)[ok]
    xs = scaling.scale(np.nan_to_num(res["labels"].values), sub.label_offset_, sub.label_scale_)
    eps[np.flatnonzero(te)] = epsilon(sub, xs, ivar[te])


def calibrate_from_predictions(
    model,
    estimates,
    formal_var,
    labels,
    *,
    eps=None,
    snr=None,
    ref_var=None,
    random_state=0,
    source="predictions",
    fold_size=None,
    selection=DEFAULT_SELECTION,
    level_estimator=DEFAULT_LEVEL_ESTIMATOR,
) -> dict:
    """:func:`calibrate` from held-out or cross-validated estimates already at hand.

    Parameters
    ----------
    model : CannonModel
        The fitted model that receives the calibration (its scaling defines x̂).
    estimates : ndarray, shape (N, K)
        Held-out estimates (physical units; NaN for unusable stars).
    formal_var : ndarray, shape (N, K)
        Their formal variances.
    labels : ndarray, shape (N, K)
        Reference labels.
    eps : ndarray, shape (N,), optional
        θ-uncertainty factors (default 0).
    snr : ndarray, shape (N,), optional
        S/N per star, for the per-S/N-quintile coverage (omitted when None).
    ref_var : ndarray, shape (N, K), optional
        Reference-label variances.
    random_state : int
    source : str
        Recorded as the calibration's ``source``.
    fold_size : dict, optional
        Fold-size correction of cross-validated estimates: ``estimates`` (N, K), held-out
        estimates of the same stars from models trained on fewer stars, and ``sizes`` =
        (m₁, m₂, N): the training-set sizes behind ``estimates``, behind those, and of
        ``model`` (see :func:`calibrate`).
    selection : {"best", "one-se", "one-se-classic"}
        How the bias and width models' CV picks their form (see :func:`fit_calibration`).
    level_estimator : {"conformal", "student-t", "parametric"}
        Estimator of each label's overall 68 % interval scale (see :func:`fit_calibration`).

    Returns
    -------
    dict
        The calibration, also stored as ``model.calibration_`` (see :func:`calibrate`).
    """
    y = np.asarray(labels, dtype=np.float64)
    est = np.asarray(estimates, dtype=np.float64)
    fvar = np.asarray(formal_var, dtype=np.float64)
    eps = np.zeros(len(est)) if eps is None else np.asarray(eps, dtype=np.float64)
    resid = est - y
    x = scaling.scale(est, model.label_offset_, model.label_scale_)
    fs = None
    if fold_size is not None:
        fs = {"residuals": np.asarray(fold_size["estimates"], dtype=np.float64) - y, "sizes": fold_size["sizes"]}
    with blas_threads(1):  # many small ridge solves: BLAS threads only cost (pipeline.pool.blas_threads)
        cal, oof, factors = _fit_calibration(
            resid,
            fvar,
            eps,
            x,
            model.label_names,
            ref_var=ref_var,
            random_state=random_state,
            bias=True,
            mondrian=True,
            smooth=True,
            groups=None,
            fold_size=fs,
            selection=selection,
            level_estimator=level_estimator,
        )
    cal["source"] = source
    model.calibration_ = cal
    # coverage of the calibrated intervals on the (cross-fitted, bias-corrected, fold-size-corrected) residuals
    rc = (resid - oof) * np.sqrt(factors)
    inside = interval_inside(cal, rc, fvar, x, eps, ref_var)
    ok = np.all(np.isfinite(rc), axis=1)
    cal["coverage_in_sample"] = {
        str(int(round(100 * lv))): _json_floats(inside[ok, i].mean(axis=0))
        if ok.any()
        else [None] * len(model.label_names)
        for i, lv in enumerate(LEVELS)
    }
    snr = np.full(len(y), np.nan) if snr is None else np.asarray(snr, dtype=np.float64)
    cal["coverage_by_bin"] = coverage_by_bin(inside[ok], snr[ok], y[ok], model.label_names)
    if not np.isfinite(snr).any():
        del cal["coverage_by_bin"]["snr"]
    logger.info(
        "calibration (%s) in-sample coverage 68%%: %s; 95%%: %s",
        source,
        cal["coverage_in_sample"]["68"],
        cal["coverage_in_sample"]["95"],
    )
    return cal


def fit_calibration(
    residuals,
    formal_var,
    eps,
    x_scaled,
    label_names,
    *,
    ref_var=None,
    random_state=0,
    bias=True,
    mondrian=True,
    smooth=True,
    groups=None,
    fold_size=None,
    interactions=(False, True),
    selection=DEFAULT_SELECTION,
    level_estimator=DEFAULT_LEVEL_ESTIMATOR,
):
    """Fit the calibration (bias model, error model, Mondrian factors, conformal quantiles)
    on held-out residuals; :func:`calibrate` runs the model and calls this.

    Parameters
    ----------
    residuals : ndarray, shape (N, K)
        Held-out (or cross-validated) estimate minus reference label; NaN for failed stars.
    formal_var : ndarray, shape (N, K)
        Formal variances of the estimates.
    eps : ndarray, shape (N,)
        θ-uncertainty factor ε (zeros to ignore).
    x_scaled : ndarray, shape (N, K)
        Scaled estimated labels.
    label_names : list of str
    ref_var : ndarray, shape (N, K), optional
        Reference-label variances.
    random_state : int
        Seed of the bias model's cross-validation folds.
    bias, mondrian, smooth : bool
        Fit the bias model / the Mondrian width factors / the smooth width model (all False:
        the version-2 calibration, which covers only on average; ``smooth=False``: version 4).
    groups : ndarray, shape (N,), optional
        Star of each row when stars have several residual rows (repeated cross-validation):
        the internal cross-validations keep a star's rows in one fold.
    fold_size : dict, optional
        Fold-size correction of cross-validated residuals: ``residuals`` (N, K), held-out
        residuals of the same stars from models on fewer stars, and ``sizes`` = (m₁, m₂, N),
        the training-set sizes behind ``residuals``, behind those and of the final model
        (:func:`bayescannon.core.conditional.fit_fold_size_correction`). The residuals are
        rescaled to the full size where the size effect is significant, before the error
        model, width factors and conformal quantiles are fitted; None: no correction.
    interactions : sequence of bool
        Candidates of the smooth width model's label × noise-fraction terms, chosen by its
        cross-validation (:func:`bayescannon.core.conditional.fit_smooth_width`; ``(False,)``:
        the version-6 additive model).
    selection : {"best", "one-se", "one-se-classic"}
        Rule of the bias and smooth width models' cross-validated choice of form and ridge:
        the best CV score, or the simplest candidate within one standard error of it
        (:func:`bayescannon.core.selection.select_candidate`).
    level_estimator : {"conformal", "student-t", "parametric"}
        Estimator of each label's overall 68 % scale, the 68 % quantile of the standardised
        |z| after the width models: the split-conformal quantile (distribution-free), or a
        maximum-likelihood Student-t (or the better of a t and a generalised normal) fitted to
        all the |z| (a lower-variance estimate), used only where its coverage of the
        calibration stars is within ``GUARD_SD`` binomial sd of 0.68 and the conformal quantile
        otherwise (:func:`bayescannon.core.level_scale.level_quantile`). The 95 % quantile
        stays split-conformal; levels in between follow
        (:func:`bayescannon.core.level_scale.rescale_quantile_table`). Recorded as
        ``level_scale`` (the estimator each label used).

    Returns
    -------
    cal : dict
        The calibration (JSON-serialisable; without ``source`` and the coverage records).
    oof_bias : ndarray, shape (N, K)
        Cross-fitted bias of each star (zeros without a bias model).
    """
    with blas_threads(1):  # many small ridge solves: BLAS threads only cost
        cal, oof, _ = _fit_calibration(
            residuals,
            formal_var,
            eps,
            x_scaled,
            label_names,
            ref_var=ref_var,
            random_state=random_state,
            bias=bias,
            mondrian=mondrian,
            smooth=smooth,
            groups=groups,
            fold_size=fold_size,
            interactions=interactions,
            selection=selection,
            level_estimator=level_estimator,
        )
    return cal, oof


def _fit_calibration(
    resid,
    fvar,
    eps,
    x,
    label_names,
    *,
    ref_var,
    random_state,
    bias,
    mondrian,
    smooth,
    groups,
    fold_size,
    interactions=(False, True),
    selection=DEFAULT_SELECTION,
    level_estimator=DEFAULT_LEVEL_ESTIMATOR,
):
    """:func:`fit_calibration`, also returning the fold-size variance factors g (N, K; ones
    without the correction) by which the returned calibration's residuals were rescaled (√g)."""
    check_level_estimator(level_estimator)
    eps = np.zeros(len(resid)) if eps is None else np.asarray(eps, dtype=np.float64)
    names = list(label_names)
    noise = (1.0 + eps)[:, None] * fvar
    with np.errstate(invalid="ignore"):
        excess = np.maximum(
            np.nanmean(resid**2, axis=0) - np.nanmedian(noise, axis=0), 1e-12 * np.nanmean(resid**2, axis=0)
        )
        weights = 1.0 / (noise + excess[None, :] + (0.0 if ref_var is None else ref_var))
    if bias:
        bias, oof = fit_bias_model(
            resid, x, weights, names, random_state=random_state, groups=groups, selection=selection
        )
    else:
        bias, oof = None, np.zeros_like(resid)
    rc = resid - oof
    params = fit_error_model(rc, fvar, eps, np.nan_to_num(x), names, ref_var=ref_var)
    var, floor, u = _model_variance(params, fvar, x, eps)
    fold_record, factors = None, np.ones_like(rc)
    if fold_size is not None:
        # residuals of fold models extrapolated to the full training set, then the error model refitted
        small = np.asarray(fold_size["residuals"], dtype=np.float64) - oof
        fold_record, factors = fit_fold_size_correction(
            rc, small, var, floor, u, fold_size["sizes"], names, random_state=random_state
        )
        if any(fold_record["significant"]):
            rc = rc * np.sqrt(factors)
            params = fit_error_model(rc, fvar, eps, np.nan_to_num(x), names, ref_var=ref_var)
            var, floor, u = _model_variance(params, fvar, x, eps)
    rv = np.zeros_like(var) if ref_var is None else ref_var
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(rc) / np.sqrt(var + rv)
    ok = np.isfinite(rc) & np.isfinite(fvar) & (fvar > 0)
    z = np.where(ok, z, np.nan)
    width = None
    if smooth:
        width = fit_smooth_width(
            z, x, u, names, random_state=random_state, groups=groups, interactions=interactions, selection=selection
        )
    z1 = z / np.exp(smooth_log_scales(width, x, u))
    mondrian = fit_mondrian_scales(z1, x, u, names) if mondrian else None
    s = width_factors(width, mondrian, x, u)
    zq = []
    level_scale = {"requested": level_estimator, "guard_sd": GUARD_SD, "level": LEVELS[0]}
    records = []
    for j in range(len(names)):
        zs = np.abs(rc[ok[:, j], j]) / np.sqrt((s * s * var + rv)[ok[:, j], j])
        table = conformal_quantiles(zs, params["quantile_levels"])
        q, rec = level_quantile(zs, LEVELS[0], level_estimator)
        if rec["used"] != "conformal":
            table = rescale_quantile_table(params["quantile_levels"], table, LEVELS[0], q, upper=LEVELS[1])
        elif level_estimator != "conformal":
            logger.warning(
                "%s: the %s 68 %% level (%.4g) and the split-conformal one (%.4g) disagree by %s binomial sd "
                "(guard %.1f): split-conformal used",
                names[j],
                level_estimator,
                np.nan if rec["parametric"] is None else rec["parametric"],
                rec["conformal"],
                "?" if rec["disagreement_sd"] is None else f"{rec['disagreement_sd']:.2f}",
                GUARD_SD,
            )
        records.append(rec)
        zq.append([float(v) for v in table])
    for key in ("used", "conformal", "parametric", "family", "shape", "disagreement_sd"):
        level_scale[key] = [r[key] for r in records]
    params["z_quantiles"] = zq
    return (
        {
            "kind": CALIBRATION_KIND,
            "version": CALIBRATION_VERSION,
            "error_model": "estimate corrected by a CV-selected ridge bias b(x_scaled) (polynomial + per-label "
            "piecewise-linear terms); "
            "var = s^2 [a^2 (1+eps) formal + exp(beta . [1, x_scaled])] (student-t ML) with Mondrian factors s "
            "per quintile of each scaled label and of the noise fraction (empirical-Bayes shrunk) on top of a smooth "
            "log-width in the scaled labels and the noise fraction (with label x noise-fraction terms where CV "
            "selects them); intervals q(level) * sd with "
            "split-conformal quantiles q of |residual| / sd",
            "label_names": names,
            "levels": list(LEVELS),
            **params,
            "bias": bias,
            "mondrian": mondrian,
            "width": width,
            "fold_size": fold_record,
            "level_scale": level_scale,
        },
        oof,
        factors,
    )


def _model_variance(params, fvar, x, eps):
    """Error-model variance σ², its model-error floor f and noise fraction u = 1 − f/σ² (N, K)."""
    cov = np.zeros(fvar.shape + (fvar.shape[1],))
    idx = np.arange(fvar.shape[1])
    cov[:, idx, idx] = np.nan_to_num(fvar)
    var = np.einsum(
        "nkk->nk",
        error_model_covariance(cov, np.nan_to_num(x), params["noise_scale"], params["floor_coefficients"], eps),
    )
    floor = np.exp(np.column_stack([np.ones(len(x)), np.nan_to_num(x)]) @ np.asarray(params["floor_coefficients"]).T)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = 1.0 - floor / var
    return var, floor, u


def interval_inside(cal, resid, formal_var, x_scaled, eps, ref_var=None):
    """Whether each star's calibrated 68 %/95 % interval holds its reference label.

    ``resid`` is the residual of the estimate the intervals are centred on (the
    bias-corrected one for a calibration with a bias model). Returns bool (N, 2, K).
    """
    n, k = resid.shape
    cov = np.zeros((n, k, k))
    cov[:, np.arange(k), np.arange(k)] = np.nan_to_num(formal_var)
    _, sd, h68, h95 = calibrated_intervals(cal, cov, np.nan_to_num(x_scaled), eps)
    fac = 1.0 if ref_var is None else np.sqrt(1.0 + ref_var / sd**2)
    return np.stack([np.abs(resid) <= h68 * fac, np.abs(resid) <= h95 * fac], axis=1)


def _json_floats(a):
    """Nested lists of floats with ``None`` for NaN (an empty bin): standard JSON, which
    ``json.dumps`` would otherwise write as the non-standard ``NaN``."""
    a = np.asarray(a, dtype=np.float64)
    return [_json_floats(v) for v in a] if a.ndim else (float(a) if np.isfinite(a) else None)


def coverage_by_bin(inside, snr, y, label_names) -> dict:
    """Coverage per S/N quintile and per quintile of each reference label (JSON-ready).

    Empty bins (e.g. fewer distinct S/N values than bins) hold ``None`` (JSON ``null``) for
    their coverage and range; :func:`binned_coverage_arrays` reads them back as NaN.
    """
    out = {}
    for by, values in [("snr", snr)] + [(name, y[:, j]) for j, name in enumerate(label_names)]:
        cov, counts, lo, hi = binned_coverage(inside, values)
        out[by] = {
            "n": [int(c) for c in counts],
            "lo": _json_floats(lo),
            "hi": _json_floats(hi),
            **{str(int(round(100 * lv))): _json_floats(cov[:, i, :]) for i, lv in enumerate(LEVELS)},
        }
    return out


def binned_coverage_arrays(entry) -> dict:
    """One ``coverage_by_bin`` entry as float arrays (``None`` → NaN): ``n`` (int), ``lo``,
    ``hi`` (bin,) and each level key (bin, label)."""
    return {key: np.asarray(val, dtype=np.int64 if key == "n" else np.float64) for key, val in entry.items()}


def coverage_report(model, flux, ivar, labels, *, label_errors=None, snr=None) -> xr.Dataset:
    """Coverage of formal and calibrated 68 %/95 % intervals on held-out stars, overall and
    per S/N quintile and per quintile of each reference label.

    Parameters
    ----------
    model : CannonModel
    flux, ivar : ndarray, shape (N, P)
    labels : ndarray, shape (N, K)
        Reference labels.
    label_errors : ndarray, shape (N, K), optional
        Reference-label errors (added in quadrature to the reported errors).
    snr : ndarray, shape (N,), optional
        S/N per star for the S/N bins (default: median flux·√ivar over usable pixels).

    Returns
    -------
    xarray.Dataset
        ``coverage`` (kind, level, label_name) with kinds ``formal`` and (when the model
        is calibrated) ``calibrated``; ``coverage_binned`` (kind, by, bin, level,
        label_name) with ``by`` = ``snr`` and each label (quintiles of the reference
        labels), ``bin_count``, ``bin_lo``, ``bin_hi`` (by, bin); ``target`` (level);
        ``median_error`` (kind, label_name); ``bias`` and ``rms`` of the reported labels
        and ``rms_uncorrected`` of the maximum-likelihood ones (label_name); ``n_stars``.
    """
    n = np.shape(flux)[0]
    y = as_label_array(labels, model.label_names, n)
    extra = 0.0
    if label_errors is not None:
        extra = check_label_errors(label_errors, n, model.label_names) ** 2
    calibrated = bool(getattr(model, "calibration_", None))
    res = model.infer(flux, ivar, uncertainty="calibrated" if calibrated else "formal")
    ok = _usable(res)
    snr = spectrum_snr(flux, ivar) if snr is None else np.asarray(snr, dtype=np.float64)
    raw = res["labels_uncorrected"].values if calibrated else res["labels"].values
    d = res["labels"].values - y
    kinds = ["formal"] + (["calibrated"] if calibrated else [])
    names = list(model.label_names)
    k = len(names)
    cov = np.zeros((len(kinds), len(LEVELS), k))
    med = np.zeros((len(kinds), k))
    ferr = res["errors_formal"].values if calibrated else res["errors"].values
    by = ["snr"] + names
    binned = np.zeros((len(kinds), len(by), 5, len(LEVELS), k))
    counts = np.zeros((len(by), 5), dtype=np.int64)
    lo = np.zeros((len(by), 5))
    hi = np.zeros((len(by), 5))
    for i, kind in enumerate(kinds):
        inside = np.zeros((n, len(LEVELS), k), dtype=bool)
        for j, level in enumerate(LEVELS):
            if kind == "formal":
                sd = np.sqrt(ferr**2 + extra)
                hw = stats.norm.ppf(0.5 + 0.5 * level) * sd
                med[i] = np.median(ferr[ok], axis=0)
                center = raw
            else:
                h = res["half_width_68" if j == 0 else "half_width_95"].values
                sdc = res["errors"].values
                hw = h * np.sqrt(1.0 + extra / sdc**2)
                med[i] = np.median(sdc[ok], axis=0)
                center = res["labels"].values
            cov[i, j] = coverage(y[ok], center[ok], hw[ok])
            inside[:, j] = np.abs(center - y) <= hw
        for b, values in enumerate([snr] + [y[:, q] for q in range(k)]):
            binned[i, b], counts[b], lo[b], hi[b] = binned_coverage(inside[ok], values[ok])
    return set_label_units(
        xr.Dataset(
            {
                "coverage": (("kind", "level", "label_name"), cov),
                "coverage_binned": (("kind", "by", "bin", "level", "label_name"), binned),
                "bin_count": (("by", "bin"), counts),
                "bin_lo": (("by", "bin"), lo),
                "bin_hi": (("by", "bin"), hi),
                "target": ("level", np.asarray(LEVELS)),
                "median_error": (("kind", "label_name"), med),
                "n_stars": int(ok.sum()),
                "bias": ("label_name", np.mean(d[ok], axis=0)),
                "rms": ("label_name", np.sqrt(np.mean(d[ok] ** 2, axis=0))),
                "rms_uncorrected": ("label_name", np.sqrt(np.mean((raw - y)[ok] ** 2, axis=0))),
            },
            coords={"kind": kinds, "level": list(LEVELS), "label_name": names, "by": by, "bin": np.arange(5)},
            attrs={
                "description": "fraction of held-out stars whose interval holds the reference label; "
                "coverage_binned: per quintile of S/N (by='snr') and of each reference label"
            },
        ),
        ["median_error", "bias", "rms", "rms_uncorrected"],
    )
