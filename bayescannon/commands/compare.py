"""``bayescannon compare``: our posteriors (or catalogue) against a point-estimate pipeline's table."""

from __future__ import annotations

from pathlib import Path

from bayescannon.bayes.compare import compare_with_pipeline, outlier_table
from bayescannon.bayes.diagnostics import load_posterior
from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, print_summary, say
from bayescannon.errors import InvalidInputError
from bayescannon.io.labels import read_labels
from bayescannon.pipeline.atomic import write_atomic
from bayescannon.plots import pipeline_comparison

NAME = "compare"
HELP = "where a point-estimate pipeline's labels fall in our posteriors: z-scores, quantiles, outliers, trends"


def add_arguments(p):
    p.add_argument("ours", help="posterior file (.nc/.zarr from `bayescannon sample`) or catalogue (.fits/.csv)")
    p.add_argument("pipeline", help="the pipeline's table (.fits/.csv): thecannon- or ASPCAP-style")
    p.add_argument("-o", "--output", required=True, help="per-star table to write (.csv)")
    p.add_argument("--plot", help="also write the comparison figure (.png or .pdf)")
    p.add_argument("--id-column", help="id column of our catalogue (default: auto)")
    p.add_argument("--pipeline-id-column", help="id column of the pipeline table (default: auto, e.g. APOGEE_ID)")
    p.add_argument("--map", nargs="+", default=[], metavar="OURS=THEIRS", help="label name mapping, e.g. FE_H=M_H")
    p.add_argument("--snr-column", help="S/N column of the pipeline table (default: auto)")
    p.add_argument("--outlier-z", type=float, default=3.0, help="|z| above which a star is listed as an outlier")
    p.add_argument("--ignore-pipeline-errors", action="store_true", help="do not convolve with the pipeline's errors")
    add_json_argument(p)


def outputs(args):
    """The per-star table and the ``--plot`` figure."""
    outs = [Output(Path(args.output), "output", (".csv",))]
    if args.plot:
        outs.append(Output(Path(args.plot), "plot", (".png", ".pdf", ".svg")))
    return outs


def run(args) -> int:
    label_map = {}
    for item in args.map:
        if "=" not in item:
            raise InvalidInputError(f"--map takes OURS=THEIRS pairs; got {item!r}")
        a, b = item.split("=", 1)
        label_map[a] = b
    path = str(args.ours)
    ours = load_posterior(path) if path.endswith((".nc", ".zarr")) else read_labels(path)
    pipeline = read_labels(args.pipeline)
    result = compare_with_pipeline(
        ours,
        pipeline,
        id_column=args.id_column,
        pipeline_id_column=args.pipeline_id_column,
        label_map=label_map,
        snr=args.snr_column,
        use_pipeline_errors=not args.ignore_pipeline_errors,
        outlier_z=args.outlier_z,
    )
    table = result[["ours_mean", "ours_sd", "pipeline", "pipeline_error", "z", "quantile", "outlier"]]
    df = table.to_dataframe().reset_index().merge(result["snr"].to_dataframe().reset_index(), on="star")
    write_atomic(args.output, lambda tmp: df.to_csv(tmp, index=False), overwrite=args.overwrite)
    if args.plot:
        fig = pipeline_comparison(result)
        write_atomic(args.plot, lambda tmp: fig.savefig(tmp, dpi=110), overwrite=args.overwrite)
    per_label = result[["n", "z_mean", "z_sd", "frac_within_68", "frac_within_95", "ks_pvalue", "n_outliers"]]
    per_label_df = per_label.to_dataframe()
    say(args, per_label_df.to_string(float_format=lambda v: f"{v:.3g}"))
    outl = outlier_table(result)
    if len(outl):
        say(args, f"outliers (|z| > {args.outlier_z:g}):")
        say(args, outl.head(20).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    summary = {
        "output": str(args.output),
        "n_stars": int(result.sizes["star"]),
        "per_label": {str(name): row.to_dict() for name, row in per_label_df.iterrows()},
        "outlier_z": args.outlier_z,
        "outliers": outl.to_dict(orient="records"),
    }
    if args.plot:
        summary["plot"] = str(args.plot)
    print_summary(args, summary, f"compared {result.sizes['star']} stars; wrote {args.output}")
    return 0
