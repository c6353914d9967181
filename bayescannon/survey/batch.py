"""Survey-scale inference in chunks, written atomically to disk and resumable.

``infer_chunked`` runs :meth:`CannonModel.infer` on consecutive chunks of stars and
writes each chunk's result to ``<workdir>/chunk_<start>_<stop>.nc`` through a temporary
file that is moved into place only when complete. Re-running the same call skips the
chunks already on disk (after checking that they were made by the same model), so an
interrupted run of millions of spectra resumes where it stopped.

``infer_chunk_files`` does the same over the chunk files written by
:func:`bayescannon.preprocess.process_in_chunks` (``bayescannon preprocess``), reading one
chunk of spectra at a time.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.errors import InvalidInputError, ModelFileError
from bayescannon.io import read_spectra
from bayescannon.preprocess import chunk_files

logger = logging.getLogger(__name__)

__all__ = ["infer_chunk_files", "infer_chunked"]


def _chunk_path(workdir: Path, a: int, b: int) -> Path:
    return workdir / f"chunk_{a:09d}_{b:09d}.nc"


def _write_atomic(result: xr.Dataset, path: Path) -> None:
    """Write through a temporary file in the same folder, moved into place when complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".nc")
    os.close(fd)
    try:
        result.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reusable(path: Path, model) -> bool:
    """True if ``path`` holds a finished result of this model; error if of another model."""
    if not path.exists():
        return False
    with xr.open_dataset(path, engine="h5netcdf") as old:
        same = old.attrs.get("model_training_hash") == model.training_hash_
    if not same:
        raise ModelFileError(f"{path} was written by another model (training hash differs); use an empty workdir")
    return True


def infer_chunk_files(model, chunk_dir, workdir=None, *, progressbar: bool = False, **infer_kwargs) -> xr.Dataset:
    """Infer labels of preprocessed chunk files, one chunk of spectra in memory at a time.

    Parameters
    ----------
    model : CannonModel
        Fitted model (the chunks must be on its wavelength grid).
    chunk_dir : path
        Folder written by :func:`bayescannon.preprocess.process_in_chunks`.
    workdir : path, optional
        Folder for per-chunk results, written atomically; a re-run reuses them (same
        model only) and computes the rest. Default: results are kept in memory only.
    progressbar : bool
    **infer_kwargs
        Passed to :meth:`CannonModel.infer`.

    Returns
    -------
    xarray.Dataset
        All chunks' results concatenated along ``star``, in chunk order.
    """

    files = chunk_files(chunk_dir)
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    iterator = files
    if progressbar:
        from tqdm.auto import tqdm

        iterator = tqdm(files, desc="inferring (chunk files)", unit="chunk")
    pieces = []
    for f in iterator:
        out = None if workdir is None else workdir / f"result_{f.stem}.nc"
        if out is not None and _reusable(out, model):
            with xr.open_dataset(out, engine="h5netcdf") as old:
                pieces.append(old.load())
            continue
        res = model.infer(read_spectra(f), **infer_kwargs)
        if out is not None:
            _write_atomic(res, out)
        pieces.append(res)
    logger.info("inferred %d chunk file(s) from %s", len(files), chunk_dir)
    return xr.concat(pieces, dim="star")


def infer_chunked(model, spectra: xr.Dataset, workdir, *, chunk_size: int = 5000,
                  progressbar: bool = False, **infer_kwargs) -> xr.Dataset:
    """Infer labels chunk by chunk with atomic, resumable on-disk results.

    Parameters
    ----------
    model : CannonModel
        Fitted model.
    spectra : xarray.Dataset
        Spectra container (may be lazily loaded, e.g. ``xr.open_dataset(..., chunks=...)``:
        only one chunk of stars is in memory at a time).
    workdir : path
        Folder for the per-chunk results (created if needed).
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
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n = spectra.sizes["star"]
    starts = list(range(0, n, chunk_size))
    iterator = starts
    if progressbar:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc="inferring (chunks)", unit="chunk")
    done = skipped = 0
    for a in iterator:
        b = min(a + chunk_size, n)
        path = _chunk_path(workdir, a, b)
        if _reusable(path, model):
            skipped += 1
            continue
        part = spectra.isel(star=slice(a, b)).load()
        _write_atomic(model.infer(part, **infer_kwargs), path)
        done += 1
    logger.info("%d chunks computed, %d reused from %s", done, skipped, workdir)
    parts = [_chunk_path(workdir, a, min(a + chunk_size, n)) for a in starts]
    pieces = []
    for p in parts:
        with xr.open_dataset(p, engine="h5netcdf") as f:
            pieces.append(f.load())
    out = xr.concat(pieces, dim="star")
    if not np.array_equal(out["star"].values.astype(str), np.asarray(spectra["star"].values).astype(str)):
        raise ModelFileError(f"chunks in {workdir} do not match the stars of these spectra")
    return out
