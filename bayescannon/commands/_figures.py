"""The ``--figures DIR`` option shared by commands that write figures beside their data
(``calibrate``, ``sample``): one spelling, one behaviour (no figures unless asked; an existing
figure is replaced only with ``--overwrite``)."""

from __future__ import annotations

import logging
from pathlib import Path

from bayescannon.plots import save_figure

logger = logging.getLogger(__name__)


def add_figures_argument(p) -> None:
    """Add ``--figures DIR`` and ``--plot-formats`` to a command's parser."""
    p.add_argument("--figures", metavar="DIR", help="write the command's figures into this folder (default: none)")
    p.add_argument("--plot-formats", nargs="+", default=["png"], help="formats of the figures (one file per format)")


def write_figures(args, figures: dict) -> list[Path]:
    """Write ``{name: Figure}`` into ``args.figures`` (nothing when it is not set)."""
    if not getattr(args, "figures", None):
        return []
    folder = Path(args.figures)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        written += save_figure(fig, folder / f"{name}.png", formats=args.plot_formats, overwrite=args.overwrite)
    print(f"wrote {len(written)} figures to {folder}")
    return written
