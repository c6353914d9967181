"""The homogenisation configuration (TOML) and the survey catalogues it names.

.. code-block:: toml

    labels = ["TEFF", "LOGG", "FE_H"]
    id = "ID"                  # column shared by all catalogues
    features = ["SNR", "MAG"]  # extra offset-model inputs, besides the survey's own labels
    min_overlap = 200          # optional default for every survey
    [reference]
    TEFF = ["APOGEE"]
    LOGG = ["APOGEE", "GALAH"]
    [surveys.APOGEE]
    path = "apogee.fits"       # relative paths are relative to the config file
    # optional: columns = {TEFF = "teff"}, where = "flag_sp == 0", min_overlap = 200

A catalogue gives each label ``<L>`` with a symmetric error ``E_<L>``, or asymmetric
percentiles ``<L>_P16``/``<L>_P84`` (read as a split normal), or bayescannon's own
``e_<L>``/``E_<L>`` (lower/upper) errors; ``COV_<A>_<B>`` covariances make the labels
multivariate normal. :func:`prepare_survey` turns one table into a
:class:`SurveyData`: duplicate ids resolved (the row with the smallest summed relative
error is kept), NaN labels skipped and counted, inconsistent percentiles flagged and not
used.
"""

from __future__ import annotations

import ast
import logging
import operator
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from bayescannon.errors import InvalidInputError, SurveyFormatError
from bayescannon.io import read_labels

logger = logging.getLogger(__name__)

__all__ = ["HomogeniseConfig", "SurveyConfig", "SurveyData", "load_config", "prepare_survey", "select_rows"]


@dataclass
class SurveyConfig:
    """One ``[surveys.<NAME>]`` table."""

    name: str
    path: Path | None = None
    columns: dict = field(default_factory=dict)
    where: str | None = None
    min_overlap: int | None = None


@dataclass
class HomogeniseConfig:
    """The whole configuration (see the module docstring)."""

    labels: list
    reference: dict
    surveys: dict
    id: str = "ID"
    features: list = field(default_factory=list)
    min_overlap: int = 200
    source: Path | None = None
    raw: dict = field(default_factory=dict)

    def input_paths(self) -> list[Path]:
        """Every file the configuration reads (for the output pre-flight check): the config
        itself and each survey's catalogue."""
        out = [self.source] if self.source is not None else []
        return out + [Path(sc.path) for sc in self.surveys.values() if sc.path is not None]

    def read_catalogues(self) -> dict:
        """Read every survey's table (renaming and ``where`` applied): name → Table."""
        out = {}
        for name, sc in self.surveys.items():
            if sc.path is None:
                raise InvalidInputError(f"survey {name} has no path in {self.source}")
            if not Path(sc.path).exists():
                raise SurveyFormatError(f"survey {name}: catalogue file {sc.path} does not exist")
            table = read_labels(sc.path)
            table = rename_columns(table, sc.columns, what=f"survey {name} ({sc.path})")
            if sc.where:
                table = table[select_rows(table, sc.where, what=f"survey {name} ({sc.path})")]
            out[name] = table
        return out


def rename_columns(table: Table, columns: Mapping, what: str) -> Table:
    """Rename ``{standard name: catalogue column}``; a missing catalogue column is named."""
    table = table.copy(copy_data=False)
    for std, col in columns.items():
        if col not in table.colnames:
            raise SurveyFormatError(f"{what}: no column {col!r} (configured for {std})")
        if std != col:
            if std in table.colnames:
                table.remove_column(std)
            table.rename_column(col, std)
    return table


_OPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def select_rows(table: Table, expression: str, what: str = "catalogue") -> np.ndarray:
    """Rows of ``table`` for which ``expression`` holds (comparisons of columns and
    numbers, ``and``/``or``/``not``, ``&``/``|``/``~``; nothing else is evaluated)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise InvalidInputError(f"{what}: cannot parse where = {expression!r} ({exc.msg})") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Name):
            if node.id not in table.colnames:
                raise SurveyFormatError(f"{what}: where = {expression!r} names no column {node.id!r}")
            col = table[node.id]
            return np.ma.filled(col, np.nan) if col.dtype.kind == "f" else np.asarray(col)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
            return node.value
        if isinstance(node, ast.BoolOp):
            vals = [np.asarray(ev(v), dtype=bool) for v in node.values]
            f = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = vals[0]
            for v in vals[1:]:
                out = f(out, v)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert):
            return ~np.asarray(ev(node.operand), dtype=bool)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left, out = ev(node.left), True
            for op, right in zip(node.ops, node.comparators):
                if type(op) not in _OPS:
                    break
                r = ev(right)
                out = np.logical_and(out, _OPS[type(op)](left, r))
                left = r
            else:
                return out
        raise InvalidInputError(f"{what}: where = {expression!r} uses an unsupported construct ({type(node).__name__})")

    mask = np.broadcast_to(np.asarray(ev(tree), dtype=bool), (len(table),))
    logger.info("%s: where %s keeps %d of %d rows", what, expression, int(mask.sum()), len(table))
    return mask


def load_config(path) -> HomogeniseConfig:
    """Read and check a homogenisation TOML file.

    Raises
    ------
    InvalidInputError
        A missing or wrong key, named with the file.
    SurveyFormatError
        The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise SurveyFormatError(f"homogenisation config {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, base=path.parent, source=path)


def config_from_dict(raw: Mapping, *, base=None, source=None) -> HomogeniseConfig:
    """:func:`load_config` on an already parsed mapping (relative paths against ``base``)."""
    where = source or "config"
    for key in ("labels", "reference", "surveys"):
        if key not in raw:
            raise InvalidInputError(f"{where}: missing key {key!r}")
    labels = [str(x) for x in raw["labels"]]
    if not labels:
        raise InvalidInputError(f"{where}: labels is empty")
    surveys = {}
    allowed = {"path", "columns", "where", "min_overlap"}
    for name, sc in dict(raw["surveys"]).items():
        extra = set(sc) - allowed
        if extra:
            raise InvalidInputError(f"{where}: survey {name} has unknown key(s) {sorted(extra)}")
        p = sc.get("path")
        if p is not None:
            p = Path(p)
            if base is not None and not p.is_absolute():
                p = Path(base) / p
        mo = sc.get("min_overlap")
        surveys[name] = SurveyConfig(
            name, p, dict(sc.get("columns", {})), sc.get("where"), None if mo is None else int(mo)
        )
    reference = {str(k): [str(s) for s in v] for k, v in dict(raw["reference"]).items()}
    check_reference(labels, reference, list(surveys), where)
    return HomogeniseConfig(
        labels=labels,
        reference=reference,
        surveys=surveys,
        id=str(raw.get("id", "ID")),
        features=[str(f) for f in raw.get("features", [])],
        min_overlap=int(raw.get("min_overlap", 200)),
        source=None if source is None else Path(source),
        raw=dict(raw),
    )


def check_reference(labels: Sequence[str], reference: Mapping, surveys: Sequence[str], where="config") -> None:
    """Every label has at least one reference survey, and every reference survey exists."""
    for lab in labels:
        refs = reference.get(lab)
        if not refs:
            raise InvalidInputError(f"{where}: label {lab} has no reference survey ([reference] {lab} = [...])")
        unknown = [s for s in refs if s not in surveys]
        if unknown:
            raise InvalidInputError(
                f"{where}: reference survey(s) {unknown} for {lab} are not among the surveys {list(surveys)}"
            )
    extra = set(reference) - set(labels)
    if extra:
        raise InvalidInputError(f"{where}: [reference] names label(s) {sorted(extra)} not in labels {list(labels)}")


@dataclass
class SurveyData:
    """One survey's catalogue in standard arrays (rows = unique ids).

    ``value``, ``s1``, ``s2`` (mode and lower/upper split-normal scales) are
    ``(n, n_labels)`` with NaN where a label is missing or unusable; ``cov`` is the
    ``(n, n_labels, n_labels)`` covariance when the catalogue has ``COV_`` columns;
    ``bad_percentiles`` marks values outside their own P16–P84 range (flagged, not used).
    """

    name: str
    ids: np.ndarray
    value: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    features: np.ndarray
    cov: np.ndarray | None
    bad_percentiles: np.ndarray
    duplicated: np.ndarray
    counts: dict


def _col(table, name):
    return np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)


def prepare_survey(
    name: str, table: Table, labels: Sequence[str], features: Sequence[str], id_column: str = "ID", what=None
) -> SurveyData:
    """Standard arrays of one survey (see :class:`SurveyData`).

    Raises
    ------
    SurveyFormatError
        A missing id, feature or error column, named with the survey.
    """
    what = what or f"survey {name}"
    if id_column not in table.colnames:
        raise SurveyFormatError(f"{what}: no id column {id_column!r}; columns are {table.colnames[:20]}")
    missing = [f for f in features if f not in table.colnames]
    if missing:
        raise SurveyFormatError(f"{what}: missing feature column(s) {missing}")
    present = [lab for lab in labels if lab in table.colnames]
    if not present:
        raise SurveyFormatError(f"{what}: none of the label columns {list(labels)} is present")
    n, k = len(table), len(labels)
    value = np.full((n, k), np.nan)
    s1 = np.full((n, k), np.nan)
    s2 = np.full((n, k), np.nan)
    bad = np.zeros((n, k), dtype=bool)
    counts = {"rows": n, "nan": {}, "bad_percentiles": {}}
    for j, lab in enumerate(labels):
        if lab not in table.colnames:
            continue
        v = _col(table, lab)
        if f"{lab}_P16" in table.colnames and f"{lab}_P84" in table.colnames:
            lo, hi = v - _col(table, f"{lab}_P16"), _col(table, f"{lab}_P84") - v
        elif f"e_{lab}" in table.colnames and f"E_{lab}" in table.colnames:
            lo, hi = _col(table, f"e_{lab}"), _col(table, f"E_{lab}")
        elif f"E_{lab}" in table.colnames:
            lo = hi = _col(table, f"E_{lab}")
        elif f"e_{lab}" in table.colnames:
            lo = hi = _col(table, f"e_{lab}")
        else:
            raise SurveyFormatError(
                f"{what}: label {lab} has no error column (E_{lab}, or {lab}_P16 and {lab}_P84, or e_{lab})"
            )
        bad[:, j] = np.isfinite(v) & ((lo < 0) | (hi < 0))
        good = np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0)
        counts["nan"][lab] = int((~np.isfinite(v)).sum())
        counts["bad_percentiles"][lab] = int(bad[:, j].sum())
        value[:, j] = np.where(good, v, np.nan)
        s1[:, j] = np.where(good, lo, np.nan)
        s2[:, j] = np.where(good, hi, np.nan)
    cov = None
    cov_cols = [(a, b) for a in labels for b in labels if a < b and f"COV_{a}_{b}" in table.colnames]
    cov_cols += [(a, b) for a in labels for b in labels if a < b and f"COV_{b}_{a}" in table.colnames]
    if cov_cols:
        sym = np.where(np.isclose(s1, s2), s1, np.nan)
        cov = np.zeros((n, k, k))
        cov[:, np.arange(k), np.arange(k)] = np.nan_to_num(sym) ** 2
        for a, b in cov_cols:
            c = _col(table, f"COV_{a}_{b}" if f"COV_{a}_{b}" in table.colnames else f"COV_{b}_{a}")
            ia, ib = labels.index(a), labels.index(b)
            cov[:, ia, ib] = cov[:, ib, ia] = np.nan_to_num(c)
    feats = np.column_stack([_col(table, f) for f in features]) if features else np.zeros((n, 0))
    ids = np.char.strip(np.asarray(table[id_column]).astype(str))
    keep, dup_ids = resolve_duplicates(ids, value, s1, s2)
    counts["duplicates"] = len(dup_ids)
    if dup_ids:
        logger.warning(
            "%s: %d duplicated id(s), e.g. %s; kept the row with the smallest relative errors",
            what,
            len(dup_ids),
            ", ".join(dup_ids[:3]),
        )
    duplicated = np.isin(ids[keep], np.asarray(dup_ids, dtype=ids.dtype))
    for lab, c in counts["nan"].items():
        if c:
            logger.info("%s: %d rows without %s skipped", what, c, lab)
    return SurveyData(
        name,
        ids[keep],
        value[keep],
        s1[keep],
        s2[keep],
        feats[keep],
        None if cov is None else cov[keep],
        bad[keep],
        duplicated,
        counts,
    )


def resolve_duplicates(ids, value, s1, s2):
    """Rows to keep: for each duplicated id the row with the most labels, then the smallest
    summed error relative to the median error of each label (then the first row).

    Returns
    -------
    keep : numpy.ndarray of int
        Row indices, sorted.
    duplicated : list of str
        The ids that occurred more than once.
    """
    scale = np.nanmedian(0.5 * (s1 + s2), axis=0) if np.isfinite(s1).any() else np.ones(value.shape[1])
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    rel = np.nansum(0.5 * (s1 + s2) / scale, axis=1)
    n_lab = np.isfinite(value).sum(axis=1)
    order = np.lexsort((np.arange(len(ids)), rel, -n_lab, ids))
    sid = ids[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    uniq, counts = np.unique(ids, return_counts=True)
    return np.sort(order[first]), [str(u) for u in uniq[counts > 1]]
