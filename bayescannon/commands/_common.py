"""Shared helpers of CLI commands: reading spectra + labels, joining by id."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bayescannon.censoring import PRESETS
from bayescannon.errors import InvalidInputError, LabelError
from bayescannon.io import read_labels, read_spectra
from bayescannon.pipeline.cluster import parse_dask_spec
from bayescannon.spectra import join_ids, label_values
from bayescannon.survey.catalogue import read_catalogue
from bayescannon.validate import DEFAULT_REGULARIZATION_GRID


def load_spectra(path):

    return read_spectra(path)


def join_labels(ds, labels_path, label_names, id_column):
    """Labels for the stars of ``ds`` from a FITS/CSV table, joined on ``id_column``.

    Missing values (empty or "n/a" cells, masked entries, NaN, sentinels such as -9999;
    see :func:`bayescannon.io.read_labels`) are never turned into numbers: a star of ``ds``
    whose label is missing is a ``LabelError`` naming it, so that a training set is
    exactly the stars given (leave such stars out of the spectra file to train without them).
    """
    table = read_labels(labels_path, id_column=id_column)
    if id_column not in table.colnames:
        raise LabelError(f"label table {labels_path} has no id column {id_column!r}; columns: {table.colnames}")
    missing = [n for n in label_names if n not in table.colnames]
    if missing:
        raise LabelError(f"label table {labels_path} has no column(s) {missing}")
    ids = np.asarray(table[id_column]).astype(str)
    star = np.asarray(ds["star"].values).astype(str)
    rows, hit = join_ids(star, ids, what=f"label table {labels_path} ({id_column})", require="none")
    if not hit.all():
        miss = star[~hit]
        raise LabelError(f"{miss.size} spectra have no row in the label table (e.g. {', '.join(miss[:3])})")
    values, code = label_values(table[list(label_names)][rows], label_names)
    if (code > 0).any():
        who = np.flatnonzero((code > 0).any(axis=1))
        k = int(np.argmax(code[who[0]] > 0))
        raise LabelError(
            f"label table {labels_path}: {who.size} of {star.size} stars have a missing label value "
            f"(empty, 'n/a', masked, NaN or a sentinel such as -9999), e.g. {label_names[k]} of star "
            f"{star[who[0]]} (row {int(rows[who[0]])}); ids: {', '.join(star[who[:10]])}"
            + (" ..." if who.size > 10 else "")
            + "; remove these stars from the spectra or give them labels"
        )
    return values


def parse_censors(items):
    """``LABEL:lo-hi,lo-hi`` strings → {label: [(lo, hi), ...]}; ``LABEL:PRESET`` or
    ``LABEL:TABLE`` → the union of a preset's or window table's windows for LABEL; a lone
    ``PRESET`` or ``TABLE`` (e.g. ``nandakumar2022-apogee``) → windows mapped to the labels
    by name (:func:`bayescannon.censoring.resolve_censors`)."""
    out = {}
    items = list(items or [])
    for item in items:
        if ":" not in item:
            if len(items) > 1:
                raise InvalidInputError(f"censor {item!r} names a preset or table: give it alone, or as LABEL:{item}")
            return item
        name, spec = item.split(":", 1)
        if spec in PRESETS or Path(spec).is_file():
            out[name] = spec
            continue
        try:
            name, spec = item.split(":", 1)
            windows = [tuple(float(v) for v in w.split("-", 1)) for w in spec.split(",") if w]
        except ValueError as exc:
            raise InvalidInputError(f"cannot parse censor {item!r}; expected LABEL:lo-hi,lo-hi") from exc
        out[name] = windows
    return out


def order_argument(text: str):
    """``--order`` value: a positive integer or ``cv`` (chosen by cross-validation)."""
    if text.strip().lower() == "cv":
        return "cv"
    try:
        order = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer order or 'cv'; got {text!r}") from None
    if order < 1:
        raise argparse.ArgumentTypeError(f"the order must be >= 1; got {order}")
    return order


def add_training_arguments(p, what: str, *, allow_cv: bool = False) -> None:
    """Arguments shared by the commands that fit models on a reference set (``train``,
    ``validate``): spectra, label table, label names, id column, order, regularisation,
    censoring windows; with ``allow_cv`` also ``--order cv`` and the options of the
    cross-validated choice (:func:`bayescannon.validate.select_model`)."""
    p.add_argument("spectra", help=f"{what} spectra (.nc, .npz or bayescannon FITS)")
    p.add_argument(
        "labels_table",
        nargs="?",
        help="label table (FITS or CSV) with an id column; default: label columns stored in the spectra file",
    )
    p.add_argument("--labels", nargs="+", required=True, metavar="NAME", help="label names, e.g. TEFF LOGG FE_H")
    p.add_argument("--id-column", default="ID", help="id column of the label table (default ID)")
    if allow_cv:
        p.add_argument(
            "--order",
            type=order_argument,
            default=2,
            help="polynomial order (default 2), or 'cv': order and L1 strength chosen by k-fold "
            "cross-validation on the training set (the CV table is written next to the model as <model>.cv.ecsv)",
        )
        p.add_argument("--order-max", type=int, default=None, help="with --order cv: highest order tried (default 3)")
        p.add_argument(
            "--regularization-grid",
            type=float,
            nargs="+",
            default=None,
            metavar="L1",
            help="with --order cv: L1 strengths tried (default "
            + " ".join(f"{r:g}" for r in DEFAULT_REGULARIZATION_GRID)
            + ")",
        )
        p.add_argument("--cv-folds", type=int, default=None, help="with --order cv: number of folds (default 5)")
    else:
        p.add_argument("--order", type=int, default=2, help="polynomial order (default 2)")
    p.add_argument("--regularization", type=float, default=0.0, help="L1 strength on non-constant terms")
    p.add_argument(
        "--censor",
        action="append",
        metavar="LABEL:LO-HI,...",
        help="wavelength windows (A) where LABEL may act; repeatable; or LABEL:PRESET, or a lone preset "
        "name / window table (ELEMENT, WAVE_LO, WAVE_HI) mapped to the labels by name, e.g. nandakumar2022-apogee",
    )


def catalogue_labels(args):
    """Read ``args.catalogue`` and the label names to use (``--labels`` or its LABELS card)."""
    cat = read_catalogue(args.catalogue)
    names = args.labels or str(cat.meta.get("LABELS", "")).split()
    if not names:
        raise InvalidInputError("give --labels: the catalogue has no LABELS header card")
    return cat, names


def add_dask_argument(p) -> None:
    """``--dask SPEC``: run the command's chunks (or folds, or Monte Carlo blocks) on Dask."""
    p.add_argument(
        "--dask",
        metavar="SPEC",
        default=None,
        help="run on Dask: local:N (a local cluster of N worker processes x 1 thread), tcp://HOST:PORT "
        "(an existing scheduler) or a dask-jobqueue YAML file (SLURM/PBS; see docs/scale.md); "
        "needs the dask extra (pip install 'bayescannon[dask]')",
    )


def check_dask_argument(args) -> None:
    """Parse ``--dask`` before any work, so that a malformed spec is a typed error at once."""
    if getattr(args, "dask", None):
        parse_dask_spec(args.dask)


def at_least(low: int):
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
        return value

    return parse
