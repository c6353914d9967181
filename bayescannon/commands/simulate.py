"""``bayescannon simulate``: write a mock survey with known labels."""

from __future__ import annotations

from pathlib import Path

from bayescannon.commands._outputs import SPECTRA_SUFFIXES, TABLE_SUFFIXES, Output
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.io import write_spectra
from bayescannon.simulate.synthesis import simulate_survey
from bayescannon.survey.catalogue import write_table

NAME = "simulate"
HELP = "simulate a mock survey (spectra with known labels)"


def add_arguments(p):
    p.add_argument("-o", "--output", required=True, help="spectra file to write (.nc, .npz or .fits)")
    p.add_argument("-n", "--n-stars", type=int, default=1000, help="number of stars")
    p.add_argument("--instrument", default="apogee", help="apogee, lamost or galah")
    p.add_argument("--population", default="giants", help="giants, dwarfs or mixed")
    p.add_argument(
        "--snr", type=float, nargs=2, default=(30.0, 250.0), metavar=("MIN", "MAX"), help="S/N range (log-uniform)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels-out", help="also write the true labels as a table (FITS/CSV) with an ID column")
    add_json_argument(p)


def outputs(args):
    """The spectra file and the ``--labels-out`` table."""
    outs = [Output(Path(args.output), "output", SPECTRA_SUFFIXES)]
    if args.labels_out:
        outs.append(Output(Path(args.labels_out), "labels_out", TABLE_SUFFIXES))
    return outs


def run(args) -> int:
    from astropy.table import Table

    ds = simulate_survey(
        args.n_stars, instrument=args.instrument, population=args.population, snr=tuple(args.snr), rng=args.seed
    )
    write_spectra(ds, args.output, overwrite=args.overwrite)
    if args.labels_out:
        t = Table()
        t["ID"] = ds["star"].values.astype(str)
        for name in ("TEFF", "LOGG", "FE_H", "ALPHA_FE", "snr"):
            if name in ds:
                t[name.upper()] = ds[name].values
        write_table(t, args.labels_out, overwrite=args.overwrite)
    summary = {"spectra": str(args.output), "n_stars": int(ds.sizes["star"]), "n_pixels": int(ds.sizes["pixel"])}
    print_summary(args, summary, f"wrote {ds.sizes['star']} spectra x {ds.sizes['pixel']} pixels to {args.output}")
    return 0
