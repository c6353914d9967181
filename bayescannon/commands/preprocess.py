"""``bayescannon preprocess``: survey files → rest-frame, resampled, normalised chunk files.

Survey-scale preprocessing (millions of spectra): the files are read, shifted to the rest
frame, resampled onto one grid, masked and normalised chunk by chunk on worker
processes; every chunk is written atomically, so an interrupted run resumes, and memory
holds one chunk per worker. ``bayescannon infer MODEL OUTDIR`` then reads the chunks one
at a time. With ``-o OUT.zarr`` the chunks (in the resumable folder ``--work-dir``, default
``OUT.zarr.chunks``) are then written into one zarr spectra store
(:class:`bayescannon.io.zarrstore.SpectraStore`) that ``bayescannon infer`` reads chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bayescannon import preprocess as pp
from bayescannon.commands._common import add_dask_argument, check_dask_argument
from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, print_summary, say
from bayescannon.errors import InvalidInputError
from bayescannon.model import CannonModel
from bayescannon.pipeline.cluster import open_executor
from bayescannon.survey.catalogue import write_table
from bayescannon.survey.stores import spectra_store_from_chunks

NAME = "preprocess"
HELP = "read + rest frame + resample + normalise survey files in resumable chunks (survey scale)"

_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")


def add_arguments(p):
    p.add_argument("inputs", nargs="*", help="survey files, or folders searched recursively for FITS files")
    p.add_argument("--file-list", help="text file with one survey file path per line")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder (chunk files, manifest, skipped.ecsv), or a zarr spectra store (.zarr)",
    )
    p.add_argument(
        "--work-dir",
        help="with -o *.zarr: the resumable chunk folder (default OUT.zarr.chunks; kept, and removable once the "
        "store is written)",
    )
    p.add_argument(
        "--format", default=None, help="survey format of the files (lamost, apstar, aspcapstar; default: guessed)"
    )
    grid = p.add_mutually_exclusive_group(required=True)
    grid.add_argument(
        "--grid",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="log-linear rest-frame grid from LO to HI Angstrom (step --dlog)",
    )
    grid.add_argument("--grid-from", metavar="MODEL", help="use the wavelength grid of a trained model")
    p.add_argument("--dlog", type=float, default=1e-4, help="log10 step of --grid (default 1e-4, LAMOST)")
    p.add_argument("--no-rest-frame", action="store_true", help="spectra are already in the rest frame: only resample")
    p.add_argument(
        "--mask-window",
        nargs=2,
        type=float,
        action="append",
        default=[],
        metavar=("LO", "HI"),
        help="rest-frame window (Angstrom) set to ivar = 0; repeat for several",
    )
    p.add_argument(
        "--normalise",
        choices=["ho2017", "none"],
        default="ho2017",
        help="Ho+2017 Gaussian-smoothed normalisation (default) or none",
    )
    p.add_argument("--L", type=float, default=50.0, help="Ho+2017 smoothing width in Angstrom (default 50)")
    p.add_argument("--chunk-size", type=int, default=1000, help="files per chunk (default 1000)")
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--chunk-format", choices=["nc", "npz"], default="nc", help="chunk file format")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dask_argument(p)
    add_json_argument(p)


def outputs(args):
    """The output folder: resumable (re-running into it resumes; its ``skipped.ecsv`` is
    rewritten by every run), so only checked to be a writable folder that is not an input."""
    if _is_store(args):
        return [Output(Path(args.output), "output", (".zarr",)), Output(_work_dir(args), "work_dir", kind="workspace")]
    return [Output(Path(args.output), "output", kind="workspace")]


def _is_store(args) -> bool:
    return str(args.output).rstrip("/").lower().endswith(".zarr")


def _work_dir(args) -> Path:
    """The chunk folder of the run: ``--output``, or for a store ``--work-dir`` (default ``OUT.zarr.chunks``)."""
    if not _is_store(args):
        if args.work_dir:
            raise InvalidInputError("--work-dir is for -o *.zarr; the chunk folder is -o itself")
        return Path(args.output)
    return Path(args.work_dir) if args.work_dir else Path(str(args.output).rstrip("/") + ".chunks")


def _collect(args) -> list[str]:

    paths: list[str] = []
    for item in args.inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(str(q) for q in path.rglob("*") if q.name.lower().endswith(_SUFFIXES)))
        else:
            paths.append(str(path))
    if args.file_list:
        text = Path(args.file_list).read_text()
        paths.extend(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not paths:
        raise InvalidInputError("no input files: give files, folders or --file-list")
    return paths


def build_steps(args, grid):
    """The preprocessing steps (picklable partials) for these arguments."""
    import functools

    steps = []
    if args.no_rest_frame:
        steps.append(functools.partial(pp.resample, new_wavelength=grid))
    else:
        steps.append(functools.partial(pp.to_rest_frame, new_wavelength=grid))
    if args.mask_window:
        steps.append(functools.partial(pp.mask_windows, windows=[tuple(w) for w in args.mask_window]))
    if args.normalise == "ho2017":
        steps.append(functools.partial(pp.normalise_ho2017, L=float(args.L)))
    steps.append(pp.add_snr)
    return steps


def _run_options(args, grid) -> dict:
    """The option values that determine the chunks, recorded in the folder's manifest: a rerun
    with another value of any of them is refused, naming it (see ``process_in_chunks``)."""
    return {
        "--grid/--grid-from (wavelength grid)": np.asarray(grid, dtype=np.float64),
        "--no-rest-frame": bool(args.no_rest_frame),
        "--mask-window": [list(map(float, w)) for w in args.mask_window],
        "--normalise": args.normalise,
        "--L": float(args.L),
        "--format": args.format,
        "--chunk-format": args.chunk_format,
    }


def run(args) -> int:
    check_dask_argument(args)
    paths = _collect(args)
    if args.grid_from:
        grid = CannonModel.load(args.grid_from).wavelength_
        if grid is None:
            raise InvalidInputError(f"model {args.grid_from} has no wavelength grid")
    else:
        lo, hi = args.grid
        if not (0 < lo < hi) or not args.dlog > 0:
            raise InvalidInputError(f"--grid needs 0 < LO < HI and --dlog > 0; got {lo}, {hi}, {args.dlog}")
        grid = 10 ** np.arange(np.log10(lo), np.log10(hi), args.dlog)
    reader_kwargs = {"grid": "common"}
    if args.format:
        reader_kwargs["format"] = args.format
    work = _work_dir(args)
    options = _run_options(args, grid)
    with open_executor(args.dask, n_jobs=args.n_jobs) as executor:
        files, skipped = pp.process_in_chunks(
            paths,
            build_steps(args, np.asarray(grid, dtype=np.float64)),
            args.chunk_size,
            work,
            format=args.chunk_format,
            reader_kwargs=reader_kwargs,
            on_error="skip",
            n_jobs=args.n_jobs,
            progressbar=not args.no_progress,
            return_skipped=True,
            options=options,
            executor=executor,
        )
    write_table(skipped, work / "skipped.ecsv", overwrite=True)  # part of the resumable folder: every run rewrites it
    done = f"{len(paths)} files -> {len(files)} chunk file(s) in {work} on a {len(grid)}-pixel grid"
    say(args, f"{done}; {len(skipped)} file(s) skipped (see {work / 'skipped.ecsv'})")
    summary = {
        "output": str(args.output),
        "n_files": len(paths),
        "n_chunks": len(files),
        "chunk_folder": str(work),
        "n_pixels": len(grid),
        "n_skipped": len(skipped),
        "skipped_table": str(work / "skipped.ecsv"),
    }
    if _is_store(args):
        store = spectra_store_from_chunks(
            work,
            args.output,
            stars_per_chunk=args.chunk_size,
            overwrite=args.overwrite,
            provenance={"command": "bayescannon preprocess", "options": options, "n_files": len(paths)},
        )
        say(args, f"wrote {store.n_stars} spectra to the store {args.output} ({work} can be removed)")
        summary["store_stars"] = int(store.n_stars)
    summary["next"] = f"bayescannon infer MODEL {args.output} -o catalogue.fits"
    print_summary(args, summary, f"infer labels with: {summary['next']}")
    return 0
