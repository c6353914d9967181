"""Catalogues: inference results as FITS binary tables (astropy) with units and flags."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from .flags import StarFlag, flag_doc

logger = logging.getLogger(__name__)

__all__ = ["result_to_table", "write_table", "LABEL_UNITS"]

#: Units of common labels. ``dex`` is written as a plain string (astropy's ``u.dex``
#: does not survive a FITS round trip).
LABEL_UNITS = {"TEFF": "K", "VMACRO": "km/s", "VMIC": "km/s", "VSINI": "km/s"}


def result_to_table(result, *, id_column: str = "ID", meta=None) -> Table:
    """One row per star: id, labels, ``e_<LABEL>`` errors, χ², flags.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :meth:`CannonModel.infer`.
    id_column : str
        Name of the identifier column.
    meta : dict, optional
        Extra header keywords (model hash, version, configuration).

    Returns
    -------
    astropy.table.Table
        Undefined values (stars without usable pixels) are masked, never −9999.
    """
    names = [str(n) for n in result["label"].values]
    t = Table()
    t[id_column] = np.asarray(result["star"].values).astype(str)
    labels = result["labels"].values
    errors = result["errors"].values
    for k, name in enumerate(names):
        unit = LABEL_UNITS.get(name.upper())
        val, err = labels[:, k], errors[:, k]
        t[name] = MaskedColumn(val, mask=~np.isfinite(val), unit=unit, description=f"{name} (transferred label)")
        t[f"e_{name}"] = MaskedColumn(err, mask=~np.isfinite(err), unit=unit, description=f"1-sigma uncertainty of {name}")
    for var, desc in (("chi2", "chi-squared of the best fit"), ("reduced_chi2", "chi2 / (n_pixels - n_labels)")):
        v = result[var].values
        t[var.upper()] = MaskedColumn(v, mask=~np.isfinite(v), description=desc)
    t["N_PIXELS"] = result["n_pixels"].values.astype(np.int32)
    t["CONVERGED"] = result["converged"].values.astype(bool)
    t["FLAGS"] = result["flags"].values.astype(np.int64)
    t["FLAGS"].description = "StarFlag bitmask (bits in header FLAGBTnn)"
    for f in StarFlag:
        t[f"FLAG_{f.name}"] = (t["FLAGS"] & int(f)) != 0
    t.meta["EXTNAME"] = "LABELS"
    for i, (name, doc) in enumerate(flag_doc(StarFlag).items()):
        t.meta[f"FLAGBT{i:02d}"] = f"{name}: {doc}"[:68]
    if "model_training_hash" in result.attrs:
        t.meta["MODELHSH"] = result.attrs["model_training_hash"][:64]
    from . import __version__

    t.meta["BCVERS"] = __version__
    for k, v in (meta or {}).items():
        t.meta[k] = v
    return t


def write_table(table: Table, path, *, overwrite: bool = True) -> Path:
    """Write a table (FITS if the suffix is .fits/.fit/.fits.gz, else CSV/ECSV by suffix)
    atomically: a temporary file is moved into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        from .errors import InvalidInputError

        raise InvalidInputError(f"{path} exists and overwrite=False")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes))
    os.close(fd)
    try:
        fmt = None
        name = path.name.lower()
        if name.endswith((".fits", ".fit", ".fits.gz")):
            fmt = "fits"
        elif name.endswith(".csv"):
            fmt = "ascii.csv"
        elif name.endswith(".ecsv"):
            fmt = "ascii.ecsv"
        table.write(tmp, format=fmt, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("wrote %d rows to %s", len(table), path)
    return path
