"""Plots (matplotlib), callable from notebooks and written by the CLI. Nothing here is
used by the numerical core."""

from __future__ import annotations

import numpy as np

__all__ = ["one_to_one"]


def one_to_one(truth, inferred, label_names, *, errors=None, color=None, color_label=None, units=None):
    """One-to-one panels (inferred vs reference) with bias and scatter annotated.

    Parameters
    ----------
    truth, inferred : ndarray, shape (N, K)
    label_names : list of str
    errors : ndarray (N, K), optional
        Error bars of the inferred labels.
    color : ndarray (N,), optional
        Colour of the points (e.g. S/N).
    units : dict, optional
        Axis units per label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    truth = np.asarray(truth, float)
    inferred = np.asarray(inferred, float)
    k = len(label_names)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.6), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], label_names)):
        x, y = truth[:, i], inferred[:, i]
        ok = np.isfinite(x) & np.isfinite(y)
        sc = ax.scatter(x[ok], y[ok], s=4, c=None if color is None else np.asarray(color)[ok],
                        cmap="viridis", alpha=0.7, rasterized=True)
        if errors is not None:
            ax.errorbar(x[ok], y[ok], yerr=np.asarray(errors)[ok, i], fmt="none", lw=0.3, alpha=0.3, color="k")
        lo, hi = np.nanmin(np.r_[x[ok], y[ok]]), np.nanmax(np.r_[x[ok], y[ok]])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        d = y[ok] - x[ok]
        unit = (units or {}).get(name, "")
        ax.text(0.04, 0.96, f"bias {np.mean(d):.3g}\nscatter {np.std(d):.3g} {unit}",
                transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xlabel(f"reference {name}")
        ax.set_ylabel(f"bayescannon {name}")
        ax.set_aspect("equal", adjustable="datalim")
    if color is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), label=color_label or "")
    return fig
