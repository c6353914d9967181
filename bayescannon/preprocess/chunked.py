"""Survey-scale preprocessing: read → steps → write, chunk by chunk, atomically,
resumable, in bounded memory, optionally over worker processes.

The chunk folder follows the one resumable chunk protocol of
:mod:`bayescannon.pipeline.chunks`: each chunk is recorded with the key of its input
(star data, container file or survey files), the steps with their argument values, the
chunk format, the reader and its options and the package version, and with its file's
checksum; a rerun reuses exactly the chunks whose key and checksum still match.

Real folders are messy, and in skip mode (``on_error="skip"``) nothing in one file stops
the run:

* **Grids.** A chunk whose files are not all on one wavelength grid (another extent, or
  the same pixels up to rounding) is read again file by file, the files grouped by
  their exact grid and every group taken through the steps on its own grid (so each
  spectrum is resampled from its own pixels, whatever the others are). A group the steps
  cannot take (e.g. a grid that does not overlap the target grid) is skipped and each of
  its files reported with the reason.
* **Duplicate ids.** After every chunk is done the star ids are checked across the whole
  run: of the stars that share an id, the first in input order (chunk order, then row
  order) is kept and every later one is removed from its chunk and reported in the
  skipped table (error ``DuplicateIdError``) naming the chunk that keeps the id. A chunk
  that had duplicates removed is recomputed whenever any other chunk is, so the rule
  is applied to fresh content.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.table import Table

from bayescannon.errors import GridMismatchError, InvalidInputError, SurveyFormatError
from bayescannon.io import detect_format, read_many, read_spectra, write_spectra
from bayescannon.io.container import decode_container
from bayescannon.pipeline.chunks import (
    MANIFEST,
    ChunkStore,
    chunk_key,
    dataset_digest,
    describe,
    digest_of,
    file_checksum,
    write_chunk,
)
from bayescannon.pipeline.cluster import RUN_LOG, Executor, InProcessExecutor, RunLog
from bayescannon.spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = ["chunk_files", "dataset_digest", "process_in_chunks", "read_chunks"]

_EXT = {"nc": "nc", "npz": "npz", "bayescannon": "fits"}
_DUPLICATES = "duplicates"


def _step_callable(step) -> tuple[Callable, dict]:
    if callable(step):
        return step, {}
    if isinstance(step, (tuple, list)) and len(step) == 2 and callable(step[0]):
        return step[0], dict(step[1] or {})
    raise InvalidInputError(f"each step must be a callable or a (callable, kwargs) pair; got {step!r}")


def _file_identity(path) -> list:
    """Resolved path, size and modification time of a survey file (its key)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return [os.fspath(p), None, None]
    return [os.fspath(p), st.st_size, st.st_mtime_ns]


class _ContainerFileSource:
    """Star slices of a container file (``.nc`` read lazily: bounded memory)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        fmt = detect_format(self.path)
        if fmt not in ("nc", "npz", "bayescannon"):
            raise InvalidInputError(
                f"{self.path}: a single source file must be a container (.nc, .npz, FITS "
                "table); give a list of paths for survey files"
            )
        self._lazy = fmt == "nc"
        self._ds = xr.open_dataset(self.path, engine="h5netcdf") if self._lazy else read_spectra(self.path)
        self.n = self._ds.sizes["star"]

    def chunk(self, start: int, stop: int) -> xr.Dataset:
        sub = self._ds.isel(star=slice(start, stop))
        if self._lazy:
            sub = decode_container(sub.load())
        return check_spectra(sub.copy(deep=True))

    def close(self) -> None:
        if self._lazy:
            self._ds.close()


def _skip_rows(skipped) -> list:
    return [[str(v) for v in r] for r in skipped.iterrows()] if skipped is not None and len(skipped) else []


def _read_files(job: dict) -> tuple[list, list]:
    """Groups ``[(container, paths)]`` of one chunk of survey files, and the skipped rows.

    One group when the reader combines the files; otherwise (skip mode, files on grids
    that cannot be combined) one group per exact grid, files in input order.
    """
    reader = job["reader"] or read_many
    paths, on_error, kw = job["paths"], job["on_error"], job["reader_kwargs"]
    try:
        ds, skipped = reader(paths, on_error=on_error, return_skipped=True, **kw)
        return [(ds, paths)], _skip_rows(skipped)
    except GridMismatchError as exc:
        if on_error == "raise":
            raise
        logger.warning("%s; reading this chunk's %d file(s) grid by grid", exc, len(paths))
    except InvalidInputError as exc:
        if on_error == "raise" or "no spectra to combine" not in str(exc):
            raise
        return [], _skip_rows(getattr(exc, "skipped", None))  # every file of the chunk failed
    rows: list = []
    by_grid: dict[bytes, list] = {}
    for path in paths:  # the files themselves: one read each, whatever the layout
        try:
            one = reader([path], on_error="raise", **kw)
        except (SurveyFormatError, InvalidInputError) as exc:
            rows.append([os.fspath(path), type(exc).__name__, str(exc)])
            continue
        by_grid.setdefault(np.asarray(one["wavelength"].values, np.float64).tobytes(), []).append(path)
    groups = []
    for group in by_grid.values():
        ds, skipped = reader(group, on_error="skip", return_skipped=True, **kw)
        groups.append((ds, group))
        rows += _skip_rows(skipped)
    return groups, rows


def _apply_steps(ds: xr.Dataset, steps) -> xr.Dataset:
    for step in steps:
        fn, kw = _step_callable(step)
        ds = fn(ds, **kw)
        if not isinstance(ds, xr.Dataset):
            raise InvalidInputError(f"step {describe(step)} returned {type(ds).__name__}, not a spectra container")
    return ds


def _combine_groups(done: list, rows: list, paths: list) -> xr.Dataset | None:
    """Concatenate processed groups ``[(container, group_paths)]``, groups in the input order
    of their first file; groups that the steps left on another grid than the largest group
    are skipped and their files added to ``rows``."""
    if not done:
        return None
    if len(done) == 1:
        return done[0][0]
    ref = max(done, key=lambda g: g[0].sizes["star"])[0]["wavelength"].values
    position = {os.fspath(p): i for i, p in enumerate(paths)}
    kept = []
    for ds, group in done:
        wl = ds["wavelength"].values
        if wl.shape == ref.shape and np.array_equal(wl, ref):
            kept.append((min(position[os.fspath(p)] for p in group), ds))
            continue
        reason = "the steps left these spectra on another wavelength grid than the rest of the chunk"
        rows += [[os.fspath(p), "GridMismatchError", reason] for p in group]
    kept.sort(key=lambda item: item[0])
    out = xr.concat(
        [ds for _, ds in kept],
        dim="star",
        data_vars="all",
        coords="different",
        compat="equals",
        join="exact",
        combine_attrs="drop_conflicts",
    )
    ids = out["star"].values.astype(str)
    _, first = np.unique(ids, return_index=True)
    if first.size < ids.size:  # groups read apart can repeat an id: the first is kept
        drop = np.setdiff1d(np.arange(ids.size), first)
        rows += [[str(ids[r]), "DuplicateIdError", f"star id {str(ids[r])!r} read twice in one chunk"] for r in drop]
        out = out.isel(star=np.sort(first))
    return out


def _run_chunk(job: dict) -> tuple[int, str | None, list]:
    """Read → steps → write one chunk; returns (index, checksum or None, skipped rows)."""
    skipped_rows: list = []
    if "dataset" in job:
        groups = [(job["dataset"], [])]
    elif "file" in job:
        src = _ContainerFileSource(job["file"])
        try:
            groups = [(src.chunk(job["start"], job["stop"]), [])]
        finally:
            src.close()
    else:
        groups, skipped_rows = _read_files(job)
    done = []
    for ds, paths in groups:
        if ds.sizes.get("star", 0) == 0:
            continue
        try:
            done.append((_apply_steps(ds, job["steps"]), paths))
        except InvalidInputError as exc:  # typed errors only: a bug in a step still stops the run
            if not paths or job.get("on_error") != "skip":
                raise
            skipped_rows += [[os.fspath(p), type(exc).__name__, str(exc)] for p in paths]
    ds = _combine_groups(done, skipped_rows, job.get("paths", []))
    if ds is None or ds.sizes.get("star", 0) == 0:
        return job["index"], None, skipped_rows
    fmt = job["format"]
    checksum = write_chunk(job["path"], lambda tmp: write_spectra(ds, tmp, format=fmt, overwrite=True))
    return job["index"], checksum, skipped_rows


def process_in_chunks(
    source,
    steps: Sequence,
    chunk_size: int,
    out_path,
    *,
    format: str = "nc",
    reader: Callable | None = None,
    reader_kwargs: dict | None = None,
    on_error: str = "skip",
    n_jobs: int = 1,
    progressbar: bool = False,
    return_skipped: bool = False,
    options: dict | None = None,
    executor: Executor | None = None,
):
    """Read → apply ``steps`` → write, one chunk of stars at a time.

    Each chunk is written atomically and recorded in the folder's manifest with the key
    of what made it (its input, the steps with their argument values, the format, the
    reader and its options, the package version) and its checksum
    (:mod:`bayescannon.pipeline.chunks`). Calling again resumes: chunks whose key and
    checksum match are kept; chunks made from other inputs or options, and truncated or
    corrupted chunk files, are recomputed (with a logged warning). Memory holds one chunk
    per worker (for a container source this needs a ``.nc`` file, which is read lazily).

    Parameters
    ----------
    source : xarray.Dataset, path of a container file, or sequence of survey files
        Survey files are read with ``reader(paths, on_error=, return_skipped=True,
        **reader_kwargs)`` (default :func:`bayescannon.io.read_many`) and keyed by path,
        size and modification time; a container is keyed by its content.
    steps : sequence of callable or (callable, kwargs)
        Container → container functions, applied in order (use
        :func:`functools.partial` or pairs to bind arguments).
    chunk_size : int
        Stars (or files) per chunk.
    out_path : str or path-like
        Output folder; chunk files ``chunk_000000.<ext>`` and the manifest ``chunks.json``.
    format : {"nc", "npz", "bayescannon"}
        Chunk file format.
    reader : callable, optional
    reader_kwargs : dict, optional
        E.g. ``{"grid": "common"}`` for LAMOST files of different lengths, or
        ``{"resample_to": grid}``; a chunk whose files are on different grids raises
        :class:`~bayescannon.errors.GridMismatchError` otherwise.
    on_error : {"skip", "raise"}
        For survey files: unreadable files are recorded (see ``return_skipped``) and
        logged instead of stopping the run.
    n_jobs : int
        Worker processes (each reads, processes and writes whole chunks, with one BLAS
        and one numba thread; :func:`bayescannon.pipeline.pool.run_tasks`). Workers are
        spawned: ``steps`` and ``reader`` must be picklable (module-level functions or
        :func:`functools.partial` of them, not lambdas), and a script must call this
        under ``if __name__ == "__main__":``.
    progressbar : bool
    return_skipped : bool
        Also return an astropy Table (``path``, ``error``, ``reason``) of the files skipped
        and of the stars removed as duplicates of an id kept earlier (see the module).
    options : dict, optional
        The run's option values (e.g. a command line's: ``{"--L": 50.0, ...}``), recorded
        in the manifest. Chunks keyed on other steps are recomputed, but a folder made
        with other *option values* is refused (the choice made here: a user who changes
        ``--L`` on a folder half done most likely reused the folder by mistake, and
        recomputing it silently would destroy the old run).
    executor : Executor, optional
        Where the chunks run (:mod:`bayescannon.pipeline.cluster`): default ``n_jobs``
        local processes; on Dask each worker reads, processes and writes whole chunks
        (atomically, into ``out_path``, which must be on a file system they share) and this
        process records them in the manifest as they finish. Per-chunk timings and
        failures go to ``runlog.jsonl`` in ``out_path``.

    Returns
    -------
    list of pathlib.Path or (list of pathlib.Path, astropy.table.Table)
        Chunk files in order (chunks where no spectrum could be read have none).

    Raises
    ------
    InvalidInputError
        Bad arguments, or ``options`` whose values differ from those recorded in the
        folder (the message names each option with both values).
    """
    if int(chunk_size) < 1:
        raise InvalidInputError(f"chunk_size must be >= 1; got {chunk_size}")
    if format not in _EXT:
        raise InvalidInputError(f"format must be 'nc', 'npz' or 'bayescannon'; got {format!r}")
    if on_error not in ("skip", "raise"):
        raise InvalidInputError(f"on_error must be 'skip' or 'raise'; got {on_error!r}")
    steps = list(steps)
    for s in steps:
        _step_callable(s)
    chunk_size = int(chunk_size)
    store = ChunkStore(out_path)
    with store.exclusive():
        if options is not None:
            store.check_options({**options, "chunk_size": chunk_size, "format": format})
        options = {"steps": steps, "format": format}
        file_digest = None
        paths = None
        if isinstance(source, xr.Dataset):
            check_spectra(source)
            n = source.sizes["star"]
        elif isinstance(source, (str, os.PathLike)):
            src = _ContainerFileSource(source)
            n = src.n
            src.close()
            file_digest = file_checksum(source)
        else:
            paths = [os.fspath(p) for p in source]
            n = len(paths)
            options.update(reader=reader, reader_kwargs=dict(reader_kwargs or {}), on_error=on_error)
        n_chunks = (n + chunk_size - 1) // chunk_size
        names = [f"chunk_{i:06d}.{_EXT[format]}" for i in range(n_chunks)]
        store.set_order(names)

        jobs, reusable, keys = [], [], {}
        for i, name in enumerate(names):
            start, stop = i * chunk_size, min(n, (i + 1) * chunk_size)
            job = {"index": i, "path": os.fspath(store.path(name)), "steps": steps, "format": format}
            if isinstance(source, xr.Dataset):
                job["dataset"] = source.isel(star=slice(start, stop))
                digest = dataset_digest(job["dataset"])
            elif file_digest is not None:
                job.update(file=os.fspath(source), start=start, stop=stop)
                digest = f"{file_digest}[{start}:{stop}]"
            else:
                job.update(
                    paths=paths[start:stop], reader=reader, reader_kwargs=dict(reader_kwargs or {}), on_error=on_error
                )
                digest = digest_of(repr([_file_identity(p) for p in job["paths"]]))
            keys[i] = chunk_key(input=digest, **options)
            if not store.is_valid(name, keys[i]):
                jobs.append(job)
            else:
                reusable.append(job)
        if jobs:  # chunks with duplicates removed are redone from their input whenever another chunk is
            redo = [j for j in reusable if store.info(names[j["index"]]).get(_DUPLICATES)]
            jobs = sorted(jobs + redo, key=lambda j: j["index"])
        if len(jobs) < n_chunks:
            logger.info(
                "%s: %d of %d chunk(s) reused; %d to compute", store.folder, n_chunks - len(jobs), n_chunks, len(jobs)
            )

        bar = None
        if progressbar:
            from tqdm.auto import tqdm  # lazy: optional progress bar

            bar = tqdm(total=len(jobs), desc="chunks", unit="chunk")

        def record(result) -> None:
            i, checksum, skipped_rows = result
            store.record(names[i], keys[i], checksum, {"skipped": skipped_rows})
            if checksum is None:
                store.path(names[i]).unlink(missing_ok=True)
            if bar is not None:
                bar.update(1)

        executor = InProcessExecutor(n_jobs) if executor is None else executor
        run_log = RunLog(store.folder / RUN_LOG)
        run_log.write("start", chunks=n_chunks, to_compute=len(jobs), executor=type(executor).__name__)
        try:
            executor.map_chunks(
                _run_chunk,
                jobs,
                on_result=lambda _, result: record(result),
                names=[names[j["index"]] for j in jobs],
                run_log=run_log,
                keep=False,
            )
        finally:
            if bar is not None:
                bar.close()
        _remove_duplicates(store, names, keys, format)
        out = [store.path(name) for name in names if store.path(name).exists()]
        if not return_skipped:
            return out
        rows = [tuple(r) for name in names for key in ("skipped", _DUPLICATES) for r in store.info(name).get(key, [])]
        if rows:
            skipped = Table(rows=rows, names=("path", "error", "reason"))
        else:
            skipped = Table([np.zeros(0, str)] * 3, names=("path", "error", "reason"))
        return out, skipped


def _chunk_ids(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Star ids of a chunk file (and its ``filename`` column when it has one), read lazily."""
    if path.suffix == ".nc":
        with xr.open_dataset(path, engine="h5netcdf") as f:
            names = f["filename"].values.astype(str) if "filename" in f.variables else None
            return f["star"].values.astype(str), names
    ds = read_spectra(path)
    return ds["star"].values.astype(str), ds["filename"].values.astype(str) if "filename" in ds else None


def _remove_duplicates(store: ChunkStore, names: list[str], keys: dict, fmt: str) -> None:
    """Keep the first star of each id over the whole run (chunk order, then row order);
    remove the others from their chunks and record them in the chunks' info."""
    present = [name for name in names if store.path(name).exists()]
    if not present:
        return
    read = [_chunk_ids(store.path(name)) for name in present]
    ids = np.concatenate([r[0] for r in read])
    offsets = np.cumsum([0] + [r[0].size for r in read])
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    keeper = first[inverse]  # row (over the run) of the star kept for each row's id
    for c in np.unique(np.searchsorted(offsets, np.flatnonzero(keeper != np.arange(ids.size)), side="right") - 1):
        name, (chunk_ids, files) = present[c], read[c]
        lo, hi = offsets[c], offsets[c + 1]
        drop = keeper[lo:hi] != np.arange(lo, hi)
        rows = []
        for r in np.flatnonzero(drop):  # the duplicates only: few
            where = present[int(np.searchsorted(offsets, keeper[lo + r], side="right")) - 1]
            what = files[r] if files is not None else f"{name}[{r}]"
            reason = (
                f"star id {str(chunk_ids[r])!r} of {name} repeats the star kept in {where} (the first in input order)"
            )
            rows.append([str(what), "DuplicateIdError", reason])
        logger.warning(
            "%s: %d star(s) repeat an id kept earlier and are removed; first: %s", name, len(rows), rows[0][2]
        )
        info = {**store.info(name), _DUPLICATES: store.info(name).get(_DUPLICATES, []) + rows}
        if drop.all():
            store.record(name, keys[names.index(name)], None, info)
            store.path(name).unlink(missing_ok=True)
            continue
        ds = read_spectra(store.path(name)).isel(star=np.flatnonzero(~drop)).load()
        store.write(
            name, keys[names.index(name)], lambda tmp, ds=ds: write_spectra(ds, tmp, format=fmt, overwrite=True), info
        )


def chunk_files(out_path) -> list[Path]:
    """The chunk files of the last run of :func:`process_in_chunks` in ``out_path``, in order.

    Raises
    ------
    InvalidInputError
        The folder holds no chunk file.
    """
    out_dir = Path(out_path)
    files = []
    if (out_dir / MANIFEST).exists():
        files = [out_dir / name for name in ChunkStore(out_dir, clean=False).order if (out_dir / name).exists()]
    elif out_dir.is_dir():  # a folder written before the manifest existed
        files = sorted(p for p in out_dir.glob("chunk_*.*") if p.suffix in (".nc", ".npz", ".fits"))
    if not files:
        raise InvalidInputError(
            f"{out_dir} holds no chunk files (chunk_*.nc/.npz from process_in_chunks or `bayescannon preprocess`)"
        )
    return files


def read_chunks(out_path) -> xr.Dataset:
    """Concatenate the chunk files written by :func:`process_in_chunks` (in order)."""
    parts = [read_spectra(p) for p in chunk_files(out_path)]
    combined = xr.concat(
        parts,
        dim="star",
        data_vars="all",
        coords="different",
        compat="equals",
        join="exact",
        combine_attrs="drop_conflicts",
    )
    return check_spectra(combined)
