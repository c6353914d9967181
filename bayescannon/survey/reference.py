"""Reference-set construction: cross-matching catalogues and declarative quality cuts.

:func:`crossmatch_ids`
    one-to-one match on identifiers (e.g. 2MASS ids), with a policy for duplicated ids;
:func:`crossmatch_sky`
    one-to-one positional match with :meth:`astropy.coordinates.SkyCoord.match_to_catalog_sky`;
    when several rows of ``table_a`` pick the same row of ``table_b`` the closest keeps
    it and the others are reported;
:class:`QualityCuts` and :func:`apply_cuts`
    ranges per column, a minimum S/N, finite-value requirements and bitmask columns
    (e.g. APOGEE ``ASPCAPFLAG``/``STARFLAG``) with the bits to reject, built from a
    dict or a TOML file.

Every function returns what it kept and a table of what it did not keep with a
``reason`` column; rows are never dropped silently.
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table, hstack

from bayescannon.errors import CrossMatchError, InvalidInputError
from bayescannon.io.apogee import APOGEE_ASPCAPFLAG_BITS, APOGEE_PIXMASK_BITS, APOGEE_STARFLAG_BITS

logger = logging.getLogger(__name__)

__all__ = [
    "REJECTED_COLUMNS",
    "crossmatch_ids",
    "crossmatch_sky",
    "QualityCuts",
    "apply_cuts",
]

#: Columns of the rejected-rows table returned by the cross-matches.
REJECTED_COLUMNS = ("table", "row", "id", "sep_arcsec", "reason")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _check_table(table, name: str) -> Table:
    if not isinstance(table, Table):
        try:
            table = Table(table)
        except Exception as exc:
            raise InvalidInputError(
                f"{name} must be an astropy Table (or convertible); got {type(table).__name__}"
            ) from exc
    return table


def _require_column(table: Table, column: str, name: str) -> None:
    if column not in table.colnames:
        raise InvalidInputError(f"{name} has no column {column!r}; columns are {', '.join(table.colnames[:20])}")


def _missing_mask(col) -> np.ndarray:
    """True where a column value is masked, NaN or an empty string."""
    data = np.asarray(col)
    mask = np.zeros(len(col), bool)
    if hasattr(col, "mask") and col.mask is not None:
        mask |= np.asarray(col.mask, dtype=bool)
    if data.dtype.kind == "f":
        mask |= ~np.isfinite(data)
    elif data.dtype.kind in "SUO":
        mask |= np.char.strip(data.astype(str)) == ""
    return mask


def _id_strings(col, key: Callable | None, case_sensitive: bool) -> np.ndarray:
    data = np.asarray(col.filled("") if hasattr(col, "filled") else col)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "ascii", errors="replace")
    ids = np.char.strip(data.astype(str))
    if not case_sensitive:
        ids = np.char.upper(ids)
    if key is not None:
        ids = np.asarray([str(key(v)) for v in ids], dtype=str)
    return ids


def _rejected(rows: list[tuple[str, int, str, float, str]]) -> Table:
    if rows:
        table, row, ids, sep, reason = zip(*rows)
        return Table(
            [
                np.asarray(table, dtype=str),
                np.asarray(row, dtype=np.int64),
                np.asarray(ids, dtype=str),
                np.asarray(sep, dtype=np.float64),
                np.asarray(reason, dtype=str),
            ],
            names=REJECTED_COLUMNS,
        )
    return Table(
        [np.zeros(0, str), np.zeros(0, np.int64), np.zeros(0, str), np.zeros(0), np.zeros(0, str)],
        names=REJECTED_COLUMNS,
    )


def _joined(table_a: Table, table_b: Table, rows_a, rows_b, names=("a", "b")) -> Table:
    a = table_a[np.asarray(rows_a, dtype=np.intp)]
    b = table_b[np.asarray(rows_b, dtype=np.intp)]
    out = hstack(
        [a, b],
        table_names=list(names),
        uniq_col_name="{col_name}_{table_name}",
        metadata_conflicts="silent",  # e.g. both tables read from FITS carry an EXTNAME
    )
    out["row_a"] = np.asarray(rows_a, dtype=np.int64)
    out["row_b"] = np.asarray(rows_b, dtype=np.int64)
    return out


def _duplicates(ids: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_later_duplicate, is_any_duplicate) for valid ids, first occurrence kept."""
    n = ids.size
    later = np.zeros(n, bool)
    anydup = np.zeros(n, bool)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return later, anydup
    uniq, first, inverse, counts = np.unique(ids[idx], return_index=True, return_inverse=True, return_counts=True)
    anydup[idx] = counts[inverse] > 1
    is_first = np.zeros(idx.size, bool)
    is_first[first] = True
    later[idx] = anydup[idx] & ~is_first
    return later, anydup


# ---------------------------------------------------------------------------------------
# identifier cross-match
# ---------------------------------------------------------------------------------------


def crossmatch_ids(
    table_a,
    table_b,
    id_a: str,
    id_b: str | None = None,
    *,
    duplicates: str = "raise",
    key: Callable | None = None,
    case_sensitive: bool = True,
    report_unmatched_b: bool = False,
) -> tuple[Table, Table]:
    """One-to-one cross-match of two tables on identifier columns.

    Identifiers are compared as stripped strings (optionally upper-cased, optionally
    mapped by ``key``, e.g. ``lambda s: s.removeprefix("2M")`` to compare APOGEE ids
    with 2MASS ids).

    Parameters
    ----------
    table_a, table_b : astropy.table.Table
    id_a : str
        Identifier column of ``table_a``.
    id_b : str, optional
        Identifier column of ``table_b`` (default ``id_a``).
    duplicates : {"raise", "first", "reject"}
        Duplicated ids within a table: raise :class:`~bayescannon.errors.CrossMatchError`
        (default), keep the first occurrence and report the others, or report every
        occurrence.
    key : callable, optional
        Maps each (stripped) identifier before matching.
    case_sensitive : bool
    report_unmatched_b : bool
        Also list ``table_b`` rows without a partner (off by default: ``table_b`` is
        often a whole survey catalogue).

    Returns
    -------
    matched : astropy.table.Table
        Rows of ``table_a`` (in their order) joined with their ``table_b`` partner;
        clashing column names get suffixes ``_a``/``_b``; ``row_a``/``row_b`` give the
        source rows.
    rejected : astropy.table.Table
        Columns ``table`` ("a"/"b"), ``row``, ``id``, ``sep_arcsec`` (NaN here),
        ``reason``.

    Raises
    ------
    CrossMatchError
        Duplicated ids with ``duplicates="raise"``.
    InvalidInputError
        Missing columns or a bad ``duplicates`` value.
    """
    table_a = _check_table(table_a, "table_a")
    table_b = _check_table(table_b, "table_b")
    id_b = id_a if id_b is None else id_b
    _require_column(table_a, id_a, "table_a")
    _require_column(table_b, id_b, "table_b")
    if duplicates not in ("raise", "first", "reject"):
        raise InvalidInputError(f"duplicates must be 'raise', 'first' or 'reject'; got {duplicates!r}")
    ids = {}
    usable = {}
    rejected: list[tuple[str, int, str, float, str]] = []
    for name, table, col in (("a", table_a, id_a), ("b", table_b, id_b)):
        s = _id_strings(table[col], key, case_sensitive)
        missing = _missing_mask(table[col]) | (s == "")
        later, anydup = _duplicates(s, ~missing)
        if anydup.any() and duplicates == "raise":
            dup_ids = np.unique(s[anydup])
            rows = np.flatnonzero(anydup)
            raise CrossMatchError(
                f"table_{name} column {col!r} has {dup_ids.size} duplicated id(s), e.g. "
                f"{', '.join(dup_ids[:5])} (rows {', '.join(map(str, rows[:8]))}); pass "
                "duplicates='first' or 'reject'"
            )
        drop = later if duplicates == "first" else anydup
        for r in np.flatnonzero(missing):
            rejected.append((name, int(r), "", math.nan, f"missing id in table_{name}"))
        for r in np.flatnonzero(drop):
            rejected.append((name, int(r), str(s[r]), math.nan, f"duplicated id {s[r]!r} in table_{name}"))
        ids[name] = s
        usable[name] = ~missing & ~drop
    ia = np.flatnonzero(usable["a"])
    ib = np.flatnonzero(usable["b"])
    _, pos_a, pos_b = np.intersect1d(ids["a"][ia], ids["b"][ib], return_indices=True)
    rows_a = ia[pos_a]
    rows_b = ib[pos_b]
    order = np.argsort(rows_a, kind="stable")
    rows_a, rows_b = rows_a[order], rows_b[order]
    matched_a = np.zeros(len(table_a), bool)
    matched_a[rows_a] = True
    for r in np.flatnonzero(usable["a"] & ~matched_a):
        rejected.append(("a", int(r), str(ids["a"][r]), math.nan, "no match in table_b"))
    if report_unmatched_b:
        matched_b = np.zeros(len(table_b), bool)
        matched_b[rows_b] = True
        for r in np.flatnonzero(usable["b"] & ~matched_b):
            rejected.append(("b", int(r), str(ids["b"][r]), math.nan, "no match in table_a"))
    matched = _joined(table_a, table_b, rows_a, rows_b)
    rej = _rejected(rejected)
    logger.info(
        "crossmatch_ids: %d matched, %d rejected (of %d in table_a)",
        len(matched),
        len(rej),
        len(table_a),
    )
    return matched, rej


# ---------------------------------------------------------------------------------------
# positional cross-match
# ---------------------------------------------------------------------------------------


def _coords(table: Table, ra: str, dec: str, name: str):
    _require_column(table, ra, name)
    _require_column(table, dec, name)
    ra_col, dec_col = table[ra], table[dec]
    missing = _missing_mask(ra_col) | _missing_mask(dec_col)

    def values(col):
        data = col.filled(np.nan) if hasattr(col, "filled") else col
        q = u.Quantity(data, unit=col.unit or u.deg)
        return np.asarray(q.to_value(u.deg), dtype=np.float64)

    ra_deg = values(ra_col)
    dec_deg = values(dec_col)
    bad_range = ~missing & ((dec_deg < -90) | (dec_deg > 90))
    missing |= bad_range | ~np.isfinite(ra_deg) | ~np.isfinite(dec_deg)
    ra_deg = np.where(missing, 0.0, ra_deg)
    dec_deg = np.where(missing, 0.0, dec_deg)
    return SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg), missing


def crossmatch_sky(
    table_a,
    table_b,
    tolerance_arcsec: float = 1.0,
    *,
    ra_a: str = "ra",
    dec_a: str = "dec",
    ra_b: str | None = None,
    dec_b: str | None = None,
    id_a: str | None = None,
    ambiguous: str = "keep",
) -> tuple[Table, Table]:
    """One-to-one positional cross-match within ``tolerance_arcsec``.

    Each row of ``table_a`` takes its nearest ``table_b`` row
    (:meth:`~astropy.coordinates.SkyCoord.match_to_catalog_sky`). When several rows of
    ``table_a`` pick the same ``table_b`` row, the closest keeps it (on an exact tie,
    the first row) and the others are reported.

    Parameters
    ----------
    table_a, table_b : astropy.table.Table
        Coordinates in degrees unless the columns carry units.
    tolerance_arcsec : float
    ra_a, dec_a : str
        Coordinate columns of ``table_a``.
    ra_b, dec_b : str, optional
        Coordinate columns of ``table_b`` (default: same names as ``table_a``).
    id_a : str, optional
        Identifier column of ``table_a`` quoted in the rejected table.
    ambiguous : {"keep", "reject", "raise"}
        What to do when a ``table_a`` row has more than one ``table_b`` row within the
        tolerance: keep the nearest (the count is in column ``n_candidates``), report
        the row, or raise :class:`~bayescannon.errors.CrossMatchError`.

    Returns
    -------
    matched : astropy.table.Table
        ``table_a`` rows (in order) joined with their partners, plus ``sep_arcsec``,
        ``n_candidates``, ``row_a`` and ``row_b``.
    rejected : astropy.table.Table
        Columns ``table``, ``row``, ``id``, ``sep_arcsec``, ``reason``.

    Raises
    ------
    CrossMatchError
        Ambiguous matches with ``ambiguous="raise"``.
    InvalidInputError
        Missing columns, a non-positive tolerance or a bad ``ambiguous`` value.
    """
    table_a = _check_table(table_a, "table_a")
    table_b = _check_table(table_b, "table_b")
    ra_b = ra_a if ra_b is None else ra_b
    dec_b = dec_a if dec_b is None else dec_b
    if not (np.isfinite(tolerance_arcsec) and tolerance_arcsec > 0):
        raise InvalidInputError(f"tolerance_arcsec must be positive; got {tolerance_arcsec}")
    if ambiguous not in ("keep", "reject", "raise"):
        raise InvalidInputError(f"ambiguous must be 'keep', 'reject' or 'raise'; got {ambiguous!r}")
    if id_a is not None:
        _require_column(table_a, id_a, "table_a")
    na = len(table_a)
    ids = np.asarray(table_a[id_a]).astype(str) if id_a is not None else np.asarray([""] * na, dtype=str)
    coords_a, miss_a = _coords(table_a, ra_a, dec_a, "table_a")
    coords_b, miss_b = _coords(table_b, ra_b, dec_b, "table_b")
    rejected: list[tuple[str, int, str, float, str]] = []
    for r in np.flatnonzero(miss_a):
        rejected.append(("a", int(r), str(ids[r]), math.nan, "missing or invalid coordinates"))
    valid_a = np.flatnonzero(~miss_a)
    valid_b = np.flatnonzero(~miss_b)
    if valid_b.size == 0 or valid_a.size == 0:
        for r in valid_a:
            rejected.append(("a", int(r), str(ids[r]), math.nan, "table_b has no valid coordinates"))
        matched = _joined(table_a, table_b, [], [])
        matched["sep_arcsec"] = np.zeros(0)
        matched["n_candidates"] = np.zeros(0, np.int64)
        return matched, _rejected(rejected)
    cb = coords_b[valid_b]
    ca = coords_a[valid_a]
    nearest, sep2d, _ = ca.match_to_catalog_sky(cb)
    sep = sep2d.to_value(u.arcsec)
    nearest_b = valid_b[np.atleast_1d(nearest)]
    tol = tolerance_arcsec * u.arcsec
    n_cand = np.zeros(valid_a.size, np.int64)
    if valid_a.size:
        ia_pairs, _, _, _ = cb.search_around_sky(ca, tol) if len(cb) > 0 else ([], [], [], [])
        n_cand = np.bincount(np.asarray(ia_pairs, dtype=np.intp), minlength=valid_a.size)
    within = sep <= tolerance_arcsec
    for k in np.flatnonzero(~within):
        rejected.append(
            (
                "a",
                int(valid_a[k]),
                str(ids[valid_a[k]]),
                float(sep[k]),
                f"no table_b row within {tolerance_arcsec:g} arcsec (nearest at {sep[k]:.3f})",
            )
        )
    ambiguous_rows = within & (n_cand > 1)
    if ambiguous_rows.any():
        bad = valid_a[ambiguous_rows]
        if ambiguous == "raise":
            raise CrossMatchError(
                f"{bad.size} table_a row(s) have more than one table_b row within "
                f"{tolerance_arcsec:g} arcsec, e.g. rows {', '.join(map(str, bad[:8]))}; "
                "pass ambiguous='keep' or 'reject', or a smaller tolerance"
            )
        if ambiguous == "reject":
            for k in np.flatnonzero(ambiguous_rows):
                rejected.append(
                    (
                        "a",
                        int(valid_a[k]),
                        str(ids[valid_a[k]]),
                        float(sep[k]),
                        f"{n_cand[k]} table_b rows within {tolerance_arcsec:g} arcsec",
                    )
                )
            within = within & ~ambiguous_rows
    # one-to-one: among table_a rows that chose the same table_b row keep the closest
    cand = np.flatnonzero(within)
    order = np.lexsort((valid_a[cand], sep[cand], nearest_b[cand]))
    cand = cand[order]
    targets = nearest_b[cand]
    first = np.ones(cand.size, bool)
    first[1:] = targets[1:] != targets[:-1]
    winners = cand[first][np.cumsum(first) - 1]  # the kept table_a row of each group
    for k, w in zip(cand[~first], winners[~first]):
        tie = sep[k] == sep[w]
        rejected.append(
            (
                "a",
                int(valid_a[k]),
                str(ids[valid_a[k]]),
                float(sep[k]),
                f"table_b row {int(nearest_b[k])} {'tied with' if tie else 'is closer to'} "
                f"table_a row {int(valid_a[w])} ({sep[w]:.3f} vs {sep[k]:.3f} arcsec)"
                + ("; the first row keeps it" if tie else ""),
            )
        )
    keep = np.sort(cand[first])
    rows_a = valid_a[keep]
    rows_b = nearest_b[keep]
    matched = _joined(table_a, table_b, rows_a, rows_b)
    matched["sep_arcsec"] = sep[keep]
    matched["n_candidates"] = n_cand[keep]
    rej = _rejected(rejected)
    if len(rej):
        rej = rej[np.lexsort((rej["row"], rej["table"]))]
    logger.info(
        "crossmatch_sky: %d matched within %g arcsec, %d rejected (of %d in table_a)",
        len(matched),
        tolerance_arcsec,
        len(rej),
        na,
    )
    return matched, rej


# ---------------------------------------------------------------------------------------
# quality cuts
# ---------------------------------------------------------------------------------------


def _bit_names(column: str) -> dict[str, int]:

    tables = {
        "ASPCAPFLAG": APOGEE_ASPCAPFLAG_BITS,
        "STARFLAG": APOGEE_STARFLAG_BITS,
        "ANDFLAG": APOGEE_STARFLAG_BITS,
        "PIXMASK": APOGEE_PIXMASK_BITS,
    }
    table = tables.get(column.upper(), {})
    return {v: k for k, v in table.items()}


def _parse_bound(value, column: str, which: str) -> float:
    if value is None:
        return -math.inf if which == "min" else math.inf
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity"):
            return math.inf
        if text in ("-inf", "-infinity"):
            return -math.inf
        if text in ("", "none", "null"):
            return -math.inf if which == "min" else math.inf
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"cut on {column!r}: {which} must be a number or 'inf'/'-inf'; got {value!r}") from exc


@dataclass(frozen=True)
class QualityCuts:
    """Declarative quality cuts on a catalogue.

    Parameters
    ----------
    ranges : mapping column → (min, max)
        Keep ``min <= value <= max``; either bound may be ``None``/``"-inf"``/``"inf"``.
        A mapping ``{"min": .., "max": ..}`` is accepted too.
    min_snr : float, optional
        Keep ``snr_column >= min_snr``.
    snr_column : str
    bitmasks : mapping column → sequence of int or str
        Reject rows with any of these bits set; names are resolved for APOGEE
        ``ASPCAPFLAG``, ``STARFLAG`` and ``PIXMASK`` (e.g. ``"STAR_BAD"``).
    require_finite : sequence of str
        Columns that must hold a value (not masked, NaN or a missing sentinel).
    missing_values : sequence of float
        Sentinels treated as missing (default -9999).

    Examples
    --------
    >>> cuts = QualityCuts.from_dict({
    ...     "ranges": {"TEFF": [3500, 5500], "LOGG": [None, 3.9]},
    ...     "min_snr": 50,
    ...     "bitmasks": {"ASPCAPFLAG": ["STAR_BAD"], "STARFLAG": [0, 3]},
    ... })
    """

    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    min_snr: float | None = None
    snr_column: str = "snr"
    bitmasks: Mapping[str, tuple] = field(default_factory=dict)
    require_finite: tuple[str, ...] = ()
    missing_values: tuple[float, ...] = (-9999.0,)

    def __post_init__(self):
        ranges = {}
        for col, bounds in dict(self.ranges).items():
            if isinstance(bounds, Mapping):
                lo, hi = bounds.get("min"), bounds.get("max")
            else:
                try:
                    lo, hi = bounds
                except (TypeError, ValueError) as exc:
                    raise InvalidInputError(f"range for {col!r} must be (min, max); got {bounds!r}") from exc
            lo_f, hi_f = _parse_bound(lo, col, "min"), _parse_bound(hi, col, "max")
            if lo_f > hi_f:
                raise InvalidInputError(f"range for {col!r} has min {lo_f} > max {hi_f}")
            ranges[str(col)] = (lo_f, hi_f)
        object.__setattr__(self, "ranges", ranges)
        bitmasks = {}
        for col, bits in dict(self.bitmasks).items():
            if isinstance(bits, (int, str)):
                bits = [bits]
            names = _bit_names(col)
            value = 0
            for b in bits:
                if isinstance(b, str) and not b.strip().isdigit():
                    key = b.strip().upper()
                    if key not in names:
                        known = ", ".join(sorted(names)) or "none (use bit numbers)"
                        raise InvalidInputError(f"unknown bit name {b!r} for column {col!r}; known: {known}")
                    b = names[key]
                b = int(b)
                if not 0 <= b < 64:
                    raise InvalidInputError(f"bit numbers must be 0-63; got {b} for {col!r}")
                value |= 1 << b
            bitmasks[str(col)] = value
        object.__setattr__(self, "bitmasks", bitmasks)
        object.__setattr__(self, "require_finite", tuple(self.require_finite))
        object.__setattr__(self, "missing_values", tuple(float(v) for v in self.missing_values))
        if self.min_snr is not None:
            object.__setattr__(self, "min_snr", float(self.min_snr))

    @classmethod
    def from_dict(cls, spec: Mapping) -> QualityCuts:
        """Build from a dict (e.g. a parsed TOML/YAML/JSON file); unknown keys raise."""
        known = {"ranges", "min_snr", "snr_column", "bitmasks", "require_finite", "missing_values"}
        unknown = set(spec) - known
        if unknown:
            raise InvalidInputError(
                f"unknown quality-cut key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(spec))

    @classmethod
    def from_toml(cls, source) -> QualityCuts:
        """Build from a TOML file path or TOML text.

        Examples
        --------
        ::

            min_snr = 50
            require_finite = ["TEFF", "LOGG"]
            [ranges]
            TEFF = [3500, 5500]
            LOGG = ["-inf", 3.9]
            [bitmasks]
            ASPCAPFLAG = ["STAR_BAD"]
            STARFLAG = [0, 3, 4]
        """
        text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        if "\n" not in text and "=" not in text and os.path.exists(text):
            with open(text, "rb") as fh:
                spec = tomllib.load(fh)
        else:
            try:
                spec = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidInputError(f"invalid TOML quality cuts: {exc}") from exc
        return cls.from_dict(spec)

    def to_dict(self) -> dict:
        """A dict that :meth:`from_dict` turns back into these cuts (bits as numbers)."""
        return {
            "ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()},
            "min_snr": self.min_snr,
            "snr_column": self.snr_column,
            "bitmasks": {k: [b for b in range(64) if v >> b & 1] for k, v in self.bitmasks.items()},
            "require_finite": list(self.require_finite),
            "missing_values": list(self.missing_values),
        }


def _numeric(table: Table, column: str, missing_values) -> tuple[np.ndarray, np.ndarray]:
    col = table[column]
    if col.ndim != 1:
        raise InvalidInputError(f"column {column!r} must be 1-D for a cut; it has shape {col.shape}")
    data = col.filled(np.nan) if isinstance(col, MaskedColumn) else col
    try:
        values = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"column {column!r} is not numeric") from exc
    missing = _missing_mask(col) | ~np.isfinite(values)
    if missing_values:
        missing |= np.isin(values, np.asarray(missing_values, dtype=np.float64))
    return values, missing


def apply_cuts(table, cuts: QualityCuts | Mapping) -> tuple[Table, Table]:
    """Apply quality cuts; return ``(kept, excluded)``.

    Parameters
    ----------
    table : astropy.table.Table
    cuts : QualityCuts or mapping
        A mapping is passed to :meth:`QualityCuts.from_dict`.

    Returns
    -------
    kept : astropy.table.Table
    excluded : astropy.table.Table
        The excluded rows with an extra ``reason`` column listing every failed cut
        (``"; "``-separated) and ``row_index`` (index in ``table``).

    Raises
    ------
    InvalidInputError
        When a cut names a column the table lacks, or a column is not numeric.
    """
    table = _check_table(table, "table")
    if not isinstance(cuts, QualityCuts):
        cuts = QualityCuts.from_dict(cuts)
    n = len(table)
    failures: list[tuple[np.ndarray, str]] = []
    needed = list(cuts.ranges) + list(cuts.bitmasks) + list(cuts.require_finite)
    if cuts.min_snr is not None:
        needed.append(cuts.snr_column)
    for col in needed:
        _require_column(table, col, "table")
    for col in cuts.require_finite:
        _, missing = _numeric(table, col, cuts.missing_values)
        failures.append((missing, f"{col} missing"))
    for col, (lo, hi) in cuts.ranges.items():
        values, missing = _numeric(table, col, cuts.missing_values)
        out = ~missing & ((values < lo) | (values > hi))
        failures.append((missing, f"{col} missing"))
        failures.append((out, f"{col} outside [{lo:g}, {hi:g}]"))
    if cuts.min_snr is not None:
        values, missing = _numeric(table, cuts.snr_column, cuts.missing_values)
        failures.append((missing, f"{cuts.snr_column} missing"))
        failures.append((~missing & (values < cuts.min_snr), f"{cuts.snr_column} < {cuts.min_snr:g}"))
    for col, value in cuts.bitmasks.items():
        column = table[col]
        data = column.filled(0) if isinstance(column, MaskedColumn) else column
        flags = np.asarray(data)
        if flags.dtype.kind not in "iub":
            raise InvalidInputError(f"bitmask column {col!r} must hold integers; got {flags.dtype}")
        flags = flags.astype(np.int64).view(np.uint64) if flags.dtype.kind == "i" else flags.astype(np.uint64)
        hit = (flags & np.uint64(value)) != 0
        bits = [b for b in range(64) if value >> b & 1]
        failures.append((hit, f"{col} has rejected bit(s) {bits}"))
    reason = np.full(n, "", dtype=object)
    failed = np.zeros(n, bool)
    seen: set[str] = set()
    for mask, text in failures:
        if text in seen and text.endswith("missing"):
            continue  # the same 'missing' reason from a range and require_finite
        seen.add(text)
        if mask.any():
            reason[mask] = np.where(reason[mask] == "", text, reason[mask] + "; " + text)
            failed |= mask
    kept = table[~failed]
    excluded = table[failed]
    excluded["row_index"] = np.flatnonzero(failed).astype(np.int64)
    excluded["reason"] = np.asarray(reason[failed], dtype=str)
    if failed.any():
        logger.info("apply_cuts: excluded %d of %d rows", int(failed.sum()), n)
    return kept, excluded
