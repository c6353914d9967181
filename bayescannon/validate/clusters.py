"""Cluster validation: members of a star cluster share [Fe/H] (and [α/Fe]), so the
spread of their transferred labels and the offset from the literature value measure
precision and accuracy, and trends with Teff reveal systematics (Nandakumar+2022
Tables 5–6, Figs 12–13; Ness+2015).

* :func:`read_apogee_cluster_members` — reader of the APOGEE DR10 cluster member table
  (Ness+2015 training set format, ``../shared/data/apogee_dr10_cluster_members.txt``).
* :func:`membership_table` — a membership table (``ID``, ``CLUSTER``) from arrays.
* :func:`select_members` — the membership-probability cut, where the table has a
  probability column (by default one of :data:`PROBABILITY_COLUMNS`, members kept at
  probability ≥ 0.5); :func:`cluster_statistics` and :func:`cluster_trends` apply it.
* :func:`cluster_statistics` — per cluster: number of members, median and scatter of
  each label, offset from the literature values.
* :func:`cluster_trends` — per cluster: slope of [Fe/H] and [α/Fe] with Teff.

Clusters with too few members are reported with a ``STATUS`` saying why they were
skipped, never dropped; a membership table whose ids match no catalogue id raises
:class:`~bayescannon.errors.CrossMatchError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from bayescannon.errors import CrossMatchError, InvalidInputError, ShapeMismatchError, SurveyFormatError
from bayescannon.validate.stats import summary_statistics

logger = logging.getLogger(__name__)

__all__ = [
    "read_apogee_cluster_members",
    "membership_table",
    "select_members",
    "PROBABILITY_COLUMNS",
    "DEFAULT_MIN_PROBABILITY",
    "match_members",
    "cluster_statistics",
    "cluster_trends",
    "LITERATURE_FE_H",  # noqa: F822 -- module __getattr__: read from the package data on first use
    "LITERATURE_TABLE",
    "literature_table",
]

#: Package-data table of literature [Fe/H] for the clusters of the APOGEE DR10 member list,
#: with a source per row (:func:`literature_table`). Globular clusters: Harris (1996; 2010
#: edition); Pleiades: Soderblom+2009; M67: Pace+2008; NGC 6791: Gratton+2006; the other open
#: clusters are left blank (no checked reference at hand; see the table's notes). ``LITERATURE_FE_H`` is its ``{cluster: [Fe/H]}``.
LITERATURE_TABLE = "apogee_dr10_cluster_literature.ecsv"

#: Membership-probability columns looked for (case-insensitive, in this order) when
#: ``probability_column="auto"``.
PROBABILITY_COLUMNS = ("MEMBERSHIP_PROB", "MEMBERSHIP_PROBABILITY", "PROB", "PROBABILITY", "P_MEM", "PMEM", "PROBA")

#: Default minimum membership probability of a member that enters the statistics.
DEFAULT_MIN_PROBABILITY = 0.5

_APOGEE_ID = re.compile(r"(2M\d{8}[+-]\d{7})")

#: Columns of the DR10 member table (0-based; Ness+2015 ``fitspectra.py`` reads the
#: calibrated Teff, log g, [Fe/H] from columns 4, 6, 8 and the raw ASPCAP values from
#: 3, 5, 7). Later columns vary in number (18 or 19 fields) and are kept as COL09….
_DR10_COLUMNS = ("FILE", "CLUSTER", "RV", "TEFF_ASPCAP", "TEFF", "LOGG_ASPCAP", "LOGG", "FE_H_ASPCAP", "FE_H")


def read_apogee_cluster_members(path) -> Table:
    """Read the APOGEE DR10 cluster member table (whitespace separated).

    Each line: aspcapStar path, cluster name, RV (km/s), raw and calibrated Teff, raw and
    calibrated log g, raw and calibrated [Fe/H], then 9–10 further numbers.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    astropy.table.Table
        ``ID`` (APOGEE/2MASS id from the file name), ``FILE``, ``CLUSTER``, ``RV`` (km/s),
        ``TEFF_ASPCAP``, ``TEFF`` (K), ``LOGG_ASPCAP``, ``LOGG``, ``FE_H_ASPCAP``,
        ``FE_H``, and ``COL09``… (masked where a line has fewer fields).

    Raises
    ------
    SurveyFormatError
        Missing file, or a line that does not follow the layout (named by number).
    """
    path = Path(path)
    if not path.is_file():
        raise SurveyFormatError(f"cluster member table {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) < len(_DR10_COLUMNS):
                raise SurveyFormatError(
                    f"{path}:{lineno}: {len(parts)} fields; expected at least {len(_DR10_COLUMNS)} "
                    f"({', '.join(_DR10_COLUMNS)})"
                )
            m = _APOGEE_ID.search(parts[0])
            if m is None:
                raise SurveyFormatError(f"{path}:{lineno}: no APOGEE id (2Mhhmmssss+ddmmsss) in {parts[0]!r}")
            try:
                nums = [float(v) for v in parts[2:]]
            except ValueError as exc:
                raise SurveyFormatError(f"{path}:{lineno}: non-numeric value ({exc})") from exc
            rows.append((m.group(1), parts[0], parts[1], nums))
    if not rows:
        raise SurveyFormatError(f"{path} holds no member")
    width = max(len(r[3]) for r in rows)
    data = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        data[i, : len(r[3])] = r[3]
    t = Table()
    t["ID"] = [r[0] for r in rows]
    t["FILE"] = [r[1] for r in rows]
    t["CLUSTER"] = [r[2] for r in rows]
    units = {"RV": "km/s", "TEFF_ASPCAP": "K", "TEFF": "K"}
    for j in range(width):
        name = _DR10_COLUMNS[j + 2] if j + 2 < len(_DR10_COLUMNS) else f"COL{j + 2:02d}"
        col = data[:, j]
        t[name] = MaskedColumn(col, mask=~np.isfinite(col), unit=units.get(name))
    t["TEFF"].description = "calibrated Teff (Ness+2015)"
    t["LOGG"].description = "calibrated log g (Ness+2015)"
    t["FE_H"].description = "calibrated [Fe/H] (Ness+2015)"
    t.meta["SOURCE"] = str(path.name)
    logger.info("read %d members of %d clusters from %s", len(t), len(set(t["CLUSTER"])), path)
    return t


def membership_table(ids, clusters) -> Table:
    """A membership table (``ID``, ``CLUSTER``) from two arrays."""
    ids = np.asarray(ids).astype(str)
    clusters = np.asarray(clusters).astype(str)
    if ids.shape != clusters.shape or ids.ndim != 1:
        raise ShapeMismatchError(f"ids {ids.shape} and clusters {clusters.shape} must be equal 1-D shapes")
    return Table({"ID": ids, "CLUSTER": clusters})


def select_members(
    membership: Table,
    *,
    probability_column: str | None = "auto",
    min_probability: float | None = DEFAULT_MIN_PROBABILITY,
) -> tuple[Table, str | None]:
    """The members at or above a membership probability.

    Parameters
    ----------
    membership : Table
    probability_column : str or None
        Column of membership probabilities (0–1); ``"auto"``: the first of
        :data:`PROBABILITY_COLUMNS` present (case-insensitive), none if absent; None:
        no cut.
    min_probability : float or None
        Members below it (or with a masked/NaN probability) are left out; None: no cut.

    Returns
    -------
    (Table, str or None)
        The kept rows and the column used (None when no cut was made).

    Raises
    ------
    InvalidInputError
        A named column that is absent, probabilities outside [0, 1], or a threshold
        outside [0, 1].
    """
    if probability_column is None or min_probability is None:
        return membership, None
    if not 0.0 <= float(min_probability) <= 1.0:
        raise InvalidInputError(f"min_probability must be in [0, 1]; got {min_probability}")
    col = probability_column
    if col == "auto":
        upper = {c.upper(): c for c in membership.colnames}
        col = next((upper[n] for n in PROBABILITY_COLUMNS if n in upper), None)
        if col is None:
            return membership, None
    elif col not in membership.colnames:
        raise InvalidInputError(f"membership table has no probability column {col!r}; columns: {membership.colnames}")
    p = np.asarray(np.ma.filled(np.ma.asarray(membership[col], dtype=float), np.nan))
    fin = np.isfinite(p)
    if ((p[fin] < 0) | (p[fin] > 1)).any():
        raise InvalidInputError(f"membership column {col!r} holds values outside [0, 1]: not probabilities")
    keep = fin & (p >= float(min_probability))
    logger.info("membership cut %s >= %g keeps %d of %d members", col, min_probability, keep.sum(), p.size)
    if not keep.any():
        raise InvalidInputError(f"no member has {col} >= {min_probability}: lower min_probability or check the column")
    return membership[keep], col


def match_members(ids, membership: Table, *, id_column: str = "ID", cluster_column: str = "CLUSTER"):
    """Cluster name of every catalogue row ('' for non-members).

    Parameters
    ----------
    ids : array_like (N,)
        Catalogue ids.
    membership : Table
        Membership table with ``id_column`` and ``cluster_column``.

    Returns
    -------
    ndarray of str, shape (N,)

    Raises
    ------
    CrossMatchError
        A star listed in two clusters, or no member id found among ``ids``.
    """
    for col in (id_column, cluster_column):
        if col not in membership.colnames:
            raise InvalidInputError(f"membership table has no column {col!r}; columns: {membership.colnames}")
    mid = np.asarray(membership[id_column]).astype(str)
    mcl = np.asarray(membership[cluster_column]).astype(str)
    seen: dict[str, str] = {}
    clash = sorted({i for i, c in zip(mid.tolist(), mcl.tolist()) if seen.setdefault(i, c) != c})
    if clash:
        raise CrossMatchError(f"stars listed in more than one cluster: {clash[:5]}")
    ids = np.asarray(ids).astype(str)
    order = np.argsort(mid)
    pos = np.clip(np.searchsorted(mid[order], ids), 0, mid.size - 1)
    hit = mid[order][pos] == ids
    if not hit.any():
        raise CrossMatchError(
            f"no member id ({id_column}, e.g. {mid[:2].tolist()}) occurs among the catalogue ids "
            f"(e.g. {ids[:2].tolist()})"
        )
    out = np.where(hit, mcl[order][pos], "")
    missing = np.setdiff1d(mid, ids[hit])
    if missing.size:
        logger.info("%d of %d members are not in the catalogue", missing.size, np.unique(mid).size)
    return out


@lru_cache(maxsize=1)
def _literature_table() -> Table:
    with resources.as_file(resources.files("bayescannon") / "data" / LITERATURE_TABLE) as path:
        return Table.read(path, format="ascii.ecsv")


def literature_table() -> Table:
    """The shipped literature table of the DR10 clusters (``CLUSTER``, ``NGC``, ``TYPE``,
    ``FE_H`` masked where no sourced value is given, ``SOURCE``; full references in
    ``meta["references"]``, caveats in ``meta["notes"]``). A copy."""
    return _literature_table().copy()


def __getattr__(name):
    if name == "LITERATURE_FE_H":  # read from the package data on first use, not at import
        t = _literature_table()
        return {str(r["CLUSTER"]): float(r["FE_H"]) for r in t if not np.ma.is_masked(r["FE_H"])}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _literature_sources(literature) -> dict:
    """{cluster: source} of a literature table with a ``SOURCE`` column (the shipped one by default)."""
    if literature is None:
        literature = _literature_table()
    if not isinstance(literature, Table) or "SOURCE" not in literature.colnames:
        return {}
    refs = literature.meta.get("references", {}) if isinstance(literature.meta.get("references"), Mapping) else {}
    return {str(r["CLUSTER"]): str(refs.get(str(r["SOURCE"]), r["SOURCE"])) for r in literature}


def _literature(literature, label_names):
    """{cluster: {label: value}} from a mapping or a table (CLUSTER + label columns)."""
    if literature is None:
        literature = _literature_table()
    if isinstance(literature, Table):
        if "CLUSTER" not in literature.colnames:
            raise InvalidInputError("literature table needs a CLUSTER column")
        out = {}
        for row in literature:
            out[str(row["CLUSTER"])] = {
                n: float(row[n])
                for n in label_names
                if n in literature.colnames and not np.ma.is_masked(row[n]) and np.isfinite(float(row[n]))
            }
        return out
    if isinstance(literature, Mapping):
        return {str(c): (dict(v) if isinstance(v, Mapping) else {"FE_H": float(v)}) for c, v in literature.items()}
    raise InvalidInputError(f"literature must be a mapping or a Table; got {type(literature).__name__}")


def cluster_statistics(
    ids,
    labels,
    membership: Table,
    label_names,
    *,
    literature=None,
    min_members: int = 3,
    good=None,
    id_column: str = "ID",
    cluster_column: str = "CLUSTER",
    probability_column: str | None = "auto",
    min_probability: float | None = DEFAULT_MIN_PROBABILITY,
) -> Table:
    """Per cluster: median and scatter of each label and offset from the literature.

    Parameters
    ----------
    ids : array_like (N,)
        Catalogue ids.
    labels : ndarray (N, K)
        Transferred labels.
    membership : Table
        Ids and cluster names (e.g. :func:`read_apogee_cluster_members`).
    label_names : list of str
    literature : mapping or Table, optional
        ``{cluster: [Fe/H]}``, ``{cluster: {label: value}}`` or a table with
        ``CLUSTER`` and label columns (and optionally ``SOURCE``); default the shipped
        :func:`literature_table` ([Fe/H] with a source per cluster).
    min_members : int
        Clusters with fewer usable members get ``STATUS = "skipped …"`` and masked
        statistics.
    good : ndarray of bool (N,), optional
        Rows to use (e.g. unflagged stars).
    probability_column, min_probability
        Membership-probability cut (:func:`select_members`), where the table has one.

    Returns
    -------
    astropy.table.Table
        ``CLUSTER``, ``N_MEMBERS`` (in the membership table), ``N_LOW_PROB`` (members
        below the probability cut; 0 without a cut), ``N_MATCHED`` (members above the
        cut found in the catalogue), ``N_USED``, then per label ``MEDIAN_<L>``, ``SCATTER_<L>`` (std),
        ``HALF_P16_84_<L>``, ``LIT_<L>`` and ``OFFSET_<L>`` (median − literature),
        ``LIT_SOURCE`` (the reference of the literature values, where the table gives one) and
        ``STATUS``.
    """
    y = np.asarray(labels, dtype=float)
    k = len(label_names)
    ids = np.asarray(ids).astype(str)
    if y.shape != (ids.size, k):
        raise ShapeMismatchError(f"labels have shape {y.shape}; expected ({ids.size}, {k})")
    if int(min_members) < 2:
        raise InvalidInputError(f"min_members must be >= 2; got {min_members}")
    for col in (id_column, cluster_column):
        if col not in membership.colnames:
            raise InvalidInputError(f"membership table has no column {col!r}; columns: {membership.colnames}")
    kept, pcol = select_members(membership, probability_column=probability_column, min_probability=min_probability)
    cl = match_members(ids, kept, id_column=id_column, cluster_column=cluster_column)
    use = np.ones(ids.size, bool) if good is None else np.asarray(good, bool)
    if use.shape != ids.shape:
        raise ShapeMismatchError(f"good has shape {use.shape}; expected {ids.shape}")
    lit = _literature(literature, label_names)
    sources = _literature_sources(literature)
    names, n_members = np.unique(np.asarray(membership[cluster_column]).astype(str), return_counts=True)
    kept_cl = np.asarray(kept[cluster_column]).astype(str)
    rows = []
    for c, nm in zip(names, n_members):
        sel = cl == c
        n_matched = int(sel.sum())
        sel &= use & np.all(np.isfinite(y), axis=1)
        n_used = int(sel.sum())
        ok = n_used >= min_members
        st = summary_statistics(y[sel], axis=0) if n_used else None
        n_low = int(nm) - int((kept_cl == c).sum())
        row = {"CLUSTER": c, "N_MEMBERS": int(nm), "N_LOW_PROB": n_low, "N_MATCHED": n_matched, "N_USED": n_used}
        for q, name in enumerate(label_names):
            med = float(st["median"][q]) if ok else np.nan
            row[f"MEDIAN_{name}"] = med
            row[f"SCATTER_{name}"] = float(st["rms"][q]) if ok else np.nan
            row[f"HALF_P16_84_{name}"] = float(st["half_p16_84"][q]) if ok else np.nan
            lv = lit.get(c, {}).get(name, np.nan)
            row[f"LIT_{name}"] = lv
            row[f"OFFSET_{name}"] = med - lv
        row["LIT_SOURCE"] = sources.get(c, "") if any(np.isfinite(row[f"LIT_{n}"]) for n in label_names) else ""
        row["STATUS"] = (
            "ok"
            if ok
            else (
                f"skipped ({n_used} usable members < {min_members})"
                if n_matched
                else "skipped (no member in catalogue)"
            )
        )
        rows.append(row)
    t = Table(rows=rows)
    for col in t.colnames:
        if t[col].dtype.kind == "f":
            t[col] = MaskedColumn(t[col], mask=~np.isfinite(t[col]))
    t.meta["PROBCOL"] = pcol or "none (no membership-probability cut)"
    if pcol:
        t.meta["MINPROB"] = float(min_probability)
    return t


def cluster_trends(
    ids,
    labels,
    membership: Table,
    label_names,
    *,
    x: str = "TEFF",
    y=("FE_H", "ALPHA_FE"),
    per: float = 1000.0,
    min_members: int = 5,
    good=None,
    id_column: str = "ID",
    cluster_column: str = "CLUSTER",
    probability_column: str | None = "auto",
    min_probability: float | None = DEFAULT_MIN_PROBABILITY,
) -> Table:
    """Per cluster: least-squares slope of labels ``y`` against label ``x``
    (Nandakumar+2022 Figs 12–13: [Fe/H] and [α/Fe] against Teff).

    Parameters
    ----------
    ids, labels, membership, label_names
        As for :func:`cluster_statistics`.
    x : str
        Abscissa label.
    y : sequence of str
        Ordinate labels (those not in ``label_names`` are ignored).
    per : float
        Slopes are per this many units of ``x`` (per 1000 K by default).
    min_members : int
        Clusters with fewer usable members are reported as skipped.
    good : ndarray of bool, optional
    probability_column, min_probability
        Membership-probability cut (:func:`select_members`), where the table has one.

    Returns
    -------
    astropy.table.Table
        ``CLUSTER``, ``LABEL``, ``N_USED``, ``SLOPE``, ``e_SLOPE``, ``X_MIN``, ``X_MAX``,
        ``STATUS`` (one row per cluster and label).
    """
    yy = np.asarray(labels, dtype=float)
    ids = np.asarray(ids).astype(str)
    if x not in label_names:
        raise InvalidInputError(f"trend abscissa {x!r} is not a label ({label_names})")
    ys = [n for n in y if n in label_names]
    if not ys:
        raise InvalidInputError(f"none of {list(y)} is a label ({label_names})")
    if int(min_members) < 3:
        raise InvalidInputError(f"min_members must be >= 3 for a slope with an error; got {min_members}")
    kept, pcol = select_members(membership, probability_column=probability_column, min_probability=min_probability)
    cl = match_members(ids, kept, id_column=id_column, cluster_column=cluster_column)
    use = np.ones(ids.size, bool) if good is None else np.asarray(good, bool)
    xi = label_names.index(x)
    rows = []
    for c in np.unique(np.asarray(membership[cluster_column]).astype(str)):
        for name in ys:
            q = label_names.index(name)
            sel = (cl == c) & use & np.isfinite(yy[:, xi]) & np.isfinite(yy[:, q])
            n = int(sel.sum())
            xs, vs = yy[sel, xi] / per, yy[sel, q]
            if n >= min_members and np.ptp(xs) > 0:
                a = np.column_stack([np.ones(n), xs - xs.mean()])
                coef, res, *_ = np.linalg.lstsq(a, vs, rcond=None)
                resid = vs - a @ coef
                s2 = float(resid @ resid) / (n - 2)
                cov = s2 * np.linalg.inv(a.T @ a)
                rows.append((c, name, n, coef[1], np.sqrt(cov[1, 1]), xs.min() * per, xs.max() * per, "ok"))
            else:
                why = f"skipped ({n} usable members < {min_members})" if n < min_members else "skipped (no spread in x)"
                rows.append(
                    (c, name, n, np.nan, np.nan, xs.min() * per if n else np.nan, xs.max() * per if n else np.nan, why)
                )
    t = Table(
        rows=rows,
        names=("CLUSTER", "LABEL", "N_USED", "SLOPE", "e_SLOPE", "X_MIN", "X_MAX", "STATUS"),
        dtype=(str, str, np.int64, float, float, float, float, str),
    )
    for col in ("SLOPE", "e_SLOPE", "X_MIN", "X_MAX"):
        t[col] = MaskedColumn(t[col], mask=~np.isfinite(t[col]))
    t.meta["X"] = x
    t.meta["PER"] = per
    t.meta["PROBCOL"] = pcol or "none (no membership-probability cut)"
    t["SLOPE"].description = f"d(label)/d({x}) per {per:g} units of {x}"
    return t
