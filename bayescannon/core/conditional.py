"""Conditional calibration: a smooth label-dependent bias and Mondrian interval widths.

The error model of :mod:`bayescannon.core.uncertainty` widens intervals but cannot move
them; a misspecified spectral model (e.g. a quadratic Cannon on spectra that are not
quadratic in the labels) biases the estimates by region of label space, so intervals
that cover on average under-cover where the bias is large and over-cover elsewhere.
This module holds the two pieces that make the coverage *conditional* (see
``docs/guides/calibration.md``):

1. **Bias** ``b_k(x̂) = E[ℓ̂_k − ℓ_k | x̂]``: a polynomial in the scaled estimated labels
   x̂ (all cross terms, total degree ``d`` ∈ {0, 1, 2, 3}), optionally plus additive
   piecewise-linear terms of each label (knots at its quantiles: a bias that changes sign
   along one label), fitted to held-out residuals by
   weighted ridge regression (weights ``1/(noise variance + model-error variance)``,
   residuals winsorised at 5 robust sd). ``d`` and the ridge strength ``α`` are chosen by
   K-fold cross-validation of the residuals themselves; degree 0 (a constant) or no
   correction at all win when the data do not support more, so the correction cannot
   overfit beyond what CV detects. The corrected estimate is ``ℓ̂ − b(x̂)``.
2. **Mondrian width factors**: a multiplicative factor ``s_nk = exp(Σ_g c_kg[bin_g(n)])``
   on the calibrated sd, with one additive log-effect per bin of each partition ``g``
   (quintiles of every scaled estimated label, and quintiles of the star's noise
   fraction ``u_nk`` = noise variance / total variance, a proxy of S/N). The effects are
   fitted by raking (iterative proportional fitting of the 68 % quantile of the
   standardised ``|residual|`` in every bin, each sweep's effects shrunk towards 0 by an
   empirical-Bayes factor τ²/(τ² + v): v the sampling variance of the bin's log quantile,
   τ² the spread of the true effects): each marginal bin then covers at the global rate
   as far as the data can tell. A factor never takes
   the calibrated variance below its noise part (``s ≥ √u``).
"""

from __future__ import annotations

import logging

import numpy as np

from bayescannon.core.selection import DEFAULT_SELECTION, select_candidate
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InsufficientDataError, InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "BIAS_DEGREES",
    "BIAS_ALPHAS",
    "fit_bias_model",
    "predict_bias",
    "quantile_edges",
    "bin_index",
    "fit_mondrian_scales",
    "mondrian_scales",
    "mondrian_log_scales",
    "fit_smooth_width",
    "smooth_log_scales",
    "width_factors",
    "fold_size_lever",
    "fit_fold_size_correction",
    "binned_coverage",
    "spectrum_snr",
]

#: Candidate total degrees of the bias polynomial (0: a constant offset).
BIAS_DEGREES = (0, 1, 2, 3)
#: Candidate ridge strengths (per star, on unit-mean weights; the constant is not penalised).
BIAS_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Knots (at quantiles of each scaled estimated label) of the additive piecewise-linear terms.
SPLINE_KNOTS = 9
#: Candidate degrees of the smooth log-width model (additive polynomials; 0: no smooth factor).
WIDTH_DEGREES = (0, 1, 2, 3)
#: Candidate ridge strengths of the smooth log-width model (per star, on standardised predictors).
WIDTH_ALPHAS = (1e-3, 1e-2, 1e-1)
#: Bootstrap resamples, significance gate (bootstrap sd) and smallest sd factor of the
#: fold-size correction (:func:`fit_fold_size_correction`).
FOLD_SIZE_BOOTSTRAP = 400
FOLD_SIZE_GATE = 2.0
FOLD_SIZE_MIN_FACTOR = 0.8
_FOLD_SIZE_CLIP = 5.0  # |r|/σ beyond this counts as this in the fold-size slope
_N_BINS = 5
_RAKE_SWEEPS = 30
_WINSOR_Z = 4.0  # |z| beyond 4x the global 68 % quantile counts as 4x in the Mondrian scale statistic


# --------------------------------------------------------------------------- bias
def _design(x, degree, knots=None):
    """Polynomial of total ``degree`` in x (all cross terms) and, with ``knots`` (K, m), the
    additive piecewise-linear ("hat") basis of each label on its knots (constant beyond the
    outer knots: the correction never extrapolates a trend)."""
    if degree == 0:
        phi = np.ones((x.shape[0], 1))
    else:
        phi = PolynomialVectorizer([f"x{i}" for i in range(x.shape[1])], degree)(x)
    if knots is None:
        return phi
    return np.hstack([phi] + [_hat_basis(x[:, i], np.asarray(knots[i], dtype=np.float64)) for i in range(x.shape[1])])


def _hat_basis(v, knots):
    """Piecewise-linear interpolation basis (N, m) on sorted ``knots`` (m,); clamped outside."""
    m = knots.size
    i = np.clip(np.searchsorted(knots, v, side="right") - 1, 0, m - 2)
    width = knots[i + 1] - knots[i]
    t = np.clip(np.divide(v - knots[i], width, out=np.zeros_like(v), where=width > 0), 0.0, 1.0)
    out = np.zeros((v.size, m))
    rows = np.arange(v.size)
    out[rows, i] = 1.0 - t
    out[rows, i + 1] += t
    return out


def _fold_of(groups, n_folds, rng):
    """Cross-validation fold of each row; rows of one group (e.g. repeated residual draws of
    one star) share a fold, so that no star is on both sides of a split."""
    inv = np.unique(np.asarray(groups), return_inverse=True)[1]
    return (rng.permutation(inv.max() + 1) % n_folds)[inv] if inv.size else inv


def _ridge(phi, r, w, alpha):
    """Weighted ridge: minimise Σ w (r − φc)² + α n Σ_{t≥1} c_t² (constant unpenalised)."""
    pen = np.full(phi.shape[1], alpha * phi.shape[0])
    pen[0] = 0.0
    a = (phi * w[:, None]).T @ phi + np.diag(pen)
    return np.linalg.solve(a + 1e-12 * np.trace(a) / a.shape[0] * np.eye(a.shape[0]), (phi * w[:, None]).T @ r)


def _winsorise(r, w):
    med = np.median(r)
    mad = 1.4826 * np.median(np.abs(r - med))
    if not mad > 0:
        return r
    return np.clip(r, med - 5 * mad, med + 5 * mad)


def fit_bias_model(
    residuals,
    x_scaled,
    weights,
    label_names,
    *,
    n_folds=5,
    random_state=0,
    degrees=None,
    alphas=None,
    splines=(False, True),
    groups=None,
    selection=DEFAULT_SELECTION,
):
    """Smooth label-dependent bias of the estimates, with its form and ridge chosen by CV.

    Parameters
    ----------
    residuals : ndarray, shape (N, K)
        Held-out estimate minus reference label (physical units); NaN rows are skipped.
    x_scaled : ndarray, shape (N, K)
        Scaled estimated labels (the predictors).
    weights : ndarray, shape (N, K)
        Inverse variances of the residuals (noise + model error); only ratios matter.
    label_names : list of str
    n_folds : int
        Folds of the cross-validation that selects degree and ridge strength.
    random_state : int
    degrees, alphas : sequence, optional
        Candidates (default :data:`BIAS_DEGREES`, :data:`BIAS_ALPHAS`).
    splines : sequence of bool
        Candidates for adding the additive piecewise-linear terms (:data:`SPLINE_KNOTS`
        knots at quantiles of each scaled label) to the polynomial: they follow a bias that
        changes sign several times along one label, which a cubic cannot.
    groups : ndarray, shape (N,), optional
        Star of each row when a star has several rows (repeated cross-validation): the
        folds of this cross-validation keep a star's rows together.
    selection : {"best", "one-se", "one-se-classic"}
        Rule that picks the candidate from its CV score (:func:`bayescannon.core.selection.select_candidate`;
        simpler = fewer terms, then a stronger ridge).

    Returns
    -------
    params : dict
        JSON-serialisable: ``degree`` (K,), ``splines`` (K,), ``knots`` (K lists),
        ``alpha`` (K,), ``coefficients`` (K lists), ``cv_mse`` (K,) of the chosen model
        and ``cv_mse_none`` (K,) without a correction (weighted mean squared residuals,
        physical units squared).
    oof : ndarray, shape (N, K)
        Out-of-fold (cross-fitted) bias of every star with the chosen settings: use it
        to correct the residuals that calibrate the widths, so that they are honest.
    """
    degrees = BIAS_DEGREES if degrees is None else tuple(degrees)
    alphas = BIAS_ALPHAS if alphas is None else tuple(alphas)
    r_all = np.asarray(residuals, dtype=np.float64)
    x_all = np.asarray(x_scaled, dtype=np.float64)
    n, k = r_all.shape
    oof = np.zeros((n, k))
    rng = np.random.default_rng(random_state)
    xz = np.nan_to_num(x_all)
    finite_x = np.all(np.isfinite(x_all), axis=1)
    knots = np.vstack(
        [
            np.quantile(xz[finite_x, i], np.linspace(0.0, 1.0, SPLINE_KNOTS))
            if finite_x.any()
            else np.zeros(SPLINE_KNOTS)
            for i in range(k)
        ]
    )
    out = {
        "degree": [],
        "splines": [],
        "knots": knots.tolist(),
        "alpha": [],
        "coefficients": [],
        "cv_mse": [],
        "cv_mse_none": [],
    }
    designs = {(d, sp): _design(xz, d, knots if sp else None) for d in degrees for sp in splines}
    for j in range(k):  # a few labels
        good = np.isfinite(r_all[:, j]) & finite_x & np.isfinite(weights[:, j])
        good &= weights[:, j] > 0
        m = int(good.sum())
        if m < 4 * n_folds:
            raise InsufficientDataError(f"the bias model of {label_names[j]} needs >= {4 * n_folds} stars; got {m}")
        w = weights[good, j] / np.mean(weights[good, j])
        r = _winsorise(r_all[good, j], w)
        fold = _fold_of(np.arange(n) if groups is None else groups, n_folds, rng)[good]
        cands = [(None, 0.0, (0, 0.0), w * r * r)]  # no correction; per-star losses w (r - pred)²
        for (d, sp), phi_all in designs.items():
            phi = phi_all[good]
            if phi.shape[1] * 5 > m:  # too many terms for the stars: skip the form
                continue
            for alpha in alphas if phi.shape[1] > 1 else (0.0,):
                pred = np.empty(m)
                for f in range(n_folds):
                    te = fold == f
                    pred[te] = phi[te] @ _ridge(phi[~te], r[~te], w[~te], alpha)
                cands.append(((d, sp), alpha, (phi.shape[1], -alpha), w * (r - pred) ** 2))
        i = select_candidate(np.array([c[3] for c in cands]), [c[2] for c in cands], selection)
        form, alpha, mse, none_mse = cands[i][0], cands[i][1], float(cands[i][3].mean()), float(cands[0][3].mean())
        if form is None:
            coef, d_out, sp_out = [0.0], -1, False
        else:
            phi = designs[form][good]
            coef = _ridge(phi, r, w, alpha).tolist()
            d_out, sp_out = form
            rows = np.flatnonzero(good)
            for f in range(n_folds):
                te = fold == f
                oof[rows[te], j] = phi[te] @ _ridge(phi[~te], r[~te], w[~te], alpha)
        out["degree"].append(int(d_out))
        out["splines"].append(bool(sp_out))
        out["alpha"].append(float(alpha))
        out["coefficients"].append([float(v) for v in coef])
        out["cv_mse"].append(float(mse))
        out["cv_mse_none"].append(float(none_mse))
        logger.info(
            "bias model of %s: degree %d%s, ridge %.3g; CV rms %.4g (%.4g without a correction)",
            label_names[j],
            d_out,
            " + per-label splines" if sp_out else "",
            alpha,
            np.sqrt(mse),
            np.sqrt(none_mse),
        )
    return out, oof


def predict_bias(params, x_scaled):
    """Bias ``b(x̂)`` (N, K) in physical units from :func:`fit_bias_model`'s ``params``;
    zeros where ``params`` is None or a label has no correction (degree −1). Reads the
    version-3 form (no ``splines``) too."""
    x = np.atleast_2d(np.asarray(x_scaled, dtype=np.float64))
    out = np.zeros(x.shape)
    if not params:
        return out
    finite = np.all(np.isfinite(x), axis=1)
    xz = np.where(finite[:, None], x, 0.0)
    splines = params.get("splines") or [False] * len(params["degree"])
    knots = params.get("knots")
    for j, (d, sp, coef) in enumerate(zip(params["degree"], splines, params["coefficients"])):
        if d < 0:
            continue
        out[:, j] = _design(xz, d, knots if sp else None) @ np.asarray(coef, dtype=np.float64)
    out[~finite] = np.nan
    return out


# --------------------------------------------------------------------------- bins
def quantile_edges(values, n_bins=_N_BINS):
    """Interior edges (n_bins − 1,) of equal-count bins of the finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.full(n_bins - 1, np.nan)
    return np.quantile(v, np.arange(1, n_bins) / n_bins)


def bin_index(values, edges):
    """Bin of each value (0 … len(edges)); values beyond the outer edges go to the end bins."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")


# --------------------------------------------------------------------------- Mondrian widths
def _scale_stat(z, statistic, level, cap):
    """Scale statistic of ``|z|`` in a bin and the sampling variance of its log."""
    m = z.size
    if statistic == "quantile":
        q = np.quantile(z, level)
        lo, hi = np.quantile(z, [max(level - 0.05, 0.01), min(level + 0.05, 0.99)])
        qf = q * (min(level + 0.05, 0.99) - max(level - 0.05, 0.01)) / max(hi - lo, 1e-300)  # q f(q)
        return q, level * (1.0 - level) / (m * qf * qf)
    zw = np.minimum(z, cap)
    mu = zw.mean()
    return mu, zw.var() / (m * mu * mu)


def fit_mondrian_scales(z, x_scaled, noise_fraction, label_names, *, level=0.68, statistic="quantile"):
    """Raked per-bin width factors that equalise the scale of ``|z|`` in every bin.

    Parameters
    ----------
    z : ndarray, shape (N, K)
        Standardised absolute residuals ``|r| / σ`` (bias-corrected, out-of-fold).
    x_scaled : ndarray, shape (N, K)
        Scaled estimated labels (partitions: their quintiles).
    noise_fraction : ndarray, shape (N, K)
        Noise variance / total calibrated variance (partition: its quintiles per label).
    label_names : list of str
    level : float
        Coverage level of the ``"quantile"`` statistic.
    statistic : {"quantile", "mean"}
        Scale of ``|z|`` in a bin: the ``level`` quantile (default), or the mean of ``|z|``
        winsorised at 4× the global ``level`` quantile (~1.6× less sampling variance for
        near-Gaussian residuals, but it equalises the ``level`` coverage only where the
        residuals have the same shape in every bin; on the benchmark neither wins).

    Returns
    -------
    dict
        JSON-serialisable: ``level``, ``statistic``, ``label_edges`` (K, 4) interior
        quintile edges of each scaled label, ``noise_edges`` (K, 4) of each label's noise
        fraction and ``log_scales`` (K, K + 1, 5): the log-effect of each bin of each
        partition (partitions: the K labels, then the noise fraction) on each label's width.

    Notes
    -----
    Each sweep sets a partition's raw log-effects to ``log(stat_bin / stat_all)`` of the
    residuals standardised by the other partitions' effects, then shrinks them by the
    empirical-Bayes factor ``τ² / (τ² + v_b)``: ``v_b`` the sampling variance of the bin's
    log statistic, ``τ²`` the spread of the true effects (the raw spread less the mean
    ``v_b``, at least 0). Effects the data cannot tell from noise are pulled to 0, so a
    bin's factor is only as noisy as the evidence for it.
    """
    if statistic not in ("mean", "quantile"):
        raise InvalidInputError(f"statistic must be 'mean' or 'quantile'; got {statistic!r}")
    z = np.asarray(z, dtype=np.float64)
    x = np.asarray(x_scaled, dtype=np.float64)
    u = np.asarray(noise_fraction, dtype=np.float64)
    k = z.shape[1]
    label_edges = np.vstack([quantile_edges(x[:, j]) for j in range(k)])
    noise_edges = np.vstack([quantile_edges(u[:, j]) for j in range(k)])
    effects = np.zeros((k, k + 1, _N_BINS))
    for j in range(k):  # a few labels; a few bins per label
        good = np.isfinite(z[:, j]) & np.all(np.isfinite(x), axis=1) & np.isfinite(u[:, j])
        if good.sum() < 20 * _N_BINS:
            logger.warning("%s: too few stars (%d) for Mondrian width factors", label_names[j], int(good.sum()))
            continue
        zz = z[good, j]
        bins = np.column_stack(
            [bin_index(x[good, i], label_edges[i]) for i in range(k)] + [bin_index(u[good, j], noise_edges[j])]
        )
        counts = np.stack([np.bincount(bins[:, g], minlength=_N_BINS) for g in range(k + 1)])
        eff = np.zeros((k + 1, _N_BINS))
        for _ in range(_RAKE_SWEEPS):
            for g in range(k + 1):
                logs = eff[np.arange(k + 1)[None, :], bins].sum(axis=1) - eff[g, bins[:, g]]
                zs = zz / np.exp(logs)
                cap = _WINSOR_Z * np.quantile(zs, level)
                target, _ = _scale_stat(zs, statistic, level, cap)
                raw = np.zeros(_N_BINS)
                var = np.full(_N_BINS, np.inf)
                for b in range(_N_BINS):
                    sel = bins[:, g] == b
                    if sel.sum() >= 10:
                        st, var[b] = _scale_stat(zs[sel], statistic, level, cap)
                        raw[b] = np.log(st / target)
                used = np.isfinite(var)
                wts = counts[g] * used
                raw -= np.sum(wts * raw) / max(wts.sum(), 1)
                tau2 = max(
                    0.0,
                    np.sum(wts * raw**2) / max(wts.sum(), 1)
                    - np.sum(wts * np.where(used, var, 0.0)) / max(wts.sum(), 1),
                )
                eff[g] = np.where(used, raw * tau2 / (tau2 + np.where(used, var, 1.0)), 0.0)
                eff[g] -= np.sum(counts[g] * eff[g]) / counts[g].sum()  # zero mean: the global scale stays
        effects[j] = eff
    return {
        "level": float(level),
        "statistic": statistic,
        "label_edges": label_edges.tolist(),
        "noise_edges": noise_edges.tolist(),
        "log_scales": effects.tolist(),
    }


def mondrian_log_scales(params, x_scaled, noise_fraction):
    """Log width factors (N, K) of :func:`fit_mondrian_scales`'s ``params`` (zeros if None)."""
    x = np.atleast_2d(np.asarray(x_scaled, dtype=np.float64))
    u = np.atleast_2d(np.asarray(noise_fraction, dtype=np.float64))
    logs = np.zeros(u.shape)
    if not params:
        return logs
    eff = np.asarray(params["log_scales"], dtype=np.float64)
    le = np.asarray(params["label_edges"], dtype=np.float64)
    ne = np.asarray(params["noise_edges"], dtype=np.float64)
    k = eff.shape[0]
    for i in range(k):  # partitions by label
        logs += eff[:, i, bin_index(np.nan_to_num(x[:, i]), le[i])].T
    for j in range(k):
        logs[:, j] += eff[j, k, bin_index(np.nan_to_num(u[:, j]), ne[j])]
    return logs


def mondrian_scales(params, x_scaled, noise_fraction):
    """Width factors ``s`` (N, K) of :func:`fit_mondrian_scales`'s ``params`` (ones if None),
    at least ``√u``: the calibrated variance ``s² σ²`` never falls below its noise part
    ``u σ²`` (the formal error is a lower bound on the noise, calibration never shrinks it)."""
    return width_factors(None, params, x_scaled, noise_fraction)


# --------------------------------------------------------------------------- smooth widths
def _width_design(x, u, degree, center, spread, interaction=False):
    """Additive polynomial basis ``[1, t_i, t_i², …]`` (degree ≥ 1) of the standardised
    predictors ``t = ((x̂, u) − center) / spread`` (N, K + 1); ``[1]`` for 0. With
    ``interaction`` also ``t_u · t_i^p`` (each label's polynomial times the noise fraction):
    a label dependence of the width that changes with S/N."""
    t = (np.column_stack([x, u]) - center) / spread
    cols = [np.ones(t.shape[0])] + [t**p for p in range(1, degree + 1)]
    if interaction and degree > 0:
        cols += [t[:, -1:] * t[:, :-1] ** p for p in range(1, degree + 1)]
    return np.column_stack(cols)


def _n_width_terms(degree, k, interaction):
    """Columns of :func:`_width_design` for K labels."""
    return 1 + degree * (k + 1) + (degree * k if interaction and degree > 0 else 0)


def _fit_log_width(phi, z2, alpha, n_iter=50):
    """Penalised Gaussian ML of a log-width ``η = φc``: minimise
    ``Σ (η + ½ z² e^{−2η}) + ½ α n Σ_{t≥1} c_t²`` (convex) by Newton steps."""
    n, t = phi.shape
    pen = np.full(t, alpha * n)
    pen[0] = 0.0
    c = np.zeros(t)
    c[0] = 0.5 * np.log(max(np.mean(z2), 1e-300))
    for _ in range(n_iter):  # Newton: a few iterations on a tiny system
        e = z2 * np.exp(-2.0 * (phi @ c))
        grad = phi.T @ (1.0 - e) + pen * c
        hess = (phi * (2.0 * e)[:, None]).T @ phi + np.diag(pen) + 1e-10 * np.eye(t)
        step = np.linalg.solve(hess, grad)
        c -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return c


def fit_smooth_width(
    z,
    x_scaled,
    noise_fraction,
    label_names,
    *,
    n_folds=5,
    random_state=0,
    degrees=None,
    alphas=None,
    groups=None,
    interactions=(False, True),
    selection=DEFAULT_SELECTION,
):
    """Smooth log-width model of standardised residuals, its form and ridge chosen by CV.

    ``log s_nk = c_k · φ(x̂_n, u_nk)`` with φ an additive polynomial (no cross terms) of
    total degree ``d`` in each standardised scaled estimated label and in the noise
    fraction ``u_nk`` (the S/N proxy), fitted by maximum likelihood of ``z ~ N(0, s²)``
    (``z`` winsorised at :data:`_WINSOR_Z` × its global 68 % quantile) with a ridge
    penalty. Every star informs every coefficient, so the width in a region rests on all
    2,000 stars rather than on the ~400 of one quintile bin. ``d`` ∈ :data:`WIDTH_DEGREES`
    and the ridge strength are chosen by K-fold cross-validation of the held-out
    likelihood; ``d = 0`` (no factor) wins when the data show no structure. The same
    cross-validation decides whether to add the interaction terms ``t_u · t_i^p`` (the
    noise fraction times each label's polynomial): where the model error (which dominates
    at high S/N) varies with a label differently from the noise part, the label dependence
    of the width changes with S/N, which the additive terms and the Mondrian factors (one
    log-effect per bin, the same at every S/N) cannot follow.

    Parameters
    ----------
    z : ndarray, shape (N, K)
        Standardised absolute residuals (bias-corrected, out-of-fold); NaN rows skipped.
    x_scaled : ndarray, shape (N, K)
    noise_fraction : ndarray, shape (N, K)
    label_names : list of str
    n_folds, random_state : int
        Folds and seed of the cross-validation.
    degrees, alphas : sequence, optional
        Candidates (default :data:`WIDTH_DEGREES`, :data:`WIDTH_ALPHAS`).
    groups : ndarray, shape (N,), optional
        Star of each row (repeated cross-validation): a star's rows share a fold.
    interactions : sequence of bool
        Candidates for the label × noise-fraction interaction terms (``(False,)``: the
        version-6 additive model).
    selection : {"best", "one-se", "one-se-classic"}
        Rule that picks the candidate from its CV score (:func:`bayescannon.core.selection.select_candidate`;
        simpler = fewer terms, then a stronger ridge).

    Returns
    -------
    dict
        JSON-serialisable: ``degree`` (K,), ``interaction`` (K,), ``alpha`` (K,), ``center`` and ``spread``
        (K, K + 1) of the predictors of each label's model, ``coefficients`` (K lists, the
        constant removed: the factors have unit geometric mean on the calibration stars),
        ``cv_nll`` and ``cv_nll_none`` (K,) per star.
    """
    degrees = WIDTH_DEGREES if degrees is None else tuple(degrees)
    alphas = WIDTH_ALPHAS if alphas is None else tuple(alphas)
    z = np.asarray(z, dtype=np.float64)
    x = np.asarray(x_scaled, dtype=np.float64)
    u = np.asarray(noise_fraction, dtype=np.float64)
    n, k = z.shape
    rng = np.random.default_rng(random_state)
    out = {"degree": [], "interaction": [], "alpha": [], "center": [], "spread": [], "coefficients": []}
    out |= {"cv_nll": [], "cv_nll_none": []}
    for j in range(k):  # a few labels
        good = np.isfinite(z[:, j]) & np.all(np.isfinite(x), axis=1) & np.isfinite(u[:, j])
        m = int(good.sum())
        pred = np.column_stack([x[good], u[good, j]])
        center = pred.mean(axis=0)
        spread = pred.std(axis=0)
        spread = np.where(spread > 0, spread, 1.0)
        zz = z[good, j]
        zz = np.minimum(zz, _WINSOR_Z * np.quantile(zz, 0.68)) if m else zz
        z2 = zz * zz
        fold = _fold_of(np.arange(n) if groups is None else groups, n_folds, rng)[good]

        def cv_nll(d, a, inter, z2=z2, fold=fold, pred=pred, center=center, spread=spread):
            phi = _width_design(pred[:, :-1], pred[:, -1], d, center, spread, inter)
            loss = np.empty(z2.size)  # per-star held-out negative log-likelihood
            for f in range(n_folds):
                te = fold == f
                eta = phi[te] @ _fit_log_width(phi[~te], z2[~te], a)
                loss[te] = eta + 0.5 * z2[te] * np.exp(-2.0 * eta)
            return loss

        enough = m >= 20 * n_folds
        if not enough:
            logger.warning("%s: too few stars (%d) for a smooth width model", label_names[j], m)
        cands = [(0, 0.0, False, (0, 0.0), cv_nll(0, 0.0, False) if enough else np.full(1, np.nan))]
        for d in degrees if enough else ():
            for inter in interactions:
                if d == 0 or _n_width_terms(d, k, inter) * 20 > m:
                    continue
                cands += [(d, a, inter, (_n_width_terms(d, k, inter), -a), cv_nll(d, a, inter)) for a in alphas]
        i = select_candidate(np.array([c[4] for c in cands]), [c[3] for c in cands], selection) if enough else 0
        d, a, inter = cands[i][:3]
        v, none = float(cands[i][4].mean()), float(cands[0][4].mean())
        c = np.zeros(_n_width_terms(d, k, inter))
        if d > 0:
            phi = _width_design(pred[:, :-1], pred[:, -1], d, center, spread, inter)
            c = _fit_log_width(phi, z2, a)
            c[0] -= np.mean(phi @ c)  # unit geometric mean: the conformal quantile sets the scale
        out["degree"].append(int(d))
        out["interaction"].append(bool(inter))
        out["alpha"].append(float(a))
        out["center"].append([float(t) for t in center])
        out["spread"].append([float(t) for t in spread])
        out["coefficients"].append([float(t) for t in c])
        out["cv_nll"].append(float(v))
        out["cv_nll_none"].append(float(none))
        logger.info(
            "smooth width model of %s: degree %d%s, ridge %.3g; CV nll %.4f (%.4f without)",
            label_names[j],
            d,
            " with label x noise-fraction terms" if inter else "",
            a,
            v,
            none,
        )
    return out


def smooth_log_scales(params, x_scaled, noise_fraction):
    """Log width factors (N, K) of :func:`fit_smooth_width`'s ``params`` (zeros if None);
    reads the version-5/6 form (no ``interaction``: additive) too."""
    x = np.atleast_2d(np.asarray(x_scaled, dtype=np.float64))
    u = np.atleast_2d(np.asarray(noise_fraction, dtype=np.float64))
    out = np.zeros(u.shape)
    if not params:
        return out
    xz, uz = np.nan_to_num(x), np.nan_to_num(u)
    inters = params.get("interaction") or [False] * len(params["degree"])
    for j, (d, inter, c) in enumerate(zip(params["degree"], inters, params["coefficients"])):
        if d <= 0:
            continue
        center = np.asarray(params["center"][j], dtype=np.float64)
        spread = np.asarray(params["spread"][j], dtype=np.float64)
        # predictors clamped to the calibration range (±3 sd): a polynomial never extrapolates far
        t = np.clip(np.column_stack([xz, uz[:, j]]), center - 3 * spread, center + 3 * spread)
        phi = _width_design(t[:, :-1], t[:, -1], d, center, spread, inter)
        out[:, j] = phi @ np.asarray(c, dtype=np.float64)
    return out


def width_factors(smooth, mondrian, x_scaled, noise_fraction):
    """Combined width factors ``s = exp(smooth + Mondrian log-effects)`` (N, K), at least
    ``√u`` (the calibrated variance never falls below its noise part); ones when both are None."""
    u = np.atleast_2d(np.asarray(noise_fraction, dtype=np.float64))
    logs = smooth_log_scales(smooth, x_scaled, u) + mondrian_log_scales(mondrian, x_scaled, u)
    return np.maximum(np.exp(logs), np.sqrt(np.clip(np.nan_to_num(u), 0.0, 1.0)))


# --------------------------------------------------------------------------- fold size
def fold_size_lever(sizes):
    """``λ = (1/m₁ − 1/N) / (1/m₂ − 1/m₁)`` of training sizes ``(m₁, m₂, N)``, m₂ < m₁ ≤ N:
    under ``E[r²](m) = A + B/m`` the full-size variance is ``E[r²](m₁) − λ (E[r²](m₂) − E[r²](m₁))``."""
    m1, m2, n = (float(v) for v in sizes)
    if not (0 < m2 < m1 <= n):
        raise InvalidInputError(f"fold-size correction needs training sizes m2 < m1 <= N; got {sizes}")
    return (1.0 / m1 - 1.0 / n) / (1.0 / m2 - 1.0 / m1)


def fit_fold_size_correction(
    residuals,
    small_residuals,
    variance,
    floor,
    noise_fraction,
    sizes,
    label_names,
    *,
    n_boot=FOLD_SIZE_BOOTSTRAP,
    z_gate=FOLD_SIZE_GATE,
    min_factor=FOLD_SIZE_MIN_FACTOR,
    random_state=0,
):
    """Extrapolate cross-validated residual variances to the full training-set size.

    K-fold fold models see ``m₁ = (K−1)/K·N`` stars; where their model error falls with the
    training-set size, their held-out residuals are larger than the full model's. A second
    set of held-out residuals of the same stars from models on ``m₂ < m₁`` stars measures
    the slope: assuming the excess variance ``B/m`` of each star is proportional to its
    model-error variance ``f`` (the error model's floor; the noise part does not depend on
    the training set), ``E[r₂² − r₁²] = κ f`` with one ``κ`` per label (weighted least
    squares with weights ``1/σ⁴``, residuals winsorised at 5σ), and the full-size variance
    of a star is ``σ² − λ κ f`` (:func:`fold_size_lever`). The variance factor
    ``g = 1 − λ κ f / σ²`` is applied only where ``κ`` is significantly positive
    (``κ > z_gate`` × its paired bootstrap sd over stars), never takes the variance below
    its noise part (``g ≥ u``) nor the sd below ``min_factor`` (``g ≥ min_factor²``).

    Parameters
    ----------
    residuals, small_residuals : ndarray, shape (N, K)
        Held-out residuals of the same stars from models on m₁ and on m₂ stars (NaN: unusable).
    variance : ndarray, shape (N, K)
        Error-model variance σ² of each star (fitted on ``residuals``).
    floor : ndarray, shape (N, K)
        Its model-error part f.
    noise_fraction : ndarray, shape (N, K)
        Noise part of the variance, ``u = 1 − f/σ²``.
    sizes : tuple of 3 numbers
        ``(m₁, m₂, N)``.
    label_names : list of str
    n_boot : int
        Bootstrap resamples of the stars for the sd of κ.
    z_gate : float
        Significance (in bootstrap sd) needed to apply the correction.
    min_factor : float
        Smallest factor on the sd.
    random_state : int

    Returns
    -------
    record : dict
        JSON-serialisable: ``sizes``, ``lever`` (λ), per label ``kappa``, ``kappa_sd``,
        ``significant``, ``scale_m1``/``scale_m2`` (rms of ``r/σ`` at m₁ and m₂),
        ``scale_full`` (the extrapolated rms) and ``median_factor`` (median factor on the sd).
    factors : ndarray, shape (N, K)
        Variance factors g (ones where not significant); multiply the residuals by √g.
    """
    r1 = np.asarray(residuals, dtype=np.float64)
    r2 = np.asarray(small_residuals, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    f = np.asarray(floor, dtype=np.float64)
    u = np.asarray(noise_fraction, dtype=np.float64)
    lam = fold_size_lever(sizes)
    n, k = r1.shape
    rng = np.random.default_rng(random_state)
    boot = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, N) star weights
    g = np.ones((n, k))
    rec = {"sizes": [float(v) for v in sizes], "lever": float(lam), "z_gate": float(z_gate)}
    rec |= {key: [] for key in ("kappa", "kappa_sd", "significant", "scale_m1", "scale_m2", "scale_full")}
    rec["median_factor"] = []
    for j in range(k):  # a few labels
        ok = np.isfinite(r1[:, j]) & np.isfinite(r2[:, j]) & (var[:, j] > 0) & np.isfinite(f[:, j])
        sd = np.sqrt(np.where(ok, var[:, j], 1.0))
        z1 = np.clip(np.where(ok, r1[:, j], 0.0) / sd, -_FOLD_SIZE_CLIP, _FOLD_SIZE_CLIP)
        z2 = np.clip(np.where(ok, r2[:, j], 0.0) / sd, -_FOLD_SIZE_CLIP, _FOLD_SIZE_CLIP)
        # in units of σ²: D/σ² = z₂² − z₁², f/σ² = 1 − u; WLS with weights 1/σ⁴ is OLS of these
        d = np.where(ok, z2 * z2 - z1 * z1, 0.0)
        h = np.where(ok, f[:, j] / np.where(ok, var[:, j], 1.0), 0.0)
        den = boot @ (h * h)
        kb = (boot @ (d * h)) / np.where(den > 0, den, np.inf)
        kap = float(np.sum(d * h) / max(np.sum(h * h), 1e-300))
        ksd = float(np.std(kb))
        sig = bool(ok.sum() >= 50 and kap > z_gate * ksd)
        if sig:
            lo = np.maximum(min_factor**2, np.clip(np.nan_to_num(u[:, j]), 0.0, 1.0))
            g[:, j] = np.where(ok, np.clip(1.0 - lam * kap * h, lo, 1.0), 1.0)
        m = max(int(ok.sum()), 1)
        s1 = float(np.sqrt(np.sum(z1 * z1) / m))
        s2 = float(np.sqrt(np.sum(z2 * z2) / m))
        sf = float(np.sqrt(np.sum(g[:, j] * z1 * z1) / m))
        rec["kappa"].append(kap)
        rec["kappa_sd"].append(ksd)
        rec["significant"].append(sig)
        rec["scale_m1"].append(s1)
        rec["scale_m2"].append(s2)
        rec["scale_full"].append(sf)
        rec["median_factor"].append(float(np.median(np.sqrt(g[ok, j]))) if ok.any() else 1.0)
        logger.info(
            "fold size, %s: rms r/sd %.4f on %g stars, %.4f on %g; kappa %.4g +- %.2g (%s); extrapolated to %g "
            "stars %.4f (median sd factor %.3f)",
            label_names[j],
            s1,
            sizes[0],
            s2,
            sizes[1],
            kap,
            ksd,
            "significant: applied" if sig else "not significant: factor 1",
            sizes[2],
            sf,
            rec["median_factor"][-1],
        )
    return rec, g


# --------------------------------------------------------------------------- coverage
def binned_coverage(inside, by, n_bins=_N_BINS):
    """Coverage per equal-count bin of ``by``.

    Parameters
    ----------
    inside : ndarray of bool, shape (N, L, K)
        Whether each star's interval at each level holds the reference label.
    by : ndarray, shape (N,)
        The binning variable (S/N, a label); NaN rows are left out.

    Returns
    -------
    coverage : ndarray, shape (n_bins, L, K)
    counts : ndarray of int, shape (n_bins,)
    lo, hi : ndarray, shape (n_bins,)
        Range of ``by`` in each bin.
    """
    by = np.asarray(by, dtype=np.float64)
    ok = np.isfinite(by)
    edges = quantile_edges(by[ok], n_bins)
    b = bin_index(by, edges)
    cov = np.full((n_bins,) + inside.shape[1:], np.nan)
    counts = np.zeros(n_bins, dtype=np.int64)
    lo = np.full(n_bins, np.nan)
    hi = np.full(n_bins, np.nan)
    for i in range(n_bins):
        sel = ok & (b == i)
        counts[i] = int(sel.sum())
        if counts[i]:
            cov[i] = inside[sel].mean(axis=0)
            lo[i], hi[i] = by[sel].min(), by[sel].max()
    return cov, counts, lo, hi


def spectrum_snr(flux, ivar):
    """S/N per star: median of ``|flux|·√ivar`` over usable pixels (ivar > 0); NaN without any."""
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    good = (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar)
    s = np.where(good, np.abs(np.nan_to_num(flux)) * np.sqrt(np.where(good, ivar, 0.0)), np.nan)
    out = np.full(s.shape[0], np.nan)
    has = good.any(axis=1)
    out[has] = np.nanmedian(s[has], axis=1)
    return out
