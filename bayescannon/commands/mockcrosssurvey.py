"""``bayescannon mock-cross-survey OUTDIR``: a two-instrument mock and its CONFIG.toml for
``cross-survey``."""

from __future__ import annotations

from bayescannon.commands._outputs import add_outdir_argument, outdir_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.simulate.crosssurveymock import write_mock_cross_survey

NAME = "mock-cross-survey"
HELP = "write two mock surveys (spectra, labels, repeats, cross-match, cluster members) and a cross-survey CONFIG.toml"


def add_arguments(p):
    add_outdir_argument(p)
    p.add_argument("--n-common", type=int, default=400, help="stars in both surveys (default 400)")
    p.add_argument("--n-only", type=int, default=150, help="stars in one survey only, per survey (default 150)")
    p.add_argument("--n-repeat", type=int, default=60, help="stars of each survey with two extra visits (default 60)")
    p.add_argument("--n-pixels", type=int, default=60, help="pixels of survey A (default 60)")
    p.add_argument("--folds", type=int, default=12, help="folds written into the config (default 12)")
    p.add_argument("--seed", type=int, default=0)
    add_json_argument(p)


outputs = outdir_outputs


def run(args) -> int:
    cfg = write_mock_cross_survey(
        args.outdir,
        n_common=args.n_common,
        n_only=args.n_only,
        n_repeat=args.n_repeat,
        n_pixels=args.n_pixels,
        folds=args.folds,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    summary = {"outdir": str(cfg.parent), "config": str(cfg), "next": f"bayescannon cross-survey {cfg} -o OUTDIR"}
    print_summary(args, summary, f"wrote the mock to {cfg.parent}; run: {summary['next']}")
    return 0
