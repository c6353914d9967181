"""Survey-scale inference in chunks, written atomically to disk and resumable.

``infer_chunked`` runs :meth:`CannonModel.infer` on consecutive chunks of stars and
writes each chunk's result to ``<workdir>/chunk_<start>_<stop>.nc`` through a temporary
file that is moved into place only when complete. Re-running the same call skips the
chunks already on disk (after checking that they were made by the same model), so an
interrupted run of millions of spectra resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import InvalidInputError, ModelFileError

logger = logging.getLogger(__name__)

__all__ = ["infer_chunked"]


def _chunk_path(workdir: Path, a: int, b: int) -> Path:
    return workdir / f"chunk_{a:09d}_{b:09d}.nc"


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
        if path.exists():
            with xr.open_dataset(path, engine="h5netcdf") as old:
                same = old.attrs.get("model_training_hash") == model.training_hash_
            if same:
                skipped += 1
                continue
            raise ModelFileError(
                f"{path} was written by another model (training hash differs); use an empty workdir"
            )
        part = spectra.isel(star=slice(a, b)).load()
        res = model.infer(part, **infer_kwargs)
        fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".tmp_", suffix=".nc")
        os.close(fd)
        try:
            res.to_netcdf(tmp, engine="h5netcdf")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
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
