"""``bayescannon homogenise CONFIG.toml -o unified.fits``: put several surveys' label
catalogues on one reference scale (Survey of Surveys; see ``docs/guides/homogenise.md``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from bayescannon.commands._common import add_dask_argument, at_least, check_dask_argument
from bayescannon.commands._outputs import TABLE_SUFFIXES, Output, report_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.errors import OutputPathError
from bayescannon.homogenise import Homogeniser, load_config
from bayescannon.pipeline.cluster import open_executor
from bayescannon.plots import kiel_diagram, new_figure
from bayescannon.report import Report
from bayescannon.results import label_axis_text
from bayescannon.survey.catalogue import write_table

NAME = "homogenise"
HELP = "put the label catalogues of several surveys on one reference scale (unified FITS catalogue + report)"


#: Fewest Monte Carlo draws: a survey's calibrated P16/P84 are percentiles of its draws, and
#: with one draw they collapse onto the median (a zero-width interval, silently).
MIN_DRAWS = 20


def add_arguments(p):
    p.add_argument("config", help="homogenisation config (TOML)")
    p.add_argument("-o", "--output", required=True, help="unified catalogue to write (.fits)")
    p.add_argument("--report-dir", help="folder of the report and figures (default: <output stem>_report)")
    p.add_argument("--report-format", choices=["md", "html"], default="html")
    p.add_argument(
        "--n-draws",
        type=at_least(MIN_DRAWS),
        default=200,
        help=f"Monte Carlo draws per measurement (default 200, at least {MIN_DRAWS})",
    )
    p.add_argument("--n-jobs", type=at_least(1), default=1, help="XGBoost threads (default 1)")
    p.add_argument("--seed", type=at_least(0), default=0, help="random seed (a non-negative integer)")
    p.add_argument("--n-estimators", type=at_least(1), default=300, help="most trees per quantile (early stopping)")
    p.add_argument("--propagation", choices=["linear", "exact"], default="linear",
                   help="propagation of input errors through the offset models")  # fmt: skip
    p.add_argument(
        "--combination",
        choices=["independent", "chained"],
        default="independent",
        help="combine a star's measurements as independent, or seeing the calibration-link errors that chained "
        "surveys share (conservative)",
    )
    add_dask_argument(p)
    add_json_argument(p)


def _paths(args):
    out = Path(args.output)
    report = Path(args.report_dir) if args.report_dir else out.with_name(out.stem + "_report")
    return out, out.with_name(out.stem + "_models"), report


def inputs(args):
    """The survey catalogues the config names: never written over, not even with --overwrite."""
    return load_config(args.config).input_paths()


def outputs(args):
    """The catalogue, the folder of offset models and the report with its figures."""
    out, models, report = _paths(args)
    check_dask_argument(args)
    for other, what in ((out, "the output catalogue -o"), (models, f"the offset-model folder {models}")):
        a, b = Path(report).resolve(), Path(other).resolve()
        if a == b or b in a.parents or a in b.parents:
            raise OutputPathError(
                f"--report-dir {report} overlaps {what}: the report needs a folder of its own "
                "(default: <output stem>_report)"
            )
    cfg = load_config(args.config)
    figs = [f"kiel_{s}" for s in cfg.surveys] + ["trends"]
    return [
        Output(out, "output", TABLE_SUFFIXES),
        Output(models, "output", kind="empty-dir"),
        *report_outputs(report, "homogenise_report", args.report_format, figs, ["png"], "report_dir"),
    ]


def trends_figure(trends, labels):
    """Binned median differences of the six worst pairs against each label, after calibration
    (axes with the label's unit)."""
    fig, axes = new_figure(len(labels), panel=(4.0, 3.0))
    for ax, lab in zip(axes, labels):
        for r in [r for r in trends if r["LABEL"] == lab and r["X"].endswith(f"_{lab}")][:6]:
            ax.plot(r["BINS"], r["MEDIANS"], marker="o", label=r["PAIR"])
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel(label_axis_text(lab))
        ax.set_ylabel(label_axis_text(lab, delta=True, prefix="pair median after calibration: "))
        ax.legend(fontsize=6)
    return fig


def run(args) -> int:
    cfg = load_config(args.config)
    catalogues = cfg.read_catalogues()
    h = Homogeniser(
        cfg.labels,
        cfg.reference,
        features=cfg.features,
        id_column=cfg.id,
        min_overlap={s: sc.min_overlap or cfg.min_overlap for s, sc in cfg.surveys.items()},
        n_estimators=args.n_estimators,
        n_draws=args.n_draws,
        propagation=args.propagation,
        combination=args.combination,
        n_jobs=args.n_jobs,
        random_state=args.seed,
    )
    with open_executor(args.dask) as executor:
        unified = h.fit_transform(catalogues, executor=executor if args.dask else None)
    unified.meta["CONFIG"] = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in cfg.raw.items()})
    out, models_dir, report_dir = _paths(args)
    # the catalogue last: once it exists, the models and report beside it are of the same
    # run (a run killed earlier leaves no catalogue; its header names the models it used)
    h.save_models(models_dir, overwrite=args.overwrite)
    unified.meta["MODELS"] = models_dir.name
    unified.meta["MODELSHA"] = hashlib.sha256((models_dir / "homogeniser.json").read_bytes()).hexdigest()
    rep = build_report(h, unified, catalogues, cfg)
    rep.add_files([str(out), str(models_dir)])
    rp = rep.write(report_dir / f"homogenise_report.{args.report_format}")
    out = write_table(unified, out, overwrite=args.overwrite)
    summary = {"catalogue": str(out), "n_stars": len(unified), "models": str(models_dir), "report": str(rp)}
    print_summary(args, summary, f"wrote {len(unified)} stars to {out}; offset models in {models_dir}; report {rp}")
    return 0


def build_report(h: Homogeniser, unified, catalogues, cfg) -> Report:
    """Paths, per-model losses and coverage, pair statistics before/after, trends, Kiel diagrams."""
    rep = Report("Homogenisation (Survey of Surveys)")
    rep.add_heading("Inputs")
    rep.add_table(
        [
            {
                "SURVEY": sv,
                "ROWS": c["rows"],
                "NO_ID": c.get("missing_id", 0),
                "DUPLICATES": c.get("duplicates", 0),
                **{
                    f"SKIPPED_{lab}": f"{c['nan'][lab]} missing, {c.get('no_error', {}).get(lab, 0)} no error, "
                    f"{c['bad_percentiles'][lab]} bad percentiles"
                    for lab in cfg.labels
                    if lab in c["nan"]
                },
            }
            for sv, c in h.counts_.items()
        ],
        caption="rows read per survey (after where), rows without an id, duplicated ids (best row kept), and "
        "measurements not used per label",
    )
    rep.add_heading("Paths to the reference scale")
    rep.add_table([{"LABEL": lab, **{s: " > ".join(p) for s, p in ps.items()}} for lab, ps in h.paths_.items()])
    rep.add_heading("Offset models")
    rows = []
    for lab, ms in h.models_.items():
        for s, m in ms.items():
            rows.append(
                {
                    "LABEL": lab,
                    "SURVEY": s,
                    "TARGET": m.parent_,
                    "N_TRAIN": m.n_train_["train"],
                    "N_TEST": m.n_train_["test"],
                    "TREES": m.best_iteration_ + 1,
                    "PINBALL_TRAIN": m.pinball_["train"],
                    "PINBALL_TEST": m.pinball_["test"],
                    "COVER68_TEST": m.coverage_[0.68],
                    "COVER95_TEST": m.coverage_[0.95],
                    "TAU": m.tau_,
                }
            )
    rep.add_table(rows, caption="pinball losses (train vs held-out) and conformal coverage on held-out common stars")
    rep.add_heading("Overlapping pairs before and after (training stars excluded)")
    rep.add_table(h.validation_["pairs"], caption="bias = median difference, scatter = 1.4826 MAD")
    trends = sorted(h.validation_["trends"], key=lambda r: -r["MAX_ABS_BIN_BIAS"])
    rep.add_table(
        [{k: r[k] for k in ("LABEL", "PAIR", "X", "MAX_ABS_BIN_BIAS")} for r in trends],
        caption="largest binned median difference after calibration, per pair and variable",
        max_rows=60,
    )
    fig = trends_figure(trends, cfg.labels)
    rep.add_figure(fig, "trends", caption="binned median pair differences after calibration against each label")
    if "TEFF" in cfg.labels and "LOGG" in cfg.labels:
        for s, t in catalogues.items():
            if f"{s}_TEFF_CAL" not in unified.colnames or f"{s}_LOGG_CAL" not in unified.colnames:
                continue
            teff = np.ma.filled(unified[f"{s}_TEFF_CAL"].astype(float), np.nan)
            ok = np.isfinite(teff)
            logg = np.ma.filled(unified[f"{s}_LOGG_CAL"].astype(float), np.nan)
            raw_t = np.ma.filled(np.ma.asarray(t["TEFF"], dtype=float), np.nan)
            raw_g = np.ma.filled(np.ma.asarray(t["LOGG"], dtype=float), np.nan)
            fig = kiel_diagram(raw_t, raw_g, teff_after=teff[ok], logg_after=logg[ok], titles=(s, f"{s} calibrated"))
            rep.add_figure(fig, f"kiel_{s}", caption=f"{s}: Kiel diagram before / after")
    return rep
