"""``bayescannon mock-catalogues OUTDIR``: six mock survey catalogues with known truth and a
ready homogenisation config."""

from __future__ import annotations

from bayescannon.commands._common import at_least
from bayescannon.commands._outputs import add_outdir_argument, outdir_outputs
from bayescannon.commands._summary import add_json_argument, print_summary
from bayescannon.simulate.mockcatalogues import write_mock_catalogues

NAME = "mock-catalogues"
HELP = "write six mock survey label catalogues (known truth and offsets) and a CONFIG.toml for `homogenise`"


def add_arguments(p):
    add_outdir_argument(p)
    p.add_argument("--n-stars", type=at_least(1), default=20000, help="stars in the population (default 20000)")
    p.add_argument(
        "--min-overlap", type=at_least(1), default=200, help="fewest stars each survey shares with the reference"
    )
    p.add_argument("--corruptions", action="store_true", help="add bad rows (NaN, P16 > value, a duplicate)")
    p.add_argument("--seed", type=at_least(0), default=0, help="random seed (a non-negative integer)")
    add_json_argument(p)


outputs = outdir_outputs


def run(args) -> int:
    cfg = write_mock_catalogues(
        args.outdir,
        n_stars=args.n_stars,
        seed=args.seed,
        min_overlap=args.min_overlap,
        corruptions=args.corruptions,
        overwrite=args.overwrite,
    )
    summary = {"outdir": str(cfg.parent), "config": str(cfg), "next": f"bayescannon homogenise {cfg} -o unified.fits"}
    print_summary(args, summary, f"wrote the mock to {cfg.parent}; run: {summary['next']}")
    return 0
