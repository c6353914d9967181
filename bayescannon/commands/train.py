"""``bayescannon train``: spectra file + label table → model file."""

from __future__ import annotations

import logging
from pathlib import Path

from bayescannon.commands._common import add_training_arguments, join_labels, load_spectra, parse_censors
from bayescannon.commands._outputs import MODEL_SUFFIXES, Output
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import InvalidInputError
from bayescannon.model import CannonModel
from bayescannon.pipeline.atomic import write_atomic
from bayescannon.validate import DEFAULT_REGULARIZATION_GRID, select_model

logger = logging.getLogger(__name__)

NAME = "train"
HELP = "train a Cannon model on spectra with known labels"


def add_arguments(p):
    add_training_arguments(p, "training", allow_cv=True)
    p.add_argument("-o", "--output", required=True, help="model file to write (.nc or .zarr)")
    p.add_argument(
        "--label-errors",
        nargs="+",
        metavar="COLUMN",
        help="1-sigma error columns of the label table, one per label in --labels order: the "
        "reference labels are then latent (errors-in-variables training)",
    )
    p.add_argument(
        "--trend-order",
        type=int,
        default=None,
        help="with --label-errors: order of the polynomial trend removed from the spectroscopic "
        "labels (default: the model order)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (start candidates)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_argument(p)


def outputs(args):
    """The model file, and with ``--order cv`` the CV table beside it."""
    outs = [Output(Path(args.output), "output", MODEL_SUFFIXES)]
    if str(args.order) == "cv":
        outs.append(Output(cv_table_path(args.output), "output", (".ecsv",)))
    return outs


def _cv_options(args) -> dict:
    """The ``--order cv`` options with their defaults; refuses them without ``--order cv`` (they
    would be ignored silently) and refuses ``--regularization`` with it (CV chooses L1)."""
    given = {
        "--order-max": args.order_max,
        "--regularization-grid": args.regularization_grid,
        "--cv-folds": args.cv_folds,
    }
    if args.order != "cv":
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise InvalidInputError(f"{', '.join(named)} only apply with --order cv (--order is {args.order})")
        return {}
    if args.regularization:
        raise InvalidInputError(
            f"--regularization {args.regularization:g} with --order cv: the L1 strength is chosen by "
            "cross-validation; give the candidates with --regularization-grid"
        )
    return {
        "max_order": 3 if args.order_max is None else args.order_max,
        "regularizations": list(DEFAULT_REGULARIZATION_GRID)
        if args.regularization_grid is None
        else args.regularization_grid,
        "n_folds": 5 if args.cv_folds is None else args.cv_folds,
    }


def run(args) -> int:
    cv_options = _cv_options(args)
    ds = load_spectra(args.spectra)
    label_errors = None
    if args.label_errors:
        if not args.labels_table:
            raise InvalidInputError("--label-errors needs a label table (the error columns are read from it)")
        if len(args.label_errors) != len(args.labels):
            raise InvalidInputError(
                f"--label-errors names {len(args.label_errors)} columns for {len(args.labels)} labels"
            )
        label_errors = join_labels(ds, args.labels_table, args.label_errors, args.id_column)
    if args.labels_table:
        labels = join_labels(ds, args.labels_table, args.labels, args.id_column)
    else:
        labels = ds
    cv = args.order == "cv"
    if cv and label_errors is not None:
        raise InvalidInputError("--order cv cannot be combined with --label-errors: give an integer --order")
    model = CannonModel(
        args.labels,
        2 if cv else args.order,
        regularization=args.regularization,
        censors=parse_censors(args.censor) or None,
        random_state=args.seed,
    )
    if cv:
        selection = select_model(
            model,
            ds,
            labels=labels,
            min_order=min(2, cv_options["max_order"]),
            **cv_options,
            random_state=args.seed,
            progressbar=not args.no_progress,
        )
        model = selection.model
    else:
        kw = {} if label_errors is None else {"label_errors": label_errors, "trend_order": args.trend_order}
        model.fit(ds, labels=labels, progressbar=not args.no_progress, **kw)
    model.save(args.output, overwrite=args.overwrite)
    flagged = int((model.pixel_flags_ != 0).sum())
    summary = {
        "model": str(args.output),
        "stars": model.n_training_stars_,
        "pixels": int(model.theta_.shape[0]),
        "flagged_pixels": flagged,
        "training_hash": model.training_hash_,
    }
    if cv:
        table_path = cv_table_path(args.output)
        table = selection.to_table()
        write_atomic(
            table_path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True), overwrite=args.overwrite
        )
        logger.info("CV table written to %s", table_path)
        summary.update(order=model.order, regularization=float(model.regularization), cv_table=str(table_path))
    if label_errors is not None:
        summary["latent_labels"] = {
            "iterations": int(model.latent_iterations_),
            "converged": bool(model.latent_converged_),
            "calibrated": bool(model.latent_calibrated_),
        }
    print_summary(args, summary, _summary_text(summary, model))
    return 0


def _summary_text(summary: dict, model) -> list[str]:
    """The human-readable form of ``train``'s summary."""
    lines = [
        f"trained an order-{model.order} model of {' '.join(model.label_names)} on {summary['stars']} stars x "
        f"{summary['pixels']} pixels ({summary['flagged_pixels']} pixels flagged); wrote {summary['model']}"
    ]
    if "cv_table" in summary:
        lines.append(
            f"order {summary['order']} and L1 strength {summary['regularization']:g} chosen by cross-validation "
            f"(table {summary['cv_table']})"
        )
    if "latent_labels" in summary:
        lat = summary["latent_labels"]
        lines.append(
            f"latent reference labels: {lat['iterations']} iterations, "
            f"{'converged' if lat['converged'] else 'NOT converged'}, "
            f"label errors {'calibrated' if lat['calibrated'] else 'not calibrated'}"
        )
    lines.append(f"training hash {summary['training_hash'][:16]}…")
    return lines


def cv_table_path(model_path) -> Path:
    """Where ``train --order cv`` writes the CV table: beside the model, ``<stem>.cv.ecsv``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.cv.ecsv")
