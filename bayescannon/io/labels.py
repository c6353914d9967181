"""Label tables (FITS or CSV) read into :class:`astropy.table.Table`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from bayescannon.io.common import as_str_ids, check_regular_file, format_error, has_fits_suffix
from bayescannon.spectra import LABEL_SENTINELS, MISSING_TEXTS

logger = logging.getLogger(__name__)

__all__ = ["read_labels"]


def _table_format(path: str) -> str:
    lower = path.lower()
    if has_fits_suffix(path):
        return "fits"
    if lower.endswith(".ecsv"):
        return "ascii.ecsv"
    if lower.endswith((".csv", ".csv.gz")):
        return "ascii.csv"
    return "ascii"


def _numeric_text_column(col):
    """A text column whose cells are numbers or missing-value texts ("", "n/a", ...) as a
    masked float column; None when some cell is other text (a genuine text column)."""
    text = np.char.lower(np.char.strip(np.asarray(col).astype(str)))
    miss = np.isin(text, list(MISSING_TEXTS)) | np.ma.getmaskarray(col)
    if not miss.any() or miss.all():
        return None
    try:
        values = np.where(miss, "nan", text).astype(np.float64)
    except ValueError:
        return None
    return MaskedColumn(values, mask=miss, name=col.name, unit=getattr(col, "unit", None))


def _mask_missing(table: Table, missing_values: Sequence[float], skip: Sequence[str] = ()) -> Table:
    """``table`` as a masked table: sentinels (to a relative 1e-6) and NaN/inf masked in
    numeric columns; text columns of numbers with empty or "n/a" cells become masked floats."""
    table = Table(table, masked=True, copy=False)
    sentinels = np.asarray(missing_values, dtype=float).ravel()
    for name in table.colnames:
        col = table[name]
        if name in skip or col.ndim != 1:
            continue
        if col.dtype.kind in "US":
            parsed = _numeric_text_column(col)
            if parsed is None:
                continue
            logger.info("label column %s: %d empty or 'n/a' cells read as missing", name, int(parsed.mask.sum()))
            table[name] = parsed
            col = table[name]
        if col.dtype.kind in "fiu":
            values = np.asarray(np.ma.getdata(col), dtype=float)
            bad = ~np.isfinite(values)
            if sentinels.size:
                bad |= (np.abs(values[:, None] - sentinels[None, :]) <= 1e-6 * np.abs(sentinels)[None, :]).any(axis=1)
            if bad.any():
                table[name].mask = np.ma.getmaskarray(col) | bad
    return table


def read_labels(
    path,
    id_column: str | None = None,
    *,
    missing_values: Sequence[float] = LABEL_SENTINELS,
    format: str | None = None,
) -> Table:
    """Read a FITS or CSV label table into an :class:`astropy.table.Table`.

    Missing values are masked, never numbers: empty cells, ``"n/a"``-like texts
    (:data:`bayescannon.spectra.MISSING_TEXTS`; a text column of numbers with such cells
    becomes a masked float column), NaN/inf and the sentinels ``missing_values`` in
    numeric columns. Training refuses a star whose label is masked
    (:func:`bayescannon.spectra.as_label_array` raises a ``LabelError`` naming it).

    Duplicated ids are kept and logged here (a members table may list a star twice);
    joining labels to spectra by id refuses them (``CrossMatchError`` naming the ids).

    Parameters
    ----------
    path : str or path-like
        ``.fits``/``.fit`` (first table HDU) or ``.csv``/``.ecsv``/``.txt`` file.
    id_column : str, optional
        Column holding star identifiers: must exist; ids are converted to stripped
        strings.
    missing_values : sequence of float
        Sentinel values (default -9999, -999, 99.99: :data:`bayescannon.spectra.LABEL_SENTINELS`)
        turned into masked entries in numeric columns (matched to a relative 1e-6, so a
        float32 99.99 matches); ``()`` keeps them as numbers.
    format : str, optional
        astropy format name to force (e.g. ``"ascii.csv"``).

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    SurveyFormatError
        When the file is missing, not a regular file (a FIFO, a folder), unreadable, or
        lacks ``id_column``.
    """
    path = check_regular_file(path)
    try:
        table = Table.read(path, format=format or _table_format(path))
    except (OSError, ValueError, TypeError) as exc:
        hint = ""
        if format is None and _table_format(str(path)) == "ascii":
            hint = f"; label tables are FITS, ECSV, CSV or plain text, and {Path(path).suffix or 'no suffix'} is none of these"
        raise format_error(path, f"cannot read label table ({exc}){hint}") from exc
    if id_column is not None:
        if id_column not in table.colnames:
            raise format_error(path, f"no id column {id_column!r}; columns are {', '.join(table.colnames[:20])}")
        table[id_column] = as_str_ids(table[id_column])
        uniq, counts = np.unique(np.asarray(table[id_column]), return_counts=True)
        if (counts > 1).any():
            logger.warning(
                "%s: %d duplicated id(s) in column %s (e.g. %s)",
                path,
                int((counts > 1).sum()),
                id_column,
                ", ".join(uniq[counts > 1][:3]),
            )
    table = _mask_missing(table, missing_values, skip=() if id_column is None else (id_column,))
    return table
