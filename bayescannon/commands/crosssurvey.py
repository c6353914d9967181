"""``bayescannon cross-survey CONFIG.toml -o OUTDIR``: the Nandakumar+2022 recipe end to end.

The four training combinations (spectra of A or B × labels of A or B) from one TOML
configuration (:mod:`bayescannon.survey.crosssurveyconfig`), each with its own settings;
the two combined catalogues (one per label scale) with flags and repeat-calibrated
errors; the Table 1/3 statistics (all / giants / dwarfs), the censored vs uncensored CV
scatter, the cluster report and figures in one validation report. See
``docs/guides/crosssurvey.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from astropy.table import Table

from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import BayesCannonError
from bayescannon.flags import StarFlag
from bayescannon.pipeline.atomic import write_json
from bayescannon.plots import kiel_diagram, one_to_one, precision_vs_snr
from bayescannon.report import Report
from bayescannon.survey.catalogue import write_table
from bayescannon.survey.crosssurvey import run_cross_survey
from bayescannon.survey.crosssurveyconfig import load_cross_survey_config
from bayescannon.validate.clusters import cluster_statistics

NAME = "cross-survey"
HELP = "Nandakumar+2022: four training combinations of two surveys -> two combined catalogues + validation report"
DESCRIPTION = (
    "Train, cross-validate (12 folds by default), label, calibrate on repeats and flag the four "
    "combinations ACAA/ACGS/GCAA/GCGS of a TOML configuration; write the combined catalogue of each "
    "label scale, the comparison statistics (all / giants / dwarfs), the cluster statistics and a "
    "validation report with figures into OUTDIR. See docs/guides/crosssurvey.md."
)

_BAD = int(StarFlag.NOT_CONVERGED | StarFlag.NO_PIXELS | StarFlag.FAR_FROM_TRAINING | StarFlag.SURVEY_FLAGGED)


def add_arguments(p):
    p.add_argument("config", help="TOML configuration (paths in it are relative to it)")
    p.add_argument("-o", "--output", required=True, help="output folder (absent or empty unless --overwrite)")
    p.add_argument("--folds", type=int, help="override the folds of every run (e.g. 3 for a quick look)")
    p.add_argument("--n-jobs", type=int, help="worker processes of the cross-validation (default: config or cores)")
    p.add_argument("--report-format", choices=["md", "html"], default="md")
    p.add_argument("--plot-formats", nargs="+", default=["png"], choices=["png", "pdf", "svg"])
    add_json_argument(p)


def inputs(args):
    """The spectra, label tables, crossmatch and cluster files the config names (none when the
    config cannot be read: ``run`` then reports why, after the output checks)."""
    try:
        return load_cross_survey_config(args.config).input_paths()
    except BayesCannonError:
        return []


def outputs(args):
    """The output folder: catalogues, tables, the report and its figures."""
    return [Output(Path(args.output), "output", kind="empty-dir")]


def _cv_table(d) -> Table:
    """CV summary of a run; censored and uncensored side by side where censoring is used."""
    s = d.cv.summary
    t = Table({"LABEL": s["LABEL"], "N": s["N"], "BIAS": s["BIAS"], "SCATTER": s["RMS"]})
    if d.cv_uncensored is not None:
        u = d.cv_uncensored.summary
        t["BIAS_UNCENSORED"] = u["BIAS"]
        t["SCATTER_UNCENSORED"] = u["RMS"]
    t.meta["RUN"] = d.code
    t.meta["NFOLDS"] = d.cv.n_folds
    return t


def run(args) -> int:
    cfg = load_cross_survey_config(args.config)
    a, b, xm = cfg.load_surveys()
    settings = {code: dict(s) for code, s in cfg.runs.items()}
    if args.folds is not None:
        settings.setdefault("default", {})
        for s in settings.values():
            s["folds"] = args.folds
    n_jobs = args.n_jobs if args.n_jobs is not None else cfg.n_jobs
    cols = cfg.crossmatch["columns"] if cfg.crossmatch else ("ID_A", "ID_B")
    res = run_cross_survey(
        a,
        b,
        cfg.labels,
        crossmatch=xm,
        crossmatch_columns=cols,
        settings=settings,
        giant_logg=cfg.giant_logg,
        n_jobs=n_jobs,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    scale_name = {a.label_code: a.name, b.label_code: b.name}
    rep = Report(f"Cross-survey labels: {a.name} and {b.name} (Nandakumar+2022)", formats=args.plot_formats)
    rep.add_text(
        f"{res.config['n_common']} stars common to both surveys; giants have log g < {cfg.giant_logg:g}, "
        f"dwarfs log g >= {cfg.giant_logg:g} (pipeline log g of the label scale)."
    )
    rows = []
    for code, d in res.details.items():
        flags = d.quality["flags"].values
        in_train = np.asarray(d.catalogue["IN_TRAINING"], bool)
        far = (flags & int(StarFlag.FAR_FROM_TRAINING)) != 0
        rows.append(
            {
                "RUN": code,
                "N_TRAINING": d.n_training,
                "N_CUT": int(sum(d.n_cut.values())),
                "FOLDS": d.cv.n_folds if d.cv is not None else 0,
                "N_SPECTRA": len(d.catalogue),
                "DIST_THRESHOLD": float(d.quality.attrs.get("distance_threshold", np.nan)),
                "FAR_TRAINING": int(far[in_train].sum()),
                "FAR_OTHER": int(far[~in_train].sum()),
                "OUTSIDE_HULL": int(((flags & int(StarFlag.OUTSIDE_HULL)) != 0).sum()),
                "SURVEY_FLAGGED": int(((flags & int(StarFlag.SURVEY_FLAGGED)) != 0).sum()),
                "ERRORS": d.repeats_status,
            }
        )
    rep.add_heading("Runs")
    rep.add_table(rows, caption="training set, flags (FAR_* = FAR_FROM_TRAINING among training / other spectra)")
    for code, d in res.details.items():
        rep.add_heading(f"Run {code}", level=3)
        if d.cv is not None:
            cvt = _cv_table(d)
            files.append(write_table(cvt, out / f"cv_{code}.ecsv"))
            caption = f"{d.cv.n_folds}-fold cross-validation"
            if d.cv_uncensored is not None:
                caption += ": censored model beside the same model without censoring windows"
            rep.add_table(cvt, caption=caption)
            p = d.cv.predictions
            names = [str(n) for n in p["label_name"].values]
            rep.add_figure(
                one_to_one(p["reference"].values, p["labels"].values, names),
                f"cv_{code}",
                caption=f"{code}: cross-validated vs reference labels",
            )
        if d.repeats is not None:
            files.append(write_table(d.repeats.summary, out / f"repeats_{code}.ecsv"))
            rep.add_table(d.repeats.summary, caption=f"repeat calibration: {d.repeats_status}")
            rep.add_figure(precision_vs_snr(d.repeats), f"precision_{code}", caption=f"{code}: precision vs S/N")
        else:
            rep.add_text(f"Errors: {d.repeats_status}.")
    rep.add_heading("Common stars before and after (Tables 1 and 3)")
    files.append(write_table(res.comparison, out / "comparison.ecsv"))
    rep.add_table(res.comparison)
    members = cfg.membership()
    for code, cat in res.catalogues.items():
        name = scale_name[code]
        files.append(write_table(cat, out / f"catalogue_{name}_scale.fits"))
        if "TEFF" in cat.colnames and "LOGG" in cat.colnames:
            color = np.ma.filled(cat["FE_H"], np.nan) if "FE_H" in cat.colnames else None
            fig = kiel_diagram(np.ma.filled(cat["TEFF"], np.nan), np.ma.filled(cat["LOGG"], np.nan), color=color)
            rep.add_figure(fig, f"kiel_{name}", caption=f"combined catalogue on the {name} scale")
        if members is not None:
            cs = cfg.clusters
            names = [n for n in cfg.labels if n in cat.colnames]
            good = (np.asarray(cat["FLAGS"]) & _BAD) == 0
            lit = Table.read(cs.literature) if cs.literature is not None else None
            ct = cluster_statistics(
                np.asarray(cat["ID"]).astype(str),
                np.column_stack([np.ma.filled(cat[n].astype(float), np.nan) for n in names]),
                members,
                names,
                literature=lit,
                min_members=cs.min_members,
                good=good,
                id_column=cs.id_column,
                cluster_column=cs.cluster_column,
                probability_column=cs.probability_column,
                min_probability=cs.min_probability,
            )
            files.append(write_table(ct, out / f"clusters_{name}_scale.ecsv"))
            rep.add_heading(f"Clusters on the {name} scale", level=3)
            rep.add_table(ct, caption=f"membership-probability column: {ct.meta['PROBCOL']}")
    rep.add_files([f.name for f in files])
    path = rep.write(out / f"report.{args.report_format}")
    files.append(write_json(out / "config.json", json.loads(json.dumps(res.config, default=str)), overwrite=True))
    summary = {
        "report": str(path),
        "files": [str(f) for f in files],
        "runs": {
            str(r["RUN"]): {
                "n_training": r["N_TRAINING"],
                "far_from_training": {"training": r["FAR_TRAINING"], "other": r["FAR_OTHER"]},
                "errors": r["ERRORS"],
            }
            for r in rows
        },
    }
    text = [f"wrote {len(files)} tables and catalogues and {path}"] + [
        f"  {r['RUN']}: {r['N_TRAINING']} training stars, FAR_FROM_TRAINING {r['FAR_TRAINING']} training / "
        f"{r['FAR_OTHER']} other; errors {r['ERRORS']}"
        for r in rows
    ]
    print_summary(args, summary, text)
    return 0
