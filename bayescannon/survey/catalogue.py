"""Catalogues: inference results as FITS binary tables (astropy) with units and flags.

One row per spectrum (schema in the spirit of Nandakumar+2022 Table A1):

============================  ==========================================================
column                        meaning
============================  ==========================================================
``ID`` (+ other id columns)   spectrum identifier(s)
``RA``, ``DEC``               sky position (deg), when known
``<LABEL>``                   transferred label (``TEFF`` in K, ``LOGG`` = log10 g with g
                              in cm s⁻², abundances in dex written without a unit:
                              astropy's ``u.dex`` does not survive a FITS round trip)
``e_<LABEL>``                 1σ error; where errors are asymmetric ``E_<LABEL>`` is the
                              upper and ``e_<LABEL>`` the lower error; ``HW68_``/``HW95_``
                              half-widths of calibrated intervals when the result has them
``CHI2``, ``REDUCED_CHI2``    fit quality
``N_PIXELS``, ``SNR``         usable pixels, signal-to-noise ratio
``LABEL_DISTANCE``            Nandakumar+2022 eq. 5 (units of the CV scatter)
``IN_HULL``                   inside the convex hull of the training labels
``FLAGS``                     StarFlag bitmask (bits documented in the header
                              ``FLAGBTnn`` cards) and ``FLAG_<NAME>`` booleans
``SURVEY_FLAGS``              the survey pipeline's own flags, carried through
``IN_TRAINING``               the spectrum was in the training set
``<SURVEY>_<LABEL>``          the survey's own labels, beside the transferred ones
============================  ==========================================================

Undefined values are masked, never −9999. The header records the training-set hash of
the model (``MODELHSH``), the package version (``BCVERS``) and the configuration as
JSON (``CONFIG``; read it back with :func:`catalogue_config`). :func:`join_catalogues`
joins two catalogues by id or by sky position.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.table import Column, MaskedColumn, Table

from bayescannon._version import __version__
from bayescannon.errors import CrossMatchError, InvalidInputError, ShapeMismatchError, SurveyFormatError
from bayescannon.flags import StarFlag, flag_header
from bayescannon.results import LABEL_DESCRIPTIONS, LABEL_UNITS, label_description, label_unit

logger = logging.getLogger(__name__)

__all__ = [
    "result_to_table",
    "make_catalogue",
    "write_table",
    "read_catalogue",
    "catalogue_config",
    "join_catalogues",
    "label_unit",
    "flag_header",
    "fits_safe",
    "label_description",
    "LABEL_UNITS",
    "LABEL_DESCRIPTIONS",
]

#: FITS-safe units of labels that have one. Gravities (log10 of g in cm s⁻²) and
#: abundances (dex) are written without a unit and described instead: ``u.dex`` does
#: not survive a FITS round trip and ``log(cm.s**-2)`` is not a valid FITS unit.
_ASCII = str.maketrans({"²": "2", "³": "3", "σ": "sigma", "χ": "chi", "α": "alpha", "θ": "theta", "λ": "lambda",
                        "−": "-", "–": "-", "—": "-", "×": "x", "…": "...", "Λ": "Lambda", "≤": "<=", "≥": ">="})


def fits_safe(value):
    """A header value FITS accepts: strings reduced to printable ASCII."""
    if isinstance(value, str):
        text = value.translate(_ASCII)
        return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return value


def _masked(values, **kw):
    v = np.asarray(values)
    if v.dtype.kind == "f":
        return MaskedColumn(v, mask=~np.isfinite(v), **kw)
    return Column(v, **kw)


def _survey_columns(survey_labels, ids, prefix, id_column):
    """Columns of a survey's own labels for the rows ``ids`` (joined by id when the
    table has an id column, else row by row)."""
    out = {}
    if survey_labels is None:
        return out
    if isinstance(survey_labels, Table) and id_column in survey_labels.colnames:
        sid = np.asarray(survey_labels[id_column]).astype(str)
        uniq, counts = np.unique(sid, return_counts=True)
        if (counts > 1).any():
            raise CrossMatchError(f"survey label table has duplicated ids in {id_column}: {uniq[counts > 1][:3]}")
        order = np.argsort(sid)
        pos = np.searchsorted(sid[order], ids)
        pos = np.clip(pos, 0, max(sid.size - 1, 0))
        found = sid.size > 0
        hit = (sid[order][pos] == ids) if found else np.zeros(ids.size, bool)
        if not hit.any():
            raise CrossMatchError(
                f"no catalogue id joins the survey label table on {id_column!r} "
                f"(catalogue e.g. {ids[:2].tolist()}, survey e.g. {sid[:2].tolist()})"
            )
        rows = order[pos]
        logger.info("survey labels joined for %d of %d rows", int(hit.sum()), ids.size)
        for name in survey_labels.colnames:
            if name == id_column:
                continue
            col = survey_labels[name]
            data = np.asarray(np.ma.getdata(col))[rows]
            mask = np.asarray(np.ma.getmaskarray(col))[rows] | ~hit
            if data.dtype.kind == "f":
                mask |= ~np.isfinite(data)
            out[f"{prefix}{name}"] = MaskedColumn(data, mask=mask, unit=col.unit,
                                                  description=f"survey pipeline {name}")
        return out
    items = survey_labels.items() if isinstance(survey_labels, Mapping) else (
        (n, survey_labels[n]) for n in survey_labels.colnames)
    for name, values in items:
        v = np.asarray(values)
        if v.shape != (ids.size,):
            raise ShapeMismatchError(f"survey label {name} has shape {v.shape}; expected ({ids.size},)")
        out[f"{prefix}{name}"] = _masked(v, unit=label_unit(str(name).removeprefix("e_").removeprefix("E_")),
                                         description=f"survey pipeline {name}")
    return out


def result_to_table(
    result,
    *,
    id_column: str = "ID",
    meta=None,
    snr=None,
    quality=None,
    training_ids=None,
    survey_labels=None,
    survey_prefix: str = "SURVEY_",
    survey_id_column: str | None = None,
    extra_columns=None,
) -> Table:
    """One row per star: id, labels, ``e_<LABEL>`` errors, χ², flags, and optionally
    S/N, label distance, training-set membership and the survey's own labels.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :meth:`CannonModel.infer`. Asymmetric errors, when the result holds
        ``errors_upper`` and ``errors_lower`` (star, label), become ``E_<LABEL>``
        (upper) and ``e_<LABEL>`` (lower).
    id_column : str
        Name of the identifier column.
    meta : dict, optional
        Extra header keywords (≤ 8 characters; long values are continued).
    snr : ndarray (N,), optional
        S/N per star (``SNR``).
    quality : xarray.Dataset, optional
        Output of :func:`bayescannon.validate.quality.assess`: its combined flags replace the
        result's, and ``LABEL_DISTANCE``, ``IN_HULL``, ``SURVEY_FLAGS`` are added.
    training_ids : array_like, optional
        Ids of the training stars: ``IN_TRAINING`` column.
    survey_labels : astropy Table or mapping, optional
        The survey's own labels; a table with the id column (``survey_id_column``,
        default ``id_column``) is joined by id (unmatched rows masked; no match at all
        is a :class:`CrossMatchError`); otherwise columns are taken row by row.
    survey_prefix : str
        Prefix of the survey label columns (e.g. ``"APOGEE_"``).
    extra_columns : mapping, optional
        More per-star columns (e.g. ``RA``, ``DEC``).

    Returns
    -------
    astropy.table.Table
        Undefined values (stars without usable pixels) are masked, never −9999.
    """
    names = [str(n) for n in result["label_name"].values]
    ids = np.asarray(result["star"].values).astype(str)
    n = ids.size
    t = Table()
    t[id_column] = ids
    for name, values in (extra_columns or {}).items():
        v = values if isinstance(values, Column) else _masked(values, unit=label_unit(name))
        if len(v) != n:
            raise ShapeMismatchError(f"extra column {name} has {len(v)} rows; expected {n}")
        t[name] = v
    labels = result["labels"].values
    asym = "errors_upper" in result and "errors_lower" in result
    for k, name in enumerate(names):
        unit, desc = label_unit(name), label_description(name)
        t[name] = _masked(labels[:, k], unit=unit, description=f"{desc} (transferred label)")
        if asym:
            up, lo = result["errors_upper"].values[:, k], result["errors_lower"].values[:, k]
            t[f"E_{name}"] = _masked(up, unit=unit, description=f"upper 1-sigma error of {name}")
            t[f"e_{name}"] = _masked(lo, unit=unit, description=f"lower 1-sigma error of {name}")
        else:
            t[f"e_{name}"] = _masked(result["errors"].values[:, k], unit=unit,
                                     description=f"1-sigma uncertainty of {name}")
        for var, col, pct in (("half_width_68", "HW68", 68), ("half_width_95", "HW95", 95)):
            if var in result:  # calibrated errors of the Bayesian layer: interval half-widths
                t[f"{col}_{name}"] = _masked(result[var].values[:, k], unit=unit,
                                             description=f"half-width of the central {pct}% interval of {name}")
    for var, desc in (("chi2", "chi-squared of the best fit"), ("reduced_chi2", "chi2 / (n_pixels - n_labels)")):
        t[var.upper()] = _masked(result[var].values, description=desc)
    t["N_PIXELS"] = result["n_pixels"].values.astype(np.int32)
    t["N_PIXELS"].description = "pixels used in the fit"
    if snr is not None:
        s = np.asarray(snr, dtype=float)
        if s.shape != (n,):
            raise ShapeMismatchError(f"snr has shape {s.shape}; expected ({n},)")
        t["SNR"] = _masked(s, description="signal-to-noise ratio")
    elif quality is not None and np.isfinite(quality["snr"].values).any():
        t["SNR"] = _masked(quality["snr"].values, description="signal-to-noise ratio")
    t["CONVERGED"] = result["converged"].values.astype(bool)
    flags = result["flags"].values.astype(np.int64)
    if quality is not None:
        qids = np.asarray(quality["star"].values).astype(str)
        if qids.shape != ids.shape or np.any(qids != ids):
            raise CrossMatchError("quality flags and result have different stars (ids differ)")
        flags = quality["flags"].values.astype(np.int64)
        t["LABEL_DISTANCE"] = _masked(quality["label_distance"].values,
                                      description="mean distance to 10 nearest training stars / CV scatter")
        t["IN_HULL"] = quality["in_hull"].values.astype(bool)
        t["IN_HULL"].description = "labels inside the convex hull of the training labels"
        t["SURVEY_FLAGS"] = quality["survey_flags"].values.astype(np.int64)
        t["SURVEY_FLAGS"].description = "survey pipeline flags (carried through)"
    t["FLAGS"] = flags
    t["FLAGS"].description = "StarFlag bitmask (bits in header FLAGBTnn cards)"
    for f in StarFlag:
        t[f"FLAG_{f.name}"] = (flags & int(f)) != 0
    if training_ids is not None:
        t["IN_TRAINING"] = np.isin(ids, np.asarray(training_ids).astype(str))
        t["IN_TRAINING"].description = "spectrum was in the training set"
    for name, col in _survey_columns(survey_labels, ids, survey_prefix, survey_id_column or id_column).items():
        t[name] = col
    t.meta["EXTNAME"] = "LABELS"
    t.meta.update(flag_header())
    if "model_training_hash" in result.attrs:
        t.meta["MODELHSH"] = str(result.attrs["model_training_hash"])[:64]
    if "uncertainty" in result.attrs:
        t.meta["ERRMODEL"] = str(result.attrs["uncertainty"])

    t.meta["BCVERS"] = __version__
    for k, v in (meta or {}).items():
        t.meta[k] = v
    for k in list(t.meta):
        t.meta[k] = fits_safe(t.meta[k])
    return t


def make_catalogue(
    result,
    *,
    model=None,
    spectra=None,
    quality=None,
    training_ids=None,
    survey_labels=None,
    survey_name: str = "SURVEY",
    survey_id_column: str | None = None,
    config=None,
    id_column: str = "ID",
    extra_ids=(),
) -> Table:
    """A survey catalogue: :func:`result_to_table` plus S/N and sky positions from the
    spectra container, and the model hash and configuration in the header.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :meth:`CannonModel.infer`.
    model : CannonModel, optional
        Its settings, label names and training hash go to the header.
    spectra : xarray.Dataset, optional
        The spectra container: ``snr``, ``ra``/``dec`` (or ``RA``/``DEC``) columns are
        copied when present.
    quality : xarray.Dataset, optional
        Output of :func:`bayescannon.validate.quality.assess`.
    training_ids : array_like, optional
    survey_labels : Table or mapping, optional
        The survey's own labels (see :func:`result_to_table`).
    survey_name : str
        Prefix of the survey label columns (``<survey_name>_<LABEL>``).
    config : dict, optional
        Configuration recorded as JSON in the ``CONFIG`` header card.
    id_column : str
    extra_ids : sequence of str
        Per-star variables of ``spectra`` copied as further id columns (e.g. a 2MASS
        id beside the survey's spectrum id), upper-cased.

    Returns
    -------
    astropy.table.Table
    """
    ids = np.asarray(result["star"].values).astype(str)
    extra, snr = {}, None
    if extra_ids and spectra is None:
        raise InvalidInputError("extra_ids are read from the spectra container: pass spectra=")
    for name in extra_ids:
        if name not in spectra:
            raise InvalidInputError(f"spectra have no per-star variable {name!r} for extra_ids")
        extra[str(name).upper()] = Column(np.asarray(spectra[name].values).astype(str), description=f"{name} id")
    if spectra is not None:
        sids = np.asarray(spectra["star"].values).astype(str)
        if sids.shape != ids.shape or np.any(sids != ids):
            raise CrossMatchError("spectra and result have different stars (ids differ)")
        for src, dst in (("ra", "RA"), ("RA", "RA"), ("dec", "DEC"), ("DEC", "DEC")):
            if src in spectra and dst not in extra:
                extra[dst] = _masked(np.asarray(spectra[src].values, dtype=float), unit="deg",
                                     description="right ascension" if dst == "RA" else "declination")
        if "snr" in spectra:
            snr = np.asarray(spectra["snr"].values, dtype=float)
    cfg = dict(config or {})
    meta = {}
    if model is not None:

        params = model.get_params()
        params.pop("censors", None)
        cfg.setdefault("model", {k: v for k, v in params.items() if _jsonable(v)})
        if getattr(model, "training_hash_", None):
            meta["MODELHSH"] = model.training_hash_[:64]
        meta["NLABELS"] = len(model.label_names)
        meta["LABELS"] = " ".join(model.label_names)
    if cfg:
        meta["CONFIG"] = json.dumps(cfg, sort_keys=True, default=str)
    return result_to_table(result, id_column=id_column, meta=meta, snr=snr, quality=quality,
                           training_ids=training_ids, survey_labels=survey_labels,
                           survey_prefix=f"{survey_name}_", survey_id_column=survey_id_column,
                           extra_columns=extra)


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True


def catalogue_config(table: Table) -> dict:
    """The configuration recorded in a catalogue's ``CONFIG`` header card ({} if none)."""
    raw = table.meta.get("CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"CONFIG header card is not valid JSON: {exc}") from exc


def read_catalogue(path) -> Table:
    """Read a catalogue written by :func:`write_table` (FITS, ECSV or CSV)."""
    path = Path(path)
    if not path.exists():

        raise SurveyFormatError(f"catalogue {path} does not exist")
    name = path.name.lower()
    fmt = "fits" if name.endswith((".fits", ".fit", ".fits.gz")) else (
        "ascii.ecsv" if name.endswith(".ecsv") else "ascii.csv" if name.endswith(".csv") else None)
    return Table.read(path, format=fmt)


def write_table(table: Table, path, *, overwrite: bool = True) -> Path:
    """Write a table (FITS if the suffix is .fits/.fit/.fits.gz, else CSV/ECSV by suffix)
    atomically: a temporary file is moved into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
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


def join_catalogues(
    left: Table,
    right: Table,
    *,
    keys=None,
    sky: bool = False,
    max_separation: float = 1.0,
    ra_dec=("RA", "DEC"),
    table_names=("1", "2"),
    join_type: str = "inner",
) -> Table:
    """Join two catalogues by id or by sky position.

    Parameters
    ----------
    left, right : astropy.table.Table
    keys : str or (str, str), optional
        Id column (same name in both, or left and right names); default ``"ID"``.
    sky : bool
        Join by nearest sky position instead (``ra_dec`` columns, degrees).
    max_separation : float
        Largest separation of a sky match, arcsec.
    ra_dec : (str, str)
        Names of the RA and Dec columns.
    table_names : (str, str)
        Suffixes of clashing column names.
    join_type : {"inner", "left"}
        Keep only matches, or every row of ``left`` (unmatched columns masked).

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    CrossMatchError
        Duplicated ids, or no row joins.
    """
    from astropy.table import join

    if join_type not in ("inner", "left"):
        raise InvalidInputError(f"join_type must be 'inner' or 'left'; got {join_type!r}")
    if sky:
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        ra, dec = ra_dec
        for tab, side in ((left, "left"), (right, "right")):
            if ra not in tab.colnames or dec not in tab.colnames:
                raise InvalidInputError(f"{side} catalogue has no {ra}/{dec} columns for a sky join")
        cl = SkyCoord(np.asarray(left[ra], float) * u.deg, np.asarray(left[dec], float) * u.deg)
        cr = SkyCoord(np.asarray(right[ra], float) * u.deg, np.asarray(right[dec], float) * u.deg)
        idx, sep, _ = cl.match_to_catalog_sky(cr)
        ok = sep.arcsec <= max_separation
        if not ok.any():
            raise CrossMatchError(f"no source of the left catalogue lies within {max_separation} arcsec of the right")
        uniq, counts = np.unique(idx[ok], return_counts=True)
        if (counts > 1).any():
            raise CrossMatchError(f"{int((counts > 1).sum())} right sources match several left sources "
                                  f"within {max_separation} arcsec: ambiguous sky join")
        lt = left.copy(copy_data=False)
        rt = right.copy(copy_data=False)
        lt["_ROW"] = np.arange(len(left))
        lt["_MATCH"] = np.where(ok, idx, -1)
        rt["_MATCH"] = np.arange(len(right))
        out = join(lt, rt, keys="_MATCH", join_type=join_type, table_names=list(table_names))
        out.sort("_ROW")
        rows = np.asarray(out["_ROW"])
        matched = ok[rows]
        out["SEPARATION"] = MaskedColumn(np.where(matched, sep.arcsec[rows], np.nan), mask=~matched, unit="arcsec",
                                         description="separation of the sky match")
        out.remove_columns(["_ROW", "_MATCH"])
        logger.info("joined %d of %d left rows by sky position", int(ok.sum()), len(left))
        return out
    keys = keys or "ID"
    kl, kr = (keys, keys) if isinstance(keys, str) else tuple(keys)
    for tab, key, side in ((left, kl, "left"), (right, kr, "right")):
        if key not in tab.colnames:
            raise InvalidInputError(f"{side} catalogue has no id column {key!r}; columns: {tab.colnames[:10]}")
        vals = np.asarray(tab[key]).astype(str)
        uniq, counts = np.unique(vals, return_counts=True)
        if (counts > 1).any():
            raise CrossMatchError(f"{side} catalogue has duplicated ids in {key!r}, e.g. {uniq[counts > 1][:3].tolist()}")
    lv = np.asarray(left[kl]).astype(str)
    rv = np.asarray(right[kr]).astype(str)
    common = np.isin(lv, rv)
    if not common.any():
        raise CrossMatchError(
            f"no id of the left catalogue ({kl}, e.g. {lv[:2].tolist()}) occurs in the right one "
            f"({kr}, e.g. {rv[:2].tolist()})"
        )
    lt = left.copy(copy_data=False)
    rt = right.copy(copy_data=False)
    lt[kl] = lv  # ids compared as strings whatever their stored type
    rt[kr] = rv
    if kl == kr:
        out = join(lt, rt, keys=kl, join_type=join_type, table_names=list(table_names))
    else:
        out = join(lt, rt, keys_left=kl, keys_right=kr, join_type=join_type, table_names=list(table_names))
    logger.info("joined %d of %d left rows by id", int(common.sum()), len(left))
    return out
