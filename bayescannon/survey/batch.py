"""Survey-scale inference in chunks, written atomically to disk and resumable.

``infer_chunked`` runs :meth:`CannonModel.infer` on consecutive chunks of stars and
writes each chunk's result to ``<workdir>/chunk_<start>_<stop>.nc`` following the one
chunk protocol of :mod:`bayescannon.pipeline.chunks`: each result is recorded with the
key of the chunk's spectra (a digest of their content), the model's training hash, the
infer options and the package version, and with its file's checksum. A rerun reuses
exactly the results whose key and checksum match; results of other spectra, another
model or other options, and truncated or corrupted files, are recomputed with a logged
warning, so an interrupted run of millions of spectra resumes where it stopped.

``infer_chunk_files`` and ``infer_store`` do the same over the chunk files written by
:func:`bayescannon.preprocess.process_in_chunks` (``bayescannon preprocess``) and over a
zarr spectra store (:class:`~bayescannon.io.zarrstore.SpectraStore`), reading one chunk of
spectra at a time. All three are :func:`infer_sources` over a list of *chunk sources*
(objects with a unique ``name`` and a picklable ``load()`` that returns a spectra
container: :class:`ChunkSource` from :func:`chunk_sources`, :class:`DatasetChunk`).
Per-chunk results go to ``.nc`` files of a chunk folder, or to a
:class:`~bayescannon.survey.stores.CatalogueStore` when the work folder ends in ``.zarr``.

An *executor* (:mod:`bayescannon.pipeline.cluster`) runs the chunks: in this process by
default, or on a Dask cluster, where the workers load and infer the chunks (the model is
sent once per worker) and this process writes each result as it arrives, with the same
keys as a single-machine run. A worker computes the key of its chunk and skips the
inference when it equals the key recorded for an intact result, so a rerun after a killed
run resumes from the finished chunks, on a cluster or not. Per-chunk timings, reuses and
failures go to the run log ``runlog.jsonl`` of the work folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.errors import InvalidInputError, ModelFileError
from bayescannon.io import read_spectra
from bayescannon.io.zarrstore import SpectraStore, is_spectra_store
from bayescannon.pipeline.chunks import ChunkStore, chunk_key, dataset_digest
from bayescannon.pipeline.cluster import RUN_LOG, Executor, InProcessExecutor, RunLog
from bayescannon.preprocess import chunk_files
from bayescannon.survey.stores import CatalogueStore, _key_text

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkSource",
    "DatasetChunk",
    "chunk_sources",
    "infer_chunk_files",
    "infer_chunked",
    "infer_sources",
    "infer_store",
    "result_store",
]


def _key(model, spectra: xr.Dataset, infer_kwargs: dict):
    return chunk_key(input=dataset_digest(spectra), model=model.training_hash_, infer=infer_kwargs)


@dataclass(frozen=True)
class ChunkSource:
    """One chunk of spectra of a run: its ``name`` (the key of its result) and ``load()``,
    which reads its spectra (a picklable callable: sources travel to worker processes)."""

    name: str
    loader: Callable[[], xr.Dataset]

    def load(self) -> xr.Dataset:
        """The chunk's spectra container."""
        return self.loader()


@dataclass(frozen=True)
class DatasetChunk:
    """A chunk source: a slice of a spectra container (in memory, or lazily backed by a file
    that the workers can read)."""

    name: str
    data: xr.Dataset

    def load(self) -> xr.Dataset:
        """The chunk's spectra, in memory."""
        return self.data.load()


def _store_slice(path: str, start: int, stop: int) -> xr.Dataset:
    return SpectraStore.open(path).read(start, stop)


def chunk_sources(source, *, chunk_size: int | None = None) -> list[ChunkSource]:
    """The chunks of spectra of a run, in order, each read only when loaded.

    Parameters
    ----------
    source : path or SpectraStore
        A chunk folder of :func:`bayescannon.preprocess.process_in_chunks` (one source per
        chunk file, named by its stem), or a spectra store (``*.zarr``; one source per zarr
        chunk, or per ``chunk_size`` stars, named ``stars_<start>_<stop>``).
    chunk_size : int, optional
        Stars per source of a store (default: the store's zarr chunks).

    Returns
    -------
    list of ChunkSource
    """
    if isinstance(source, SpectraStore) or is_spectra_store(source):
        store = source if isinstance(source, SpectraStore) else SpectraStore.open(source)
        if chunk_size is None:
            bounds = store.chunk_bounds()
        elif int(chunk_size) < 1:
            raise InvalidInputError(f"chunk_size must be >= 1; got {chunk_size}")
        else:
            n, c = store.n_stars, int(chunk_size)
            bounds = [(a, min(a + c, n)) for a in range(0, n, c)]
        path = os.fspath(store.path.resolve())
        return [ChunkSource(f"stars_{a:09d}_{b:09d}", partial(_store_slice, path, a, b)) for a, b in bounds]
    return [ChunkSource(f.stem, partial(read_spectra, Path(f).resolve())) for f in chunk_files(source)]


class _NetcdfResults:
    """Per-chunk results as ``.nc`` files of a :class:`ChunkStore` folder (``pattern``
    turns a chunk name into its file name)."""

    def __init__(self, folder, pattern: str = "result_{}.nc"):
        self.store = ChunkStore(folder)
        self.folder = self.store.folder
        self.pattern = pattern

    def _file(self, name: str) -> str:
        return self.pattern.format(name)

    def exclusive(self):
        return self.store.exclusive()

    def set_order(self, names) -> None:
        self.store.set_order([self._file(n) for n in names])

    def valid_key(self, name: str) -> str | None:
        key = self.store.valid_key(self._file(name))
        return None if key is None else _key_text(key)

    def write(self, name: str, key, result: xr.Dataset) -> None:
        self.store.write(self._file(name), key, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))

    def read(self, name: str) -> xr.Dataset:
        with xr.open_dataset(self.store.path(self._file(name)), engine="h5netcdf") as f:
            return f.load()


def result_store(workdir, *, pattern: str = "result_{}.nc"):
    """Where per-chunk results go: a :class:`~bayescannon.survey.stores.CatalogueStore` for a
    ``*.zarr`` folder, else ``.nc`` files (named by ``pattern``) of a chunk folder; None for None."""
    if workdir is None:
        return None
    if os.fspath(workdir).rstrip("/").endswith(".zarr"):
        return CatalogueStore(workdir)
    return _NetcdfResults(workdir, pattern)


def _infer_task(task, model):
    """Worker side: load a chunk, key it, and infer it unless the key is the recorded one."""
    source, recorded, infer_kwargs, keyed = task
    spectra = source.load()
    if not keyed:  # results kept in memory only: no key to record (the digest reads every byte)
        return None, model.infer(spectra, **infer_kwargs)
    key = _key(model, spectra, infer_kwargs)
    if recorded is not None and _key_text(key) == recorded:
        return key, None
    return key, model.infer(spectra, **infer_kwargs)


def infer_sources(
    model,
    sources: Sequence,
    workdir=None,
    *,
    executor: Executor | None = None,
    progressbar: bool = False,
    result_names: str = "result_{}.nc",
    **infer_kwargs,
) -> xr.Dataset:
    """Infer labels chunk source by chunk source, in this process or on a cluster.

    Parameters
    ----------
    model : CannonModel
        Fitted model (the spectra must be on its wavelength grid).
    sources : sequence
        Chunk sources: objects with a unique ``name`` and ``load()`` returning a spectra
        container (:class:`ChunkSource`, :class:`DatasetChunk`; see :func:`chunk_sources`).
    workdir : path, optional
        Per-chunk results, written atomically by this process (a ``*.zarr`` folder: a
        :class:`~bayescannon.survey.stores.CatalogueStore`; else ``.nc`` files), and the
        run log; a rerun reuses the results of the same spectra, model and options and
        computes the rest. Default: results are kept in memory only.
    executor : Executor, optional
        Where the chunks run (:mod:`bayescannon.pipeline.cluster`); default in this process.
    progressbar : bool
    result_names : str
        File name of a chunk's result in a chunk folder (``{}``: the chunk's name).
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in source order.

    Raises
    ------
    InvalidInputError
        No sources, or two sources share a name.
    """
    sources = list(sources)
    if not sources:
        raise InvalidInputError("no chunks of spectra to infer")
    names = [str(src.name) for src in sources]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(f"chunk sources must have unique names; repeated: {dup[:5]}")
    executor = InProcessExecutor() if executor is None else executor
    results = result_store(workdir, pattern=result_names)
    with contextlib.nullcontext() if results is None else results.exclusive():
        recorded = dict.fromkeys(names)
        run_log = None
        if results is not None:
            results.set_order(names)
            recorded = {name: results.valid_key(name) for name in names}
            run_log = RunLog(Path(workdir) / RUN_LOG)
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
            if results is None:
                return
            if recorded[name] is not None:
                logger.warning("%s: %s was made from other inputs or options; recomputing it", workdir, name)
            results.write(name, key, result)

        tasks = [
            (src, recorded[name], infer_kwargs, results is not None) for src, name in zip(sources, names, strict=True)
        ]
        out = executor.map_chunks(
            _infer_task,
            tasks,
            broadcast={"model": model},
            on_result=on_result,
            names=names,
            run_log=run_log,
            progressbar=progressbar,
            desc="inferring (chunks)",
            keep=results is None,
        )
        logger.info("%d chunk(s) computed, %d reused", counts["computed"], counts["reused"])
        if run_log is not None:
            run_log.write("end", **counts)
        pieces = [result for _, result in out] if results is None else [results.read(name) for name in names]
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
        Folder for per-chunk results, written atomically (see :func:`infer_sources`).
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
    return infer_sources(
        model, chunk_sources(chunk_dir), workdir, executor=executor, progressbar=progressbar, **infer_kwargs
    )


def infer_store(
    model,
    store,
    workdir=None,
    *,
    chunk_size: int | None = None,
    executor: Executor | None = None,
    progressbar: bool = False,
    **infer_kwargs,
) -> xr.Dataset:
    """Infer labels of a spectra store, one zarr chunk (or ``chunk_size`` stars) at a time.

    Parameters
    ----------
    model : CannonModel
        Fitted model (the store must be on its wavelength grid).
    store : path or SpectraStore
        A :class:`~bayescannon.io.zarrstore.SpectraStore`.
    workdir : path, optional
        Per-chunk results, written atomically and resumed (see :func:`infer_sources`).
    chunk_size : int, optional
        Stars read at a time (default: the store's zarr chunks).
    executor : Executor, optional
        Where the chunks run (default: this process); on Dask the workers read the store
        (it must be on a file system they share).
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
    """
    if not isinstance(store, SpectraStore):
        store = SpectraStore.open(store)
    sources = chunk_sources(store, chunk_size=chunk_size)
    return infer_sources(model, sources, workdir, executor=executor, progressbar=progressbar, **infer_kwargs)


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
        DatasetChunk(f"chunk_{a:09d}_{min(a + chunk_size, n):09d}", spectra.isel(star=slice(a, a + chunk_size)))
        for a in range(0, n, chunk_size)
    ]
    out = infer_sources(
        model,
        sources,
        workdir,
        executor=executor,
        progressbar=progressbar,
        result_names="{}.nc",
        **infer_kwargs,
    )
    if not np.array_equal(out["star"].values.astype(str), np.asarray(spectra["star"].values).astype(str)):
        raise ModelFileError(f"chunks in {workdir} do not match the stars of these spectra")
    return out
