"""``bayescannon repeats``: error calibration from repeat observations with a report."""

from __future__ import annotations

from pathlib import Path

from bayescannon.commands._common import catalogue_labels
from bayescannon.commands._outputs import Output, report_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import InvalidInputError
from bayescannon.plots import precision_vs_snr
from bayescannon.report import Report
from bayescannon.survey.catalogue import write_table
from bayescannon.validate.crossval import BAD_FIT_FLAGS
from bayescannon.validate.repeats import COMBINES, RECIPES, calibrate_from_repeats, compare_errors

NAME = "repeats"
HELP = "calibrate label errors from repeat spectra of the same stars (Nandakumar+2022 §3.7)"


def add_arguments(p):
    p.add_argument("catalogue", help="catalogue (FITS/ECSV/CSV), one row per spectrum, with errors e_<LABEL>")
    p.add_argument("--group-column", required=True, help="column with the star id shared by repeat spectra")
    p.add_argument(
        "--labels", nargs="+", default=None, metavar="NAME", help="labels (default: the catalogue's LABELS header card)"
    )
    p.add_argument("--id-column", default="ID")
    p.add_argument("--snr-column", default="SNR")
    p.add_argument("--snr-bins", type=int, default=8, help="S/N bins of the precision fit")
    p.add_argument("--min-pairs", type=int, default=10, help="fewer pairs: bin skipped")
    p.add_argument(
        "--compare-prefix",
        default=None,
        help="compare with other errors in columns <PREFIX><LABEL> (e.g. the Bayesian layer's calibrated errors)",
    )
    p.add_argument(
        "--exclude-flags",
        type=int,
        default=None,
        help="StarFlag bits that exclude a spectrum (default: NO_PIXELS|NOT_CONVERGED)",
    )
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=RECIPES[0],
        help="nandakumar2022 (default): error scale from the variance of the normalised pair differences, "
        "precision from the best-S/N visit against each other visit (no sqrt 2; the best visit's own "
        "scaled variance subtracted); robust: half 16-84th percentile widths of all pairs, precision "
        "divided by sqrt 2",
    )
    p.add_argument(
        "--combine",
        choices=list(COMBINES),
        default=COMBINES[0],
        help="max (default, the paper): max(scale x formal, precision(S/N)), over-covers where formal errors "
        "vary from star to star at one S/N; quadrature: sqrt((scale x formal)^2 + excess floor(S/N)^2)",
    )
    p.add_argument(
        "--keep-best-variance",
        action="store_true",
        help="nandakumar2022: do not subtract the best visit's variance (the paper read literally; its "
        "floor is sqrt 2 too wide for visits of similar S/N)",
    )
    p.add_argument(
        "--pair-width",
        action="store_true",
        help="use the width of pair differences as the precision (no division by sqrt 2; the default of "
        "--recipe nandakumar2022)",
    )
    p.add_argument("-o", "--outdir", default="repeats")
    p.add_argument("--report-format", choices=["md", "html"], default="html")
    p.add_argument("--plot-formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    add_json_argument(p)


#: Tables written to ``--outdir``.
FILES = (
    "repeat_calibration.ecsv",
    "repeat_precision_by_snr.ecsv",
    "repeat_pairs.fits",
    "repeat_skipped.ecsv",
    "catalogue_calibrated.fits",
    "error_comparison.ecsv",
)


def outputs(args):
    """The tables, the report and its figure in ``--outdir``."""
    out = Path(args.outdir)
    return [Output(out / f, "outdir") for f in FILES] + report_outputs(
        out, "report", args.report_format, ["precision_vs_snr"], args.plot_formats, "outdir"
    )


def run(args) -> int:
    import numpy as np
    from astropy.table import MaskedColumn

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    cat, names = catalogue_labels(args)
    for col in [args.group_column, args.snr_column, *names, *(f"e_{n}" for n in names)]:
        if col not in cat.colnames:
            raise InvalidInputError(f"catalogue has no column {col!r}")

    def arr(c):
        return np.ma.filled(np.ma.asarray(cat[c], dtype=float), np.nan)

    y = np.column_stack([arr(n) for n in names])
    e = np.column_stack([arr(f"e_{n}") for n in names])
    snr = arr(args.snr_column)
    excl = BAD_FIT_FLAGS if args.exclude_flags is None else args.exclude_flags
    bad = (np.asarray(cat["FLAGS"]) & excl) != 0 if "FLAGS" in cat.colnames else np.zeros(len(cat), bool)
    groups = np.ma.asarray(np.asarray(cat[args.group_column]).astype(str))
    groups[bad] = np.ma.masked
    ids = np.asarray(cat[args.id_column]).astype(str) if args.id_column in cat.colnames else None
    cal = calibrate_from_repeats(
        y,
        e,
        snr,
        groups,
        names,
        recipe=args.recipe,
        combine=args.combine,
        snr_bins=args.snr_bins,
        min_pairs=args.min_pairs,
        per_measurement=False if args.pair_width else None,
        subtract_best=not args.keep_best_variance,
        ids=ids,
    )
    calibrated = cal.apply(e, snr)
    files = [
        write_table(cal.summary, out / "repeat_calibration.ecsv", overwrite=args.overwrite),
        write_table(cal.binned, out / "repeat_precision_by_snr.ecsv", overwrite=args.overwrite),
        write_table(cal.pairs, out / "repeat_pairs.fits", overwrite=args.overwrite),
    ]
    if len(cal.skipped):
        files.append(write_table(cal.skipped, out / "repeat_skipped.ecsv", overwrite=args.overwrite))
    newcat = cat.copy()
    for k, n in enumerate(names):
        newcat[f"e_CAL_{n}"] = MaskedColumn(
            calibrated[:, k],
            mask=~np.isfinite(calibrated[:, k]),
            unit=cat[f"e_{n}"].unit,
            description=f"repeat-calibrated 1-sigma error of {n}",
        )
    files.append(write_table(newcat, out / "catalogue_calibrated.fits", overwrite=args.overwrite))
    rep = Report(f"Error calibration from repeats: {Path(args.catalogue).name}", formats=args.plot_formats)
    rep.add_text(
        f"{len(cal.pairs)} pairs of spectra of the same star; {len(cal.skipped)} stars with a single "
        f"spectrum skipped. Recipe {cal.recipe}. Calibrated error = max(scale x formal error, precision(S/N))."
    )
    rep.add_table(cal.summary, caption="formal-error scale factors and precision fits")
    rep.add_table(cal.binned, caption="precision in bins of the lower S/N of each pair")
    rep.add_figure(precision_vs_snr(cal), "precision_vs_snr", caption="precision vs S/N and exponential fit")
    cmp = compare_errors(e, calibrated, names, names=("FORMAL", "REPEATS"))
    rep.add_table(cmp, caption="repeat-calibrated vs formal errors")
    if args.compare_prefix:
        cols = [f"{args.compare_prefix}{n}" for n in names]
        missing = [c for c in cols if c not in cat.colnames]
        if missing:
            raise InvalidInputError(f"catalogue has no column(s) {missing} to compare with")
        other = np.column_stack([arr(c) for c in cols])
        cmp2 = compare_errors(calibrated, other, names, names=("REPEATS", "OTHER"))
        files.append(write_table(cmp2, out / "error_comparison.ecsv", overwrite=args.overwrite))
        rep.add_table(cmp2, caption=f"errors in {args.compare_prefix}<LABEL> vs repeat-calibrated errors")
    rep.add_files([Path(f).name for f in files])
    rp = rep.write(out / f"report.{args.report_format}")
    summary = {
        "report": str(rp),
        "recipe": cal.recipe,
        "n_pairs": len(cal.pairs),
        "n_single": len(cal.skipped),
        "labels": {str(row["LABEL"]): {c: row[c] for c in cal.summary.colnames if c != "LABEL"} for row in cal.summary},
        "files": [str(f) for f in files],
    }
    text = [
        f"{row['LABEL']:>10}  errors x {row['ERROR_SCALE']:.3g}  precision fit: {row['FIT']}" for row in cal.summary
    ]
    print_summary(args, summary, [*text, f"report {rp}"])
    return 0
