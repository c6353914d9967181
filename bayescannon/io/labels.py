"""Label tables (FITS or CSV) read into :class:`astropy.table.Table`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from astropy.table import Table

from bayescannon.io.common import as_str_ids, format_error, has_fits_suffix

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


def _mask_missing(table: Table, missing_values: Sequence[float]) -> Table:
    """``table`` as a masked table with sentinels and NaN/inf masked in numeric columns."""
    table = Table(table, masked=True, copy=False)
    sentinels = np.asarray(missing_values, dtype=float)
    for name in table.colnames:
        col = table[name]
        if col.dtype.kind in "fiu" and col.ndim == 1:
            bad = np.isin(np.asarray(col), sentinels)
            if col.dtype.kind == "f":
                bad |= ~np.isfinite(np.asarray(col, dtype=float))
            if bad.any():
                col.mask = np.asarray(col.mask) | bad
    return table


def read_labels(
    path,
    id_column: str | None = None,
    *,
    missing_values: Sequence[float] = (-9999.0,),
    format: str | None = None,
) -> Table:
    """Read a FITS or CSV label table into an :class:`astropy.table.Table`.

    Parameters
    ----------
    path : str or path-like
        ``.fits``/``.fit`` (first table HDU) or ``.csv``/``.ecsv``/``.txt`` file.
    id_column : str, optional
        Column holding star identifiers: must exist; ids are converted to stripped
        strings.
    missing_values : sequence of float
        Sentinel values (e.g. ``-9999``) turned into masked entries in numeric columns.
    format : str, optional
        astropy format name to force (e.g. ``"ascii.csv"``).

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    SurveyFormatError
        When the file is missing, unreadable, or lacks ``id_column``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise format_error(path, "file does not exist")
    try:
        table = Table.read(path, format=format or _table_format(path))
    except (OSError, ValueError, TypeError) as exc:
        raise format_error(path, f"cannot read label table ({exc})") from exc
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
    if missing_values:
        table = _mask_missing(table, missing_values)
    return table
