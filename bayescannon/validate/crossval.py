"""Validation of a Cannon model: k-fold cross-validation, bootstrap of the reference set,
and bias/scatter statistics overall, in S/N bins and in label bins.

What Ho+2017 (§4, Fig. 8) and Nandakumar+2022 (§3) publish beside a transferred-label
catalogue:

* :func:`cross_validate` — k-fold cross-validation (Ho+2017 used 8 folds, Nandakumar+2022
  12) with folds fixed by a seed and run in parallel across cores. Every reference star
  gets labels from the model that did not see it; :class:`CrossValidation` then gives,
  per label, the bias and the scatter (RMS about the bias and half the 16–84th
  percentile range) overall, in S/N bins and in label bins.
* :func:`bootstrap` — models trained on bootstrap resamples of the reference set
  (Ho+2017 §4.2: 20 models); the spread of the labels they give a star is the label
  uncertainty due to the finite reference set.
* :func:`summary_statistics`, :func:`binned_statistics` — the statistics themselves.

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

import inspect
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from astropy.table import Table

from bayescannon.errors import InsufficientDataError, InvalidInputError, ShapeMismatchError
from bayescannon.flags import StarFlag
from bayescannon.model import CannonModel
from bayescannon.spectra import as_label_array, unpack_spectra
from bayescannon.spectra import check_flux_ivar, default_ids
from bayescannon.core.vectorizer import PolynomialVectorizer

logger = logging.getLogger(__name__)

__all__ = [
    "CrossValidation",
    "BootstrapResult",
    "cross_validate",
    "bootstrap",
    "make_folds",
    "summary_statistics",
    "binned_statistics",
    "clone_model",
    "model_params",
    "DEFAULT_SNR_BINS",
    "BAD_FIT_FLAGS",
]

#: Default S/N bin edges (Ho+2017 Fig. 8 style); bins outside the data are dropped.
DEFAULT_SNR_BINS = (0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 300.0, np.inf)

#: Fits left out of the bias/scatter statistics by default: no labels at all, or a
#: test step that did not converge.
BAD_FIT_FLAGS = int(StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED)

#: Environment variables that cap the threads of BLAS/OpenMP/numba in a worker.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


def model_params(model) -> dict:
    """Constructor arguments of a :class:`~bayescannon.model.CannonModel`.

    For a model read from a file, whose ``censors`` argument is not stored, the fitted
    censor mask is turned back into boolean per-pixel censors.

    Parameters
    ----------
    model : CannonModel

    Returns
    -------
    dict
        Keyword arguments that rebuild an unfitted copy of ``model``.
    """

    if not isinstance(model, CannonModel):
        raise InvalidInputError(f"expected a CannonModel; got {type(model).__name__}")
    names = [p for p in inspect.signature(CannonModel.__init__).parameters if p != "self"]
    params = {name: getattr(model, name) for name in names if hasattr(model, name)}
    mask = getattr(model, "censor_mask_", None)
    if params.get("censors") is None and mask is not None and not np.all(mask):
        params["censors"] = {
            name: np.asarray(mask[:, k], dtype=bool)
            for k, name in enumerate(model.label_names)
            if not np.all(mask[:, k])
        }
    return params


def clone_model(model):
    """A new, unfitted CannonModel with the same settings as ``model``."""

    return CannonModel(**model_params(model))


# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------


def summary_statistics(diff, axis: int = 0) -> dict[str, np.ndarray]:
    """Bias and scatter of differences (inferred − reference), ignoring NaN.

    Parameters
    ----------
    diff : array_like
        Differences; statistics are taken along ``axis``.
    axis : int
        Axis of the stars.

    Returns
    -------
    dict of str to ndarray
        ``n`` (finite values), ``bias`` (mean), ``median``, ``rms`` (standard deviation
        about the bias), ``rmse`` (root mean square of the differences themselves) and
        ``half_p16_84`` (half the 16–84th percentile range: the robust 1σ scatter).
        NaN where fewer than 2 values are finite.
    """
    d = np.asarray(diff, dtype=np.float64)
    ok = np.isfinite(d)
    n = ok.sum(axis=axis)
    dz = np.where(ok, d, 0.0)
    safe_n = np.maximum(n, 1)
    bias = dz.sum(axis=axis) / safe_n
    rmse = np.sqrt((dz * dz).sum(axis=axis) / safe_n)
    centred = np.where(ok, d - np.expand_dims(bias, axis), 0.0)
    rms = np.sqrt((centred * centred).sum(axis=axis) / np.maximum(n - 1, 1))
    few = n < 2
    if np.all(few):
        nan = np.full(np.shape(bias), np.nan)
        return {"n": n, "bias": nan, "median": nan.copy(), "rms": nan.copy(), "rmse": nan.copy(),
                "half_p16_84": nan.copy()}
    dd = np.where(ok, d, np.nan)
    # nanpercentile warns on all-NaN slices; those are replaced below anyway
    filled = np.where(np.expand_dims(few, axis), 0.0, dd)
    p16, p50, p84 = np.nanpercentile(filled, [16.0, 50.0, 84.0], axis=axis)
    out = {"n": n, "bias": bias, "median": p50, "rms": rms, "rmse": rmse, "half_p16_84": 0.5 * (p84 - p16)}
    for key in ("bias", "median", "rms", "rmse", "half_p16_84"):
        out[key] = np.where(few, np.nan, out[key])
    return out


def binned_statistics(x, diff, bins, *, label_names, x_name: str = "x", min_count: int = 5,
                      same_x_per_label: bool = True) -> Table:
    """Bias and scatter of differences in bins of ``x``, one row per (label, bin).

    Parameters
    ----------
    x : ndarray, shape (N,) or (N, K)
        Binning variable: one per star (e.g. S/N) or one per star and label (e.g. the
        reference label itself).
    diff : ndarray, shape (N, K)
        Inferred − reference labels.
    bins : array_like or int
        Bin edges (increasing) or a number of equal-width bins between the 1st and 99th
        percentile of ``x`` (per label when ``x`` is 2-D).
    label_names : list of str
    x_name : str
        Name of the binning variable, written in the ``X`` column.
    min_count : int
        Bins with fewer stars get ``STATUS = "skipped (n=…)"`` and masked statistics:
        they are reported, never dropped silently.

    Returns
    -------
    astropy.table.Table
        Columns ``LABEL``, ``X``, ``BIN_LO``, ``BIN_HI``, ``N``, ``BIAS``, ``MEDIAN``,
        ``RMS``, ``HALF_P16_84``, ``STATUS``.
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != len(label_names):
        raise ShapeMismatchError(f"diff must be (N, {len(label_names)}); got {d.shape}")
    xx = np.asarray(x, dtype=np.float64)
    if xx.ndim == 1:
        xx = np.repeat(xx[:, None], d.shape[1], axis=1)
    if xx.shape != d.shape:
        raise ShapeMismatchError(f"x has shape {np.shape(x)}; expected ({d.shape[0]},) or {d.shape}")
    rows = []
    for k, name in enumerate(label_names):
        xk = xx[:, k]
        fin = np.isfinite(xk)
        if np.ndim(bins) == 0:
            if not fin.any():
                raise InvalidInputError(f"no finite {x_name} values to bin for label {name}")
            lo, hi = np.percentile(xk[fin], [1.0, 99.0])
            if hi <= lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, int(bins) + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
                raise InvalidInputError(f"bins must be increasing edges; got {bins!r}")
        idx = np.searchsorted(edges, xk, side="right") - 1
        idx[(xk == edges[-1])] = edges.size - 2
        inside = fin & (idx >= 0) & (idx < edges.size - 1)
        # one pass over the stars for every bin: a (bins, N) membership mask
        member = (idx[None, :] == np.arange(edges.size - 1)[:, None]) & inside[None, :]
        dk = np.where(member, d[None, :, k], np.nan)
        stats = summary_statistics(dk, axis=1)
        for b in range(edges.size - 1):
            n = int(stats["n"][b])
            ok = n >= max(min_count, 2)
            rows.append((name, x_name, edges[b], edges[b + 1], n,
                         *(float(stats[s][b]) if ok else np.nan for s in ("bias", "median", "rms", "half_p16_84")),
                         "ok" if ok else f"skipped (n={n} < {max(min_count, 2)})"))
    t = Table(rows=rows, names=("LABEL", "X", "BIN_LO", "BIN_HI", "N", "BIAS", "MEDIAN", "RMS",
                                "HALF_P16_84", "STATUS"),
              dtype=(str, str, float, float, np.int64, float, float, float, float, str))
    for col in ("BIAS", "MEDIAN", "RMS", "HALF_P16_84"):
        t[col] = np.ma.masked_invalid(t[col])
    return t


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
# worker machinery
# --------------------------------------------------------------------------------------

_FIELDS = ("labels", "errors", "chi2", "reduced_chi2", "n_pixels", "converged", "flags", "n_iter")


def _limit_threads(n_threads: int) -> None:
    """Cap BLAS/OpenMP (threadpoolctl when installed) and numba threads in this process."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(n_threads))
    except ImportError:  # env vars set before the worker started do the same job
        pass
    try:
        import numba

        numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    except ImportError:
        pass


def _worker_init(n_threads: int) -> None:
    _limit_threads(n_threads)
    logging.getLogger("bayescannon").setLevel(logging.WARNING)


def _load(arr):
    """An array given directly, or the path of a ``.npy`` file mapped read-only."""
    if isinstance(arr, str):
        return np.load(arr, mmap_mode="r")
    return arr


def _fit_and_infer(task: dict) -> dict:
    """Train on ``train`` rows, infer the ``test`` rows (or the separate test set)."""

    flux, ivar, labels = _load(task["flux"]), _load(task["ivar"]), _load(task["labels"])
    train = task["train"]
    model = CannonModel(**task["params"])
    model.fit(np.asarray(flux[train]), np.asarray(ivar[train]), np.asarray(labels[train]),
              wavelength=task["wavelength"])
    if task.get("test_flux") is not None:
        tf, ti = np.asarray(_load(task["test_flux"])), np.asarray(_load(task["test_ivar"]))
    else:
        test = task["test"]
        tf, ti = np.asarray(flux[test]), np.asarray(ivar[test])
    res = model.infer(tf, ti, wavelength=task["wavelength"], chunk_size=task.get("chunk_size", 2000))
    out = {name: res[name].values for name in _FIELDS}
    out["key"] = task["key"]
    return out


class _SharedArrays:
    """Write arrays once to ``.npy`` files in a private temporary folder."""

    def __init__(self, **arrays):
        self.dir = tempfile.mkdtemp(prefix="bayescannon-")
        self.paths = {}
        try:
            for name, arr in arrays.items():
                if arr is None:
                    self.paths[name] = None
                    continue
                path = os.path.join(self.dir, f"{name}.npy")
                np.save(path, np.ascontiguousarray(arr))
                self.paths[name] = path
        except BaseException:
            self.close()
            raise

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _resolve_n_jobs(n_jobs, n_tasks):
    cores = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        n_jobs = cores
    elif n_jobs < 0:
        n_jobs = max(1, cores + 1 + int(n_jobs))
    return max(1, min(int(n_jobs), n_tasks)), cores


def _run_tasks(tasks, arrays: dict, n_jobs, *, progressbar=False, desc="tasks"):
    """Run :func:`_fit_and_infer` on every task, in-process or in worker processes."""
    n_jobs, cores = _resolve_n_jobs(n_jobs, len(tasks))
    bar = None
    if progressbar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="model")
    results = []
    try:
        if n_jobs == 1:
            for task in tasks:
                results.append(_fit_and_infer({**task, **arrays}))
                if bar is not None:
                    bar.update()
            return results
        threads = max(1, cores // n_jobs)
        shared = _SharedArrays(**arrays)
        saved = {v: os.environ.get(v) for v in _THREAD_VARS}
        try:
            import multiprocessing

            # workers inherit the environment when they are spawned (at submit): cap
            # their threads before numpy / numba load in them
            os.environ.update({v: str(threads) for v in _THREAD_VARS})
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                futures = [pool.submit(_fit_and_infer, {**task, **shared.paths}) for task in tasks]
                for v, old in saved.items():
                    if old is None:
                        os.environ.pop(v, None)
                    else:
                        os.environ[v] = old
                saved = {}
                for fut in futures:
                    results.append(fut.result())
                    if bar is not None:
                        bar.update()
        finally:
            for v, old in saved.items():
                if old is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = old
            shared.close()
        return results
    finally:
        if bar is not None:
            bar.close()


def prepare_data(model, flux, ivar, labels, wavelength, ids):
    """Validated float arrays, label matrix, ids and model settings."""

    params = model_params(model)
    flux, ivar, ids, wavelength, ds = unpack_spectra(flux, ivar, ids, wavelength)
    if labels is None:
        if ds is None:
            raise InvalidInputError("labels are required when flux is an array")
        labels = ds
    flux, ivar = check_flux_ivar(flux, ivar, ids=ids, wavelength=wavelength)
    y = as_label_array(labels, params["label_names"], flux.shape[0])
    n = flux.shape[0]
    ids = default_ids(n) if ids is None else np.asarray(ids).astype(str)
    if ids.shape != (n,):
        raise ShapeMismatchError(f"ids have shape {ids.shape} but there are {n} spectra")
    if wavelength is not None:
        wavelength = np.asarray(wavelength, dtype=np.float64)
    return params, flux, ivar, y, ids, wavelength, ds


def n_model_terms(params) -> int:

    return PolynomialVectorizer(params["label_names"], params.get("order", 2)).n_terms


# --------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------


@dataclass
class CrossValidation:
    """Result of :func:`cross_validate`.

    Attributes
    ----------
    predictions : xarray.Dataset
        Per star: ``reference`` and ``inferred`` labels (star, label), ``errors``,
        ``fold``, ``snr`` (NaN when not given), ``chi2``, ``reduced_chi2``,
        ``n_pixels``, ``converged``, ``flags``.
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
    def good(self) -> np.ndarray:
        """Stars used in the statistics (finite labels, no excluded flag)."""
        flags = self.predictions["flags"].values
        fin = np.all(np.isfinite(self.predictions["inferred"].values), axis=1)
        return fin & ((flags & self.exclude_flags) == 0)

    @property
    def differences(self) -> np.ndarray:
        """Inferred − reference (N, K); NaN for stars left out of the statistics."""
        d = self.predictions["inferred"].values - self.predictions["reference"].values
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
                bins = e[first:last + 2]
            self._cache["by_snr"] = binned_statistics(snr, self.differences, bins, label_names=self.label_names,
                                                      x_name="SNR", min_count=self.min_per_bin)
        return self._cache["by_snr"]

    @property
    def by_label(self) -> Table:
        """Bias and scatter in bins of each reference label."""
        if "by_label" not in self._cache:
            self._cache["by_label"] = binned_statistics(
                self.predictions["reference"].values, self.differences, self.label_bins,
                label_names=self.label_names, x_name="REFERENCE", min_count=self.min_per_bin)
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
            t[f"CV_{name}"] = np.ma.masked_invalid(p["inferred"].values[:, k])
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
        tasks.append({"key": f, "params": params, "train": np.flatnonzero(folds != f),
                      "test": np.flatnonzero(folds == f), "wavelength": wavelength, "chunk_size": chunk_size})
    logger.info("cross-validating %s: %d stars, %d folds", params["label_names"], n, n_folds)
    results = _run_tasks(tasks, {"flux": flux, "ivar": ivar, "labels": y}, n_jobs,
                         progressbar=progressbar, desc="cross-validation folds")
    k = y.shape[1]
    out = {
        "labels": np.full((n, k), np.nan), "errors": np.full((n, k), np.nan),
        "chi2": np.full(n, np.nan), "reduced_chi2": np.full(n, np.nan),
        "n_pixels": np.zeros(n, np.int64), "converged": np.zeros(n, bool),
        "flags": np.zeros(n, np.int64), "n_iter": np.zeros(n, np.int64),
    }
    for res in results:
        rows = tasks[res["key"]]["test"]
        for name in _FIELDS:
            out[name][rows] = res[name]
    names = list(params["label_names"])
    pred = xr.Dataset(
        {
            "reference": (("star", "label_name"), y),
            "inferred": (("star", "label_name"), out["labels"]),
            "errors": (("star", "label_name"), out["errors"]),
            "fold": ("star", folds),
            "snr": ("star", snr),
            **{name: ("star", out[name]) for name in ("chi2", "reduced_chi2", "n_pixels", "converged", "flags",
                                                      "n_iter")},
        },
        coords={"star": ids, "label_name": names},
        attrs={"n_folds": int(n_folds), "fold_seed": str(random_state)},
    )
    return CrossValidation(pred, names, int(n_folds), random_state, snr_bins, label_bins, min_per_bin,
                           int(exclude_flags))


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------


@dataclass
class BootstrapResult:
    """Result of :func:`bootstrap`.

    Attributes
    ----------
    labels : xarray.DataArray
        Labels of the test stars from every bootstrap model, dims (boot, star, label).
    label_names : list of str
    """

    labels: xr.DataArray
    label_names: list

    @property
    def std(self) -> np.ndarray:
        """Per star and label: standard deviation over the bootstrap models — the label
        uncertainty due to the finite reference set (Ho+2017 §4.2)."""
        v = self.labels.values
        n_ok = np.isfinite(v).sum(axis=0)
        mean = np.nansum(v, axis=0) / np.maximum(n_ok, 1)
        var = np.nansum((v - mean) ** 2, axis=0) / np.maximum(n_ok - 1, 1)
        return np.where(n_ok >= 2, np.sqrt(var), np.nan)

    @property
    def summary(self) -> Table:
        """Per label: median and 16/84th percentiles of the per-star bootstrap σ."""
        s = self.std
        t = Table()
        t["LABEL"] = list(self.label_names)
        t["N_MODELS"] = np.full(len(self.label_names), self.labels.sizes["boot"])
        for q, name in ((50, "MEDIAN_SIGMA"), (16, "P16_SIGMA"), (84, "P84_SIGMA")):
            t[name] = [np.nanpercentile(col, q) if np.isfinite(col).any() else np.nan for col in s.T]
        return t

    def to_table(self, id_column: str = "ID") -> Table:
        """Per star: the bootstrap mean and σ of every label."""
        t = Table()
        t[id_column] = np.asarray(self.labels["star"].values).astype(str)
        mean = np.nanmean(self.labels.values, axis=0) if np.isfinite(self.labels.values).any() else None
        for k, name in enumerate(self.label_names):
            if mean is not None:
                t[f"BOOT_{name}"] = np.ma.masked_invalid(mean[:, k])
            t[f"e_BOOT_{name}"] = np.ma.masked_invalid(self.std[:, k])
        return t


def bootstrap(
    model,
    flux,
    ivar=None,
    labels=None,
    *,
    test_flux=None,
    test_ivar=None,
    test_ids=None,
    n_boot: int = 20,
    random_state=0,
    ids=None,
    wavelength=None,
    n_jobs: int | None = None,
    chunk_size: int = 2000,
    progressbar: bool = False,
) -> BootstrapResult:
    """Bootstrap of the reference set: ``n_boot`` models trained on resamples (with
    replacement) of the reference stars, each inferring the same test spectra.

    Parameters
    ----------
    model : CannonModel
        Settings (only its constructor arguments are used).
    flux, ivar, labels, ids, wavelength
        Reference set, as for :func:`cross_validate`.
    test_flux, test_ivar : ndarray (M, P) or xarray.Dataset, optional
        Spectra whose labels are inferred by every model (default: the reference
        spectra themselves).
    test_ids : array_like (M,), optional
    n_boot : int, default 20
        Number of models (Ho+2017 §4.2: 20).
    random_state : int or numpy.random.Generator
    n_jobs : int, optional
        As for :func:`cross_validate`.
    chunk_size : int
    progressbar : bool

    Returns
    -------
    BootstrapResult
    """

    params, flux, ivar, y, ids, wavelength, _ = prepare_data(model, flux, ivar, labels, wavelength, ids)
    if int(n_boot) != n_boot or n_boot < 2:
        raise InvalidInputError(f"n_boot must be an integer >= 2; got {n_boot!r}")
    n = flux.shape[0]
    t = n_model_terms(params)
    if n < t + 1:
        raise InsufficientDataError(f"{n} reference stars are too few for {t} model terms (need {t + 1})")
    if test_flux is None:
        tf, ti, tids = None, None, ids
    else:
        tf, ti, tids, _, _ = unpack_spectra(test_flux, test_ivar, test_ids, None)
        tf, ti = check_flux_ivar(tf, ti, ids=tids)
        if tf.shape[1] != flux.shape[1]:
            raise ShapeMismatchError(f"test spectra have {tf.shape[1]} pixels; reference spectra {flux.shape[1]}")
        tids = default_ids(tf.shape[0]) if tids is None else np.asarray(tids).astype(str)
    rng = np.random.default_rng(random_state)
    tasks = []
    for b in range(int(n_boot)):
        draw = np.sort(rng.integers(0, n, size=n))
        # a resample with too few distinct stars or a constant label is redrawn
        for _ in range(100):
            uniq = np.unique(draw)
            if uniq.size >= t + 1 and np.all(np.ptp(y[uniq], axis=0) > 0):
                break
            draw = np.sort(rng.integers(0, n, size=n))
        tasks.append({"key": b, "params": params, "train": draw, "test": np.arange(n), "wavelength": wavelength,
                      "chunk_size": chunk_size, "test_flux": None, "test_ivar": None})
    arrays = {"flux": flux, "ivar": ivar, "labels": y, "test_flux": tf, "test_ivar": ti}
    results = _run_tasks(tasks, arrays, n_jobs, progressbar=progressbar, desc="bootstrap models")
    stack = np.stack([r["labels"] for r in sorted(results, key=lambda r: r["key"])])
    names = list(params["label_names"])
    da = xr.DataArray(stack, dims=("boot", "star", "label_name"),
                      coords={"boot": np.arange(int(n_boot)), "star": tids, "label_name": names}, name="labels")
    return BootstrapResult(da, names)
