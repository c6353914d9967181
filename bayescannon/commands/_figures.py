"""The ``--figures DIR`` option shared by commands that write figures beside their data
(``calibrate``, ``sample``, ``validate``, ``catalogue``): one spelling, one behaviour (no
figures unless asked; an existing figure is replaced only with ``--overwrite``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bayescannon.commands._summary import say
from bayescannon.core.uncertainty import interval_factor
from bayescannon.plots import interval_levels, save_figure

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


def calibrated_levels(cal: dict, z) -> np.ndarray:
    """The smallest central *calibrated* interval level that contains the truth, per star and label.

    Calibrated intervals are ``sd × interval_factor(cal, level)`` (conformal quantiles or a
    Student t), not Gaussian: reading ``z = (estimate − truth) / sd`` as a Gaussian z would
    misstate their coverage. ``|z|`` is mapped through the calibration's half-width factors
    instead (NaN stays NaN; beyond the widest calibrated interval the level is 1).

    Parameters
    ----------
    cal : dict
        A model's ``calibration_``.
    z : ndarray (N, K)
        Bias-corrected residuals over the calibrated sd.

    Returns
    -------
    ndarray (N, K)
    """
    z = np.abs(np.asarray(z, dtype=float))
    lo, hi = 0.005, 0.995
    if cal.get("z_quantiles"):
        lv = np.asarray(cal["quantile_levels"], dtype=float)
        lo, hi = max(lo, float(lv[0])), min(hi, float(lv[-1]))
    grid = np.linspace(lo, hi, 199)
    factors = np.maximum.accumulate(np.array([interval_factor(cal, p) for p in grid]), axis=0)  # (G, K)
    out = np.full(z.shape, np.nan)
    for k in range(z.shape[1]):  # labels, not stars
        f = np.concatenate([[0.0], factors[:, k]])
        out[:, k] = np.interp(z[:, k], f, np.concatenate([[0.0], grid]), right=1.0)
    out[~np.isfinite(z)] = np.nan
    return out


def coverage_levels(z: dict, cal: dict | None, calibrated_kinds=()) -> dict:
    """Interval levels of each kind of ``{kind: z}`` for :func:`bayescannon.plots.coverage_curve`
    with ``kind="level"``: Gaussian for the formal errors, the calibration's intervals for the
    kinds named in ``calibrated_kinds``."""
    return {
        k: calibrated_levels(cal, v) if k in calibrated_kinds else interval_levels(v, kind="z") for k, v in z.items()
    }
