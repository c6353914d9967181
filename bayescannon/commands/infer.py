"""``bayescannon infer``: model + spectra → FITS catalogue."""

from __future__ import annotations

from pathlib import Path

from bayescannon.commands._common import add_dask_argument, check_dask_argument, load_spectra
from bayescannon.commands._outputs import TABLE_SUFFIXES, Output
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.io.zarrstore import SpectraStore, is_spectra_store
from bayescannon.model import CannonModel
from bayescannon.pipeline.cluster import open_executor
from bayescannon.survey.batch import infer_chunk_files, infer_chunked, infer_store
from bayescannon.survey.catalogue import build_catalogue, resolve_uncertainty, write_table

NAME = "infer"
HELP = "infer labels of spectra with a trained model and write a FITS catalogue"


def add_arguments(p):
    p.add_argument("model", help="model file (.nc or .zarr)")
    p.add_argument(
        "spectra",
        help="spectra on the model's grid (.nc, .npz or bayescannon FITS), a folder "
        "of chunk files from `bayescannon preprocess`, or a zarr spectra store (.zarr) (both read one chunk "
        "at a time)",
    )
    p.add_argument("-o", "--output", required=True, help="catalogue to write (.fits, .parquet, .csv or .ecsv)")
    p.add_argument("--n-starts", type=int, default=None, help="starting points per star (default: model's)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="stars per chunk (bounds memory; default 1000, or a zarr store's own chunks)",
    )
    p.add_argument(
        "--uncertainty",
        choices=["auto", "calibrated", "formal"],
        default="auto",
        help="calibrated whenever the model is calibrated (auto), or formal on request (said so in the "
        "catalogue header)",
    )
    p.add_argument(
        "--work-dir",
        help="write per-chunk results here atomically and resume from them (for long runs); a name ending in "
        ".zarr makes it a zarr catalogue store",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dask_argument(p)
    add_json_argument(p)


def outputs(args):
    """The catalogue; the resumable ``--work-dir`` (checked for writability only)."""
    outs = [Output(Path(args.output), "output", TABLE_SUFFIXES)]
    if args.work_dir:
        outs.append(Output(Path(args.work_dir), "work_dir", kind="workspace"))
    return outs


def run(args) -> int:
    check_dask_argument(args)
    model = CannonModel.load(args.model)
    uncertainty = resolve_uncertainty(model, args.uncertainty)
    kwargs = {"n_starts": args.n_starts, "uncertainty": uncertainty}
    spectra = None  # a chunk folder is never held in memory: no SNR column then
    chunk_size = args.chunk_size or 1000
    progress = not args.no_progress
    if is_spectra_store(args.spectra):
        store = SpectraStore.open(args.spectra)
        with open_executor(args.dask) as executor:
            result = infer_store(
                model,
                store,
                args.work_dir,
                chunk_size=args.chunk_size,
                executor=executor,
                progressbar=progress,
                **kwargs,
            )
        spectra = store.read_columns()  # ids and per-star columns (snr): never the spectra
    elif Path(args.spectra).is_dir():
        with open_executor(args.dask) as executor:
            result = infer_chunk_files(
                model, args.spectra, args.work_dir, executor=executor, progressbar=progress, **kwargs
            )
    elif args.work_dir or args.dask:
        spectra = load_spectra(args.spectra)
        with open_executor(args.dask) as executor:
            result = infer_chunked(
                model,
                spectra,
                args.work_dir,
                chunk_size=chunk_size,
                executor=executor,
                progressbar=progress,
                **kwargs,
            )
    else:
        spectra = load_spectra(args.spectra)
        result = model.infer(spectra, chunk_size=chunk_size, progressbar=progress, **kwargs)
    table = build_catalogue(
        model,
        result,
        spectra=spectra,
        uncertainty=uncertainty,
        config={"model_file": str(args.model), "spectra": str(args.spectra)},
    )
    write_table(table, args.output, overwrite=args.overwrite)
    nflag = int((table["FLAGS"] != 0).sum())
    summary = {"catalogue": str(args.output), "n_stars": len(table), "n_flagged": nflag, "uncertainty": uncertainty}
    print_summary(args, summary, f"wrote {len(table)} stars to {args.output} ({nflag} flagged)")
    return 0
