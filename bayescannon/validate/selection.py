"""Model complexity chosen by the data: the polynomial order and the L1 strength by k-fold
cross-validation on the training set (issue 12).

:func:`select_model` cross-validates every candidate ``(order, regularization)`` of a
grid on the *same* folds (:func:`bayescannon.validate.crossval.cross_validate`), scores
each by its held-out label error, picks one, and refits it on all training stars.

The score
---------
Per held-out star ``n`` and candidate ``c`` the squared label error in units of each
label's spread,

    e_n(c) = (1/K) Σ_k ((ℓ̂_nk(c) − ℓ_nk) / spread_k)²,

with ``spread_k`` the standard deviation of label ``k`` over the training set; the score
is ``sqrt(mean_n e_n(c))`` (a root-mean-square error in spread units, bias included).
Held-out *label* error is chosen over held-out χ² because it measures what a user of the
labels needs, including the region-dependent label bias of a model that is too simple
(the cause of issue 12), which a χ² at the best-fitting labels hides: a misfit model
still finds labels that fit the spectrum well, only the wrong ones. Noise in the
reference labels adds the same constant to ``e_n`` of every candidate, so it does not
change the ranking. Stars whose test step did not converge count (a candidate whose fits
fail is penalised); only stars with no usable pixel (NaN labels for every candidate) are
left out. The per-label RMS and bias and the median held-out reduced χ² are reported as
well.

The choice (one-standard-error rule)
------------------------------------
All candidates see the same folds, so they are compared star by star: for candidate
``c`` against the best one, ``Δ = mean_n [e_n(c) − e_n(best)]`` with standard error
``SE = std_n(e_n(c) − e_n(best)) / sqrt(N)``. The chosen model is the *simplest* candidate
with ``Δ ≤ n_se · SE`` (lower order first, then the larger L1 strength), so a cubic
model is taken only when its gain over the quadratic one is larger than the noise of the
cross-validation itself (Hastie, Tibshirani & Friedman, *Elements of Statistical
Learning*, §7.10). ``n_se = 0`` takes the best score.

Guards
------
* Orders whose number of terms exceeds ``n_train / min_stars_per_term`` (``n_train``: the
  smallest training set of a fold) are skipped with a logged reason and a ``status`` in
  the table; when every order is skipped :class:`InsufficientDataError` is raised.
* Every candidate keeps the other settings of the template model, including per-label
  censoring (``censors``), start candidates and ``random_state``.
* The folds are fixed by ``random_state`` (a Generator is turned into one integer seed
  first), so the result is deterministic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from astropy.table import Table

from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.flags import StarFlag
from bayescannon.results import set_label_units
from bayescannon.validate.crossval import CrossValidation, cross_validate, make_folds
from bayescannon.validate.parallel import prepare_data

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_REGULARIZATION_GRID", "ModelSelection", "select_model"]

#: Default L1 strengths Λ tried (Casey+2016 convention, see :class:`CannonModel`): none
#: and two strengths that matter for S/N ~ 100 spectra of a few thousand stars.
DEFAULT_REGULARIZATION_GRID = (0.0, 100.0, 1000.0)


@dataclass
class ModelSelection:
    """Result of :func:`select_model`.

    Attributes
    ----------
    model : CannonModel
        The chosen settings, fitted on all training stars.
    table : xarray.Dataset
        The CV table: one row per candidate (dim ``candidate``) with ``order``,
        ``regularization``, ``n_terms``, ``status`` (``"ok"`` or why it was skipped),
        ``score`` (RMS label error in spread units), ``delta`` and ``delta_se`` (mean
        paired difference of the squared scaled error to the best candidate and its
        standard error), ``selected``, ``n_stars``, ``n_not_converged``,
        ``median_reduced_chi2``; per label (dim ``label_name``) ``rms``, ``bias`` (physical
        units), ``rms_scaled`` (spread units) and ``spread``.
    order : int
    regularization : float
    cross_validations : dict
        ``{(order, regularization): CrossValidation}`` of the candidates that ran.
    """

    model: object
    table: xr.Dataset
    order: int
    regularization: float
    cross_validations: dict = field(default_factory=dict, repr=False)

    def to_table(self) -> Table:
        """The CV table as an astropy Table (one row per candidate; ``RMS_<label>``,
        ``BIAS_<label>``, ``RMS_SCALED_<label>`` columns), e.g. to write as ECSV."""
        ds = self.table
        t = Table()
        t["ORDER"] = ds["order"].values.astype(np.int64)
        t["REGULARIZATION"] = ds["regularization"].values
        t["N_TERMS"] = ds["n_terms"].values.astype(np.int64)
        t["STATUS"] = ds["status"].values.astype(str)
        for col, var in [
            ("SCORE", "score"),
            ("DELTA", "delta"),
            ("DELTA_SE", "delta_se"),
            ("MEDIAN_REDUCED_CHI2", "median_reduced_chi2"),
        ]:
            t[col] = np.ma.masked_invalid(ds[var].values)
        t["SELECTED"] = ds["selected"].values
        t["N_STARS"] = ds["n_stars"].values.astype(np.int64)
        t["N_NOT_CONVERGED"] = ds["n_not_converged"].values.astype(np.int64)
        units = [str(u) for u in ds["label_unit"].values]
        for k, name in enumerate(ds["label_name"].values):
            t[f"RMS_{name}"] = np.ma.masked_invalid(ds["rms"].values[:, k])
            t[f"BIAS_{name}"] = np.ma.masked_invalid(ds["bias"].values[:, k])
            t[f"RMS_SCALED_{name}"] = np.ma.masked_invalid(ds["rms_scaled"].values[:, k])
            if units[k]:
                t[f"RMS_{name}"].unit = units[k]
                t[f"BIAS_{name}"].unit = units[k]
        t.meta.update({k: v for k, v in ds.attrs.items() if isinstance(v, (int, float, str))})
        return t

    def log_table(self, level: int = logging.INFO) -> None:
        """Log the CV table, one line per candidate."""
        ds = self.table
        names = [str(n) for n in ds["label_name"].values]
        for i in range(ds.sizes["candidate"]):
            rms = " ".join(f"{n}={v:.4g}" for n, v in zip(names, ds["rms"].values[i], strict=True))
            logger.log(
                level,
                "CV order %d, regularization %g (%d terms): %s score %.5g delta %.3g ± %.3g rms %s%s",
                int(ds["order"].values[i]),
                float(ds["regularization"].values[i]),
                int(ds["n_terms"].values[i]),
                str(ds["status"].values[i]),
                float(ds["score"].values[i]),
                float(ds["delta"].values[i]),
                float(ds["delta_se"].values[i]),
                rms,
                "  <- selected" if bool(ds["selected"].values[i]) else "",
            )


def _grid(regularizations) -> list[float]:
    grid = sorted({float(r) for r in np.atleast_1d(np.asarray(regularizations, dtype=float))})
    if not grid or not all(np.isfinite(r) and r >= 0 for r in grid):
        raise InvalidInputError(f"regularizations must be finite values >= 0; got {regularizations!r}")
    return grid


def select_model(
    model,
    flux,
    ivar=None,
    labels=None,
    *,
    max_order: int = 3,
    min_order: int = 2,
    regularizations=DEFAULT_REGULARIZATION_GRID,
    n_folds: int = 5,
    random_state=0,
    n_se: float = 1.0,
    min_stars_per_term: float = 5.0,
    wavelength=None,
    ids=None,
    n_jobs: int | None = 1,
    chunk_size: int = 2000,
    progressbar: bool = False,
) -> ModelSelection:
    """Choose the polynomial order and the L1 strength by k-fold cross-validation.

    Parameters
    ----------
    model : CannonModel
        Template: its label names, censors and other settings are kept; ``order`` and
        ``regularization`` are chosen (their values in the template are ignored).
    flux : ndarray (N, P) or xarray.Dataset
        Training spectra, or a spectra container (then ``ivar``, ``ids``, ``wavelength``
        and the labels default to its contents).
    ivar : ndarray (N, P), optional
    labels : ndarray (N, K), mapping or table, optional
        Training labels in the model's label order.
    max_order, min_order : int
        Orders tried: ``min_order, …, max_order``.
    regularizations : sequence of float
        L1 strengths Λ tried at every order (duplicates removed).
    n_folds : int, default 5
    random_state : int or numpy.random.Generator
        Seed of the folds (the same folds for every candidate).
    n_se : float, default 1
        The simplest candidate within ``n_se`` paired standard errors of the best score
        is chosen (see the module notes); 0 takes the best.
    min_stars_per_term : float, default 5
        Orders with more terms than (smallest fold training set) / ``min_stars_per_term``
        are skipped.
    wavelength, ids : array_like, optional
    n_jobs : int, optional
        Worker processes per cross-validation (see :func:`cross_validate`; default 1).
    chunk_size : int
        Stars per chunk of the test step.
    progressbar : bool

    Returns
    -------
    ModelSelection

    Raises
    ------
    InvalidInputError
        A bad order range, grid, ``n_se`` or ``min_stars_per_term``.
    InsufficientDataError
        No order has few enough terms for the training set.
    """
    if int(min_order) != min_order or int(max_order) != max_order or not 1 <= min_order <= max_order:
        raise InvalidInputError(f"need integers 1 <= min_order <= max_order; got {min_order!r}, {max_order!r}")
    if not (np.isfinite(n_se) and n_se >= 0):
        raise InvalidInputError(f"n_se must be finite and >= 0; got {n_se!r}")
    if not (np.isfinite(min_stars_per_term) and min_stars_per_term > 0):
        raise InvalidInputError(f"min_stars_per_term must be finite and > 0; got {min_stars_per_term!r}")
    grid = _grid(regularizations)
    params, flux, ivar, y, ids, wavelength, _ = prepare_data(model, flux, ivar, labels, wavelength, ids)
    names = list(params["label_names"])
    n = flux.shape[0]
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(2**31))  # one seed: the same folds for every candidate
    folds = make_folds(n, n_folds, random_state)
    n_train = int(n - np.bincount(folds, minlength=n_folds).max())
    spread = y.std(axis=0)
    if not np.all(spread > 0):
        k = int(np.argmin(spread))
        raise InvalidInputError(f"training label {names[k]} has no spread: it cannot be scored")

    rows, cvs, errs = [], {}, {}
    for order in range(int(min_order), int(max_order) + 1):
        t = PolynomialVectorizer(names, order).n_terms
        limit = n_train / min_stars_per_term
        if t > limit:
            reason = f"skipped: {t} terms > {limit:.4g} (= {n_train} training stars per fold / {min_stars_per_term:g})"
            logger.warning("order %d not cross-validated: %s", order, reason)
            rows.extend({"order": order, "regularization": r, "n_terms": t, "status": reason} for r in grid)
            continue
        for r in grid:
            cand = model.clone().set_params(order=order, regularization=r)
            logger.info("cross-validating order %d, regularization %g (%d terms)", order, r, t)
            cv = cross_validate(
                cand,
                flux,
                ivar,
                y,
                n_folds=n_folds,
                random_state=random_state,
                ids=ids,
                wavelength=wavelength,
                n_jobs=n_jobs,
                exclude_flags=int(StarFlag.NO_PIXELS),
                chunk_size=chunk_size,
                progressbar=progressbar,
            )
            cvs[(order, r)] = cv
            errs[(order, r)] = np.mean((cv.differences / spread) ** 2, axis=1)  # e_n; NaN: no pixels
            rows.append({"order": order, "regularization": r, "n_terms": t, "status": "ok"})
    if not cvs:
        raise InsufficientDataError(
            f"no order in {min_order}..{max_order} can be cross-validated on {n} stars in {n_folds} folds "
            f"(at most {n_train / min_stars_per_term:.4g} terms at {min_stars_per_term:g} stars per term): "
            "use more training stars, fewer labels or a lower order"
        )
    table = _table(rows, cvs, errs, names, spread, n_se)
    table.attrs.update(
        {
            "criterion": "RMS held-out label error in units of each label's training standard deviation; "
            f"simplest candidate within {n_se:g} paired standard errors of the best",
            "n_folds": int(n_folds),
            "fold_seed": str(random_state),
            "n_se": float(n_se),
            "min_stars_per_term": float(min_stars_per_term),
        }
    )
    i = int(np.flatnonzero(table["selected"].values)[0])
    order, reg = int(table["order"].values[i]), float(table["regularization"].values[i])
    table.attrs.update({"selected_order": order, "selected_regularization": reg})
    logger.info("selected order %d, regularization %g", order, reg)
    final = model.clone().set_params(order=order, regularization=reg)
    final.fit(flux, ivar, y, wavelength=wavelength, ids=ids, progressbar=progressbar)
    result = ModelSelection(final, table, order, reg, cvs)
    result.log_table()
    return result


def _table(rows, cvs, errs, names, spread, n_se) -> xr.Dataset:
    """The CV table of :func:`select_model` and the choice."""
    m, k = len(rows), len(names)
    score, delta, delta_se, chi2 = (np.full(m, np.nan) for _ in range(4))
    rms, bias = np.full((m, k), np.nan), np.full((m, k), np.nan)
    n_stars, n_nc = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    keys = [(row["order"], row["regularization"]) for row in rows]
    ran = [i for i, key in enumerate(keys) if _row_ok(rows[i]) and key in cvs]
    # stars scored for every candidate (the same set: a paired comparison)
    common = np.logical_and.reduce([np.isfinite(errs[keys[i]]) for i in ran])
    if not common.any():
        raise InsufficientDataError("no held-out star has labels from every candidate")
    for i in ran:
        cv: CrossValidation = cvs[keys[i]]
        d = cv.differences[common]
        rms[i] = np.sqrt(np.mean(d**2, axis=0))
        bias[i] = np.mean(d, axis=0)
        score[i] = np.sqrt(np.mean(errs[keys[i]][common]))
        n_stars[i] = int(common.sum())
        n_nc[i] = int(((cv.predictions["flags"].values[common] & StarFlag.NOT_CONVERGED) != 0).sum())
        chi2[i] = float(np.nanmedian(cv.predictions["reduced_chi2"].values[common]))
    best = min(ran, key=lambda i: score[i])
    e_best = errs[keys[best]][common]
    for i in ran:
        diff = errs[keys[i]][common] - e_best
        delta[i] = float(diff.mean())
        delta_se[i] = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    # simplest first: lower order, then the stronger L1 penalty
    ok = [i for i in ran if delta[i] <= n_se * delta_se[i]]
    chosen = min(ok, key=lambda i: (keys[i][0], -keys[i][1]))
    selected = np.zeros(m, dtype=bool)
    selected[chosen] = True
    ds = xr.Dataset(
        {
            "order": ("candidate", np.array([r["order"] for r in rows], dtype=np.int64)),
            "regularization": ("candidate", np.array([r["regularization"] for r in rows], dtype=float)),
            "n_terms": ("candidate", np.array([r["n_terms"] for r in rows], dtype=np.int64)),
            "status": ("candidate", np.array([r["status"] for r in rows], dtype=str)),
            "score": ("candidate", score),
            "delta": ("candidate", delta),
            "delta_se": ("candidate", delta_se),
            "selected": ("candidate", selected),
            "n_stars": ("candidate", n_stars),
            "n_not_converged": ("candidate", n_nc),
            "median_reduced_chi2": ("candidate", chi2),
            "rms": (("candidate", "label_name"), rms),
            "bias": (("candidate", "label_name"), bias),
            "rms_scaled": (("candidate", "label_name"), rms / spread),
            "spread": ("label_name", spread),
        },
        coords={"candidate": np.arange(m), "label_name": names},
    )
    set_label_units(ds, ["rms", "bias", "spread"])
    ds["rms_scaled"].attrs["units"] = "1 (label standard deviations)"
    ds["score"].attrs["description"] = "sqrt(mean over stars and labels of (CV label error / spread)^2)"
    ds["delta"].attrs["description"] = "mean over stars of e_n(candidate) - e_n(best), e_n: mean scaled squared error"
    return ds


def _row_ok(row) -> bool:
    """Whether a CV-table row was cross-validated (not skipped by a guard)."""
    return row["status"] == "ok"
