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

import astropy.units as u
import numpy as np
from astropy.table import Table

from bayescannon.errors import InsufficientDataError, InvalidInputError, SurveyFormatError
from bayescannon.homogenise.offsets import column_percentiles
from bayescannon.io import read_labels
from bayescannon.io.common import as_str_ids
from bayescannon.results import label_unit
from bayescannon.spectra import LABEL_SENTINELS

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
            what = f"survey {name} ({sc.path})"
            table = read_labels(sc.path)
            table = rename_columns(table, sc.columns, what=what)
            if sc.where:
                n_rows = len(table)
                table = table[select_rows(table, sc.where, what=what)]
                if not len(table):
                    raise InvalidInputError(f"{what}: where = {sc.where!r} selects none of its {n_rows} rows")
            out[name] = standardise_units(table, self.labels, what)
        check_catalogues(self.labels, self.reference, out)
        return out


def check_catalogues(labels: Sequence[str], reference: Mapping, catalogues: Mapping) -> None:
    """Every label has a column in at least one of its reference surveys.

    Raises
    ------
    SurveyFormatError
        Naming the label and the reference surveys that lack it.
    """
    for lab in labels:
        refs = [s for s in reference.get(lab, ()) if s in catalogues]
        if refs and not any(lab in catalogues[s].colnames for s in refs):
            raise SurveyFormatError(
                f"label {lab}: none of its reference surveys {refs} has a {lab} column "
                "(rename one with columns = {" + lab + ' = "..."}, or drop the label)'
            )


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
    numbers, ``and``/``or``/``not``, ``&``/``|``/``~``; nothing else is evaluated).

    A row with a missing value (masked, NaN) in any column the expression names is not
    selected, whatever the expression: a masked ``flag`` is not ``flag == 0``, nor
    ``flag != 1``."""
    missing = np.zeros(len(table), dtype=bool)
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
            missing[:] |= np.ma.getmaskarray(col).reshape(len(table), -1).any(axis=1)
            if col.dtype.kind == "f":
                values = np.ma.filled(col, np.nan)
                missing[:] |= ~np.isfinite(values).reshape(len(table), -1).all(axis=1)
                return values
            return np.ma.getdata(col)
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

    mask = np.broadcast_to(np.asarray(ev(tree), dtype=bool), (len(table),)) & ~missing
    if missing.any():
        logger.warning(
            "%s: %d row(s) with a missing value in a column of where = %r are not selected",
            what,
            int(missing.sum()),
            expression,
        )
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


#: The keys a configuration may have (anything else is a misspelling, refused).
TOP_KEYS = ("labels", "id", "features", "min_overlap", "reference", "surveys")
#: The keys of one ``[surveys.<NAME>]`` table.
SURVEY_KEYS = ("path", "columns", "where", "min_overlap")


def _names(value, key: str, where) -> list[str]:
    """A TOML list of non-empty strings without repeats (a bare string is refused: ``labels =
    "TEFF"`` would otherwise be read letter by letter)."""
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) and x.strip() for x in value):
        raise InvalidInputError(f'{where}: {key} must be a list of names, e.g. ["TEFF", "LOGG"]; got {value!r}')
    dup = sorted({x for x in value if value.count(x) > 1})
    if dup:
        raise InvalidInputError(f"{where}: {key} names {dup} more than once")
    return list(value)


def _positive_int(value, key: str, where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{where}: {key} must be a positive integer; got {value!r}")
    return value


def _survey_config(name: str, sc, base, where) -> SurveyConfig:
    if not isinstance(sc, Mapping):
        raise InvalidInputError(f"{where}: [surveys.{name}] must be a table (path = ..., ...); got {sc!r}")
    extra = set(sc) - set(SURVEY_KEYS)
    if extra:
        raise InvalidInputError(
            f"{where}: survey {name} has unknown key(s) {sorted(extra)}; the keys are {list(SURVEY_KEYS)}"
        )
    p = sc.get("path")
    if p is not None:
        if not isinstance(p, str) or not p.strip():
            raise InvalidInputError(f"{where}: survey {name}: path must be a file name; got {p!r}")
        p = Path(p).expanduser()
        if base is not None and not p.is_absolute():
            p = Path(base) / p
    columns = sc.get("columns", {})
    if not isinstance(columns, Mapping) or not all(isinstance(v, str) for v in columns.values()):
        raise InvalidInputError(
            f"{where}: survey {name}: columns must be a table of standard name = catalogue column; got {columns!r}"
        )
    cond = sc.get("where")
    if cond is not None and not isinstance(cond, str):
        raise InvalidInputError(f"{where}: survey {name}: where must be a text expression; got {cond!r}")
    mo = sc.get("min_overlap")
    mo = None if mo is None else _positive_int(mo, f"survey {name} min_overlap", where)
    return SurveyConfig(name, p, dict(columns), cond, mo)


def _check_surveys(surveys: Mapping, where) -> None:
    """Survey names that differ only in case, and two surveys that read the same rows and
    columns of the same file, are refused: the first collide in case-insensitive FITS column
    names and file names, the second would count every measurement twice."""
    folded: dict[str, str] = {}
    for name in surveys:
        if name.casefold() in folded:
            raise InvalidInputError(
                f"{where}: surveys {folded[name.casefold()]} and {name} differ only in case "
                "(FITS column names and file names may not tell them apart): rename one"
            )
        folded[name.casefold()] = name
    seen: dict = {}
    for name, sc in surveys.items():
        if sc.path is None:
            continue
        key = (str(Path(sc.path).resolve()), tuple(sorted(sc.columns.items())), (sc.where or "").strip())
        if key in seen:
            raise InvalidInputError(
                f"{where}: surveys {seen[key]} and {name} read the same file {sc.path} with the same columns "
                "and where: every star would be counted twice (give each survey its own file, or a where "
                "or columns that tell them apart)"
            )
        seen[key] = name


def config_from_dict(raw: Mapping, *, base=None, source=None) -> HomogeniseConfig:
    """:func:`load_config` on an already parsed mapping (relative paths against ``base``)."""
    where = source or "config"
    extra = set(raw) - set(TOP_KEYS)
    if extra:
        raise InvalidInputError(f"{where}: unknown key(s) {sorted(extra)}; the keys are {list(TOP_KEYS)}")
    for key in ("labels", "reference", "surveys"):
        if key not in raw:
            raise InvalidInputError(f"{where}: missing key {key!r}")
    labels = _names(raw["labels"], "labels", where)
    if not labels:
        raise InvalidInputError(f"{where}: labels is empty")
    features = _names(raw.get("features", []), "features", where)
    id_column = raw.get("id", "ID")
    if not isinstance(id_column, str) or not id_column.strip():
        raise InvalidInputError(f"{where}: id must be a column name; got {id_column!r}")
    for key in ("surveys", "reference"):
        if not isinstance(raw[key], Mapping):
            raise InvalidInputError(f"{where}: {key} must be a table ([{key}] ...); got {raw[key]!r}")
    surveys = {str(name): _survey_config(str(name), sc, base, where) for name, sc in raw["surveys"].items()}
    _check_surveys(surveys, where)
    reference = {str(k): _names(v, f"[reference] {k}", where) for k, v in raw["reference"].items()}
    check_reference(labels, reference, list(surveys), where)
    return HomogeniseConfig(
        labels=labels,
        reference=reference,
        surveys=surveys,
        id=id_column,
        features=features,
        min_overlap=_positive_int(raw.get("min_overlap", 200), "min_overlap", where),
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


#: Values that mean "no measurement" in survey catalogues; in a label, error, percentile or
#: feature column they are read as missing, with a warning (``io.read_labels`` already masks
#: all but 9999 in files; this also covers tables given to the Python API).
SENTINELS = (*LABEL_SENTINELS, 9999.0)

#: Largest integer a float64 holds exactly: float ids above it have lost digits.
_FLOAT_ID_LIMIT = 2**53


def _col(table, name, what=None):
    """A column as floats, NaN where masked; sentinel values (:data:`SENTINELS`) too, with a
    warning naming the column (when ``what`` names the survey)."""
    v = np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)
    if what is not None:
        hit = np.isin(v, SENTINELS)
        if hit.any():
            logger.warning(
                "%s: %d value(s) of %s are the sentinel %s: read as missing",
                what,
                int(hit.sum()),
                name,
                "/".join(f"{x:g}" for x in np.unique(v[hit])),
            )
            v = np.where(hit, np.nan, v)
    return v


def standardise_units(table: Table, labels: Sequence[str], what: str = "catalogue") -> Table:
    """``table`` with each label column and its error/percentile columns in the label's unit
    (:func:`bayescannon.results.label_unit`, e.g. K for ``TEFF``).

    A column without a unit is taken as given; one whose unit astropy can scale to the
    label's (``kK`` → ``K``) is converted, with a warning; a unit astropy does not know is
    kept with a warning.

    Raises
    ------
    SurveyFormatError
        A unit that cannot be scaled to the label's (``TEFF`` in ``deg_C`` or ``dex``),
        naming the survey and column.
    """
    out = None
    for lab in labels:
        unit = label_unit(lab)
        if unit is None:
            continue
        for name in (lab, f"E_{lab}", f"e_{lab}", f"{lab}_P16", f"{lab}_P84"):
            col_unit = table[name].unit if name in table.colnames else None
            if col_unit is None or col_unit == u.Unit(unit):
                continue
            if isinstance(col_unit, u.UnrecognizedUnit):
                logger.warning(
                    "%s: column %s has unit %r that astropy does not know; taken as %s", what, name, str(col_unit), unit
                )
                continue
            try:
                factor = col_unit.to(unit)
            except u.UnitConversionError:
                raise SurveyFormatError(
                    f"{what}: column {name} is in {col_unit}, which is not a unit of {lab} ({unit})"
                ) from None
            out = table.copy(copy_data=False) if out is None else out
            out[name] = out[name].astype(float) * factor
            out[name].unit = unit
            logger.warning("%s: column %s converted from %s to %s", what, name, col_unit, unit)
    return table if out is None else out


def _ids(col, what: str):
    """Ids as stripped text, and where they are missing.

    Integer ids and text ids made only of digits are written without leading zeros, so that
    a Gaia ``source_id`` stored as an integer in one catalogue and as (zero-padded) text in
    another still match; float ids are accepted only when they are exact integers below
    2**53.
    """
    missing = np.ma.getmaskarray(col).copy()
    data = np.ma.getdata(col)
    if data.dtype.kind == "f":
        missing |= ~np.isfinite(data)
        ok = data[~missing]
        if ok.size and (np.any(np.abs(ok) >= _FLOAT_ID_LIMIT) or np.any(ok != np.round(ok))):
            raise SurveyFormatError(
                f"{what}: the id column holds floating-point numbers that are not exact integers below 2**53 "
                "(a Gaia source_id stored as a float has lost its last digits): store ids as integers or text"
            )
        data = np.where(missing, 0, data).astype(np.int64)
    ids = as_str_ids(data)
    missing |= ids == ""
    digits = np.char.isdigit(ids[~missing])
    if digits.size and digits.all():
        ids = np.where(missing, ids, np.char.lstrip(ids, "0"))
        ids = np.where(~missing & (ids == ""), "0", ids)
    return ids, missing


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
    if not len(table):
        raise InsufficientDataError(f"{what}: the catalogue has no rows")
    ids, no_id = _ids(table[id_column], what)
    if no_id.all():
        raise SurveyFormatError(f"{what}: every row's id ({id_column}) is missing")
    if no_id.any():
        logger.warning("%s: %d row(s) without an id (%s) skipped", what, int(no_id.sum()), id_column)
        table, ids = table[~no_id], ids[~no_id]
    table = standardise_units(table, labels, what)
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
    counts = {"rows": n + int(no_id.sum()), "missing_id": int(no_id.sum()), "nan": {}, "bad_percentiles": {}}
    counts["no_error"] = {}
    for j, lab in enumerate(labels):
        if lab not in table.colnames:
            continue
        v = _col(table, lab, what)
        if f"{lab}_P16" in table.colnames and f"{lab}_P84" in table.colnames:
            lo, hi = v - _col(table, f"{lab}_P16", what), _col(table, f"{lab}_P84", what) - v
            others = [c for c in (f"E_{lab}", f"e_{lab}") if c in table.colnames]
            if others:
                logger.info("%s: %s from %s_P16/%s_P84; %s not used", what, lab, lab, lab, "/".join(others))
        elif f"e_{lab}" in table.colnames and f"E_{lab}" in table.colnames:
            lo, hi = _col(table, f"e_{lab}", what), _col(table, f"E_{lab}", what)
        elif f"E_{lab}" in table.colnames:
            lo = hi = _col(table, f"E_{lab}", what)
        elif f"e_{lab}" in table.colnames:
            lo = hi = _col(table, f"e_{lab}", what)
        else:
            raise SurveyFormatError(
                f"{what}: label {lab} has no error column (E_{lab}, or {lab}_P16 and {lab}_P84, or e_{lab})"
            )
        bad[:, j] = np.isfinite(v) & ((lo < 0) | (hi < 0))
        good = np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0)
        counts["nan"][lab] = int((~np.isfinite(v)).sum())
        counts["bad_percentiles"][lab] = int(bad[:, j].sum())
        no_err = np.isfinite(v) & ~bad[:, j] & ~good
        counts["no_error"][lab] = int(no_err.sum())
        if no_err.any():
            logger.warning(
                "%s: %d row(s) with %s but a zero, infinite or missing error skipped", what, int(no_err.sum()), lab
            )
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
    feats = np.column_stack([_col(table, f, what) for f in features]) if features else np.zeros((n, 0))
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
    scale = column_percentiles(0.5 * (s1 + s2), 50, 1.0)  # 1 for a label the survey never measures
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    rel = np.nansum(0.5 * (s1 + s2) / scale, axis=1)
    n_lab = np.isfinite(value).sum(axis=1)
    order = np.lexsort((np.arange(len(ids)), rel, -n_lab, ids))
    sid = ids[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    uniq, counts = np.unique(ids, return_counts=True)
    return np.sort(order[first]), [str(u) for u in uniq[counts > 1]]
