"""``bayescannon to-zarr``: a chunk folder or spectra files → one zarr spectra store."""

from __future__ import annotations

from pathlib import Path

from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import InvalidInputError
from bayescannon.pipeline.chunks import MANIFEST
from bayescannon.survey.stores import spectra_store_from_chunks, spectra_store_from_files

NAME = "to-zarr"
HELP = "convert a chunk folder of `bayescannon preprocess` or spectra files into a zarr spectra store"


def add_arguments(p):
    p.add_argument(
        "inputs",
        nargs="+",
        help="a chunk folder of `bayescannon preprocess`, a folder of spectra files (bayescannon FITS, .nc, "
        ".npz), or such files",
    )
    p.add_argument("-o", "--output", required=True, help="the store to write (.zarr)")
    p.add_argument("--stars-per-chunk", type=int, default=1000, help="stars per zarr chunk (default 1000)")
    add_json_argument(p)


def outputs(args):
    """The store (a folder written atomically: replaced only with ``--overwrite``)."""
    return [Output(Path(args.output), "output", (".zarr",))]


def _is_chunk_folder(path: Path) -> bool:
    return path.is_dir() and ((path / MANIFEST).is_file() or any(path.glob("chunk_*.*")))


def run(args) -> int:
    inputs = [Path(p) for p in args.inputs]
    if len(inputs) == 1 and _is_chunk_folder(inputs[0]):
        store = spectra_store_from_chunks(
            inputs[0], args.output, stars_per_chunk=args.stars_per_chunk, overwrite=args.overwrite
        )
        what = f"chunk folder {inputs[0]}"
    elif len(inputs) == 1:
        store = spectra_store_from_files(
            inputs[0], args.output, stars_per_chunk=args.stars_per_chunk, overwrite=args.overwrite
        )
        what = str(inputs[0])
    else:
        missing = [str(p) for p in inputs if not p.is_file()]
        if missing:
            raise InvalidInputError(f"not files: {', '.join(missing)} (give one folder, or files)")
        store = spectra_store_from_files(
            inputs, args.output, stars_per_chunk=args.stars_per_chunk, overwrite=args.overwrite
        )
        what = f"{len(inputs)} files"
    summary = {
        "store": str(args.output),
        "source": what,
        "n_stars": int(store.n_stars),
        "n_pixels": int(store.n_pixels),
        "n_chunks": len(store.chunk_bounds()),
    }
    print_summary(
        args,
        summary,
        f"wrote {store.n_stars} spectra ({store.n_pixels} pixels) from {what} to {args.output} "
        f"in {summary['n_chunks']} chunk(s)",
    )
    return 0
