"""``bayescannon catalogue``: model + spectra → survey catalogue with quality flags and
a report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bayescannon.commands._common import load_spectra
from bayescannon.commands._figures import add_figures_argument, write_figures
from bayescannon.commands._outputs import TABLE_SUFFIXES, Output, report_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import InvalidInputError
from bayescannon.flags import StarFlag
from bayescannon.io import read_labels
from bayescannon.model import CannonModel
from bayescannon.plots import alpha_vs_feh, errors_vs_snr, kiel_diagram, label_distributions
from bayescannon.report import Report
from bayescannon.survey.catalogue import build_catalogue, join_ids, resolve_uncertainty, spectra_snr, write_table
from bayescannon.validate.quality import DEFAULT_DISTANCE_THRESHOLD, assess, flag_table, training_labels

NAME = "catalogue"
HELP = "infer labels and write a survey catalogue (FITS) with quality flags, survey labels and a report"
#: Figures of the report (written beside the catalogue).
FIGURES = ("kiel", "alpha_feh")


def add_arguments(p):
    p.add_argument("model", help="model file (.nc or .zarr)")
    p.add_argument("spectra", help="spectra on the model's grid (.nc, .npz or bayescannon FITS)")
    p.add_argument("-o", "--output", required=True, help="catalogue to write (.fits)")
    p.add_argument("--cv-summary", help="cv_summary.ecsv of `bayescannon validate`: unit of the label distance")
    p.add_argument(
        "--training-labels",
        help="table with the training labels (label columns), for the label "
        "distance and the convex-hull test when the model file does not hold them",
    )
    p.add_argument("--training-ids", help="table whose ID column lists the training spectra (IN_TRAINING)")
    p.add_argument("--distance-threshold", type=float, default=None, help="label distance flag threshold")
    p.add_argument("--no-hull", action="store_true", help="skip the convex-hull test")
    p.add_argument("--min-snr", type=float, default=None, help="flag LOW_SNR below this S/N")
    p.add_argument("--max-reduced-chi2", type=float, default=None, help="flag LARGE_CHI2 above this")
    p.add_argument("--min-pixels", type=int, default=None, help="flag FEW_PIXELS below this")
    p.add_argument("--survey-labels", help="the survey's own labels (FITS/CSV) to put beside the transferred ones")
    p.add_argument("--survey-id-column", default="ID", help="id column of --survey-labels")
    p.add_argument("--survey-name", default="SURVEY", help="prefix of the survey label columns")
    p.add_argument(
        "--survey-flags-column",
        help="variable of the spectra file (or column of --survey-labels) holding the survey pipeline's flags",
    )
    p.add_argument(
        "--uncertainty",
        choices=["auto", "calibrated", "formal"],
        default="auto",
        help="errors of the catalogue: calibrated whenever the model is calibrated (auto), or formal "
        "on request (said so in the header)",
    )
    p.add_argument("--n-starts", type=int, default=None, help="starting points per star (default: model's)")
    p.add_argument("--chunk-size", type=int, default=2000)
    p.add_argument("--report-format", choices=["md", "html"], default="html")
    p.add_argument("--plot-formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    p.add_argument("--no-progress", action="store_true")
    # errors vs S/N, label distributions, Kiel diagram
    add_figures_argument(p, formats=False)
    add_json_argument(p)


def outputs(args):
    """The catalogue, its flag table, its report and the report's figures (beside it)."""
    out = Path(args.output)
    return [
        Output(out, "output", TABLE_SUFFIXES),
        Output(out.with_name(out.stem + "_flags.ecsv"), "output"),
        *report_outputs(out.parent, out.stem + "_report", args.report_format, FIGURES, args.plot_formats, "output"),
    ]


def run(args) -> int:
    model = CannonModel.load(args.model)
    ds = load_spectra(args.spectra)
    uncertainty = resolve_uncertainty(model, args.uncertainty)
    result = model.infer(
        ds,
        n_starts=args.n_starts,
        chunk_size=args.chunk_size,
        uncertainty=uncertainty,
        progressbar=not args.no_progress,
    )
    names = list(model.label_names)
    training = None
    if args.training_labels:
        tt = read_labels(args.training_labels)
        missing = [n for n in names if n not in tt.colnames]
        if missing:
            raise InvalidInputError(f"{args.training_labels} lacks label column(s) {missing}")
        training = np.column_stack([np.asarray(tt[n], dtype=float) for n in names])
    elif getattr(model, "training_labels_scaled_", None) is not None:
        training = training_labels(model)
    scatter = None
    if args.cv_summary:
        cvs = read_labels(args.cv_summary)
        rows = {str(r["LABEL"]): float(r["RMS"]) for r in cvs}
        missing = [n for n in names if n not in rows]
        if missing:
            raise InvalidInputError(f"{args.cv_summary} has no row for label(s) {missing}")
        scatter = np.array([rows[n] for n in names])
    survey = read_labels(args.survey_labels, id_column=args.survey_id_column) if args.survey_labels else None
    sflags = None
    if args.survey_flags_column:
        if args.survey_flags_column in ds:
            sflags = np.asarray(ds[args.survey_flags_column].values, dtype=np.int64)
        elif survey is not None and args.survey_flags_column in survey.colnames:
            rows, hit = join_ids(ds["star"].values, survey[args.survey_id_column], what=args.survey_labels)
            sflags = np.where(hit, np.ma.filled(survey[args.survey_flags_column], 0).astype(np.int64)[rows], 0)
        else:
            raise InvalidInputError(
                f"no survey flag column {args.survey_flags_column!r} in the spectra or survey table"
            )
    snr = spectra_snr(ds)
    threshold = args.distance_threshold if args.distance_threshold is not None else DEFAULT_DISTANCE_THRESHOLD
    quality = assess(
        result,
        training=training,
        cv_scatter=scatter if training is not None else None,
        distance_threshold=threshold,
        hull=(not args.no_hull) and training is not None,
        snr=snr,
        min_snr=args.min_snr,
        max_reduced_chi2=args.max_reduced_chi2,
        min_pixels=args.min_pixels,
        survey_flags=sflags,
    )
    training_ids = None
    if args.training_ids:
        training_ids = np.asarray(read_labels(args.training_ids, id_column="ID")["ID"]).astype(str)
    config = {
        "model_file": str(args.model),
        "spectra": str(args.spectra),
        "distance_threshold": threshold,
        "min_snr": args.min_snr,
        "max_reduced_chi2": args.max_reduced_chi2,
        "min_pixels": args.min_pixels,
        "hull": not args.no_hull,
        "cv_summary": args.cv_summary,
    }
    cat = build_catalogue(
        model,
        result,
        spectra=ds,
        quality=quality,
        training_ids=training_ids,
        survey_labels=survey,
        survey_name=args.survey_name,
        survey_id_column=args.survey_id_column,
        uncertainty=uncertainty,
        config=config,
    )
    out = write_table(cat, args.output, overwrite=args.overwrite)
    ft = write_table(flag_table(quality), out.with_name(out.stem + "_flags.ecsv"), overwrite=args.overwrite)
    counts = [
        {"FLAG": f.name, "BIT": int(f).bit_length() - 1, "N": int(cat[f"FLAG_{f.name}"].sum())}
        for f in StarFlag
        if f"FLAG_{f.name}" in cat.colnames
    ]
    rep = Report(f"Catalogue {out.name}", formats=args.plot_formats)
    rep.add_text(
        f"{len(cat)} spectra; model {args.model} (training hash {model.training_hash_[:16]}…); "
        f"{int((cat['FLAGS'] == 0).sum())} without any flag."
    )
    rep.add_table(counts, caption="stars per flag bit")
    if training is None:
        rep.add_text(
            "No training labels available: label distance and convex-hull test skipped (pass --training-labels)."
        )
    elif scatter is None:
        rep.add_text("No cross-validation scatter given: label distance skipped (pass --cv-summary).")
    good = np.asarray(cat["FLAGS"] == 0)
    y = result["labels"].values
    finite = np.all(np.isfinite(y), axis=1)
    # plots show the unflagged stars, or every star with labels when few are unflagged
    show = good if good.sum() >= 10 else finite
    which = "unflagged stars" if show is good else "all stars with labels"
    figures = {}
    if "TEFF" in names and "LOGG" in names:
        fe = y[:, names.index("FE_H")] if "FE_H" in names else None
        if (
            survey is not None
            and f"{args.survey_name}_TEFF" in cat.colnames
            and f"{args.survey_name}_LOGG" in cat.colnames
        ):
            st = np.ma.filled(cat[f"{args.survey_name}_TEFF"].astype(float), np.nan)
            sg = np.ma.filled(cat[f"{args.survey_name}_LOGG"].astype(float), np.nan)
            fig = kiel_diagram(
                st,
                sg,
                color=fe,
                teff_after=y[:, names.index("TEFF")],
                logg_after=y[:, names.index("LOGG")],
                titles=(args.survey_name, "transferred"),
            )
        else:
            fig = kiel_diagram(
                y[show, names.index("TEFF")], y[show, names.index("LOGG")], color=None if fe is None else fe[show]
            )
        rep.add_figure(fig, "kiel", caption=f"Kiel diagram ({which})")
        figures["kiel"] = fig
    alpha = next((n for n in ("ALPHA_M", "ALPHA_FE") if n in names), None)
    if alpha and "FE_H" in names:
        rep.add_figure(
            alpha_vs_feh(y[show, names.index("FE_H")], y[show, names.index(alpha)], alpha_name=alpha),
            "alpha_feh",
            caption=f"{alpha} vs [Fe/H] ({which})",
        )
    rep.add_files([out.name, ft.name])
    rp = rep.write(out.with_name(out.stem + f"_report.{args.report_format}"))
    written = write_figures(
        args, catalogue_figures(result, names, snr, good, uncertainty) | figures if args.figures else {}
    )
    summary = {
        "catalogue": str(out),
        "flags_table": str(ft),
        "report": str(rp),
        "n_stars": len(cat),
        "n_flagged": int((~good).sum()),
        "uncertainty": uncertainty,
        "flag_counts": {c["FLAG"]: c["N"] for c in counts},
    }
    if written:
        summary["figures"] = [str(f) for f in written]
    print_summary(args, summary, f"wrote {len(cat)} stars to {out} ({int((~good).sum())} flagged); report {rp}")
    return 0


def catalogue_figures(result, names, snr, good, uncertainty: str) -> dict:
    """Figures of a catalogue: the quoted errors against S/N and the distribution of each
    label (all stars with a value, and the unflagged ones)."""
    y = result["labels"].values
    return {
        "errors_vs_snr": errors_vs_snr(snr, {uncertainty: result["errors"].values}, names),
        "label_distributions": label_distributions({"all": y, "unflagged": y[good]}, names),
    }
