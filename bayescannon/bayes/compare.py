"""Where does a point-estimate pipeline's value fall in our posterior?

For each star and label: the pipeline value ``p``, our posterior (samples from
:func:`bayescannon.bayes.sample_labels`, or a Gaussian ``N(value, e²)`` from a catalogue),
and

* the z-score ``z = (p − mean) / sqrt(sd² + e_p²)``;
* the posterior quantile ``q = P(ℓ + δ < p)``, δ ~ N(0, e_p²) the pipeline's own error
  (``q = mean over draws of Φ((p − ℓ_s)/e_p)``; the fraction of draws below ``p`` when
  the pipeline gives no error).

When the pipeline and our posterior agree within the stated errors, q is uniform on
[0, 1] and z is standard normal: a Kolmogorov–Smirnov test of q against U(0, 1) per
label, the mean and sd of z, and the stars beyond ``outlier_z`` are reported. A U-shaped
q histogram means our errors (or theirs) are too small, a hump that they are too large, a
slope an offset.

Pipeline tables: any FITS/CSV table with an id column and one column per label; names
are matched case-insensitively with the aliases of thecannon (``TEFF``, ``LOGG``,
``FEH``, ``AFE``) and ASPCAP (``FE_H``, ``M_H``, ``ALPHA_M``, ``TEFF_ERR``,
``APOGEE_ID``); errors from ``e_X``, ``X_ERR`` or ``X_ERROR``.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import xarray as xr
from scipy import special, stats

from bayescannon.errors import CrossMatchError, InvalidInputError
from bayescannon.spectra import join_ids

logger = logging.getLogger(__name__)

__all__ = ["compare_with_pipeline", "outlier_table", "ID_COLUMNS", "canonical_label"]

#: Id columns tried in order when none is given.
ID_COLUMNS = ("id", "ID", "star", "APOGEE_ID", "apogee_id", "TMASS_ID", "obsid", "OBJID", "source_id", "name")
#: S/N columns tried in order.
SNR_COLUMNS = ("snr", "SNR", "S/N", "SNREV", "snr_g")

_ALIASES = {
    "TEFF": "TEFF",
    "T_EFF": "TEFF",
    "LOGG": "LOGG",
    "LOG_G": "LOGG",
    "FEH": "FE_H",
    "FE_H": "FE_H",
    "M_H": "M_H",
    "MH": "M_H",
    "AFE": "ALPHA_FE",
    "ALPHA_FE": "ALPHA_FE",
    "ALPHAFE": "ALPHA_FE",
    "ALPHA_M": "ALPHA_M",
    "AM": "ALPHA_M",
}


def canonical_label(name: str) -> str:
    """Canonical form of a label name for matching (``[Fe/H]`` → ``FE_H``, ``afe`` → ``ALPHA_FE``)."""
    key = re.sub(r"[^A-Z0-9]+", "_", str(name).upper()).strip("_")
    return _ALIASES.get(key, _ALIASES.get(key.replace("_", ""), key))


def _find(columns, candidates):
    cols = list(columns)
    for c in candidates:
        if c in cols:
            return c
    lower = {c.lower(): c for c in cols}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    return None


def _column(table, name):
    col = table[name]
    values = np.asarray(np.ma.filled(np.ma.asarray(col, dtype=float), np.nan), dtype=float)
    return values


def _label_columns(table, label_names, label_map):
    """Pipeline column of each of our labels (and of its error), or None."""
    label_map = dict(label_map or {})
    by_canon = {}
    for c in table.colnames:
        by_canon.setdefault(canonical_label(c), c)
    out = {}
    for name in label_names:
        col = label_map.get(name)
        if col is None:
            col = by_canon.get(canonical_label(name))
        if col is not None and col not in table.colnames:
            raise InvalidInputError(f"pipeline column {col!r} (for label {name}) is not in the table: {table.colnames}")
        err = None
        if col is not None:
            err = _find(table.colnames, (f"e_{col}", f"{col}_ERR", f"{col}_ERROR", f"{col}_err", f"e{col}"))
        out[name] = (col, err)
    return out


def _ours_from_tree(tree):
    """Draws (star, label_name, sample) and ids from a posterior DataTree."""
    lab = tree["posterior"].to_dataset()["labels"].transpose("star", "label_name", "chain", "draw")
    vals = lab.values.reshape(lab.shape[0], lab.shape[1], -1)
    return np.asarray(lab["star"].values).astype(str), [str(n) for n in lab["label_name"].values], vals


def _ours_from_table(table, id_column, label_names):
    ids = np.asarray(table[id_column]).astype(str)
    names = list(label_names) if label_names else []
    if not names:
        names = [c for c in table.colnames if f"e_{c}" in table.colnames]
    if not names:
        raise InvalidInputError(
            "our catalogue has no label column X with an error column e_X (columns: "
            f"{', '.join(table.colnames[:15])}): is it our catalogue or posterior, and not the pipeline's table "
            "(`bayescannon compare OURS PIPELINE`)? From Python, name the labels with label_names="
        )
    mean = np.column_stack([_column(table, n) for n in names])
    lower = np.column_stack([_column(table, f"e_{n}") for n in names])
    upper = np.column_stack(
        [_column(table, f"E_{n}") if f"E_{n}" in table.colnames else _column(table, f"e_{n}") for n in names]
    )
    return ids, names, mean, 0.5 * (lower + upper)


def compare_with_pipeline(
    ours,
    pipeline,
    *,
    id_column: str | None = None,
    pipeline_id_column: str | None = None,
    label_names=None,
    label_map=None,
    snr=None,
    use_pipeline_errors: bool = True,
    outlier_z: float = 3.0,
) -> xr.Dataset:
    """Per star and label, the pipeline value's z-score and quantile in our posterior.

    Parameters
    ----------
    ours : xarray.DataTree or astropy.table.Table
        Posterior samples (``sample_labels``/``bayescannon sample`` output) or a catalogue
        with columns ``X`` and ``e_X`` (optionally ``E_X`` upper) per label (a Gaussian
        posterior with the mean of the two errors as sd).
    pipeline : astropy.table.Table
        The point-estimate pipeline's table (thecannon, ASPCAP, …).
    id_column, pipeline_id_column : str, optional
        Id columns of a catalogue ``ours`` and of ``pipeline`` (default: the first of
        :data:`ID_COLUMNS` present).
    label_names : list of str, optional
        Our labels to compare (default all of ours the pipeline has).
    label_map : dict, optional
        ``{our label: pipeline column}`` where the names do not match.
    snr : str or array_like, optional
        Pipeline column (default: the first of :data:`SNR_COLUMNS` present) or values per
        compared star, for the trend plots.
    use_pipeline_errors : bool
        Convolve our posterior with the pipeline's stated error (recommended: without it
        q is uniform only if the pipeline is exact).
    outlier_z : float
        |z| above which a star is listed as an outlier.

    Returns
    -------
    xarray.Dataset
        (star, label_name): ``ours_mean``, ``ours_sd``, ``pipeline``, ``pipeline_error``,
        ``z``, ``quantile``, ``outlier``; (label_name): ``n``, ``ks_statistic``,
        ``ks_pvalue`` (q vs U(0, 1)), ``z_mean``, ``z_sd``, ``n_outliers``,
        ``frac_within_68`` (|z| < 1), ``frac_within_95`` (|z| < 1.96); (star): ``snr``.
        Stars missing from the pipeline table are dropped (logged); NaN where the
        pipeline value is masked.
    """
    if isinstance(ours, xr.DataTree):
        ids, names, draws = _ours_from_tree(ours)
        mean, sd = draws.mean(axis=-1), draws.std(axis=-1, ddof=1)
    else:
        idc = id_column or _find(ours.colnames, ID_COLUMNS)
        if idc is None:
            raise InvalidInputError(f"no id column in our catalogue (tried {ID_COLUMNS}); pass id_column")
        ids, names, mean, sd = _ours_from_table(ours, idc, label_names)
        draws = None
    if label_names is not None:
        missing = [n for n in label_names if n not in names]
        if missing:
            raise InvalidInputError(f"labels {missing} are not in our posterior/catalogue (which has {names})")
    pid = pipeline_id_column or _find(pipeline.colnames, ID_COLUMNS)
    if pid is None:
        raise InvalidInputError(f"no id column in the pipeline table (tried {ID_COLUMNS}); pass pipeline_id_column")
    cols = _label_columns(pipeline, names if label_names is None else label_names, label_map)
    use = [n for n in (names if label_names is None else label_names) if cols[n][0] is not None]
    if not use:
        raise InvalidInputError(f"the pipeline table has none of our labels {names}: columns {pipeline.colnames}")
    rows, hit = join_ids(ids, np.asarray(pipeline[pid]).astype(str), what="the pipeline table", require="none")
    if not hit.any():
        raise CrossMatchError(f"no star of ours ({ids[:3].tolist()}, …) is in the pipeline table (column {pid})")
    if not hit.all():
        logger.info("%d of %d stars are not in the pipeline table and are left out", int((~hit).sum()), ids.size)
    rows, ids = rows[hit], ids[hit]
    k_idx = [names.index(n) for n in use]
    mean, sd = mean[hit][:, k_idx], sd[hit][:, k_idx]
    p = np.column_stack([_column(pipeline, cols[n][0])[rows] for n in use])
    pe = np.column_stack(
        [
            _column(pipeline, cols[n][1])[rows] if (cols[n][1] and use_pipeline_errors) else np.zeros(rows.size)
            for n in use
        ]
    )
    pe = np.where(np.isfinite(pe) & (pe > 0), pe, 0.0)
    z = (p - mean) / np.sqrt(sd**2 + pe**2)
    if draws is not None:
        d = draws[hit][:, k_idx, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            arg = (p[:, :, None] - d) / pe[:, :, None]
        cdf = np.where(pe[:, :, None] > 0, special.ndtr(arg), (d < p[:, :, None]) + 0.5 * (d == p[:, :, None]))
        q = cdf.mean(axis=-1)
    else:
        q = special.ndtr(z)
    q = np.where(np.isfinite(p), q, np.nan)
    outlier = np.abs(z) > outlier_z
    if snr is None:
        sc = _find(pipeline.colnames, SNR_COLUMNS)
        snr_v = _column(pipeline, sc)[rows] if sc else np.full(rows.size, np.nan)
    elif isinstance(snr, str):
        snr_v = _column(pipeline, snr)[rows]
    else:
        snr_v = np.asarray(snr, dtype=float)[hit]
    dims = ("star", "label_name")
    ds = xr.Dataset(
        {
            "ours_mean": (dims, mean),
            "ours_sd": (dims, sd),
            "pipeline": (dims, p),
            "pipeline_error": (dims, pe),
            "z": (dims, z),
            "quantile": (dims, q),
            "outlier": (dims, outlier),
            "snr": ("star", snr_v),
        },
        coords={"star": ids, "label_name": use},
    )
    ks, kp, zm, zs, n = [], [], [], [], []
    for j in range(len(use)):  # loop over labels only
        ok = np.isfinite(q[:, j])
        n.append(int(ok.sum()))
        if ok.sum() >= 2:
            res = stats.kstest(q[ok, j], "uniform")
            ks.append(float(res.statistic))
            kp.append(float(res.pvalue))
        else:
            ks.append(np.nan)
            kp.append(np.nan)
        zm.append(float(np.nanmean(z[:, j])) if ok.any() else np.nan)
        zs.append(float(np.nanstd(z[:, j], ddof=1)) if ok.sum() > 1 else np.nan)
    az_ = np.abs(z)
    ds["n"] = ("label_name", n)
    ds["ks_statistic"] = ("label_name", ks)
    ds["ks_pvalue"] = ("label_name", kp)
    ds["z_mean"] = ("label_name", zm)
    ds["z_sd"] = ("label_name", zs)
    ds["n_outliers"] = ("label_name", outlier.sum(axis=0))
    with np.errstate(invalid="ignore"):
        ds["frac_within_68"] = ("label_name", np.nanmean(np.where(np.isfinite(z), az_ < 1.0, np.nan), axis=0))
        ds["frac_within_95"] = ("label_name", np.nanmean(np.where(np.isfinite(z), az_ < 1.96, np.nan), axis=0))
    ds.attrs = {
        "ours": "posterior samples" if draws is not None else "catalogue (Gaussian)",
        "pipeline_columns": ", ".join(
            f"{n}={cols[n][0]}" + (f" (err {cols[n][1]})" if cols[n][1] else "") for n in use
        ),
        "use_pipeline_errors": int(use_pipeline_errors),
        "outlier_z": float(outlier_z),
        "quantile": "P(ours + pipeline error < pipeline value); uniform when both agree within errors",
    }
    return ds


def outlier_table(result: xr.Dataset):
    """The outliers of :func:`compare_with_pipeline` as a pandas table (one row per star and label)."""
    df = result[["ours_mean", "ours_sd", "pipeline", "pipeline_error", "z", "quantile", "outlier"]].to_dataframe()
    df = df.reset_index()
    return df[df["outlier"]].drop(columns="outlier").sort_values("z", key=np.abs, ascending=False)
