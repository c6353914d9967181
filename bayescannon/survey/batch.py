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
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.errors import InvalidInputError, ModelFileError
from bayescannon.io import read_spectra
from bayescannon.pipeline.chunks import ChunkStore, chunk_key
from bayescannon.preprocess import chunk_files
from bayescannon.preprocess.chunked import dataset_digest

logger = logging.getLogger(__name__)

__all__ = ["infer_chunk_files", "infer_chunked"]


def _key(model, spectra: xr.Dataset, infer_kwargs: dict):
    return chunk_key(input=dataset_digest(spectra), model=model.training_hash_, infer=infer_kwargs)


def _write_result(store: ChunkStore, name: str, key, result: xr.Dataset) -> None:
    store.write(name, key, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))


def _read_result(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as f:
        return f.load()


def infer_chunk_files(model, chunk_dir, workdir=None, *, progressbar: bool = False, **infer_kwargs) -> xr.Dataset:
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
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in chunk order.
    """

    files = chunk_files(chunk_dir)
    store = None if workdir is None else ChunkStore(workdir)
    with contextlib.nullcontext() if store is None else store.exclusive():
        if store is not None:
            store.set_order([f"result_{f.stem}.nc" for f in files])
        iterator = files
        if progressbar:
            from tqdm.auto import tqdm

            iterator = tqdm(files, desc="inferring (chunk files)", unit="chunk")
        pieces = []
        for f in iterator:
            spectra = read_spectra(f)
            if store is None:
                pieces.append(model.infer(spectra, **infer_kwargs))
                continue
            name = f"result_{f.stem}.nc"
            key = _key(model, spectra, infer_kwargs)
            if store.is_valid(name, key):
                pieces.append(_read_result(store.path(name)))
                continue
            res = model.infer(spectra, **infer_kwargs)
            _write_result(store, name, key, res)
            pieces.append(res)
        logger.info("inferred %d chunk file(s) from %s", len(files), chunk_dir)
        return xr.concat(pieces, dim="star")


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
