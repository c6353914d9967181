"""The ``--figures DIR`` option shared by commands that write figures beside their data
(``calibrate``, ``sample``, ``validate``, ``catalogue``): one spelling, one behaviour (no
figures unless asked; an existing figure is replaced only with ``--overwrite``)."""

from __future__ import annotations

import logging
from pathlib import Path

from bayescannon.commands._summary import say
from bayescannon.plots import calibrated_interval_levels, interval_levels, save_figure

logger = logging.getLogger(__name__)


def add_figures_argument(p, *, formats: bool = True) -> None:
    """Add ``--figures DIR`` and (unless the command has its own, ``formats=False``)
    ``--plot-formats`` to a command's parser."""
    p.add_argument("--figures", metavar="DIR", help="write the command's figures into this folder (default: none)")
    if formats:
        p.add_argument(
            "--plot-formats", nargs="+", default=["png"], help="formats of the figures (one file per format)"
        )


def write_figures(args, figures: dict) -> list[Path]:
    """Write ``{name: Figure}`` into ``args.figures`` (nothing when it is not set); returns
    the paths written (one per figure and format)."""
    if not getattr(args, "figures", None):
        return []
    folder = Path(args.figures)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        written += save_figure(fig, folder / f"{name}.png", formats=args.plot_formats, overwrite=args.overwrite)
    say(args, f"wrote {len(written)} figures to {folder}")
    return written


def coverage_levels(z: dict, cal: dict | None, calibrated_kinds=()) -> dict:
    """Interval levels of each kind of ``{kind: z}`` for :func:`bayescannon.plots.coverage_curve`
    with ``kind="level"``: Gaussian for the formal errors, the calibration's intervals for the
    kinds named in ``calibrated_kinds``."""
    return {
        k: calibrated_interval_levels(cal, v) if k in calibrated_kinds else interval_levels(v, kind="z")
        for k, v in z.items()
    }
