"""Validation of a Cannon model: k-fold cross-validation, bootstrap of the reference set,
and bias/scatter statistics overall, in S/N bins and in label bins.

What Ho+2017 (§4, Fig. 8) and Nandakumar+2022 (§3) publish beside a transferred-label
catalogue:

* :func:`cross_validate` — k-fold cross-validation (Ho+2017 used 8 folds, Nandakumar+2022
  12) with folds fixed by a seed and run in parallel across cores. Every reference star
  gets labels from the model that did not see it; :class:`CrossValidation` then gives,
  per label, the bias and the scatter (RMS about the bias and half the 16–84th
  percentile range) overall, in S/N bins and in label bins.
* The cross-validation predictions are exactly what :meth:`CannonModel.infer` returns for
  those stars (labels, errors, covariance, χ², flags, ... with dim ``label_name``) plus
  ``reference``, ``fold`` and ``snr``.
* :func:`bayescannon.validate.bootstrap.bootstrap` runs its models through the same
  worker machinery; the statistics live in :mod:`bayescannon.validate.stats`.

Parallelism
-----------
Folds (and bootstrap models) run in worker processes of a
:class:`concurrent.futures.ProcessPoolExecutor` started with the ``spawn`` method (the
training kernels run numba threads, which ``fork`` would copy in an unsafe state). The
spectra are written once to a temporary folder as ``.npy`` files that the workers map
read-only, so they are not pickled per task. Each worker limits its BLAS, OpenMP and
numba threads to ``max(1, cores // n_jobs)`` so that workers × threads does not
oversubscribe the machine. ``n_jobs=1`` runs everything in the calling process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from astropy.table import Table

from bayescannon.errors import InsufficientDataError, InvalidInputError, ShapeMismatchError
from bayescannon.flags import StarFlag
from bayescannon.pipeline.cluster import Executor
from bayescannon.results import set_label_units
from bayescannon.validate.bootstrap import BootstrapResult, bootstrap  # noqa: F401  (re-exported for callers of the old module)
from bayescannon.validate.parallel import n_model_terms, prepare_data, run_tasks
from bayescannon.validate.stats import DEFAULT_SNR_BINS, binned_statistics, summary_statistics

logger = logging.getLogger(__name__)

__all__ = [
    "BAD_FIT_FLAGS",
    "CrossValidation",
    "cross_validate",
    "make_folds",
]

#: Fits left out of the bias/scatter statistics by default: no labels at all, or a
#: test step that did not converge.
BAD_FIT_FLAGS = int(StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED)


def make_folds(n: int, n_folds: int, random_state=0) -> np.ndarray:
    """Fold index (0 … n_folds−1) of every star, balanced and fixed by the seed.

    Parameters
    ----------
    n : int
        Number of stars.
    n_folds : int
        Number of folds (2 ≤ n_folds ≤ n).
    random_state : int or numpy.random.Generator

    Returns
    -------
    ndarray of int, shape (n,)
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise InvalidInputError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    if n_folds > n:
        raise InsufficientDataError(f"{n_folds} folds need at least {n_folds} stars; got {n}")
    rng = np.random.default_rng(random_state)
    folds = np.empty(n, dtype=np.int64)
    folds[rng.permutation(n)] = np.arange(n) % int(n_folds)
    return folds


# --------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------


@dataclass
class CrossValidation:
    """Result of :func:`cross_validate`.

    Attributes
    ----------
    predictions : xarray.Dataset
        Per star: exactly the dataset :meth:`CannonModel.infer` returns for it from the
        model that did not see it (``labels``, ``errors``, ``covariance``, ``chi2``,
        ``reduced_chi2``, ``n_pixels``, ``converged``, ``flags``, ``n_iter``; dim
        ``label_name``) plus ``reference`` (star, label_name), ``fold`` and ``snr`` (NaN
        when not given). ``inferred`` is kept as an alias of ``labels`` for older callers
        (deprecated: read ``labels``).
    label_names : list of str
    n_folds : int
    random_state : object
        Seed of the folds.
    snr_bins, label_bins : array_like or int
        Binning of :attr:`by_snr` and :attr:`by_label`.
    min_per_bin : int
        Bins with fewer stars are reported as skipped.
    exclude_flags : int
        StarFlag bits whose stars are left out of the statistics.
    """

    predictions: xr.Dataset
    label_names: list
    n_folds: int
    random_state: object = None
    snr_bins: object = DEFAULT_SNR_BINS
    label_bins: object = 8
    min_per_bin: int = 5
    exclude_flags: int = BAD_FIT_FLAGS
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def inferred(self) -> xr.DataArray:
        """The cross-validated labels (``predictions["labels"]``), star × label_name."""
        return self.predictions["labels"]

    @property
    def good(self) -> np.ndarray:
        """Stars used in the statistics (finite labels, no excluded flag)."""
        flags = self.predictions["flags"].values
        fin = np.all(np.isfinite(self.predictions["labels"].values), axis=1)
        return fin & ((flags & self.exclude_flags) == 0)

    @property
    def differences(self) -> np.ndarray:
        """Inferred − reference (N, K); NaN for stars left out of the statistics."""
        d = self.predictions["labels"].values - self.predictions["reference"].values
        return np.where(self.good[:, None], d, np.nan)

    @property
    def summary(self) -> Table:
        """One row per label: ``N``, ``BIAS``, ``MEDIAN``, ``RMS``, ``RMSE``,
        ``HALF_P16_84``, ``MEDIAN_ERROR`` (median formal error) and ``N_EXCLUDED``."""
        if "summary" not in self._cache:
            s = summary_statistics(self.differences, axis=0)
            err = np.where(self.good[:, None], self.predictions["errors"].values, np.nan)
            med_err = np.array([np.nanmedian(e) if np.isfinite(e).any() else np.nan for e in err.T])
            t = Table()
            t["LABEL"] = list(self.label_names)
            t["N"] = s["n"].astype(np.int64)
            for key in ("bias", "median", "rms", "rmse", "half_p16_84"):
                t[key.upper()] = s[key]
            t["MEDIAN_ERROR"] = med_err
            t["N_EXCLUDED"] = np.full(len(self.label_names), int((~self.good).sum()))
            t.meta["NFOLDS"] = self.n_folds
            t.meta["FOLDSEED"] = str(self.random_state)
            self._cache["summary"] = t
        return self._cache["summary"]

    def scatter(self, kind: str = "rms") -> np.ndarray:
        """Cross-validation scatter per label (``"rms"`` or ``"half_p16_84"``), the unit
        of the label distance (Nandakumar+2022 eq. 5)."""
        if kind not in ("rms", "half_p16_84"):
            raise InvalidInputError(f"kind must be 'rms' or 'half_p16_84'; got {kind!r}")
        return np.asarray(self.summary[kind.upper()], dtype=float)

    @property
    def by_snr(self) -> Table:
        """Bias and scatter in S/N bins (Ho+2017 Fig. 8)."""
        if "by_snr" not in self._cache:
            snr = self.predictions["snr"].values
            if not np.isfinite(snr).any():
                raise InvalidInputError("cross-validation was run without S/N values: pass snr=")
            bins = self.snr_bins
            if np.ndim(bins) > 0:
                e = np.asarray(bins, float)
                lo, hi = np.nanmin(snr), np.nanmax(snr)
                keep = (e[1:] > lo) & (e[:-1] <= hi)
                first, last = np.flatnonzero(keep)[[0, -1]]
                bins = e[first : last + 2]
            self._cache["by_snr"] = binned_statistics(
                snr, self.differences, bins, label_names=self.label_names, x_name="SNR", min_count=self.min_per_bin
            )
        return self._cache["by_snr"]

    @property
    def by_label(self) -> Table:
        """Bias and scatter in bins of each reference label."""
        if "by_label" not in self._cache:
            self._cache["by_label"] = binned_statistics(
                self.predictions["reference"].values,
                self.differences,
                self.label_bins,
                label_names=self.label_names,
                x_name="REFERENCE",
                min_count=self.min_per_bin,
            )
        return self._cache["by_label"]

    def to_table(self, id_column: str = "ID") -> Table:
        """Per-star predictions as a table: id, fold, S/N, reference and CV labels,
        errors, χ², flags."""
        p = self.predictions
        t = Table()
        t[id_column] = np.asarray(p["star"].values).astype(str)
        t["FOLD"] = p["fold"].values
        t["SNR"] = np.ma.masked_invalid(p["snr"].values)
        for k, name in enumerate(self.label_names):
            t[f"REF_{name}"] = p["reference"].values[:, k]
            t[f"CV_{name}"] = np.ma.masked_invalid(p["labels"].values[:, k])
            t[f"e_CV_{name}"] = np.ma.masked_invalid(p["errors"].values[:, k])
        t["CHI2"] = np.ma.masked_invalid(p["chi2"].values)
        t["REDUCED_CHI2"] = np.ma.masked_invalid(p["reduced_chi2"].values)
        t["N_PIXELS"] = p["n_pixels"].values
        t["FLAGS"] = p["flags"].values.astype(np.int64)
        return t


def cross_validate(
    model,
    flux,
    ivar=None,
    labels=None,
    *,
    n_folds: int = 8,
    random_state=0,
    snr=None,
    ids=None,
    wavelength=None,
    n_jobs: int | None = None,
    snr_bins=DEFAULT_SNR_BINS,
    label_bins=8,
    min_per_bin: int = 5,
    exclude_flags: int = BAD_FIT_FLAGS,
    chunk_size: int = 2000,
    progressbar: bool = False,
    executor: Executor | None = None,
) -> CrossValidation:
    """k-fold cross-validation of a Cannon model on its reference set.

    The stars are split into ``n_folds`` folds fixed by ``random_state``; for each fold
    a model with the settings of ``model`` is trained on the other folds and infers the
    labels of the fold's stars.

    Parameters
    ----------
    model : CannonModel
        Settings to validate (fitted or not; only its constructor arguments are used).
    flux : ndarray (N, P) or xarray.Dataset
        Reference spectra, or a spectra container (then ``ivar``, ``ids``,
        ``wavelength``, the labels and ``snr`` default to its contents).
    ivar : ndarray (N, P), optional
    labels : ndarray (N, K), mapping or table, optional
        Reference labels in the model's label order.
    n_folds : int, default 8
        Ho+2017 used 8, Nandakumar+2022 12.
    random_state : int or numpy.random.Generator
        Seed of the fold assignment.
    snr : ndarray (N,), optional
        S/N per star, for :attr:`CrossValidation.by_snr`.
    ids, wavelength : array_like, optional
    n_jobs : int, optional
        Worker processes (default: number of cores; 1 = in this process; negative
        counts from the number of cores as in joblib).
    snr_bins, label_bins : array_like or int
        Binning of the S/N and label statistics.
    min_per_bin : int
        Bins with fewer stars are reported with ``STATUS = "skipped …"``.
    exclude_flags : int
        StarFlag bits whose stars are left out of the statistics (default: no pixels,
        not converged).
    chunk_size : int
        Stars per chunk of the test step.
    progressbar : bool
    executor : Executor, optional
        A distributed executor (:class:`bayescannon.pipeline.cluster.DaskExecutor`): the
        models are fitted as its tasks (the results equal the in-process ones); default
        ``n_jobs`` local processes.

    Returns
    -------
    CrossValidation

    Raises
    ------
    InsufficientDataError
        When a training set (all stars but one fold) has too few stars for the model's
        terms, or there are fewer stars than folds.
    """
    params, flux, ivar, y, ids, wavelength, ds = prepare_data(model, flux, ivar, labels, wavelength, ids)
    n = flux.shape[0]
    folds = make_folds(n, n_folds, random_state)
    t = n_model_terms(params)
    sizes = np.bincount(folds, minlength=n_folds)
    n_train = n - sizes
    if np.any(n_train < t + 1):
        f = int(np.argmin(n_train))
        raise InsufficientDataError(
            f"fold {f} leaves {int(n_train[f])} training stars; the model has {t} terms and needs at "
            f"least {t + 1}: use fewer folds, fewer labels or a lower order"
        )
    if snr is None and ds is not None and "snr" in ds:
        snr = ds["snr"].values
    snr = np.full(n, np.nan) if snr is None else np.asarray(snr, dtype=np.float64)
    if snr.shape != (n,):
        raise ShapeMismatchError(f"snr has shape {snr.shape} but there are {n} spectra")
    tasks = []
    for f in range(n_folds):
        tasks.append(
            {
                "key": f,
                "params": params,
                "train": np.flatnonzero(folds != f),
                "test": np.flatnonzero(folds == f),
                "wavelength": wavelength,
                "chunk_size": chunk_size,
            }
        )
    logger.info("cross-validating %s: %d stars, %d folds", params["label_names"], n, n_folds)
    results = run_tasks(
        tasks,
        {"flux": flux, "ivar": ivar, "labels": y},
        n_jobs,
        progressbar=progressbar,
        desc="cross-validation folds",
        executor=executor,
    )
    names = list(params["label_names"])
    parts = []
    for res in sorted(results, key=lambda r: r["key"]):
        rows = tasks[res["key"]]["test"]
        parts.append(res["result"].assign_coords(star=rows))
    pred = xr.concat(parts, dim="star", combine_attrs="drop_conflicts").sortby("star")
    pred = pred.assign_coords(star=ids)
    pred["reference"] = (("star", "label_name"), y)
    pred["fold"] = ("star", folds)
    pred["snr"] = ("star", snr)
    pred["inferred"] = pred["labels"]  # deprecated alias (callers written before the infer schema)
    set_label_units(pred)
    pred.attrs.pop("model_training_hash", None)  # one model per fold
    pred.attrs.update({"n_folds": int(n_folds), "fold_seed": str(random_state)})
    return CrossValidation(
        pred, names, int(n_folds), random_state, snr_bins, label_bins, min_per_bin, int(exclude_flags)
    )


# --------------------------------------------------------------------------------------
# mock data with a known quadratic truth
# --------------------------------------------------------------------------------------
