"""Error calibration from repeat observations (Nandakumar+2022 §3.7; Ho+2017 §5).

Several spectra of the same star give label differences whose spread is the real
precision. From them:

* :func:`repeat_pairs` — all pairs of spectra of the same star (groups with one
  spectrum are reported as skipped, never dropped silently).
* :func:`calibrate_from_repeats` — per label, the factor by which the formal errors
  must be scaled, and the precision as a function of S/N fitted by
  ``a·exp(−S/N / b) + c``. The calibrated error is ``max(scale × formal error,
  precision(S/N))``, as Nandakumar+2022 did. Two recipes:

  - ``"nandakumar2022"`` (default; the paper's eq. 6): the scale makes the *variance*
    of ``Δ / sqrt(σ_i² + σ_j²)`` over all pairs equal to 1; the precision is the
    standard deviation of the differences between each star's best-S/N spectrum and
    each of its other spectra, in bins of the S/N of the other spectrum, with no √2
    (the difference to a much better spectrum is, to first order, the precision of the
    worse one; for visits of equal S/N it is √2 times larger — the paper's choice).
  - ``"robust"``: the robust half 16–84th percentile width of the normalised
    differences of all pairs, and the precision from the half 16–84th width of all
    pair differences in bins of the lower S/N, divided by √2 (the precision of one
    spectrum when both have equal quality). Less sensitive to outliers, but up to √2
    smaller than the paper's errors.

* :func:`compare_errors` — how two error estimates of the same stars compare (e.g. the
  repeat-calibrated errors and the Bayesian layer's calibrated errors): ratios and,
  given residuals, coverage.
* :func:`flux_error_scale` — the χ² rescaling of flux errors (Ho+2017 found that the
  LAMOST flux errors had to be multiplied by about 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.table import MaskedColumn, Table

from bayescannon.core.likelihood import adjusted_ivar
from bayescannon.errors import InsufficientDataError, InvalidInputError, ShapeMismatchError
from bayescannon.validate.stats import summary_statistics

logger = logging.getLogger(__name__)

__all__ = [
    "RECIPES",
    "COMBINES",
    "repeat_pairs",
    "RepeatPairs",
    "RepeatCalibration",
    "calibrate_from_repeats",
    "precision_model",
    "compare_errors",
    "flux_error_scale",
    "FluxErrorScale",
]


#: Recipes of :func:`calibrate_from_repeats`; the first is the default.
RECIPES = ("nandakumar2022", "robust")

#: How scaled formal errors and the precision floor combine; the first is the default.
COMBINES = ("max", "quadrature")


@dataclass
class RepeatPairs:
    """All pairs of spectra of the same star.

    Attributes
    ----------
    i, j : ndarray of int
        Row indices of the two spectra of each pair.
    group : ndarray of str
        Star (group) of each pair.
    skipped : astropy.table.Table
        Groups that give no pair (``GROUP``, ``N_SPECTRA``, ``REASON``).
    """

    i: np.ndarray
    j: np.ndarray
    group: np.ndarray
    skipped: Table


def repeat_pairs(groups) -> RepeatPairs:
    """Every pair (i < j) of rows that share a group (star) identifier.

    Parameters
    ----------
    groups : array_like, shape (N,)
        Star identifier of each spectrum (e.g. the 2MASS id). Empty strings and
        masked values count as "no group".

    Returns
    -------
    RepeatPairs

    Raises
    ------
    InsufficientDataError
        When no star has two or more spectra.
    """
    g = np.ma.getdata(np.asarray(groups)).astype(str)
    mask = np.ma.getmaskarray(groups) | (np.char.strip(g) == "")
    idx = np.flatnonzero(~mask)
    uniq, inverse, counts = np.unique(g[idx], return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    rows = idx[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ii, jj, gg = [], [], []
    for size in np.unique(counts[counts >= 2]):
        sel = np.flatnonzero(counts == size)
        a, b = np.triu_indices(int(size), 1)
        base = starts[sel][:, None]
        ii.append(rows[(base + a[None, :]).ravel()])
        jj.append(rows[(base + b[None, :]).ravel()])
        gg.append(np.repeat(uniq[sel], a.size))
    single = uniq[counts < 2]
    skipped = Table(
        {
            "GROUP": single.astype(str),
            "N_SPECTRA": counts[counts < 2].astype(np.int64),
            "REASON": np.full(single.size, "single spectrum", dtype="<U32"),
        }
    )
    if not ii:
        raise InsufficientDataError(
            f"no star has two or more spectra ({uniq.size} groups, all with a single spectrum): "
            "repeat calibration needs repeat observations"
        )
    i, j, group = np.concatenate(ii), np.concatenate(jj), np.concatenate(gg)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    logger.info(
        "%d repeat pairs from %d stars; %d stars with a single spectrum skipped",
        lo.size,
        int((counts >= 2).sum()),
        single.size,
    )
    return RepeatPairs(lo, hi, group, skipped)


def precision_model(snr, a, b, c):
    """``a · exp(−snr / b) + c``: precision as a function of S/N."""
    return a * np.exp(-np.asarray(snr, dtype=float) / b) + c


@dataclass
class RepeatCalibration:
    """Result of :func:`calibrate_from_repeats`.

    Attributes
    ----------
    label_names : list of str
    scale : ndarray (K,)
        Factor by which the formal errors must be multiplied.
    precision_params : ndarray (K, 3)
        ``a, b, c`` of :func:`precision_model` per label (per-measurement precision).
    fit_status : list of str
        ``"exponential"``, or why a constant was used instead.
    binned : astropy.table.Table
        Per label and S/N bin: ``N_PAIRS``, ``WIDTH`` of the differences (standard
        deviation for ``"nandakumar2022"``, half 16–84th range for ``"robust"``), the
        ``PRECISION`` and ``STATUS``.
    pairs : astropy.table.Table
        Per pair: group, rows, lower S/N, differences, combined formal errors and
        ``PRECISION_PAIR`` (whether the pair entered the precision fit).
    skipped : astropy.table.Table
        Stars that gave no pair.
    per_measurement : bool
        Whether the widths were divided by √2 (precision of one spectrum).
    recipe : str
        ``"nandakumar2022"`` or ``"robust"`` (see the module docstring).
    combine : str
        ``"max"`` (the paper) or ``"quadrature"`` (see the module docstring); with
        ``"quadrature"`` the precision parameters describe the excess floor.
    """

    label_names: list
    scale: np.ndarray
    precision_params: np.ndarray
    fit_status: list
    binned: Table
    pairs: Table
    skipped: Table
    per_measurement: bool = True
    meta: dict = field(default_factory=dict)
    recipe: str = "nandakumar2022"
    combine: str = "max"

    def precision(self, snr) -> np.ndarray:
        """Precision of every label at the given S/N: (N, K)."""
        s = np.asarray(snr, dtype=float)[:, None]
        p = self.precision_params
        return precision_model(s, p[:, 0], p[:, 1], p[:, 2])

    def apply(self, errors, snr) -> np.ndarray:
        """Calibrated errors (N, K): ``max(scale × errors, precision(snr))``, or with
        ``combine="quadrature"`` ``sqrt((scale × errors)² + precision(snr)²)``; a label
        without a precision fit keeps the scaled errors."""
        e = np.asarray(errors, dtype=float)
        if e.ndim != 2 or e.shape[1] != len(self.label_names):
            raise ShapeMismatchError(f"errors must be (N, {len(self.label_names)}); got {e.shape}")
        s = np.asarray(snr, dtype=float)
        if s.shape != (e.shape[0],):
            raise ShapeMismatchError(f"snr has shape {s.shape}; expected ({e.shape[0]},)")
        if self.combine == "quadrature":
            return np.hypot(e * self.scale[None, :], np.nan_to_num(self.precision(s), nan=0.0))
        return np.fmax(e * self.scale[None, :], self.precision(s))

    @property
    def summary(self) -> Table:
        """Per label: error scale, precision-fit parameters, fit status, pair count."""
        t = Table()
        t["LABEL"] = list(self.label_names)
        t["ERROR_SCALE"] = self.scale
        # a label without a precision fit (no S/N bin with enough pairs) has no parameters: masked,
        # not the placeholders the fit starts from
        unfitted = ~np.isfinite(self.precision_params).all(axis=1)
        for i, name in enumerate("ABC"):
            t[f"PREC_{name}"] = MaskedColumn(self.precision_params[:, i], mask=unfitted)
        t["FIT"] = list(self.fit_status)
        t["N_PAIRS"] = np.full(len(self.label_names), len(self.pairs))
        t.meta["PREC_MODEL"] = "precision(snr) = A * exp(-snr / B) + C"
        t.meta["PERMEAS"] = bool(self.per_measurement)
        t.meta["RECIPE"] = self.recipe
        t.meta["COMBINE"] = self.combine
        return t


def _fit_precision(x, w, n, per_measurement, w_total=None):
    """Exponential fit of width vs S/N; constant fallback with a reason.

    ``w_total``: the width before the best visit's variance was subtracted (it sets the
    noise of each bin's estimate; default ``w``)."""
    from scipy.optimize import curve_fit

    y = w / np.sqrt(2.0) if per_measurement else w
    wt = y if w_total is None else (w_total / np.sqrt(2.0) if per_measurement else w_total)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(wt)
    x, y, n, wt = x[ok], y[ok], n[ok], wt[ok]
    if x.size == 0:
        return np.array([0.0, 1.0, np.nan]), "no bin with enough pairs"
    const = float(np.average(y, weights=n))
    if x.size < 4:
        return np.array([0.0, 1.0, const]), f"constant ({x.size} bins < 4 for an exponential)"
    # standard error of a standard deviation from n values (of the total width: a bin whose
    # corrected width is 0 is not infinitely precise)
    sigma = np.maximum(wt, 1e-12 * max(float(wt.max()), 1e-300)) / np.sqrt(2.0 * np.maximum(n - 1, 1))
    p0 = (max(y.max() - y.min(), 1e-12), max(float(np.median(x)), 1e-6), max(y.min(), 0.0))
    try:
        popt, _ = curve_fit(
            precision_model,
            x,
            y,
            p0=p0,
            sigma=sigma,
            absolute_sigma=False,
            bounds=([0.0, 1e-6, 0.0], [np.inf, np.inf, np.inf]),
            maxfev=20000,
        )
    except (RuntimeError, ValueError) as exc:
        return np.array([0.0, 1.0, const]), f"constant (exponential fit failed: {str(exc)[:60]})"
    return popt, "exponential"


def _bin_mean(member, values) -> np.ndarray:
    """Mean of ``values`` (pairs) over the finite members of each bin (0 for an empty bin)."""
    ok = member & np.isfinite(values)[None, :]
    total = np.where(ok, values[None, :], 0.0).sum(axis=1)
    return total / np.maximum(ok.sum(axis=1), 1)


def _quadrature_floor(stats, n_bin, member, centre, dq, fv, ref_snr, scale, *, opts):
    """Excess precision floor of one label (``combine="quadrature"``).

    ``stats``: summary statistics of ``dq`` (the precision pairs' differences) per bin;
    ``fv``: the formal variance of each precision pair (both visits), times ``scale²``
    the variance the scaled formal errors explain; ``ref_snr``: S/N of the reference
    (best) visit, whose own floor is also in ``dq`` (None: the robust recipe, whose
    per-measurement √2 splits it; else a few passes, the best visit's floor being
    small). Returns (params, status, excess width per bin)."""
    min_pairs, per_measurement, passes = opts
    var_b = np.where(n_bin >= min_pairs, stats["rms"] ** 2, np.nan)
    has = np.isfinite(dq)
    fv_b = _bin_mean(member, np.where(has, fv, np.nan))
    ref_b = np.zeros(var_b.shape)
    params, why, width = None, "no bin with enough pairs", var_b
    for _ in range(passes if ref_snr is not None else 1):
        width = np.sqrt(np.maximum(var_b - scale**2 * fv_b - ref_b, 0.0))
        params, why = _fit_precision(centre, width, n_bin.astype(float), per_measurement, np.sqrt(var_b))
        if ref_snr is None:
            break
        ref = np.nan_to_num(precision_model(ref_snr, *params), nan=0.0) ** 2
        ref_b = _bin_mean(member, np.where(has, ref, np.nan))
    return params, why, width


def _best_visit(groups, snr) -> np.ndarray:
    """Row of the highest-S/N spectrum of each row's group (−1 for rows without a group);
    ties go to the first row, a NaN S/N counts as the lowest."""
    g = np.ma.getdata(np.asarray(groups)).astype(str)
    mask = np.ma.getmaskarray(groups) | (np.char.strip(g) == "")
    idx = np.flatnonzero(~mask)
    out = np.full(g.size, -1, dtype=np.int64)
    if idx.size == 0:
        return out
    _, inverse = np.unique(g[idx], return_inverse=True)
    key = np.where(np.isfinite(snr[idx]), snr[idx], -np.inf)
    order = np.lexsort((idx, -key, inverse))  # by group, then S/N descending, then row
    first = np.ones(order.size, dtype=bool)
    first[1:] = inverse[order][1:] != inverse[order][:-1]
    best_of_group = np.empty(inverse.max() + 1, dtype=np.int64)
    best_of_group[inverse[order][first]] = idx[order][first]
    out[idx] = best_of_group[inverse]
    return out


def calibrate_from_repeats(
    labels,
    errors,
    snr,
    groups,
    label_names,
    *,
    recipe: str = "nandakumar2022",
    combine: str = "max",
    snr_bins=8,
    min_pairs: int = 10,
    per_measurement: bool | None = None,
    subtract_best: bool = True,
    ids=None,
) -> RepeatCalibration:
    """Calibrate label errors from repeat observations of the same stars.

    Parameters
    ----------
    labels, errors : ndarray, shape (N, K)
        Inferred labels and formal errors of every spectrum.
    snr : ndarray, shape (N,)
        S/N of every spectrum.
    groups : array_like, shape (N,)
        Star identifier of each spectrum; spectra of one star share it.
    label_names : list of str
    recipe : {"nandakumar2022", "robust"}
        ``"nandakumar2022"`` (default, the paper's eq. 6): the error scale makes the
        variance of ``Δ / sqrt(σ_i² + σ_j²)`` over all pairs 1; the precision is the
        standard deviation of (other − best-S/N spectrum) of each star, binned by the
        S/N of the other spectrum. ``"robust"``: half 16–84th percentile widths of all
        pairs, binned by the lower S/N of each pair (see the module docstring).
    combine : {"max", "quadrature"}
        ``"max"`` (default, the paper): calibrated error ``max(scale × formal,
        precision(S/N))``; it over-covers where formal errors vary from star to star at
        one S/N. ``"quadrature"``: ``sqrt((scale × formal)² + floor(S/N)²)`` with the
        floor fitted to the excess variance of the differences (standard deviations, in
        either recipe) over the eq.-6-scaled formal variance (see the module docstring);
        ``subtract_best`` does not apply (both visits' variances are in the model).
    snr_bins : int or array_like
        S/N bin edges, or a number of bins with equal numbers of pairs.
    min_pairs : int
        Bins with fewer pairs are reported as skipped and left out of the fit.
    per_measurement : bool, optional
        Divide the widths of the differences by √2 so that the precision is that of a
        single spectrum (the difference of two spectra of equal quality has √2 times
        the spread of either). Default: False for ``"nandakumar2022"`` (the paper
        compares with the best spectrum, no √2), True for ``"robust"``.
    subtract_best : bool, default True
        ``"nandakumar2022"`` only: subtract the best visit's own variance (its formal
        error times the fitted scale, squared, averaged over the bin) from the variance of
        the differences, so that the precision is that of the other visit alone. The
        paper read literally (False) over-covers: for visits of similar S/N the floor is
        √2 too wide (measured on the two-instrument mock: 68 % errors covering 0.69–0.80
        of the truth).
    ids : array_like, optional
        Spectrum ids for the pair table.

    Returns
    -------
    RepeatCalibration

    Raises
    ------
    InvalidInputError
        An unknown recipe.
    InsufficientDataError
        When no star has two spectra, or no label has enough pairs.
    """
    if recipe not in RECIPES:
        raise InvalidInputError(f"recipe must be one of {RECIPES}; got {recipe!r}")
    if combine not in COMBINES:
        raise InvalidInputError(f"combine must be one of {COMBINES}; got {combine!r}")
    quad = combine == "quadrature"
    paper = recipe == "nandakumar2022"
    if per_measurement is None:
        per_measurement = not paper
    y = np.asarray(labels, dtype=float)
    e = np.asarray(errors, dtype=float)
    k = len(label_names)
    if y.ndim != 2 or y.shape[1] != k or e.shape != y.shape:
        raise ShapeMismatchError(f"labels {y.shape} and errors {e.shape} must both be (N, {k})")
    n = y.shape[0]
    s = np.asarray(snr, dtype=float)
    if s.shape != (n,):
        raise ShapeMismatchError(f"snr has shape {s.shape}; expected ({n},)")
    if np.shape(groups) != (n,):
        raise ShapeMismatchError(f"groups has shape {np.shape(groups)}; expected ({n},)")
    pairs = repeat_pairs(groups)
    i, j = pairs.i, pairs.j
    d = y[i] - y[j]
    ecomb = np.sqrt(e[i] ** 2 + e[j] ** 2)
    slow = np.fmin(s[i], s[j])
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(ecomb > 0, d / ecomb, np.nan)
    zstats = summary_statistics(z, axis=0)
    # eq. 6: the variance of the normalised differences -> 1; robust: their half 16-84 width
    scale = np.array(zstats["rms"] if paper else zstats["half_p16_84"], dtype=float)
    if np.any(zstats["n"] < min_pairs):
        bad = [label_names[q] for q in np.flatnonzero(zstats["n"] < min_pairs)]
        raise InsufficientDataError(f"fewer than {min_pairs} usable pairs for label(s) {bad}")
    if paper:
        best = _best_visit(groups, s)[i]
        use = (i == best) | (j == best)  # the best spectrum against each other spectrum
        other = np.where(i == best, j, i)
        dp = np.where(use[:, None], y[other] - y[best], np.nan)
        xs = np.where(use, s[other], np.nan)
        width_key = "rms"
        # Var(other - best) = σ_other² + σ_best²: the best visit's own (scaled formal) variance is
        # subtracted, so that the precision is that of the other visit alone. Without this (the
        # paper read literally) visits of similar S/N give √2 too wide a precision floor.
        vbest = np.where(use[:, None], (scale[None, :] * e[best]) ** 2, np.nan) if subtract_best else None
        fv_pairs, ref_snr = e[other] ** 2 + e[best] ** 2, np.where(use, s[best], np.nan)
    else:
        use = np.ones(i.size, dtype=bool)
        dp, xs, width_key = d, slow, "half_p16_84"
        fv_pairs, ref_snr = e[i] ** 2 + e[j] ** 2, None
    fin = np.isfinite(xs)
    if not fin.any():
        raise InsufficientDataError("no repeat pair has a finite S/N: the precision vs S/N needs S/N values")
    if np.ndim(snr_bins) == 0:
        nb = int(snr_bins)
        if nb < 1:
            raise InvalidInputError(f"snr_bins must be >= 1; got {snr_bins}")
        edges = np.unique(np.quantile(xs[fin], np.linspace(0, 1, nb + 1)))
    else:
        edges = np.asarray(snr_bins, dtype=float)
    if edges.size < 2:
        edges = np.array([xs[fin].min(), xs[fin].max() + 1e-9])
    binned = []
    params = np.zeros((k, 3))
    status = []
    bin_of = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, edges.size - 2)
    inside = fin & (xs >= edges[0]) & (xs <= edges[-1])
    member = (bin_of[None, :] == np.arange(edges.size - 1)[:, None]) & inside[None, :]
    cnt = member.sum(axis=1)
    sq = np.where(member, xs[None, :], np.nan)
    centre = np.full(edges.size - 1, np.nan)
    centre[cnt > 0] = np.nanmedian(sq[cnt > 0], axis=1)
    for q, name in enumerate(label_names):
        dq = np.where(member, dp[None, :, q], np.nan)
        st = summary_statistics(dq, axis=1)
        width = np.where(st["n"] >= min_pairs, st[width_key], np.nan)
        width_total = width
        if quad:
            p, why, width = _quadrature_floor(
                st,
                st["n"],
                member,
                centre,
                dp[:, q],
                fv_pairs[:, q],
                ref_snr,
                scale[q],
                opts=(min_pairs, per_measurement, 3),
            )
        elif paper and subtract_best:
            vb = np.where(member & np.isfinite(dp[None, :, q]), vbest[None, :, q], np.nan)
            n_vb = np.isfinite(vb).sum(axis=1)
            mean_vb = np.where(n_vb > 0, np.nansum(vb, axis=1) / np.maximum(n_vb, 1), 0.0)
            width = np.sqrt(np.maximum(width**2 - mean_vb, 0.0))
        if not quad:
            p, why = _fit_precision(centre, width, st["n"].astype(float), per_measurement, width_total)
        params[q] = p
        status.append(why)
        prec = width / np.sqrt(2.0) if per_measurement else width
        for b in range(edges.size - 1):
            ok = st["n"][b] >= min_pairs
            binned.append(
                (
                    name,
                    edges[b],
                    edges[b + 1],
                    centre[b],
                    int(st["n"][b]),
                    width[b] if ok else np.nan,
                    prec[b] if ok else np.nan,
                    "ok" if ok else f"skipped (n={int(st['n'][b])} < {min_pairs})",
                )
            )
    bt = Table(
        rows=binned,
        names=("LABEL", "SNR_LO", "SNR_HI", "SNR_MEDIAN", "N_PAIRS", "WIDTH", "PRECISION", "STATUS"),
        dtype=(str, float, float, float, np.int64, float, float, str),
    )
    for col in ("SNR_MEDIAN", "WIDTH", "PRECISION"):
        bt[col] = np.ma.masked_invalid(bt[col])
    bt.meta["RECIPE"] = recipe
    bt.meta["SUBBEST"] = bool(paper and subtract_best and not quad)
    bt.meta["COMBINE"] = combine
    if quad:
        bt.meta["WIDTH"] = "excess standard deviation (not explained by the scaled formal errors)"
    else:
        bt.meta["WIDTH"] = "standard deviation" if paper else "half 16-84th percentile range"
    bt.meta["SNR_OF"] = "the other spectrum (vs the best-S/N one)" if paper else "the lower S/N of the pair"
    pt = Table()
    pt["GROUP"] = pairs.group
    pt["ROW_1"], pt["ROW_2"] = i, j
    if ids is not None:
        ids = np.asarray(ids).astype(str)
        pt["ID_1"], pt["ID_2"] = ids[i], ids[j]
    pt["SNR_MIN"] = slow
    pt["PRECISION_PAIR"] = use
    for q, name in enumerate(label_names):
        pt[f"D_{name}"] = d[:, q]
        pt[f"e_D_{name}"] = ecomb[:, q]
    for q, name in enumerate(label_names):
        logger.info("%s: formal errors x %.3g (%s, %s); precision fit %s", name, scale[q], recipe, combine, status[q])
    return RepeatCalibration(
        list(label_names),
        np.asarray(scale, float),
        params,
        status,
        bt,
        pt,
        pairs.skipped,
        per_measurement,
        recipe=recipe,
        combine=combine,
    )


def compare_errors(errors_a, errors_b, label_names, *, names=("A", "B"), residuals=None) -> Table:
    """Compare two error estimates of the same stars, label by label.

    Works with any two (N, K) error arrays, e.g. the repeat-calibrated errors
    (:meth:`RepeatCalibration.apply`) and the calibrated errors of the Bayesian layer.

    Parameters
    ----------
    errors_a, errors_b : ndarray, shape (N, K)
    label_names : list of str
    names : (str, str)
        Names of the two estimates, used in the column names.
    residuals : ndarray (N, K), optional
        Inferred − true (or − reference) labels: then the coverage of each estimate
        (fraction with |residual| < error; 0.683 expected) and the robust width of
        ``residual / error`` (1 expected) are reported too.

    Returns
    -------
    astropy.table.Table
        Per label: median of each estimate, median and 16/84th percentiles of the ratio
        B/A, and the coverage columns when residuals are given.
    """
    a = np.asarray(errors_a, dtype=float)
    b = np.asarray(errors_b, dtype=float)
    k = len(label_names)
    if a.ndim != 2 or a.shape[1] != k or a.shape != b.shape:
        raise ShapeMismatchError(f"error arrays have shapes {a.shape} and {b.shape}; both must be (N, {k})")
    na, nb = names
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((a > 0) & np.isfinite(a) & np.isfinite(b), b / a, np.nan)

    def pct(x, q):
        return np.array([np.nanpercentile(c, q) if np.isfinite(c).any() else np.nan for c in x.T])

    t = Table()
    t["LABEL"] = list(label_names)
    t["N"] = np.isfinite(ratio).sum(axis=0)
    t[f"MEDIAN_{na}"] = pct(a, 50)
    t[f"MEDIAN_{nb}"] = pct(b, 50)
    t[f"RATIO_{nb}_{na}"] = pct(ratio, 50)
    t["RATIO_P16"] = pct(ratio, 16)
    t["RATIO_P84"] = pct(ratio, 84)
    if residuals is not None:
        r = np.asarray(residuals, dtype=float)
        if r.shape != a.shape:
            raise ShapeMismatchError(f"residuals have shape {r.shape}; expected {a.shape}")
        for nm, e in ((na, a), (nb, b)):
            ok = np.isfinite(r) & np.isfinite(e) & (e > 0)
            cover = np.where(ok, np.abs(r) < e, False).sum(axis=0) / np.maximum(ok.sum(axis=0), 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                zz = np.where(ok, r / e, np.nan)
            t[f"COVERAGE_{nm}"] = cover
            t[f"Z_WIDTH_{nm}"] = summary_statistics(zz, axis=0)["half_p16_84"]
    return t


@dataclass
class FluxErrorScale:
    """Result of :func:`flux_error_scale`.

    Attributes
    ----------
    factor : float
        Multiply the flux errors by this (divide ivar by its square) so that the median
        reduced χ² of the fits is 1 (Ho+2017 found about 3 for LAMOST).
    reduced_chi2 : ndarray (N,)
        Per star, with the flux errors alone (no model scatter).
    reduced_chi2_with_scatter : ndarray (N,)
        Per star, with the model scatter s² added to the flux variance.
    factor_with_scatter : float
        ``sqrt(median reduced χ²)`` with the model scatter included: close to 1 when
        the flux errors and the scatter model together describe the residuals.
    """

    factor: float
    reduced_chi2: np.ndarray
    reduced_chi2_with_scatter: np.ndarray
    factor_with_scatter: float


def flux_error_scale(model, flux, ivar, labels) -> FluxErrorScale:
    """χ² rescaling of the flux errors from the fit residuals.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    flux, ivar : ndarray, shape (N, P)
    labels : ndarray (N, K) or inference result (xarray.Dataset with ``labels``)
        Labels at which the model spectra are evaluated (usually the inferred ones).

    Returns
    -------
    FluxErrorScale
    """

    if hasattr(labels, "data_vars") and "labels" in labels:
        labels = labels["labels"].values
    y = np.asarray(labels, dtype=float)
    f = np.asarray(flux, dtype=float)
    iv = np.asarray(ivar, dtype=float)
    if f.shape != iv.shape or f.ndim != 2:
        raise ShapeMismatchError(f"flux {f.shape} and ivar {iv.shape} must be equal 2-D shapes")
    good = np.all(np.isfinite(y), axis=1)
    if not good.any():
        raise InsufficientDataError("no star has finite labels")
    model_flux = np.zeros_like(f)
    model_flux[good] = model.predict(y[good])
    used = (iv > 0) & good[:, None]
    r = np.where(used, f - model_flux, 0.0)
    npix = used.sum(axis=1)
    dof = np.maximum(npix - y.shape[1], 1)
    chi2 = np.where(used, iv * r * r, 0.0).sum(axis=1)
    w = adjusted_ivar(np.where(used, iv, 0.0), model.s2_[None, :])
    chi2s = (w * r * r).sum(axis=1)
    rc = np.where(good & (npix > 0), chi2 / dof, np.nan)
    rcs = np.where(good & (npix > 0), chi2s / dof, np.nan)
    return FluxErrorScale(float(np.sqrt(np.nanmedian(rc))), rc, rcs, float(np.sqrt(np.nanmedian(rcs))))
