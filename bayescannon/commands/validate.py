"""``bayescannon validate``: k-fold cross-validation + bootstrap + report."""

from __future__ import annotations

from pathlib import Path

from bayescannon.bayes.calibration import calibrate_from_predictions
from bayescannon.censoring import resolve_censors
from bayescannon.commands._common import (
    add_dask_argument,
    add_training_arguments,
    check_dask_argument,
    join_labels,
    load_spectra,
    parse_censors,
)
from bayescannon.commands._figures import add_figures_argument, coverage_levels, write_figures
from bayescannon.commands._outputs import MODEL_SUFFIXES, Output, report_outputs
from bayescannon.commands._summary import add_json_argument, print_summary, say
from bayescannon.commands.calibrate import print_binned_coverage
from bayescannon.core import scaling
from bayescannon.core.uncertainty import calibrated_errors, calibration_bias, epsilon
from bayescannon.flags import StarFlag
from bayescannon.model import CannonModel
from bayescannon.pipeline.cluster import open_executor
from bayescannon.plots import (
    binned_statistics_plot,
    coefficient_spectra,
    coverage_curve,
    coverage_map,
    errors_vs_snr,
    one_to_one,
    residual_band,
    scatter_vs_snr,
    zscore_histogram,
)
from bayescannon.report import Report
from bayescannon.survey.catalogue import write_table
from bayescannon.validate.bootstrap import bootstrap
from bayescannon.validate.crossval import cross_validate

NAME = "validate"
HELP = "cross-validate a Cannon model on its reference set (k-fold + bootstrap) and write a report"


def add_arguments(p):
    add_training_arguments(p, "reference")
    p.add_argument("--n-folds", type=int, default=8, help="folds (Ho+2017: 8; Nandakumar+2022: 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and bootstrap")
    p.add_argument("--n-jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=20,
        metavar="N",
        help="bootstrap models of the reference set (Ho+2017: 20; 0 = skip)",
    )
    p.add_argument("--snr-column", default="snr", help="per-star S/N variable of the spectra file")
    p.add_argument(
        "--model-out",
        default=None,
        help="also save the model trained on all reference stars "
        "(it draws the coefficient and residual plots in any case)",
    )
    p.add_argument("-o", "--outdir", default="validation", help="output folder")
    p.add_argument("--report-format", choices=["md", "html"], default="html")
    p.add_argument("--plot-formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dask_argument(p)
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip calibrating the uncertainties on the cross-validated residuals (and its coverage per bin)",
    )
    # one-to-one of the CV labels, coverage curve, z-score histogram, errors vs S/N
    add_figures_argument(p, formats=False)
    add_json_argument(p)


#: Tables written to ``--outdir``; figures of its report.
FILES = (
    "cv_predictions.fits",
    "cv_summary.ecsv",
    "cv_by_label.ecsv",
    "cv_by_snr.ecsv",
    "bootstrap_summary.ecsv",
    "bootstrap.fits",
)
FIGURES = ("one_to_one", "scatter_vs_snr", "by_label", "coverage_map", "coefficients", "residuals")


def outputs(args):
    """The tables, the report and its figures in ``--outdir``; the ``--model-out`` file."""
    out = Path(args.outdir)
    outs = [Output(out / f, "outdir") for f in FILES]
    outs += report_outputs(out, "report", args.report_format, FIGURES, args.plot_formats, "outdir")
    if args.model_out:
        outs.append(Output(Path(args.model_out), "model_out", MODEL_SUFFIXES))
    return outs


def run(args) -> int:
    check_dask_argument(args)
    with open_executor(args.dask) as executor:
        return _run(args, None if not args.dask else executor)


def _run(args, executor) -> int:
    import numpy as np

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_spectra(args.spectra)
    labels = join_labels(ds, args.labels_table, args.labels, args.id_column) if args.labels_table else ds
    censors = parse_censors(args.censor) or None
    model = CannonModel(
        args.labels,
        args.order,
        regularization=args.regularization,
        censors=censors,
        random_state=args.seed,
    )
    snr = ds[args.snr_column].values if args.snr_column in ds else None

    def run_cv(m):
        return cross_validate(
            m,
            ds,
            labels=labels,
            n_folds=args.n_folds,
            random_state=args.seed,
            snr=snr,
            n_jobs=args.n_jobs,
            progressbar=not args.no_progress,
            executor=executor,
        )

    cv = run_cv(model)
    cv_summary = cv.summary
    if censors:
        # the same folds without censoring: the scatter of censored labels is reported beside
        # the uncensored one (Nandakumar+2022 §3.4)
        cv_unc = run_cv(
            CannonModel(args.labels, args.order, regularization=args.regularization, random_state=args.seed)
        )
        cv_summary = _with_uncensored(cv.summary, cv_unc.summary, model)
    files = [
        write_table(cv.to_table(), out / "cv_predictions.fits", overwrite=args.overwrite),
        write_table(cv_summary, out / "cv_summary.ecsv", overwrite=args.overwrite),
        write_table(cv.by_label, out / "cv_by_label.ecsv", overwrite=args.overwrite),
    ]
    rep = Report(f"Cross-validation of {' '.join(args.labels)}", formats=args.plot_formats)
    rep.add_text(
        f"{ds.sizes['star']} reference spectra x {ds.sizes['pixel']} pixels; {args.n_folds}-fold "
        f"cross-validation with folds fixed by seed {args.seed}; order {args.order}, "
        f"regularization {args.regularization}."
    )
    rep.add_heading("Bias and scatter per label")
    rep.add_table(
        cv_summary,
        caption="cross-validated labels − reference labels"
        + ("; *_UNCENSORED: the same folds without censoring; CENSORED: the label is censored" if censors else ""),
    )
    ref, inf = cv.predictions["reference"].values, cv.predictions["labels"].values
    o2o = one_to_one(ref, inf, args.labels, color=snr, color_label="S/N" if snr is not None else None)
    rep.add_figure(o2o, "one_to_one", caption="cross-validated vs reference labels")
    if snr is not None:
        files.append(write_table(cv.by_snr, out / "cv_by_snr.ecsv", overwrite=args.overwrite))
        rep.add_heading("In S/N bins")
        rep.add_table(cv.by_snr, caption="bias and scatter in S/N bins")
        rep.add_figure(scatter_vs_snr(cv), "scatter_vs_snr", caption="bias and scatter vs S/N (Ho+2017 Fig. 8)")
    rep.add_heading("In label bins")
    rep.add_table(cv.by_label, caption="bias and scatter in bins of the reference labels")
    rep.add_figure(binned_statistics_plot(cv.by_label), "by_label", caption="bias and scatter vs reference label")
    # the model of the whole reference set: its coefficients and residuals
    full = CannonModel(
        **{k: getattr(model, k) for k in ("label_names", "order", "regularization", "censors", "random_state")}
    )
    full.fit(ds, labels=labels, progressbar=False)
    coverage = None
    if not args.no_calibration:
        coverage = _calibrate_on_cv(full, cv, ds, snr)
        summary_cal = {"calibration_coverage_68": coverage}
        rep.add_heading("Calibrated uncertainties: coverage per bin")
        rep.add_text(
            "The model's uncertainties calibrated on the cross-validated residuals (learned label bias, "
            "error model, Mondrian width factors; docs/guides/calibration.md). Coverage of the calibrated 68% "
            "intervals per quintile of S/N and of each reference label, on the same residuals."
        )
        rep.add_figure(
            coverage_map(full.calibration_["coverage_by_bin"], args.labels),
            "coverage_map",
            caption="68% coverage per quintile (target band 0.68 +- 0.05 shaded)",
        )
    if args.model_out:
        full.save(args.model_out, overwrite=args.overwrite)
        files.append(Path(args.model_out))
    rep.add_heading("Model of the whole reference set")
    rep.add_figure(
        coefficient_spectra(full),
        "coefficients",
        caption="linear-term coefficients per label and model scatter s (Ho+2017 Fig. 5)",
    )
    yref = cv.predictions["reference"].values
    rep.add_figure(
        residual_band(full, ds["flux"].values, ds["ivar"].values, yref),
        "residuals",
        caption="per-pixel median residual and 16-84% band over the reference set (Nandakumar+2022 Figs 5-6)",
    )
    summary = {
        "cv": {
            r["LABEL"]: {"bias": float(r["BIAS"]), "rms": float(r["RMS"]), "half_p16_84": float(r["HALF_P16_84"])}
            for r in cv.summary
        }
    }
    if "RMS_UNCENSORED" in cv_summary.colnames:
        summary["cv_uncensored"] = {
            r["LABEL"]: {
                "bias": float(r["BIAS_UNCENSORED"]),
                "rms": float(r["RMS_UNCENSORED"]),
                "censored": bool(r["CENSORED"]),
            }
            for r in cv_summary
        }
    if coverage is not None:
        summary.update(summary_cal)
    if args.bootstrap:
        boot = bootstrap(
            model,
            ds,
            labels=labels,
            n_boot=args.bootstrap,
            random_state=args.seed,
            n_jobs=args.n_jobs,
            progressbar=not args.no_progress,
            executor=executor,
        )
        files += [
            write_table(boot.summary, out / "bootstrap_summary.ecsv", overwrite=args.overwrite),
            write_table(boot.to_table(), out / "bootstrap.fits", overwrite=args.overwrite),
        ]
        rep.add_heading("Bootstrap of the reference set")
        rep.add_text(
            f"{args.bootstrap} models trained on resamples of the reference set (Ho+2017 §4.2); "
            "sigma is the spread of the labels they give each star: the uncertainty due to the "
            "finite reference set."
        )
        rep.add_table(boot.summary)
        summary["bootstrap_median_sigma"] = {r["LABEL"]: float(r["MEDIAN_SIGMA"]) for r in boot.summary}
    rep.add_files([Path(f).name for f in files])
    path = rep.write(out / f"report.{args.report_format}")
    figures = write_figures(
        args, {"one_to_one": o2o, **_uncertainty_figures(full, cv, ds, snr)} if args.figures else {}
    )
    say(
        args,
        *(
            f"{row['LABEL']:>10}  bias {row['BIAS']:+.4g}  rms {row['RMS']:.4g}  "
            f"(p84-p16)/2 {row['HALF_P16_84']:.4g}  n={row['N']}"
            for row in cv.summary
        ),
    )
    if coverage is not None:
        print_binned_coverage(full.calibration_["coverage_by_bin"], args.labels, args=args)
    summary = {"report": str(path), "n_stars": int(ds.sizes["star"]), "n_folds": args.n_folds, **summary}
    if figures:
        summary["figures"] = [str(f) for f in figures]
    print_summary(
        args,
        summary,
        f"{args.n_folds}-fold cross-validation of {ds.sizes['star']} stars; tables and report {path}",
    )
    return 0 if np.isfinite(cv.summary["RMS"]).all() else 1


def _cv_estimates(pred):
    """Cross-validated estimates with the unusable stars (no pixels, not converged, singular
    covariance) set to NaN."""
    import numpy as np

    est = np.array(pred["labels"].values, dtype=float)
    bad = StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED | StarFlag.SINGULAR_COVARIANCE
    est[(np.asarray(pred["flags"].values) & int(bad)) != 0] = np.nan
    return est


def _uncertainty_figures(model, cv, ds, snr) -> dict:
    """Coverage curve and z-score histogram of the cross-validated labels' formal errors and,
    when ``model`` was calibrated on these residuals, of the calibrated errors (in-sample:
    the calibration saw these residuals); errors vs S/N when the S/N is known."""
    import numpy as np

    pred = cv.predictions
    names = [str(n) for n in pred["label_name"].values]
    est, ref = _cv_estimates(pred), pred["reference"].values
    cov = pred["covariance"].values
    errors = {"formal": np.sqrt(np.einsum("nkk->nk", cov))}
    z = {"formal": (est - ref) / errors["formal"]}
    if model.calibration_ is not None:
        x = scaling.scale(np.nan_to_num(est), model.label_offset_, model.label_scale_)
        _, sd, _, _ = calibrated_errors(model, cov, x, epsilon(model, x, ds["ivar"].values))
        kind = "calibrated (in-sample)"
        errors[kind] = sd
        z[kind] = (est - calibration_bias(model.calibration_, x) - ref) / sd
    levels = coverage_levels(z, model.calibration_, calibrated_kinds=("calibrated (in-sample)",))
    figs = {"coverage_curve": coverage_curve(levels, names, kind="level"), "zscores": zscore_histogram(z, names)}
    if snr is not None:
        figs["errors_vs_snr"] = errors_vs_snr(snr, errors, names)
    return figs


def _with_uncensored(censored, uncensored, model):
    """The CV summary of the censored model with the uncensored model's bias and scatter
    beside it (``BIAS_UNCENSORED``, ``RMS_UNCENSORED``, ``HALF_P16_84_UNCENSORED``) and
    ``CENSORED`` (whether the label is censored), rows matched by label."""
    import numpy as np

    out = censored.copy()
    unc = {str(r["LABEL"]): r for r in uncensored}
    for col in ("BIAS", "RMS", "HALF_P16_84"):
        out[f"{col}_UNCENSORED"] = [float(unc[str(n)][col]) for n in out["LABEL"]]
        out[f"{col}_UNCENSORED"].description = f"{col} of the same folds without censoring"
    windows = resolve_censors(model.censors, model.label_names) or {}
    out["CENSORED"] = np.array([str(n) in windows for n in out["LABEL"]], dtype=bool)
    return out


def _calibrate_on_cv(model, cv, ds, snr):
    """Calibrate ``model`` on the cross-validated residuals (θ leverage of the full model);
    returns the 68 % coverage per bin (by → list of per-label lists)."""
    import numpy as np

    pred = cv.predictions
    est = _cv_estimates(pred)
    fvar = np.einsum("nkk->nk", pred["covariance"].values)
    x = scaling.scale(np.nan_to_num(est), model.label_offset_, model.label_scale_)
    eps = epsilon(model, x, ds["ivar"].values)
    cal = calibrate_from_predictions(
        model, est, fvar, pred["reference"].values, eps=eps, snr=snr, source=f"cv-{int(pred['fold'].max()) + 1}"
    )
    return {by: d["68"] for by, d in cal["coverage_by_bin"].items()}
