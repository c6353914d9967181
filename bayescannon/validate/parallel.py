"""Worker machinery of the validation runs: fit a model on some rows and infer others,
in this process or in ``spawn`` worker processes that map the spectra read-only from
``.npy`` files and cap their BLAS/OpenMP/numba threads (see
:mod:`bayescannon.validate.crossval`, Parallelism).
"""

from __future__ import annotations

import logging

import numpy as np

from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InvalidInputError, ShapeMismatchError
from bayescannon.model import CannonModel
from bayescannon.pipeline.cluster import Executor
from bayescannon.pipeline.pool import SharedArrays, load_shared, resolve_n_jobs
from bayescannon.pipeline.pool import run_tasks as pool_run_tasks
from bayescannon.spectra import as_label_array, check_flux_ivar, default_ids, unpack_spectra

logger = logging.getLogger(__name__)

__all__ = ["n_model_terms", "prepare_data", "run_tasks"]


def _fit_and_infer(task: dict) -> dict:
    """Train on ``train`` rows, infer the ``test`` rows (or the separate test set)."""

    flux, ivar, labels = load_shared(task["flux"]), load_shared(task["ivar"]), load_shared(task["labels"])
    train = task["train"]
    model = CannonModel(**task["params"])
    model.fit(
        np.asarray(flux[train]), np.asarray(ivar[train]), np.asarray(labels[train]), wavelength=task["wavelength"]
    )
    if task.get("test_flux") is not None:
        tf, ti = np.asarray(load_shared(task["test_flux"])), np.asarray(load_shared(task["test_ivar"]))
    else:
        test = task["test"]
        tf, ti = np.asarray(flux[test]), np.asarray(ivar[test])
    res = model.infer(tf, ti, wavelength=task["wavelength"], chunk_size=task.get("chunk_size", 2000))
    return {"key": task["key"], "result": res}


def _fit_and_infer_shared(task: dict, arrays: dict) -> dict:
    """:func:`_fit_and_infer` with the spectra sent once per worker (a Dask broadcast)."""
    return _fit_and_infer({**task, **arrays})


def run_tasks(tasks, arrays: dict, n_jobs, *, progressbar=False, desc="tasks", executor: Executor | None = None):
    """Run :func:`_fit_and_infer` on every task, in-process or in worker processes
    (:func:`bayescannon.pipeline.pool.run_tasks`; the spectra are shared read-only through
    ``.npy`` files, each worker gets ``cores // workers`` BLAS/numba threads), or as tasks
    of a distributed ``executor`` (:class:`bayescannon.pipeline.cluster.DaskExecutor`: the
    spectra are sent once to every worker; ``n_jobs`` is then not used)."""
    if executor is not None and executor.distributed:
        return executor.map_chunks(
            _fit_and_infer_shared,
            tasks,
            broadcast={"arrays": arrays},
            names=[f"{desc.split()[0]}-{t['key']}" for t in tasks],
            progressbar=progressbar,
            desc=desc,
        )
    bar = None
    if progressbar:
        from tqdm.auto import tqdm  # lazy: optional progress bar

        bar = tqdm(total=len(tasks), desc=desc, unit="model")
    update = None if bar is None else (lambda _: bar.update())
    try:
        if resolve_n_jobs(n_jobs, len(tasks))[0] == 1:
            return pool_run_tasks(_fit_and_infer, [{**t, **arrays} for t in tasks], 1, on_result=update)
        with SharedArrays(**arrays) as shared:
            return pool_run_tasks(
                _fit_and_infer,
                [{**t, **shared.paths} for t in tasks],
                n_jobs,
                threads_per_worker=None,
                quiet_workers=True,
                on_result=update,
            )
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
