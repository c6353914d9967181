"""Evaluation of a transferred-label catalogue against true labels (mocks): bias and scatter
of the transferred and of the survey's own labels, and the simulated pipeline offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from astropy.table import Table

from bayescannon.errors import InvalidInputError
from bayescannon.spectra import join_ids
from bayescannon.survey.transferconfig import _FAILED_FIT, _as_float, _str_ids

logger = logging.getLogger(__name__)

__all__ = ["evaluate"]


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else float("nan")


def _nanstd(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def evaluate(
    catalogue: Table,
    truth: Table,
    label_names,
    *,
    truth_id_column: str,
    truth_labels: Mapping | None = None,
    offsets: Mapping | None = None,
    target_name: str = "TARGET",
    include_training: bool = False,
) -> tuple[Table, dict]:
    """Transferred and survey-Y labels against the truth (for mocks).

    Parameters
    ----------
    catalogue : astropy.table.Table
        ``catalogue.fits`` of a run (columns ``ID``, the labels, ``FLAGS``,
        ``IN_TRAINING``, ``<target_name>_<label>``).
    truth : astropy.table.Table
        True labels, one row per star.
    label_names : sequence of str
    truth_id_column : str
        Column of ``truth`` matching the catalogue ``ID``.
    truth_labels : mapping, optional
        Label name -> truth column (default: the same names).
    offsets : mapping, optional
        Label name -> truth column of the simulated systematic offset of survey Y's
        pipeline.
    target_name : str
        Prefix of survey Y's own label columns in the catalogue.
    include_training : bool
        Also use the training stars (default: only stars kept out of training).

    Returns
    -------
    table : astropy.table.Table
        One row per label: ``N``, ``BIAS``, ``SCATTER`` (standard deviation), ``RMS``,
        ``SE_BIAS`` (``SCATTER / sqrt(N)``) of transferred - true; ``Y_BIAS``,
        ``Y_SCATTER``, ``Y_RMS`` of survey Y's labels - true; ``OFFSET_MEAN`` and
        ``OFFSET_RMS`` of the simulated offsets; ``BIAS_OVER_OFFSET`` (``|BIAS| /
        |OFFSET_MEAN|``).
    stats : dict
        The same, keyed by label.

    Raises
    ------
    InvalidInputError
        When no catalogue star has a truth row.
    """
    truth_labels = dict(truth_labels or {n: n for n in label_names})
    offsets = dict(offsets or {})
    tid = _str_ids(truth[truth_id_column])
    # truth rows with an id that names one row only (placeholders such as "" or "-1" that
    # several rows share identify no star)
    _, inverse, counts = np.unique(tid, return_inverse=True, return_counts=True)
    named = np.flatnonzero((tid != "") & (counts[inverse] == 1))
    ids = np.asarray(catalogue["ID"]).astype(str)
    rows, hit = join_ids(ids, tid[named], what="the truth table", require="none")
    rows = np.where(hit, named[rows] if named.size else rows, -1)
    use = hit.copy()
    if "IN_TRAINING" in catalogue.colnames and not include_training:
        use &= ~np.asarray(catalogue["IN_TRAINING"], dtype=bool)
    if "FLAGS" in catalogue.colnames:
        use &= (np.asarray(catalogue["FLAGS"]) & _FAILED_FIT) == 0
    if not use.any():
        raise InvalidInputError("no catalogue star (outside the training set) has a row in the truth table")
    r = rows[use]
    out = Table()
    out["LABEL"] = list(label_names)
    cols: dict[str, list] = {
        k: []
        for k in (
            "N",
            "BIAS",
            "SCATTER",
            "RMS",
            "SE_BIAS",
            "Y_BIAS",
            "Y_SCATTER",
            "Y_RMS",
            "OFFSET_MEAN",
            "OFFSET_RMS",
            "BIAS_OVER_OFFSET",
        )
    }
    stats = {}
    for n in label_names:
        true = _as_float(truth[truth_labels.get(n, n)])[r]
        d = _as_float(catalogue[n])[use] - true
        ok = np.isfinite(d)
        entry = {
            "n": int(ok.sum()),
            "bias": _nanmean(d),
            "scatter": _nanstd(d),
            "rms": float(np.sqrt(np.mean(d[ok] ** 2))) if ok.any() else float("nan"),
        }
        entry["se_bias"] = entry["scatter"] / np.sqrt(max(entry["n"], 1))
        ycol = f"{target_name}_{n}"
        if ycol in catalogue.colnames:
            dy = _as_float(catalogue[ycol])[use] - true
            oky = np.isfinite(dy)
            entry.update(
                {
                    "y_bias": _nanmean(dy),
                    "y_scatter": _nanstd(dy),
                    "y_rms": float(np.sqrt(np.mean(dy[oky] ** 2))) if oky.any() else float("nan"),
                }
            )
        else:
            entry.update({"y_bias": float("nan"), "y_scatter": float("nan"), "y_rms": float("nan")})
        if n in offsets:
            off = _as_float(truth[offsets[n]])[r][ok]
            entry["offset_mean"] = float(np.mean(off)) if off.size else float("nan")
            entry["offset_rms"] = float(np.sqrt(np.mean(off**2))) if off.size else float("nan")
            with np.errstate(divide="ignore", invalid="ignore"):
                entry["bias_over_offset"] = float(abs(entry["bias"]) / abs(entry["offset_mean"]))
        else:
            entry.update({"offset_mean": float("nan"), "offset_rms": float("nan"), "bias_over_offset": float("nan")})
        stats[n] = entry
        for k, col in cols.items():
            col.append(entry[k.lower()])
    for k, v in cols.items():
        out[k] = np.asarray(v, dtype=np.int64 if k == "N" else np.float64)
    for n, e in stats.items():
        logger.info(
            "evaluate %s (%d stars): transferred bias %.4g scatter %.4g | %s pipeline bias %.4g scatter %.4g | "
            "simulated offset mean %.4g",
            n,
            e["n"],
            e["bias"],
            e["scatter"],
            target_name,
            e["y_bias"],
            e["y_scatter"],
            e["offset_mean"],
        )
    return out, stats
