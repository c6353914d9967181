"""``bayescannon clusters``: cluster validation of a catalogue (median, scatter,
offset from the literature, trends with Teff) with a report."""

from __future__ import annotations

from pathlib import Path

from bayescannon.commands._common import catalogue_labels
from bayescannon.commands._outputs import Output, report_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import InvalidInputError
from bayescannon.io import read_labels
from bayescannon.plots import new_figure
from bayescannon.report import Report
from bayescannon.survey.catalogue import write_table
from bayescannon.validate.clusters import (
    LITERATURE_TABLE,
    cluster_statistics,
    cluster_trends,
    literature_table,
    match_members,
    read_apogee_cluster_members,
)
from bayescannon.validate.crossval import BAD_FIT_FLAGS

NAME = "clusters"
HELP = "validate a catalogue on star-cluster members: per-cluster medians, scatter, literature offsets, trends"


def add_arguments(p):
    p.add_argument("catalogue", help="catalogue (FITS/ECSV/CSV) with an id column and label columns")
    p.add_argument(
        "members", help="membership table: the APOGEE DR10 member file, or a FITS/CSV table with id and cluster columns"
    )
    p.add_argument(
        "--members-format",
        choices=["auto", "apogee-dr10", "table"],
        default="auto",
        help="format of the members list (auto: sniffed)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="NAME",
        help="label columns (default: the catalogue's LABELS header card)",
    )
    p.add_argument("--id-column", default="ID", help="id column of the catalogue and of a member table")
    p.add_argument("--cluster-column", default="CLUSTER", help="cluster column of a member table")
    p.add_argument("--literature", help="table with CLUSTER and label columns (default: built-in [Fe/H])")
    p.add_argument("--min-members", type=int, default=3, help="fewer usable members: cluster skipped")
    p.add_argument(
        "--exclude-flags",
        type=int,
        default=None,
        help="StarFlag bits that exclude a star (default: NO_PIXELS|NOT_CONVERGED)",
    )
    p.add_argument("-o", "--outdir", default="clusters")
    p.add_argument("--report-format", choices=["md", "html"], default="html")
    p.add_argument("--plot-formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    add_json_argument(p)


def outputs(args):
    """The statistics and trend tables, the report and its figure in ``--outdir``."""
    out = Path(args.outdir)
    return [
        Output(out / "cluster_statistics.ecsv", "outdir"),
        Output(out / "cluster_trends.ecsv", "outdir"),
        *report_outputs(out, "report", args.report_format, ["trends_teff"], args.plot_formats, "outdir"),
    ]


def _read_members(args):

    fmt = args.members_format
    if fmt == "auto":
        fmt = "apogee-dr10" if str(args.members).lower().endswith(".txt") else "table"
    if fmt == "apogee-dr10":
        return read_apogee_cluster_members(args.members), "ID", "CLUSTER"
    return read_labels(args.members, id_column=args.id_column), args.id_column, args.cluster_column


def run(args) -> int:
    import numpy as np

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    cat, names = catalogue_labels(args)
    missing = [n for n in names if n not in cat.colnames]
    if missing:
        raise InvalidInputError(f"catalogue lacks label column(s) {missing}")
    if args.id_column not in cat.colnames:
        raise InvalidInputError(f"catalogue has no id column {args.id_column!r}")
    members, mid, mcl = _read_members(args)
    ids = np.asarray(cat[args.id_column]).astype(str)
    y = np.column_stack([np.ma.filled(np.ma.asarray(cat[n], dtype=float), np.nan) for n in names])
    excl = BAD_FIT_FLAGS if args.exclude_flags is None else args.exclude_flags
    good = (np.asarray(cat["FLAGS"]) & excl) == 0 if "FLAGS" in cat.colnames else None
    lit = read_labels(args.literature) if args.literature else None
    stats = cluster_statistics(
        ids,
        y,
        members,
        names,
        literature=lit,
        min_members=args.min_members,
        good=good,
        id_column=mid,
        cluster_column=mcl,
    )
    files = [write_table(stats, out / "cluster_statistics.ecsv", overwrite=args.overwrite)]
    rep = Report(f"Cluster validation of {Path(args.catalogue).name}", formats=args.plot_formats)
    n_ok = int((stats["STATUS"] == "ok").sum())
    rep.add_text(
        f"{len(stats)} clusters in {Path(args.members).name}; {n_ok} with at least {args.min_members} "
        "usable members in the catalogue."
    )
    rep.add_table(stats, caption="per cluster: median, scatter (std), half 16-84 width, literature, offset")
    if lit is None:
        shipped = literature_table()
        refs = "; ".join(f"{k}: {v}" for k, v in shipped.meta.get("references", {}).items())
        blank = [str(r["CLUSTER"]) for r in shipped if np.ma.is_masked(r["FE_H"])]
        rep.add_text(
            f"Literature [Fe/H]: the shipped table (bayescannon/data/{LITERATURE_TABLE}; LIT_SOURCE per "
            f"cluster). References: {refs}. No sourced value for {', '.join(blank)}: their offsets are masked; "
            "give your own table with --literature."
        )
    else:
        rep.add_text(f"Literature values from {Path(args.literature).name}.")
    ys = [n for n in ("FE_H", "ALPHA_FE", "ALPHA_M", "M_H") if n in names]
    if "TEFF" in names and ys:
        trends = cluster_trends(
            ids,
            y,
            members,
            names,
            x="TEFF",
            y=ys,
            min_members=max(args.min_members, 3),
            good=good,
            id_column=mid,
            cluster_column=mcl,
        )
        files.append(write_table(trends, out / "cluster_trends.ecsv", overwrite=args.overwrite))
        rep.add_heading("Trends with Teff")
        rep.add_table(trends, caption="least-squares slope per 1000 K")
        rep.add_figure(
            _trend_figure(ids, y, names, members, mid, mcl, ys, good, stats),
            "trends_teff",
            caption="labels of cluster members vs Teff (Nandakumar+2022 Figs 12-13)",
        )
    rep.add_files([f.name for f in files])
    rp = rep.write(out / f"report.{args.report_format}")
    summary = {
        "report": str(rp),
        "n_clusters": len(stats),
        "n_validated": n_ok,
        "clusters": {str(r["CLUSTER"]): str(r["STATUS"]) for r in stats},
        "files": [str(f) for f in files],
    }
    print_summary(args, summary, f"{n_ok} of {len(stats)} clusters validated; report {rp}")
    return 0


def _trend_figure(ids, y, names, members, mid, mcl, ys, good, stats):
    import numpy as np

    cl = match_members(ids, members, id_column=mid, cluster_column=mcl)
    use = cl != ""
    if good is not None:
        use &= good
    ok_clusters = [str(c) for c, s in zip(stats["CLUSTER"], stats["STATUS"]) if s == "ok"]
    fig, axes = new_figure(len(ys), panel=(5.0, 3.4))
    ti = names.index("TEFF")
    for ax, name in zip(axes, ys):
        q = names.index(name)
        for i, c in enumerate(ok_clusters):
            sel = use & (cl == c)
            ax.plot(y[sel, ti], y[sel, q] - np.nanmedian(y[sel, q]), ".", ms=3, color=f"C{i % 10}", label=c)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xlabel("Teff (K)")
        ax.set_ylabel(f"{name} − cluster median")
    if ok_clusters:
        axes[0].legend(fontsize=5, ncol=2)
    return fig
