"""``bayescannon calibrate``: fit the calibrated error model and report coverage."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bayescannon.bayes import calibrate, coverage_report
from bayescannon.bayes.calibration import binned_coverage_arrays, refuse_seen_stars, same_stars, training_stars
from bayescannon.commands._common import join_labels, load_spectra
from bayescannon.commands._figures import add_figures_argument, coverage_levels, write_figures
from bayescannon.commands._outputs import MODEL_SUFFIXES, Output
from bayescannon.commands._summary import add_json_argument, print_summary, say
from bayescannon.core.level_scale import DEFAULT_LEVEL_ESTIMATOR, LEVEL_ESTIMATORS
from bayescannon.errors import LabelError
from bayescannon.model import CannonModel
from bayescannon.pipeline.atomic import write_atomic
from bayescannon.plots import coverage_curve, coverage_map, errors_vs_snr, zscore_histogram

NAME = "calibrate"
HELP = "calibrate label uncertainties on stars with known labels and report interval coverage"


def add_arguments(p):
    p.add_argument("model", help="model file (.nc or .zarr)")
    p.add_argument("spectra", help="spectra with known labels (.nc, .npz or bayescannon FITS)")
    p.add_argument(
        "labels_table", nargs="?", help="label table with an id column (default: label columns of the spectra file)"
    )
    p.add_argument("--id-column", default="ID")
    p.add_argument(
        "--error-prefix", default="e_", help="columns <prefix><LABEL> hold reference-label errors, if present"
    )
    p.add_argument(
        "--n-folds",
        type=int,
        default=0,
        help="0: the spectra are held out from training; >= 2: K-fold cross-validation (refits the model)",
    )
    p.add_argument(
        "--fold-size-correction",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with --n-folds >= 3: a second, 2-fold CV extrapolates the residual scale to the full training set "
        "(A + B/m; applied where significant). Off by default: the 1/m law does not hold everywhere "
        "(docs/guides/calibration.md); a held-out set (--n-folds 0) needs no correction",
    )
    p.add_argument(
        "--level-estimator",
        choices=LEVEL_ESTIMATORS,
        default=DEFAULT_LEVEL_ESTIMATOR,
        help="estimator of each label's overall 68%% interval scale: the split-conformal quantile, or a "
        "maximum-likelihood Student-t (parametric: the better of a t and a generalised normal) fitted to all "
        "standardised residuals, used where it agrees with the conformal one within 2 binomial sd "
        "(docs/guides/calibration.md)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="only report coverage with the model's current calibration"
    )
    p.add_argument("--holdout", help="spectra file of held-out stars (with label columns) for the coverage report")
    p.add_argument(
        "-o",
        "--output",
        help="write the calibrated model here (default: MODEL_calibrated.nc beside MODEL; MODEL itself is "
        "never replaced)",
    )
    p.add_argument("--report", help="write the coverage report (.nc)")
    add_figures_argument(p)  # coverage curve, z-score histogram, errors vs S/N, coverage map
    add_json_argument(p)


def calibration_noise(cal: dict) -> tuple[int, float]:
    """The calibration's usable stars and the binomial sd of a quintile bin's 68 % coverage
    on them: how well the calibration set pins down the coverage of a region."""
    bins = cal.get("coverage_by_bin") or {}
    n = int(sum(next(iter(bins.values()))["n"])) if bins else 0
    return n, float(np.sqrt(0.68 * 0.32 / max(n / 5, 1)))


def model_output(args) -> Path:
    """Where the calibrated model goes: ``-o``, or ``<MODEL stem>_calibrated<suffix>`` beside MODEL."""
    if args.output:
        return Path(args.output)
    model = Path(args.model)
    return model.with_name(f"{model.stem}_calibrated{model.suffix}")


def outputs(args):
    """The calibrated model (unless ``--report-only``) and the ``--report`` file."""
    outs = [] if args.report_only else [Output(model_output(args), "output", MODEL_SUFFIXES)]
    if args.report:
        outs.append(Output(Path(args.report), "report", (".nc",)))
    return outs


def _labels_and_errors(ds, path, names, id_column, prefix):
    import numpy as np

    if path:
        labels = join_labels(ds, path, names, id_column)
        try:
            errors = join_labels(ds, path, [prefix + n for n in names], id_column)
        except LabelError:  # no error columns in the table: errors unknown
            errors = None
        return labels, errors
    labels = np.column_stack([ds[n].values for n in names])
    errors = None
    if all(prefix + n in ds for n in names):
        errors = np.column_stack([ds[prefix + n].values for n in names])
    return labels, errors


def _check_holdout(args, model, holdout_labels, calibration_labels) -> None:
    """A ``--holdout`` set must be held out from both the training and the calibration
    stars, else its coverage is in-sample and says nothing about new stars. Stars count as
    the same when their reference labels are equal. Mostly the same stars: an error; a
    few: a warning naming them."""
    checks = [("training", training_stars(model, holdout_labels))]
    if calibration_labels is not None:
        checks.append(("calibration", same_stars(model, holdout_labels, calibration_labels)))
    for what, seen in checks:
        refuse_seen_stars(
            seen,
            f"--holdout stars ({args.holdout})",
            what,
            "; their coverage is in-sample, not that of new stars",
            ": use stars held out from both training and calibration",
            "held-out set",
        )


def run(args) -> int:

    model = CannonModel.load(args.model)
    ds = load_spectra(args.spectra)
    labels, errors = _labels_and_errors(ds, args.labels_table, model.label_names, args.id_column, args.error_prefix)
    if args.holdout:  # read (and checked) before anything is written
        hd = load_spectra(args.holdout)
        hl, he = _labels_and_errors(hd, None, model.label_names, args.id_column, args.error_prefix)
        _check_holdout(args, model, hl, None if args.report_only else labels)
    if not args.report_only:
        calibrate(
            model,
            ds["flux"].values,
            ds["ivar"].values,
            labels,
            label_errors=errors,
            n_folds=args.n_folds,
            fold_size_correction=args.fold_size_correction,
            level_estimator=args.level_estimator,
        )
        out = model_output(args)
        model.save(out, overwrite=args.overwrite)
        say(args, f"calibration ({model.calibration_['source']}) written to {out}")
        n_cal, cell_sd = calibration_noise(model.calibration_)
        say(
            args,
            f"{n_cal} calibration stars ({n_cal / 5:.0f} per quintile): a quintile's 68 % coverage is known to "
            f"+-{cell_sd:.3f} (1 sigma, binomial), and the calibrated intervals' coverage per region of new stars "
            "scatters by about that much (docs/guides/calibration.md, 'Where the misses come from')",
        )
        ls = model.calibration_.get("level_scale") or {}
        if ls.get("requested", "conformal") != "conformal":
            say(
                args,
                f"68 % level ({ls['requested']}, guard {ls['guard_sd']:g} binomial sd): "
                + ", ".join(
                    f"{name} {used}" + ("" if d is None else f" ({d:+.2f} sd)")
                    for name, used, d in zip(model.label_names, ls["used"], ls["disagreement_sd"], strict=True)
                ),
            )
        fs = model.calibration_.get("fold_size")
        if fs:
            m1, m2, n = fs["sizes"]
            say(args, f"fold-size correction (rms r/sd on {m1:g} and {m2:g} stars -> {n:g}; median sd factor):")
            for j, name in enumerate(model.label_names):
                say(
                    args,
                    f"{name:>10} {fs['scale_m1'][j]:.3f} {fs['scale_m2'][j]:.3f} -> {fs['scale_full'][j]:.3f} "
                    f"{fs['median_factor'][j]:.3f} ({'significant' if fs['significant'][j] else 'not significant'})",
                )
    if args.holdout:
        report = coverage_report(model, hd["flux"].values, hd["ivar"].values, hl, label_errors=he)
    else:
        report = coverage_report(model, ds["flux"].values, ds["ivar"].values, labels, label_errors=errors)
    cov = report["coverage"]
    where = (
        "held-out stars of --holdout"
        if args.holdout
        else "the calibration stars themselves (in-sample; --holdout for held-out stars)"
    )
    say(args, f"coverage on {int(report['n_stars'])} stars, {where} (target 0.68 / 0.95):")
    say(args, f"{'label':>10} " + " ".join(f"{k[:5]}68 {k[:5]}95" for k in report["kind"].values))
    for name in model.label_names:
        vals = " ".join(
            f"{float(cov.sel(kind=k, level=lv, label_name=name)):>7.3f}"
            for k in report["kind"].values
            for lv in (0.68, 0.95)
        )
        say(args, f"{name:>10} {vals}")
    if "calibrated" in report["kind"].values:
        print_binned_coverage(_report_bins(report), model.label_names, args=args)
    if args.report:
        write_atomic(args.report, lambda tmp: report.to_netcdf(tmp, engine="h5netcdf"), overwrite=args.overwrite)
    figures = []
    if args.figures:
        fd = hd if args.holdout else ds
        figures = write_figures(args, calibration_figures(model, fd, hl if args.holdout else labels, report))
    summary = {
        "model": None if args.report_only else str(model_output(args)),
        **(
            {}
            if args.report_only
            else dict(zip(("calibration_stars", "quintile_coverage_sd"), calibration_noise(model.calibration_)))
        ),
        "n_stars": int(report["n_stars"]),
        "coverage_on": "holdout" if args.holdout else "calibration stars (in-sample)",
        "coverage": {
            str(k): {
                name: {str(lv): float(cov.sel(kind=k, level=lv, label_name=name)) for lv in (0.68, 0.95)}
                for name in model.label_names
            }
            for k in report["kind"].values
        },
    }
    if args.report:
        summary["report"] = str(args.report)
    if figures:
        summary["figures"] = [str(f) for f in figures]
    print_summary(args, summary)
    return 0


def calibration_figures(model, ds, labels, report) -> dict:
    """Figures of a calibration on stars with known ``labels``: coverage curve and z-score
    histogram (formal and calibrated), errors vs S/N, coverage per quintile."""
    names = model.label_names
    kinds = {"formal": model.infer(ds["flux"].values, ds["ivar"].values)}
    if model.calibration_ is not None:
        kinds["calibrated"] = model.infer(ds["flux"].values, ds["ivar"].values, uncertainty="calibrated")
    z = {k: (r["labels"].values - labels) / r["errors"].values for k, r in kinds.items()}
    # calibrated intervals are conformal/Student t, not Gaussian: their levels from the calibration
    levels = coverage_levels(z, model.calibration_, calibrated_kinds=("calibrated",))
    figs = {"coverage_curve": coverage_curve(levels, names, kind="level"), "zscores": zscore_histogram(z, names)}
    if "snr" in ds:
        figs["errors_vs_snr"] = errors_vs_snr(
            ds["snr"].values, {k: r["errors"].values for k, r in kinds.items()}, names
        )
    if "calibrated" in report["kind"].values:
        figs["coverage_map"] = coverage_map(report, kind="calibrated")
    return figs


def _report_bins(report) -> dict:
    cb = report["coverage_binned"].sel(kind="calibrated")
    return {
        str(by): {
            "n": report["bin_count"].sel(by=by).values.tolist(),
            "lo": report["bin_lo"].sel(by=by).values.tolist(),
            "hi": report["bin_hi"].sel(by=by).values.tolist(),
            "68": cb.sel(by=by, level=0.68).values.tolist(),
        }
        for by in report["by"].values
    }


def print_binned_coverage(binned, label_names, level: str = "68", args=None) -> None:
    """Print 68 % coverage per quintile of S/N and of each label (a calibration's
    ``coverage_by_bin`` or the same layout from a coverage report); nothing under ``--json``
    (``args``: the command's arguments)."""
    say(args, *binned_coverage_lines(binned, label_names, level))


def binned_coverage_lines(binned, label_names, level: str = "68") -> list[str]:
    """The text table of :func:`print_binned_coverage`."""
    lines = [
        f"calibrated {level}% coverage per quintile (target {int(level) / 100:.2f} +- 0.05):",
        f"{'by':>10} {'range':>22} {'n':>6} " + " ".join(f"{n[:8]:>8}" for n in label_names),
    ]
    for by, entry in binned.items():
        d = binned_coverage_arrays(entry)  # an empty bin's None (JSON null) → NaN
        for i, row in enumerate(d[level]):
            rng = f"{d['lo'][i]:.4g}..{d['hi'][i]:.4g}"
            lines.append(f"{by if i == 0 else '':>10} {rng:>22} {d['n'][i]:>6} " + " ".join(f"{v:>8.3f}" for v in row))
    return lines
