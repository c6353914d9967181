"""Iterative clean-up of a reference (training) set, after Ho et al. (2017, section 3).

A reference set built by cross-matching two surveys holds stars whose reference
labels are wrong (bad pipeline fits, blends, mis-matches) without any flag saying so.
Ho+2017 found them with The Cannon itself: train on the reference set, infer the
labels of the reference stars, drop the stars whose inferred label differs from the
reference label by more than four times the scatter of the differences, retrain, and
repeat until no star is dropped.

:func:`clean_reference_set` does this, with the labels of the reference stars either

* cross-validated (``mode="cv"``, default): each star's labels come from a model that
  did not see it (:func:`bayescannon.validate.cross_validate`), so a bad reference
  label cannot pull the model towards itself; or
* from the model trained on all of them (``mode="train"``, Ho+2017's choice; faster:
  one fit per iteration).

The scatter of each label is

* ``scatter="binned"`` (default): robust (1.4826 x the median absolute deviation about
  the median) *in bins of the formal error of the inferred label*, so each star is
  compared with stars of its own precision. A single scatter for a reference set of
  mixed S/N is set by the many precise stars and removes clean low-S/N stars (24 of 500
  clean stars at S/N 30-150 with one robust scatter, still removing at ``max_iter``);
  the binned scatter removes ~0 and still finds the bad labels;
* ``scatter="robust"``: one robust scatter per label over all stars (Ho+2017 had a
  narrow S/N range);
* ``scatter="rms"``: the RMS of the differences.

A star is dropped when, for any label, ``|inferred - reference| > n_sigma * scatter``,
or when its labels could not be fitted at all.

Every dropped star is kept in :attr:`CleanupResult.excluded` with the iteration, the
label(s) at fault, the reference and inferred values, the deviation in units of the
scatter and a readable reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.flags import StarFlag, describe
from bayescannon.validate.crossval import cross_validate
from bayescannon.validate.parallel import n_model_terms, prepare_data

logger = logging.getLogger(__name__)

__all__ = ["CleanupResult", "binned_scatter", "clean_reference_set", "robust_scatter", "EXCLUDED_COLUMNS"]

#: Columns of :attr:`CleanupResult.excluded` (plus ``REF_<LABEL>``/``INF_<LABEL>``/
#: ``DEV_<LABEL>`` per label).
EXCLUDED_COLUMNS = ("ID", "ITERATION", "LABELS", "REASON")

#: Fits whose labels cannot be trusted at all: no pixel, or no convergence.
_FAILED_FIT = int(StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED)

_UNITS = {"TEFF": "K"}


def robust_scatter(diff, axis: int = 0) -> np.ndarray:
    """1.4826 x the median absolute deviation about the median, ignoring NaN.

    Parameters
    ----------
    diff : array_like
    axis : int

    Returns
    -------
    ndarray
        The Gaussian-equivalent standard deviation (NaN where no value is finite).
    """
    d = np.moveaxis(np.asarray(diff, dtype=np.float64), axis, -1)
    out = np.full(d.shape[:-1], np.nan)
    for index in np.ndindex(d.shape[:-1]):
        v = d[index]
        v = v[np.isfinite(v)]
        if v.size:
            out[index] = 1.4826 * np.median(np.abs(v - np.median(v)))
    return out


def _mean(diff, axis: int = 0) -> np.ndarray:
    d = np.asarray(diff, dtype=np.float64)
    ok = np.isfinite(d)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, d, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def _rms(diff, axis: int = 0) -> np.ndarray:
    d = np.asarray(diff, dtype=np.float64)
    ok = np.isfinite(d)
    n = ok.sum(axis=axis)
    rms = np.sqrt(np.where(ok, d * d, 0.0).sum(axis=axis) / np.maximum(n, 1))
    return np.where(n > 0, rms, np.nan)


@dataclass
class CleanupResult:
    """Outcome of :func:`clean_reference_set`.

    Attributes
    ----------
    ids : ndarray of str, shape (N,)
        Identifiers of the input stars.
    kept : ndarray of bool, shape (N,)
        Stars left in the reference set.
    excluded : astropy.table.Table
        One row per dropped star: ``ID``, ``ITERATION`` (1-based), ``LABELS`` (labels at
        fault, comma-separated, or ``"fit"`` for a failed fit), ``REASON``, and per
        label ``REF_<L>``, ``INF_<L>`` (inferred) and ``DEV_<L>`` (deviation in units
        of the scatter of that iteration).
    history : astropy.table.Table
        One row per iteration: ``ITERATION``, ``N_STARS`` (stars fitted), ``N_EXCLUDED``,
        and per label ``BIAS_<L>`` and ``SCATTER_<L>``.
    inferred : ndarray, shape (N, K)
        Labels of the last iteration (NaN for stars not in it).
    scatter : ndarray, shape (K,)
        Scatter of the last iteration.
    label_names : list of str
    mode, scatter_kind : str
    n_sigma : float
    converged : bool
        True when the last iteration dropped no star (False: ``max_iter`` was reached).
    """

    ids: np.ndarray
    kept: np.ndarray
    excluded: Table
    history: Table
    inferred: np.ndarray
    scatter: np.ndarray
    label_names: list
    mode: str
    scatter_kind: str
    n_sigma: float
    converged: bool

    @property
    def n_iter(self) -> int:
        """Number of iterations run."""
        return len(self.history)


def _fmt(value: float, name: str) -> str:
    unit = _UNITS.get(name.upper(), "")
    if not np.isfinite(value):
        return "nan"
    if abs(value) >= 100:
        return f"{value:.0f}{' ' + unit if unit else ''}"
    return f"{value:.3f}{' ' + unit if unit else ''}"


def _empty_excluded(label_names) -> Table:
    t = Table(
        [np.zeros(0, str), np.zeros(0, np.int64), np.zeros(0, str), np.zeros(0, str)],
        names=EXCLUDED_COLUMNS,
    )
    for name in label_names:
        for prefix in ("REF_", "INF_", "DEV_"):
            t[f"{prefix}{name}"] = np.zeros(0)
    return t


def _infer_reference(model, flux, ivar, labels, wavelength, ids, mode, n_folds, random_state, n_jobs):
    """Labels of the reference stars from the model: cross-validated or self-inferred."""

    if mode == "cv":
        cv = cross_validate(
            model,
            flux,
            ivar,
            labels,
            n_folds=n_folds,
            random_state=random_state,
            wavelength=wavelength,
            ids=ids,
            n_jobs=n_jobs,
        )
        res = cv.predictions
    else:
        fitted = model.clone().fit(flux, ivar, labels, wavelength=wavelength, ids=ids)
        res = fitted.infer(flux, ivar, ids=ids, wavelength=wavelength)
    return (
        np.asarray(res["labels"].values),
        np.asarray(res["flags"].values, dtype=np.int64),
        np.asarray(res["errors"].values, dtype=np.float64),
    )


#: Fewest stars per formal-error bin of ``scatter="binned"``.
MIN_PER_BIN = 100


def binned_scatter(diff, errors, *, max_bins: int = 8, min_per_bin: int = MIN_PER_BIN) -> np.ndarray:
    """Robust scatter of each star's difference among stars of similar formal error.

    Parameters
    ----------
    diff, errors : ndarray, shape (N, K)
        Inferred − reference labels (NaN: left out) and formal errors of the inferred
        labels.
    max_bins : int
        Most bins (quantiles of the formal error) per label.
    min_per_bin : int
        Fewest stars per bin; fewer stars give fewer bins (one bin: the plain robust
        scatter).

    Returns
    -------
    ndarray, shape (N, K)
        The robust scatter of the bin of each star and label (NaN for NaN differences).
    """
    d = np.asarray(diff, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    out = np.full(d.shape, np.nan)
    for q in range(d.shape[1]):  # a loop over labels, not stars
        ok = np.isfinite(d[:, q]) & np.isfinite(e[:, q])
        nb = int(min(max_bins, max(ok.sum() // min_per_bin, 1)))
        if not ok.any():
            continue
        edges = np.quantile(e[ok, q], np.linspace(0.0, 1.0, nb + 1))
        b = np.clip(np.searchsorted(edges, e[:, q], side="right") - 1, 0, nb - 1)
        member = (b[None, :] == np.arange(nb)[:, None]) & ok[None, :]
        sig = robust_scatter(np.where(member, d[None, :, q], np.nan), axis=1)
        out[ok, q] = sig[b[ok]]
    return out


def clean_reference_set(
    model,
    flux,
    ivar=None,
    labels=None,
    *,
    ids=None,
    wavelength=None,
    n_sigma: float = 4.0,
    max_iter: int = 5,
    mode: str = "cv",
    n_folds: int = 5,
    scatter: str = "binned",
    min_stars: int | None = None,
    random_state=0,
    n_jobs: int | None = 1,
) -> CleanupResult:
    """Iteratively drop reference stars whose labels disagree with The Cannon's (Ho+2017 §3).

    Parameters
    ----------
    model : CannonModel
        Model settings (label names, order, regularisation ...); fitted or not, only its
        constructor arguments are used.
    flux : ndarray (N, P) or xarray.Dataset
        Normalised reference spectra, or a spectra container (then ``ivar``, ``ids``,
        ``wavelength`` and, by default, the labels come from it).
    ivar : ndarray (N, P), optional
    labels : ndarray (N, K), mapping or table, optional
        Reference labels in the model's label order, physical units.
    ids : array_like (N,), optional
        Star identifiers (default: the container's, else ``star000000`` ...).
    wavelength : ndarray (P,), optional
    n_sigma : float
        Threshold in units of the scatter (Ho+2017: 4).
    max_iter : int
        Most train-infer-drop iterations.
    mode : {"cv", "train"}
        Cross-validated labels, or labels from the model trained on all kept stars.
    n_folds : int
        Folds for ``mode="cv"``.
    scatter : {"binned", "robust", "rms"}
        Scatter estimate per label (see the module docstring); ``"binned"`` compares
        each star with stars of similar formal error (S/N).
    min_stars : int, optional
        Stop with :class:`~bayescannon.errors.InsufficientDataError` rather than keep
        fewer stars (default: the number of model terms + 1, times ``n_folds / (n_folds
        - 1)`` in ``"cv"`` mode).
    random_state : int
        Seed of the fold assignment (the same every iteration).
    n_jobs : int, optional
        Worker processes for the cross-validation (1: in this process).

    Returns
    -------
    CleanupResult

    Raises
    ------
    InvalidInputError
        For a bad ``mode``, ``scatter``, ``n_sigma`` or ``max_iter``.
    InsufficientDataError
        When fewer than ``min_stars`` stars are left to fit.
    """

    if mode not in ("cv", "train"):
        raise InvalidInputError(f"mode must be 'cv' or 'train'; got {mode!r}")
    if scatter not in ("binned", "robust", "rms"):
        raise InvalidInputError(f"scatter must be 'binned', 'robust' or 'rms'; got {scatter!r}")
    if not (np.isfinite(n_sigma) and n_sigma > 0):
        raise InvalidInputError(f"n_sigma must be a positive number; got {n_sigma!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise InvalidInputError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    params, flux, ivar, y, ids, wavelength, _ = prepare_data(model, flux, ivar, labels, wavelength, ids)
    names = list(params["label_names"])
    n, k = y.shape
    t_terms = n_model_terms(params)
    if min_stars is None:
        min_stars = t_terms + 1
        if mode == "cv":
            min_stars = int(np.ceil(min_stars * n_folds / max(n_folds - 1, 1)))
    scatter_fn = _rms if scatter == "rms" else robust_scatter
    how = f"{n_folds}-fold cross-validated" if mode == "cv" else "trained on the reference set"

    kept = np.ones(n, bool)
    inferred = np.full((n, k), np.nan)
    sigma = np.full(k, np.nan)
    excluded_rows: list[dict] = []
    history_rows: list[dict] = []
    converged = False
    for it in range(1, int(max_iter) + 1):
        idx = np.flatnonzero(kept)
        if idx.size < min_stars:
            raise InsufficientDataError(
                f"clean-up iteration {it}: only {idx.size} reference stars left, fewer than the "
                f"{min_stars} needed; loosen n_sigma ({n_sigma}) or check the reference labels"
            )
        t0 = time.perf_counter()
        lab, flags, err = _infer_reference(
            model, flux[idx], ivar[idx], y[idx], wavelength, ids[idx], mode, n_folds, random_state, n_jobs
        )
        inferred[:] = np.nan
        inferred[idx] = lab
        diff = lab - y[idx]
        failed = ((flags & _FAILED_FIT) != 0) | ~np.all(np.isfinite(lab), axis=1)
        d_ok = np.where(failed[:, None], np.nan, diff)
        sigma = np.asarray(scatter_fn(d_ok, axis=0), dtype=np.float64)
        bias = _mean(d_ok, axis=0)
        # per star: the scatter among stars of similar precision, or one per label
        star_sigma = binned_scatter(d_ok, err) if scatter == "binned" else np.broadcast_to(sigma, diff.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            dev = diff / star_sigma
        outlier = np.abs(dev) > n_sigma
        drop = failed | np.any(outlier & ~failed[:, None], axis=1)
        for j in np.flatnonzero(drop):
            star = idx[j]
            if failed[j]:
                which = "fit"
                flag_names = ", ".join(describe(int(flags[j]), StarFlag)) or "non-finite labels"
                reason = f"label fit failed ({flag_names}) in clean-up iteration {it} ({how})"
            else:
                bad = np.flatnonzero(outlier[j])
                which = ",".join(names[b] for b in bad)
                parts = [
                    f"{names[b]}: inferred {_fmt(lab[j, b], names[b])} vs reference "
                    f"{_fmt(y[star, b], names[b])} ({dev[j, b]:+.1f} sigma, sigma = {_fmt(star_sigma[j, b], names[b])})"
                    for b in bad
                ]
                reason = f"{'; '.join(parts)}: beyond {n_sigma:g} sigma in clean-up iteration {it} ({how})"
            row = {"ID": str(ids[star]), "ITERATION": it, "LABELS": which, "REASON": reason}
            for b, name in enumerate(names):
                row[f"REF_{name}"] = float(y[star, b])
                row[f"INF_{name}"] = float(lab[j, b])
                row[f"DEV_{name}"] = float(dev[j, b])
            excluded_rows.append(row)
        hist = {"ITERATION": it, "N_STARS": int(idx.size), "N_EXCLUDED": int(drop.sum())}
        for b, name in enumerate(names):
            hist[f"BIAS_{name}"] = float(bias[b])
            hist[f"SCATTER_{name}"] = float(sigma[b])
        history_rows.append(hist)
        logger.info(
            "clean-up iteration %d: %d stars, scatter %s; dropped %d (%.1f s)",
            it,
            idx.size,
            ", ".join(f"{nm}={_fmt(s, nm)}" for nm, s in zip(names, sigma, strict=True)),
            int(drop.sum()),
            time.perf_counter() - t0,
        )
        kept[idx[drop]] = False
        if drop.any() and kept.sum() < min_stars:
            raise InsufficientDataError(
                f"clean-up iteration {it} would leave {int(kept.sum())} of {n} reference stars, fewer "
                f"than the {min_stars} needed (scatter {', '.join(f'{nm}={_fmt(s, nm)}' for nm, s in zip(names, sigma, strict=True))}): "
                f"the reference set is too small for mode={mode!r} or n_sigma={n_sigma:g} is too strict"
            )
        if not drop.any():
            converged = True
            break
    if not converged:
        logger.warning("clean-up stopped after max_iter=%d iterations while still dropping stars", int(max_iter))
    excluded = _empty_excluded(names)
    for row in excluded_rows:
        excluded.add_row(row)
    for name in names:
        unit = _UNITS.get(name.upper())
        if unit:
            excluded[f"REF_{name}"].unit = unit
            excluded[f"INF_{name}"].unit = unit
    history = Table(rows=history_rows) if history_rows else Table()
    history.meta["MODE"] = mode
    history.meta["SCATTER"] = scatter
    history.meta["NSIGMA"] = float(n_sigma)
    history.meta["CONVERGD"] = bool(converged)
    logger.info(
        "clean-up: kept %d of %d reference stars (%d dropped in %d iterations)",
        int(kept.sum()),
        n,
        len(excluded),
        len(history),
    )
    return CleanupResult(
        ids=ids,
        kept=kept,
        excluded=excluded,
        history=history,
        inferred=inferred,
        scatter=sigma,
        label_names=names,
        mode=mode,
        scatter_kind=scatter,
        n_sigma=float(n_sigma),
        converged=converged,
    )
