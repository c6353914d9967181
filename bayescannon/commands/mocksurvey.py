"""``bayescannon mock-survey``: the same stars seen by an APOGEE-like and a LAMOST-like survey."""

from __future__ import annotations

from bayescannon.commands._outputs import add_outdir_argument, outdir_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.simulate.mocksurvey import CORRUPTIONS, make_mock_survey

NAME = "mock-survey"
HELP = "write a two-survey mock (APOGEE apStar/aspcapStar + LAMOST files, catalogues, truth) and a transfer config"


def add_arguments(p):
    add_outdir_argument(p)
    p.add_argument("--n-both", type=int, default=2000, help="stars in both surveys (default 2000)")
    p.add_argument("--n-lamost-only", type=int, default=600, help="stars only in LAMOST (default 600)")
    p.add_argument("--n-apogee-only", type=int, default=200, help="stars only in APOGEE (default 200)")
    p.add_argument("--population", default="giants", choices=["giants", "dwarfs", "mixed"], help="stellar population")
    p.add_argument(
        "--apogee-spectra",
        nargs="*",
        default=["apstar", "aspcapstar"],
        choices=["apstar", "aspcapstar"],
        help="APOGEE file types to write (none: catalogue only)",
    )
    p.add_argument("--lamost-layout", default="dr5", choices=["dr5", "dr8", "mixed"], help="LAMOST file layout")
    p.add_argument("--no-corruptions", action="store_true", help="write no corrupted LAMOST files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    add_json_argument(p)


outputs = outdir_outputs


def run(args) -> int:

    mock = make_mock_survey(
        args.outdir,
        args.n_both,
        args.n_lamost_only,
        args.n_apogee_only,
        population=args.population,
        apogee_spectra=tuple(args.apogee_spectra),
        lamost_layout=args.lamost_layout,
        corruptions=() if args.no_corruptions else tuple(CORRUPTIONS),
        seed=args.seed,
        overwrite=args.overwrite,
        progressbar=not args.no_progress,
    )
    summary = {
        "outdir": str(mock.outdir),
        "n_lamost_files": len(mock.lamost_files),
        "n_corrupted": len(mock.corrupted),
        "n_apogee_files": len(mock.apogee_files),
        "apogee_catalogue": str(mock.apogee_catalogue),
        "lamost_catalogue": str(mock.lamost_catalogue),
        "truth": str(mock.truth_path),
        "config": None if mock.config_path is None else str(mock.config_path),
    }
    text = [
        f"wrote {len(mock.lamost_files)} LAMOST files ({len(mock.corrupted)} corrupted) and "
        f"{len(mock.apogee_files)} APOGEE files to {mock.outdir}",
        f"catalogues: {mock.apogee_catalogue.name}, {mock.lamost_catalogue.name}; truth: {mock.truth_path.name}",
    ]
    if mock.config_path is not None:
        text.append(f"run the label transfer with: bayescannon transfer {mock.config_path}")
    print_summary(args, summary, text)
    return 0
