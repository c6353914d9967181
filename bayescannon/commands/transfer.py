"""``bayescannon transfer``: survey-Y spectra + survey-X labels → labels on X's scale."""

from __future__ import annotations

import logging

from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, print_summary, say
from bayescannon.survey.transfer import STEPS, TransferPipeline
from bayescannon.survey.transferconfig import TransferConfig

NAME = "transfer"
HELP = "transfer labels from one survey to another's spectra (Ho+2017 pipeline, TOML-configured)"
DESCRIPTION = (
    "Run the label-transfer pipeline of a TOML configuration: read -> preprocess -> crossmatch -> "
    "cuts -> cleanup -> train -> validate -> infer -> catalogue (-> evaluate). Each step saves its "
    "output under the configured output folder with a key (configuration, input files' content, version, "
    "the steps before it) and file checksums: a rerun reuses every step whose key and files match and "
    "recomputes from the first that does not. A step can be run alone (--step) or re-run with the ones "
    "after it (--from); saved output that does not match is then refused, never mixed in. See "
    "docs/guides/transfer.md and examples/transfer.toml."
)


def add_arguments(p):

    p.add_argument("config", help="TOML configuration (paths in it are relative to it)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--step", choices=STEPS, help="run only this step (from the saved output of the ones before)")
    group.add_argument("--from", dest="start", choices=STEPS, help="run this step and every step after it")
    p.add_argument("--list-steps", action="store_true", help="print the steps and whether they have saved output")
    p.add_argument("--no-log-file", action="store_true", help="do not write <output>/transfer.log")
    add_json_argument(p)


def outputs(args):
    """The configured output folder: a resumable workspace (steps re-run from saved output
    replace it by design), so only checked to be a writable folder that is not an input."""
    return [Output(TransferConfig.from_toml(args.config).output_dir, "output_dir", kind="workspace")]


def run(args) -> int:

    pipe = TransferPipeline(args.config)
    if args.list_steps:
        steps = [
            {"step": step, "done": pipe.is_done(step), "dir": str(pipe.step_dir(step))} for step in pipe.steps_to_run()
        ]
        text = [f"{d['step']:<11} {'done' if d['done'] else '-':<5} {d['dir']}" for d in steps]
        print_summary(args, {"output": str(pipe.output), "steps": steps}, text)
        return 0
    handler = None
    if not args.no_log_file:
        pipe.output.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(pipe.output / "transfer.log")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("bayescannon")
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
    ran = {}
    try:
        for step, summary, reused in pipe.iter_run(start=args.start, only=args.step):
            ran[step] = {"reused": bool(reused), **summary}
            say(args, *_step_lines(step, summary, reused))
    finally:
        if handler is not None:
            logging.getLogger("bayescannon").removeHandler(handler)
            handler.close()
    n_reused = sum(d["reused"] for d in ran.values())
    print_summary(
        args,
        {"output": str(pipe.output), "steps": ran},
        f"{len(ran)} step(s) done ({n_reused} reused from saved output) in {pipe.output}",
    )
    return 0


def _step_lines(step: str, summary: dict, reused: bool) -> list[str]:
    """The text lines of one finished step of the pipeline."""
    if reused:
        n = len(summary["files"])
        return [f"[{step}] saved output reused (key and {n} file{'s' if n != 1 else ''} verified)"]
    keys = [k for k in summary if k.startswith("n_") and not isinstance(summary[k], dict)]
    counts = ", ".join(f"{k[2:]}={summary[k]}" for k in keys)
    lines = [f"[{step}] {counts} ({summary['seconds']:.1f} s)"]
    if step == "validate" and summary.get("statistics"):
        for name, s in summary["statistics"].items():
            lines.append(f"    cross-validation {name}: bias {s['bias']:.4g}, scatter {s['rms']:.4g}")
    pre = summary.get("preselect") if step == "infer" else None
    if isinstance(pre, dict) and pre.get("enabled"):
        if "skipped" in pre:
            lines.append(f"    pre-selection (Ho+2017) skipped: {pre['skipped']}")
        else:
            lines.append(
                f"    pre-selection (Ho+2017): {pre['n_dropped']} of {pre['n_in']} stars beyond "
                f"{pre['cut']:g} of the training set on their {', '.join(pre['labels'])} not labelled"
                + (f"; {pre['n_untested']} without pipeline labels kept untested" if pre["n_untested"] else "")
            )
    if step == "bootstrap" and summary.get("statistics"):
        for name, b in summary["statistics"].items():
            lines.append(
                f"    bootstrap {name}: median e_BOOT {b['median_e_boot']:.4g}; CV scatter over "
                f"{summary['n_models']} models {b['cv_scatter_median']:.4g} +- {b['cv_scatter_spread']:.2g}"
            )
    if step == "catalogue":
        lines.append(f"    catalogue: {summary['catalogue']}")
        lines.append(f"    skipped/excluded files and stars (with reasons): {summary['excluded']}")
        lines.extend(f"    {k} excluded at step {st}" for st, k in summary["n_excluded"].items() if k)
    if step == "evaluate":
        for name, e in summary["statistics"].items():
            line = f"    {name}: transferred - true bias {e['bias']:.4g} (+- {e['se_bias']:.2g}), scatter {e['scatter']:.4g}"
            if e.get("y_scatter") is not None and e["y_scatter"] == e["y_scatter"]:
                line += f" | pipeline bias {e['y_bias']:.4g}, scatter {e['y_scatter']:.4g}"
            if e.get("offset_mean") is not None and e["offset_mean"] == e["offset_mean"]:
                line += f" | simulated offset mean {e['offset_mean']:.4g}"
            lines.append(line)
    return lines
