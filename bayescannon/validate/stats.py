"""Bias and scatter statistics of label differences, overall and in bins.

:func:`summary_statistics` gives per label the bias, the median, the RMS about the bias,
the RMSE and half the 16–84th percentile range; :func:`binned_statistics` the same in bins
of S/N or of the labels themselves (Ho+2017 Fig. 8), reporting sparse bins as skipped.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from bayescannon.errors import InvalidInputError, ShapeMismatchError

__all__ = ["DEFAULT_SNR_BINS", "binned_statistics", "summary_statistics"]

#: Default S/N bin edges (Ho+2017 Fig. 8 style); bins outside the data are dropped.
DEFAULT_SNR_BINS = (0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 300.0, np.inf)


def summary_statistics(diff, axis: int = 0) -> dict[str, np.ndarray]:
    """Bias and scatter of differences (inferred − reference), ignoring NaN.

    Parameters
    ----------
    diff : array_like
        Differences; statistics are taken along ``axis``.
    axis : int
        Axis of the stars.

    Returns
    -------
    dict of str to ndarray
        ``n`` (finite values), ``bias`` (mean), ``median``, ``rms`` (standard deviation
        about the bias), ``rmse`` (root mean square of the differences themselves) and
        ``half_p16_84`` (half the 16–84th percentile range: the robust 1σ scatter).
        NaN where fewer than 2 values are finite.
    """
    d = np.asarray(diff, dtype=np.float64)
    ok = np.isfinite(d)
    n = ok.sum(axis=axis)
    dz = np.where(ok, d, 0.0)
    safe_n = np.maximum(n, 1)
    bias = dz.sum(axis=axis) / safe_n
    rmse = np.sqrt((dz * dz).sum(axis=axis) / safe_n)
    centred = np.where(ok, d - np.expand_dims(bias, axis), 0.0)
    rms = np.sqrt((centred * centred).sum(axis=axis) / np.maximum(n - 1, 1))
    few = n < 2
    if np.all(few):
        nan = np.full(np.shape(bias), np.nan)
        return {
            "n": n,
            "bias": nan,
            "median": nan.copy(),
            "rms": nan.copy(),
            "rmse": nan.copy(),
            "half_p16_84": nan.copy(),
        }
    dd = np.where(ok, d, np.nan)
    # nanpercentile warns on all-NaN slices; those are replaced below anyway
    filled = np.where(np.expand_dims(few, axis), 0.0, dd)
    p16, p50, p84 = np.nanpercentile(filled, [16.0, 50.0, 84.0], axis=axis)
    out = {"n": n, "bias": bias, "median": p50, "rms": rms, "rmse": rmse, "half_p16_84": 0.5 * (p84 - p16)}
    for key in ("bias", "median", "rms", "rmse", "half_p16_84"):
        out[key] = np.where(few, np.nan, out[key])
    return out


def binned_statistics(
    x, diff, bins, *, label_names, x_name: str = "x", min_count: int = 5, same_x_per_label: bool = True
) -> Table:
    """Bias and scatter of differences in bins of ``x``, one row per (label, bin).

    Parameters
    ----------
    x : ndarray, shape (N,) or (N, K)
        Binning variable: one per star (e.g. S/N) or one per star and label (e.g. the
        reference label itself).
    diff : ndarray, shape (N, K)
        Inferred − reference labels.
    bins : array_like or int
        Bin edges (increasing) or a number of equal-width bins between the 1st and 99th
        percentile of ``x`` (per label when ``x`` is 2-D).
    label_names : list of str
    x_name : str
        Name of the binning variable, written in the ``X`` column.
    min_count : int
        Bins with fewer stars get ``STATUS = "skipped (n=…)"`` and masked statistics:
        they are reported, never dropped silently.

    Returns
    -------
    astropy.table.Table
        Columns ``LABEL``, ``X``, ``BIN_LO``, ``BIN_HI``, ``N``, ``BIAS``, ``MEDIAN``,
        ``RMS``, ``HALF_P16_84``, ``STATUS``.
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != len(label_names):
        raise ShapeMismatchError(f"diff must be (N, {len(label_names)}); got {d.shape}")
    xx = np.asarray(x, dtype=np.float64)
    if xx.ndim == 1:
        xx = np.repeat(xx[:, None], d.shape[1], axis=1)
    if xx.shape != d.shape:
        raise ShapeMismatchError(f"x has shape {np.shape(x)}; expected ({d.shape[0]},) or {d.shape}")
    rows = []
    for k, name in enumerate(label_names):
        xk = xx[:, k]
        fin = np.isfinite(xk)
        if np.ndim(bins) == 0:
            if not fin.any():
                raise InvalidInputError(f"no finite {x_name} values to bin for label {name}")
            lo, hi = np.percentile(xk[fin], [1.0, 99.0])
            if hi <= lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, int(bins) + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
                raise InvalidInputError(f"bins must be increasing edges; got {bins!r}")
        idx = np.searchsorted(edges, xk, side="right") - 1
        idx[(xk == edges[-1])] = edges.size - 2
        inside = fin & (idx >= 0) & (idx < edges.size - 1)
        # one pass over the stars for every bin: a (bins, N) membership mask
        member = (idx[None, :] == np.arange(edges.size - 1)[:, None]) & inside[None, :]
        dk = np.where(member, d[None, :, k], np.nan)
        stats = summary_statistics(dk, axis=1)
        for b in range(edges.size - 1):
            n = int(stats["n"][b])
            ok = n >= max(min_count, 2)
            rows.append(
                (
                    name,
                    x_name,
                    edges[b],
                    edges[b + 1],
                    n,
                    *(float(stats[s][b]) if ok else np.nan for s in ("bias", "median", "rms", "half_p16_84")),
                    "ok" if ok else f"skipped (n={n} < {max(min_count, 2)})",
                )
            )
    t = Table(
        rows=rows,
        names=("LABEL", "X", "BIN_LO", "BIN_HI", "N", "BIAS", "MEDIAN", "RMS", "HALF_P16_84", "STATUS"),
        dtype=(str, str, float, float, np.int64, float, float, float, float, str),
    )
    for col in ("BIAS", "MEDIAN", "RMS", "HALF_P16_84"):
        t[col] = np.ma.masked_invalid(t[col])
    return t
