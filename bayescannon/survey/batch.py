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
spectra at a time. Both are :func:`infer_sources` over :func:`chunk_sources`: a list of
:class:`ChunkSource` (a ``name`` and a picklable ``load()``), the form an executor (a
process pool, Dask) maps over. Per-chunk results go to ``result_<name>.nc`` files, or to a
:class:`~bayescannon.survey.stores.CatalogueStore` when the work folder ends in ``.zarr``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.errors import InvalidInputError, ModelFileError
from bayescannon.io import read_spectra
from bayescannon.io.zarrstore import SpectraStore, is_spectra_store
from bayescannon.pipeline.chunks import ChunkStore, chunk_key, dataset_digest
from bayescannon.preprocess import chunk_files
from bayescannon.survey.stores import CatalogueStore

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkSource",
    "chunk_sources",
    "infer_chunk_files",
    "infer_chunked",
    "infer_sources",
    "infer_store",
    "result_store",
]


def _key(model, spectra: xr.Dataset, infer_kwargs: dict):
    return chunk_key(input=dataset_digest(spectra), model=model.training_hash_, infer=infer_kwargs)


def _write_result(store: ChunkStore, name: str, key, result: xr.Dataset) -> None:
    store.write(name, key, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))


def _read_result(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as f:
        return f.load()


@dataclass(frozen=True)
class ChunkSource:
    """One chunk of spectra of a run: its ``name`` (the key of its result) and ``load()``,
    which reads its spectra (a picklable callable: sources travel to worker processes)."""

    name: str
    loader: Callable[[], xr.Dataset]

    def load(self) -> xr.Dataset:
        """The chunk's spectra container."""
        return self.loader()


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
    return [ChunkSource(f.stem, partial(read_spectra, f)) for f in chunk_files(source)]


class _NetcdfResults:
    """Per-chunk results as ``result_<name>.nc`` files of a :class:`ChunkStore` folder."""

    def __init__(self, folder):
        self.store = ChunkStore(folder)

    def exclusive(self):
        return self.store.exclusive()

    def set_order(self, names) -> None:
        self.store.set_order([f"result_{n}.nc" for n in names])

    def is_valid(self, name: str, key) -> bool:
        return self.store.is_valid(f"result_{name}.nc", key)

    def write(self, name: str, key, result: xr.Dataset) -> None:
        _write_result(self.store, f"result_{name}.nc", key, result)

    def read(self, name: str) -> xr.Dataset:
        return _read_result(self.store.path(f"result_{name}.nc"))


def result_store(workdir):
    """Where per-chunk results go: a :class:`~bayescannon.survey.stores.CatalogueStore` for a
    ``*.zarr`` folder, else ``result_<chunk>.nc`` files of a chunk folder; None for None."""
    if workdir is None:
        return None
    if os.fspath(workdir).rstrip("/").endswith(".zarr"):
        return CatalogueStore(workdir)
    return _NetcdfResults(workdir)


def infer_sources(model, sources, workdir=None, *, progressbar: bool = False, **infer_kwargs) -> xr.Dataset:
    """Infer labels chunk source by chunk source (one chunk of spectra in memory at a time).

    Parameters
    ----------
    model : CannonModel
        Fitted model (the spectra must be on its wavelength grid).
    sources : list of ChunkSource
        See :func:`chunk_sources`.
    workdir : path, optional
        Per-chunk results, written atomically (a ``*.zarr`` folder: a
        :class:`~bayescannon.survey.stores.CatalogueStore`; else ``.nc`` files); a rerun
        reuses the results of the same spectra, model and options and computes the rest.
        Default: results are kept in memory only.
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in order.
    """
    sources = list(sources)
    if not sources:
        raise InvalidInputError("no chunks of spectra to infer")
    results = result_store(workdir)
    with contextlib.nullcontext() if results is None else results.exclusive():
        if results is not None:
            results.set_order([s.name for s in sources])
        iterator = sources
        if progressbar:
            from tqdm.auto import tqdm  # lazy: optional progress bar

            iterator = tqdm(sources, desc="inferring (chunks)", unit="chunk")
        pieces, reused = [], 0
        for src in iterator:
            spectra = src.load()
            if results is None:
                pieces.append(model.infer(spectra, **infer_kwargs))
                continue
            key = _key(model, spectra, infer_kwargs)
            if results.is_valid(src.name, key):
                pieces.append(results.read(src.name))
                reused += 1
                continue
            res = model.infer(spectra, **infer_kwargs)
            results.write(src.name, key, res)
            pieces.append(res)
        logger.info("inferred %d chunk(s) (%d reused)", len(sources), reused)
        return xr.concat(pieces, dim="star")


def infer_chunk_files(model, chunk_dir, workdir=None, *, progressbar: bool = False, **infer_kwargs) -> xr.Dataset:
    """Infer labels of preprocessed chunk files, one chunk of spectra in memory at a time.

    Parameters
    ----------
    model : CannonModel
        Fitted model (the chunks must be on its wavelength grid).
    chunk_dir : path
        Folder written by :func:`bayescannon.preprocess.process_in_chunks`.
    workdir : path, optional
        Folder for per-chunk results, written atomically (see :func:`infer_sources`).
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in chunk order.
    """
    return infer_sources(model, chunk_sources(chunk_dir), workdir, progressbar=progressbar, **infer_kwargs)


def infer_store(
    model, store, workdir=None, *, chunk_size: int | None = None, progressbar: bool = False, **infer_kwargs
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
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
    """
    if not isinstance(store, SpectraStore):
        store = SpectraStore.open(store)
    return infer_sources(
        model, chunk_sources(store, chunk_size=chunk_size), workdir, progressbar=progressbar, **infer_kwargs
    )


def infer_chunked(
    model, spectra: xr.Dataset, workdir, *, chunk_size: int = 5000, progressbar: bool = False, **infer_kwargs
) -> xr.Dataset:
    """Infer labels chunk by chunk with atomic, resumable on-disk results.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    spectra : xarray.Dataset
        Spectra container (may be lazily loaded, e.g. ``xr.open_dataset(..., chunks=...)``:
        only one chunk of stars is in memory at a time).
    workdir : path
        Folder for the per-chunk results (created if needed). A rerun reuses the results
        of the same spectra, model and options (and recomputes the rest).
    chunk_size : int
        Stars per chunk.
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
    store = ChunkStore(workdir)
    with store.exclusive():
        n = spectra.sizes["star"]
        starts = list(range(0, n, chunk_size))
        names = [f"chunk_{a:09d}_{min(a + chunk_size, n):09d}.nc" for a in starts]
        store.set_order(names)
        iterator = starts
        if progressbar:
            from tqdm.auto import tqdm

            iterator = tqdm(starts, desc="inferring (chunks)", unit="chunk")
        done = skipped = 0
        for a, name in zip(iterator, names, strict=True):
            part = spectra.isel(star=slice(a, min(a + chunk_size, n))).load()
            key = _key(model, part, infer_kwargs)
            if store.is_valid(name, key):
                skipped += 1
                continue
            _write_result(store, name, key, model.infer(part, **infer_kwargs))
            done += 1
        logger.info("%d chunks computed, %d reused from %s", done, skipped, store.folder)
        out = xr.concat([_read_result(store.path(name)) for name in names], dim="star")
        if not np.array_equal(out["star"].values.astype(str), np.asarray(spectra["star"].values).astype(str)):
            raise ModelFileError(f"chunks in {workdir} do not match the stars of these spectra")
        return out
