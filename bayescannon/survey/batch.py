"""Survey-scale inference in chunks, written atomically to disk and resumable.

``infer_chunked`` runs :meth:`CannonModel.infer` on consecutive chunks of stars and
writes each chunk's result to ``<workdir>/chunk_<start>_<stop>.nc`` following the one
chunk protocol of :mod:`bayescannon.pipeline.chunks`: each result is recorded with the
key of the chunk's spectra (a digest of their content), the model's training hash, the
infer options and the package version, and with its file's checksum. A rerun reuses
exactly the results whose key and checksum match; results of other spectra, another
model or other options, and truncated or corrupted files, are recomputed with a logged
warning, so an interrupted run of millions of spectra resumes where it stopped.

``infer_chunk_files`` does the same over the chunk files written by
:func:`bayescannon.preprocess.process_in_chunks` (``bayescannon preprocess``), reading one
chunk of spectra at a time.

Both go through :func:`infer_sources`, which takes any list of *chunk sources* (objects
with a unique ``.name`` and a ``.load()`` that returns a spectra container:
:class:`DatasetChunk`, :class:`FileChunk`, or a store's chunks) and an *executor*
(:mod:`bayescannon.pipeline.cluster`): in this process by default, or on a Dask cluster,
where the workers load and infer the chunks (the model is sent once per worker) and this
process writes each result as it arrives, with the same keys as a single-machine run.
A worker computes the key of its chunk and skips the inference when it equals the key
recorded for an intact result, so a rerun after a killed run resumes from the finished
chunks, on a cluster or not. Per-chunk timings, reuses and failures go to the run log
``runlog.jsonl`` of the work folder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.errors import InvalidInputError, ModelFileError
from bayescannon.io import read_spectra
from bayescannon.pipeline.chunks import ChunkStore, chunk_key
from bayescannon.pipeline.cluster import RUN_LOG, Executor, InProcessExecutor, RunLog
from bayescannon.preprocess import chunk_files
from bayescannon.preprocess.chunked import dataset_digest

logger = logging.getLogger(__name__)

__all__ = ["DatasetChunk", "FileChunk", "infer_chunk_files", "infer_chunked", "infer_sources"]


def _key(model, spectra: xr.Dataset, infer_kwargs: dict):
    return chunk_key(input=dataset_digest(spectra), model=model.training_hash_, infer=infer_kwargs)


def _write_result(store: ChunkStore, name: str, key, result: xr.Dataset) -> None:
    store.write(name, key, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))


def _read_result(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as f:
        return f.load()


@dataclass(frozen=True)
class DatasetChunk:
    """A chunk source: a slice of a spectra container (in memory, or lazily backed by a file
    that the workers can read)."""

    name: str
    data: xr.Dataset

    def load(self) -> xr.Dataset:
        """The chunk's spectra, in memory."""
        return self.data.load()


@dataclass(frozen=True)
class FileChunk:
    """A chunk source: a chunk file of ``bayescannon preprocess`` (any format
    :func:`bayescannon.io.read_spectra` reads), read where the task runs."""

    name: str
    path: Path

    def load(self) -> xr.Dataset:
        """The chunk's spectra, read from the file."""
        return read_spectra(self.path)


def _infer_task(task, model):
    """Worker side: load a chunk, key it, and infer it unless the key is the recorded one."""
    source, recorded, infer_kwargs = task
    spectra = source.load()
    key = _key(model, spectra, infer_kwargs)
    if recorded is not None and key == recorded:
        return key, None
    return key, model.infer(spectra, **infer_kwargs)


def infer_sources(
    model,
    sources: Sequence,
    workdir=None,
    *,
    executor: Executor | None = None,
    progressbar: bool = False,
    **infer_kwargs,
) -> xr.Dataset:
    """Infer labels chunk source by chunk source, in this process or on a cluster.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    sources : sequence
        Chunk sources: objects with a unique ``name`` (the result file's name in
        ``workdir``) and ``load()`` returning a spectra container
        (:class:`DatasetChunk`, :class:`FileChunk`).
    workdir : path, optional
        Folder of the per-chunk results (written atomically by this process) and of the
        run log; a rerun reuses the results of the same spectra, model and options.
        Default: results kept in memory only.
    executor : Executor, optional
        Where the chunks run (:mod:`bayescannon.pipeline.cluster`); default in this process.
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in source order.

    Raises
    ------
    InvalidInputError
        Two sources share a name.
    """
    sources = list(sources)
    names = [str(src.name) for src in sources]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(f"chunk sources must have unique names; repeated: {dup[:5]}")
    executor = InProcessExecutor() if executor is None else executor
    store = None if workdir is None else ChunkStore(workdir)
    with contextlib.nullcontext() if store is None else store.exclusive():
        recorded = dict.fromkeys(names)
        run_log = None
        if store is not None:
            store.set_order(names)
            recorded = {name: store.valid_key(name) for name in names}
            run_log = RunLog(store.folder / RUN_LOG)
            run_log.write("start", chunks=len(names), executor=type(executor).__name__)
        counts = {"computed": 0, "reused": 0}

        def on_result(i: int, item) -> None:
            key, result = item
            name = names[i]
            if result is None:
                counts["reused"] += 1
                if run_log is not None:
                    run_log.write("reused", chunk=name)
                return
            counts["computed"] += 1
            if store is None:
                return
            if recorded[name] is not None:
                logger.warning("%s: %s was made from other inputs or options; recomputing it", store.folder, name)
            _write_result(store, name, key, result)

        tasks = [(src, recorded[name], infer_kwargs) for src, name in zip(sources, names, strict=True)]
        results = executor.map_chunks(
            _infer_task,
            tasks,
            broadcast={"model": model},
            on_result=on_result,
            names=names,
            run_log=run_log,
            progressbar=progressbar,
            desc="inferring (chunks)",
            keep=store is None,
        )
        logger.info("%d chunk(s) computed, %d reused", counts["computed"], counts["reused"])
        if run_log is not None:
            run_log.write("end", **counts)
        if store is None:
            pieces = [result for _, result in results]
        else:
            pieces = [_read_result(store.path(name)) for name in names]
        return xr.concat(pieces, dim="star")


def infer_chunk_files(
    model, chunk_dir, workdir=None, *, executor: Executor | None = None, progressbar: bool = False, **infer_kwargs
) -> xr.Dataset:
    """Infer labels of preprocessed chunk files, one chunk of spectra in memory at a time.

    Parameters
    ----------
    model : CannonModel
        Fitted model (the chunks must be on its wavelength grid).
    chunk_dir : path
        Folder written by :func:`bayescannon.preprocess.process_in_chunks`.
    workdir : path, optional
        Folder for per-chunk results, written atomically; a rerun reuses the results of
        the same spectra, model and options and computes the rest. Default: results are
        kept in memory only.
    executor : Executor, optional
        Where the chunks run (default: this process); on Dask the workers read the chunk
        files (the folder must be on a file system they share).
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in chunk order.
    """
    files = chunk_files(chunk_dir)
    sources = [FileChunk(f"result_{f.stem}.nc", Path(f).resolve()) for f in files]
    out = infer_sources(model, sources, workdir, executor=executor, progressbar=progressbar, **infer_kwargs)
    logger.info("inferred %d chunk file(s) from %s", len(files), chunk_dir)
    return out


def infer_chunked(
    model,
    spectra: xr.Dataset,
    workdir=None,
    *,
    chunk_size: int = 5000,
    executor: Executor | None = None,
    progressbar: bool = False,
    **infer_kwargs,
) -> xr.Dataset:
    """Infer labels chunk by chunk with atomic, resumable on-disk results.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    spectra : xarray.Dataset
        Spectra container (may be lazily loaded, e.g. ``xr.open_dataset(..., chunks=...)``:
        only one chunk of stars is in memory at a time).
    workdir : path, optional
        Folder for the per-chunk results (created if needed). A rerun reuses the results
        of the same spectra, model and options (and recomputes the rest). None: results
        are kept in memory (e.g. a Dask run without a work folder).
    chunk_size : int
        Stars per chunk.
    executor : Executor, optional
        Where the chunks run (default: this process; :mod:`bayescannon.pipeline.cluster`).
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks concatenated along ``star`` (same layout as ``infer``).
    """
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be >= 1; got {chunk_size}")
    n = spectra.sizes["star"]
    sources = [
        DatasetChunk(f"chunk_{a:09d}_{min(a + chunk_size, n):09d}.nc", spectra.isel(star=slice(a, a + chunk_size)))
        for a in range(0, n, chunk_size)
    ]
    out = infer_sources(model, sources, workdir, executor=executor, progressbar=progressbar, **infer_kwargs)
    if not np.array_equal(out["star"].values.astype(str), np.asarray(spectra["star"].values).astype(str)):
        raise ModelFileError(f"chunks in {workdir} do not match the stars of these spectra")
    return out
