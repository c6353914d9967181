"""Worker machinery of the validation runs: fit a model on some rows and infer others,
in this process or in ``spawn`` worker processes that map the spectra read-only from
``.npy`` files and cap their BLAS/OpenMP/numba threads (see
:mod:`bayescannon.validate.crossval`, Parallelism).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InvalidInputError, ShapeMismatchError
from bayescannon.model import CannonModel
from bayescannon.spectra import as_label_array, check_flux_ivar, default_ids, unpack_spectra

logger = logging.getLogger(__name__)

__all__ = ["n_model_terms", "prepare_data", "run_tasks"]

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
# worker machinery
# --------------------------------------------------------------------------------------


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
    return {"key": task["key"], "result": res}


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


def run_tasks(tasks, arrays: dict, n_jobs, *, progressbar=False, desc="tasks"):
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

    if not isinstance(model, CannonModel):
        raise InvalidInputError(f"expected a CannonModel; got {type(model).__name__}")
    params = model.get_params(deep=False)
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
