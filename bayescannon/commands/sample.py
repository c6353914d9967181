"""``bayescannon sample``: model + spectra + star ids → posterior file and diagnostics."""

from __future__ import annotations

from pathlib import Path

from bayescannon.bayes import sample_labels
from bayescannon.bayes.diagnostics import save_posterior, summary_table
from bayescannon.commands._common import load_spectra
from bayescannon.commands._figures import add_figures_argument, write_figures
from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, note, print_summary, say
from bayescannon.errors import InvalidInputError
from bayescannon.model import CannonModel
from bayescannon.pipeline.atomic import write_atomic
from bayescannon.plots import corner_from_tree

NAME = "sample"
HELP = "sample label posteriors (NUTS) of selected stars; write a DataTree and a diagnostics table"


def add_arguments(p):
    p.add_argument("model", help="model file (.nc or .zarr)")
    p.add_argument("spectra", help="spectra on the model's grid (.nc, .npz or bayescannon FITS)")
    p.add_argument("-o", "--output", required=True, help="posterior file to write (.nc or .zarr)")
    p.add_argument("--ids", nargs="+", metavar="ID", help="star ids to sample (default: all stars)")
    p.add_argument("--ids-file", help="text file with one star id per line")
    p.add_argument("--draws", type=int, default=1000, help="posterior draws kept per chain")
    p.add_argument("--tune", type=int, default=1000, help="tuning (warm-up) steps per chain, discarded")
    p.add_argument("--chains", type=int, default=4, help="independent chains per star (R-hat needs >= 2)")
    p.add_argument("--batch-size", type=int, default=1, help="stars per sampled model")
    p.add_argument("--prior", choices=["uniform", "normal"], default="uniform",
                   help="label prior: uniform over the training range widened by 25%% each side, or normal")  # fmt: skip
    p.add_argument("--no-theta-uncertainty", action="store_true", help="do not propagate the uncertainty of theta")
    p.add_argument("--summary", help="also write the diagnostics table (.csv)")
    p.add_argument("--seed", type=int, default=0)
    add_figures_argument(p)  # a corner plot per star (truth marked when SPECTRA has label columns)
    p.add_argument("--max-figures", type=int, default=10, help="corner plots of at most this many stars")
    add_json_argument(p)


def outputs(args):
    """The posterior file and the ``--summary`` table."""
    outs = [Output(Path(args.output), "output", (".nc", ".zarr"))]
    if args.summary:
        outs.append(Output(Path(args.summary), "summary", (".csv",)))
    return outs


def run(args) -> int:

    model = CannonModel.load(args.model)
    ds = load_spectra(args.spectra)
    select = list(args.ids or [])
    if args.ids_file:
        with open(args.ids_file) as fh:
            select += [line.strip() for line in fh if line.strip()]
    if not select:
        select = None
    elif len(set(select)) != len(select):
        raise InvalidInputError("star ids to sample are duplicated")
    n = len(select) if select else ds.sizes.get("star", 0)
    # the library only logs; the CLI says what it is doing before the first output. A cold
    # numba cache (the first run on a machine) is announced by its own log line
    note(f"sampling {n} stars (NUTS, {args.chains} chains x {args.tune}+{args.draws} steps) ...")
    tree = sample_labels(
        model,
        ds,
        select=select,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        batch_size=args.batch_size,
        prior=args.prior,
        propagate_theta=not args.no_theta_uncertainty,
        seed=args.seed,
    )
    save_posterior(tree, args.output, overwrite=args.overwrite)
    table = summary_table(tree)
    if args.summary:
        write_atomic(args.summary, lambda tmp: table.to_csv(tmp, index=False), overwrite=args.overwrite)
    diag = tree["diagnostics"].to_dataset()
    bad = [str(s) for s in diag["star"].values[~diag["converged"].values]]
    cols = ["star", "label_name", "mean", "sd", "laplace_sd", "r_hat", "ess_bulk", "n_divergent", "converged"]
    say(args, table[[c for c in cols if c in table]].to_string(index=False))
    figures = write_figures(args, corner_figures(tree, ds, model.label_names, args.max_figures) if args.figures else {})
    summary = {"posterior": str(args.output), "n_stars": int(diag.sizes["star"]), "not_converged": bad}
    if args.summary:
        summary["summary_table"] = str(args.summary)
    if figures:
        summary["figures"] = [str(f) for f in figures]
    print_summary(
        args,
        summary,
        f"wrote posteriors of {diag.sizes['star']} stars to {args.output}; "
        f"{len(bad)} not converged{': ' + ', '.join(bad[:10]) if bad else ''}",
    )
    return 3 if bad else 0


def corner_figures(tree, ds, names, limit: int) -> dict:
    """A corner plot of the posterior of each of the first ``limit`` sampled stars (MAP and
    Laplace errors marked), with the spectra file's labels marked as the truth when it has them."""
    star_ids = [str(s) for s in ds["star"].values] if "star" in ds.coords else []
    has_truth = all(n in ds for n in names)
    figs = {}
    for i, sid in enumerate([str(s) for s in tree.posterior["star"].values][:limit]):
        truth = None
        if has_truth and sid in star_ids:
            j = star_ids.index(sid)
            truth = [float(ds[n].values[j]) for n in names]
        figs[f"corner_{sid}"] = corner_from_tree(tree, i, truth=truth)
    return figs
