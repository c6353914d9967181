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
``<LABEL>_BIAS``              calibrated catalogues: the learned bias already subtracted
                              from ``<LABEL>`` (uncorrected = ``<LABEL>`` + ``<LABEL>_BIAS``)
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
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Column, MaskedColumn, Table, join

from bayescannon._version import __version__
from bayescannon.core.uncertainty import check_calibrated
from bayescannon.errors import (
    CrossMatchError,
    InvalidInputError,
    OutputPathError,
    ShapeMismatchError,
    SurveyFormatError,
)
from bayescannon.flags import StarFlag, flag_header
from bayescannon.pipeline.atomic import atomic_path
from bayescannon.results import LABEL_DESCRIPTIONS, LABEL_UNITS, label_description, label_unit, label_units_text
from bayescannon.spectra import join_ids
from bayescannon.validate.quality import DEFAULT_DISTANCE_THRESHOLD, assess, training_labels

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_DESCRIPTIONS",
    "LABEL_UNITS",
    "build_catalogue",
    "catalogue_config",
    "fits_safe",
    "flag_header",
    "is_calibrated",
    "join_catalogues",
    "join_ids",
    "label_description",
    "label_unit",
    "make_catalogue",
    "read_catalogue",
    "resolve_uncertainty",
    "result_to_table",
    "spectra_snr",
    "TABLE_SUFFIXES",
    "write_table",
]

#: FITS-safe units of labels that have one. Gravities (log10 of g in cm s⁻²) and
#: abundances (dex) are written without a unit and described instead: ``u.dex`` does
#: not survive a FITS round trip and ``log(cm.s**-2)`` is not a valid FITS unit.
_ASCII = str.maketrans(
    {
        "²": "2",
        "³": "3",
        "σ": "sigma",
        "χ": "chi",
        "α": "alpha",
        "θ": "theta",
        "λ": "lambda",
        "−": "-",
        "–": "-",
        "—": "-",
        "×": "x",
        "…": "...",
        "Λ": "Lambda",
        "≤": "<=",
        "≥": ">=",
    }
)


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


def _aligned(ids, other_ids, what):
    """Row order that puts ``other_ids`` in the order of ``ids`` (all must be present)."""
    rows, _ = join_ids(ids, other_ids, what=what, require="all")
    return rows


def _survey_columns(survey_labels, ids, prefix, id_column):
    """Columns of a survey's own labels for the rows ``ids`` (joined by id when the
    table has an id column, else row by row)."""
    out = {}
    if survey_labels is None:
        return out
    if isinstance(survey_labels, Table) and id_column in survey_labels.colnames:
        rows, hit = join_ids(ids, survey_labels[id_column], what=f"the survey label table ({id_column})")
        logger.info("survey labels joined for %d of %d rows", int(hit.sum()), ids.size)
        for name in survey_labels.colnames:
            if name == id_column:
                continue
            col = survey_labels[name]
            data = np.asarray(np.ma.getdata(col))[rows]
            mask = np.asarray(np.ma.getmaskarray(col))[rows] | ~hit
            if data.dtype.kind == "f":
                mask |= ~np.isfinite(data)
            label = str(name).removeprefix("e_").removeprefix("E_")
            if col.unit is None and data.dtype.kind == "f" and label_units_text(label):
                # a label column read without units (most survey files): the label's own unit,
                # as the Mapping path below gives it, not a unitless APOGEE_TEFF beside TEFF [K]
                column = _label_column(np.where(mask, np.nan, data), label, f"survey pipeline {name}")
            else:
                column = MaskedColumn(data, mask=mask, unit=col.unit, description=f"survey pipeline {name}")
            out[f"{prefix}{name}"] = column
        return out
    items = (
        survey_labels.items()
        if isinstance(survey_labels, Mapping)
        else ((n, survey_labels[n]) for n in survey_labels.colnames)
    )
    for name, values in items:
        v = np.asarray(values)
        if v.shape != (ids.size,):
            raise ShapeMismatchError(f"survey label {name} has shape {v.shape}; expected ({ids.size},)")
        out[f"{prefix}{name}"] = _label_column(
            v, str(name).removeprefix("e_").removeprefix("E_"), f"survey pipeline {name}"
        )
    return out


def _label_column(values, label, description):
    """A label-valued column: FITS unit where one exists, ``dex`` kept as text in
    ``meta['unit_text']`` (written to TUNITn by :func:`write_table`)."""
    col = _masked(values, unit=label_unit(label), description=description)
    text = label_units_text(label)
    if col.unit is None and text:
        col.meta["unit_text"] = text
    col.format = _TDISP.get(text, "{:.4g}")
    return col


#: Python formats (and the TDISP astropy writes for them) by unit.
_TDISP = {"K": "{:.1f}", "dex": "{:.4f}", "km/s": "{:.3f}", "deg": "{:.6f}"}

#: StarFlag bits that need :func:`bayescannon.validate.quality.assess`, and why each is
#: absent from a catalogue when it was not evaluated.
_QUALITY_BITS = {
    StarFlag.FAR_FROM_TRAINING: "no label distance (needs the training labels and a CV scatter)",
    StarFlag.OUTSIDE_HULL: "no convex-hull test (needs the training labels)",
    StarFlag.LOW_SNR: "no minimum S/N given",
    StarFlag.SURVEY_FLAGGED: "no survey pipeline flags given",
}


def is_calibrated(model) -> bool:
    """Whether a model holds a calibration of its uncertainties."""
    return bool(getattr(model, "calibration_", None))


def resolve_uncertainty(model, uncertainty: str = "auto") -> str:
    """The error model a catalogue of ``model`` uses: ``"auto"`` means calibrated
    whenever the model is calibrated, else formal.

    Raises
    ------
    InvalidInputError
        Unknown ``uncertainty``.
    NotCalibratedError
        ``"calibrated"`` for a model without a calibration.
    """
    if uncertainty not in ("auto", "formal", "calibrated"):
        raise InvalidInputError(f"uncertainty must be 'auto', 'formal' or 'calibrated'; got {uncertainty!r}")
    if uncertainty == "auto":
        return "calibrated" if model is not None and is_calibrated(model) else "formal"
    if uncertainty == "calibrated" and model is not None:
        check_calibrated(model)
    return uncertainty


def spectra_snr(spectra) -> np.ndarray:
    """S/N per star: the container's ``snr`` when present, else the median of
    flux·√ivar over the usable pixels (ivar > 0); NaN for a star without any."""
    if "snr" in spectra:
        return np.asarray(spectra["snr"].values, dtype=float)
    flux = np.asarray(spectra["flux"].values, dtype=float)
    ivar = np.asarray(spectra["ivar"].values, dtype=float)
    good = (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar)
    with np.errstate(invalid="ignore"):
        s = np.where(good, np.abs(flux) * np.sqrt(np.where(good, ivar, 0.0)), np.nan)
    out = np.full(s.shape[0], np.nan)
    has = good.any(axis=1)
    out[has] = np.nanmedian(s[has], axis=1)
    return out


def build_catalogue(
    model,
    result,
    *,
    spectra=None,
    quality=None,
    cv_scatter=None,
    distance_threshold: float | str = DEFAULT_DISTANCE_THRESHOLD,
    survey_labels=None,
    survey_name: str = "SURVEY",
    survey_id_column: str | None = None,
    training_ids=None,
    uncertainty: str = "auto",
    config=None,
    id_column: str = "ID",
    extra_ids=(),
    meta=None,
) -> Table:
    """The one survey catalogue of an inference result (used by ``bayescannon
    catalogue``, ``bayescannon infer -o *.fits``, transfer and the cross-survey runs).

    Parameters
    ----------
    model : CannonModel or None
        The fitted model: its calibration decides the error model, its training labels
        evaluate the hull and distance flags, its hash and settings go to the header.
        ``None`` only for a bare result (no quality flags, errors as the result has them).
    result : xarray.Dataset
        Output of :meth:`CannonModel.infer` (formal or calibrated).
    spectra : xarray.Dataset, optional
        The spectra (joined by star id): ``SNR`` (their ``snr`` or median flux·√ivar),
        ``RA``/``DEC`` when present.
    quality : xarray.Dataset, optional
        Output of :func:`bayescannon.validate.quality.assess`; computed from the model's
        training labels when not given.
    cv_scatter : array_like (K,) or CrossValidation, optional
        Unit of the label distance (``LABEL_DISTANCE``, ``FLAG_FAR_FROM_TRAINING``);
        used only when ``quality`` is not given.
    distance_threshold : float or str
        ``FAR_FROM_TRAINING`` threshold, used only when ``quality`` is not given:
        ``"calibrated"`` (default; the 99th percentile of the training set's own
        cross-validated distances), ``"nandakumar2022"`` (8) or a number (see
        :func:`bayescannon.validate.quality.assess`). The header records it (``DISTTHR``,
        ``DISTHOW``, and ``DISTPCT``: the percentile of the training set's CV distances it
        sits at).
    survey_labels : astropy Table or mapping, optional
        The survey's own labels, joined by ``survey_id_column`` (default ``id_column``).
    survey_name : str
        Prefix of the survey label columns.
    training_ids : array_like, optional
        Ids of the training spectra (``IN_TRAINING``).
    uncertainty : {"auto", "calibrated", "formal"}
        ``"auto"``: calibrated whenever the model is calibrated. ``"formal"`` on request
        (the header says so).
    config : dict, optional
        Recorded as JSON in ``CONFIG``.
    id_column : str
    extra_ids : sequence of str
        Per-star variables of ``spectra`` copied as further id columns.
    meta : dict, optional
        Extra header keywords.

    Returns
    -------
    astropy.table.Table
        Flag columns are evaluated or absent (``FLAGNTnn`` header cards say why: FITS
        cannot store a masked logical, astropy would write it as False).
        ``LABEL_DISTANCE`` is present whenever a model is given, fully masked when the
        distance could not be evaluated.

    Raises
    ------
    InvalidInputError
        A calibrated catalogue asked of a formal result (infer with
        ``uncertainty="calibrated"``), or an unknown ``uncertainty``.
    CrossMatchError
        Spectra or quality that lack stars of the result.
    """
    want = (
        resolve_uncertainty(model, uncertainty)
        if model is not None
        else ("calibrated" if "half_width_68" in result else "formal")
    )
    has_cal = "half_width_68" in result
    if want == "calibrated" and not has_cal:
        raise InvalidInputError(
            "the model is calibrated but the result holds formal errors: infer with "
            "uncertainty='calibrated' (or ask for uncertainty='formal')"
        )
    names = [str(n) for n in result["label_name"].values]
    ids = np.asarray(result["star"].values).astype(str)
    notes = []
    t = Table()
    t[id_column] = ids
    t[id_column].description = "spectrum identifier"
    snr = None
    if extra_ids and spectra is None:
        raise InvalidInputError("extra_ids are read from the spectra container: pass spectra=")
    if spectra is not None:
        srows = _aligned(ids, spectra["star"].values, "the spectra")
        for name in extra_ids:
            if name not in spectra:
                raise InvalidInputError(f"spectra have no per-star variable {name!r} for extra_ids")
            t[str(name).upper()] = Column(np.asarray(spectra[name].values).astype(str)[srows], description=f"{name} id")
        for src, dst in (("ra", "RA"), ("RA", "RA"), ("dec", "DEC"), ("DEC", "DEC")):
            if src in spectra and dst not in t.colnames:
                t[dst] = _masked(
                    np.asarray(spectra[src].values, dtype=float)[srows],
                    unit="deg",
                    description="right ascension" if dst == "RA" else "declination",
                )
                t[dst].format = _TDISP["deg"]
        snr = spectra_snr(spectra)[srows]
    calibrated = want == "calibrated"
    # a calibrated result holds bias-corrected labels; a formal catalogue of it gets the uncorrected ones
    raw = "labels_uncorrected" in result and not calibrated
    labels = result["labels_uncorrected" if raw else "labels"].values
    asym = "errors_upper" in result and "errors_lower" in result
    errors = result["errors"].values if calibrated or not has_cal else result["errors_formal"].values
    for k, name in enumerate(names):
        desc = label_description(name)
        t[name] = _label_column(labels[:, k], name, f"{desc} (inferred label)")
        kind = "calibrated" if calibrated else "formal"
        if asym:
            t[f"E_{name}"] = _label_column(result["errors_upper"].values[:, k], name, f"upper 1-sigma error of {name}")
            t[f"e_{name}"] = _label_column(result["errors_lower"].values[:, k], name, f"lower 1-sigma error of {name}")
        else:
            t[f"e_{name}"] = _label_column(errors[:, k], name, f"{kind} 1-sigma uncertainty of {name}")
        if calibrated and "label_bias" in result:
            t[f"{name}_BIAS"] = _label_column(
                result["label_bias"].values[:, k],
                name,
                f"learned bias of the maximum-likelihood {name}, already subtracted in {name}",
            )
        if calibrated:
            for var, col, pct in (("half_width_68", "HW68", 68), ("half_width_95", "HW95", 95)):
                t[f"{col}_{name}"] = _label_column(
                    result[var].values[:, k], name, f"half-width of the calibrated central {pct}% interval of {name}"
                )
    cov = result["covariance"].values if "covariance" in result else None
    if cov is not None and len(names) > 1:
        sd = np.sqrt(np.einsum("nkk->nk", cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = cov / (sd[:, :, None] * sd[:, None, :])
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                c = f"CORR_{names[i]}_{names[j]}"
                t[c] = _masked(corr[:, i, j], description=f"correlation of the errors of {names[i]} and {names[j]}")
                t[c].format = "{:.3f}"
    for var, desc in (("chi2", "chi-squared of the best fit"), ("reduced_chi2", "chi2 / (n_pixels - n_labels)")):
        t[var.upper()] = _masked(result[var].values, description=desc)
        t[var.upper()].format = "{:.3f}"
    t["N_PIXELS"] = Column(result["n_pixels"].values.astype(np.int32), description="pixels used in the fit")
    if snr is None and quality is not None and np.isfinite(quality["snr"].values).any():
        snr = quality["snr"].values[_aligned(ids, quality["star"].values, "the quality flags")]
    if snr is not None:
        t["SNR"] = _masked(np.asarray(snr, dtype=float), description="signal-to-noise ratio")
        t["SNR"].format = "{:.1f}"
    t["CONVERGED"] = Column(result["converged"].values.astype(bool), description="label fit converged")
    flags = result["flags"].values.astype(np.int64)
    reasons = {f: why for f, why in _QUALITY_BITS.items()}
    if quality is None and model is not None:
        quality, why = _assess(model, result, snr, cv_scatter, distance_threshold)
        reasons.update(why)
    evaluated = set()
    if quality is not None:
        qrows = _aligned(ids, quality["star"].values, "the quality flags")
        flags = quality["flags"].values.astype(np.int64)[qrows]
        qa = quality.attrs
        if "distance_scale" in qa:
            evaluated.add(StarFlag.FAR_FROM_TRAINING)
        if "distance_scale" in qa or model is not None:
            # not evaluated: masked throughout (never a default value), FLAGNTnn says why
            t["LABEL_DISTANCE"] = _masked(
                quality["label_distance"].values[qrows] if "distance_scale" in qa else np.full(len(qrows), np.nan),
                description="mean distance to nearest training stars / CV scatter",
            )
            t["LABEL_DISTANCE"].format = "{:.3f}"
        if "distance_threshold" in qa:
            notes.append(
                f"FAR_FROM_TRAINING: LABEL_DISTANCE > {qa['distance_threshold']:.4g} "
                f"({qa['distance_threshold_method']})"
            )
            t.meta["DISTTHR"] = float(qa["distance_threshold"])
            t.meta["DISTHOW"] = str(qa["distance_threshold_method"])[:68]
            t.meta["DISTPCT"] = float(qa["distance_threshold_training_percentile"])
        if qa.get("hull", False):
            evaluated.add(StarFlag.OUTSIDE_HULL)
            t["IN_HULL"] = Column(
                quality["in_hull"].values.astype(bool)[qrows],
                description="labels inside the convex hull of the training labels",
            )
        if "min_snr" in qa:
            evaluated.add(StarFlag.LOW_SNR)
        if "survey_flag_mask" in qa:
            evaluated.add(StarFlag.SURVEY_FLAGGED)
            t["SURVEY_FLAGS"] = Column(
                quality["survey_flags"].values.astype(np.int64)[qrows],
                description="survey pipeline flags (carried through)",
            )
    t["FLAGS"] = Column(flags, description="StarFlag bitmask (bits in header FLAGBTnn cards)")
    for f in StarFlag:
        if f in _QUALITY_BITS and f not in evaluated:
            notes.append(f"FLAG_{f.name} absent: {reasons[f]}")
            continue
        t[f"FLAG_{f.name}"] = Column((flags & int(f)) != 0, description=f"StarFlag {f.name} set")
    if training_ids is not None:
        t["IN_TRAINING"] = Column(
            np.isin(ids, np.asarray(training_ids).astype(str)), description="spectrum was in the training set"
        )
    for name, col in _survey_columns(survey_labels, ids, f"{survey_name}_", survey_id_column or id_column).items():
        t[name] = col
    t.meta["EXTNAME"] = "LABELS"
    t.meta.update(flag_header())
    t.meta["ORIGIN"] = f"bayescannon {__version__}"
    t.meta["DATE"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    t.meta["BCVERS"] = __version__
    if calibrated:
        t.meta["ERRMODEL"] = "calibrated (error model of the Bayesian layer; HW68_/HW95_ interval half-widths)"
    elif model is not None and is_calibrated(model):
        t.meta["ERRMODEL"] = "formal on request (inverse Fisher; too small: the model is calibrated)"
    else:
        t.meta["ERRMODEL"] = "formal (inverse Fisher matrix, model scatter s2 included; model not calibrated)"
    cfg = dict(config or {})
    hsh = getattr(model, "training_hash_", None) or result.attrs.get("model_training_hash")
    if hsh:
        t.meta["MODELHSH"] = str(hsh)[:64]
    if model is not None:
        params = model.get_params()
        params.pop("censors", None)
        cfg.setdefault("model", {k: v for k, v in params.items() if _jsonable(v)})
        t.meta["NLABELS"] = len(model.label_names)
        t.meta["LABELS"] = " ".join(model.label_names)
    cfg["uncertainty"] = want
    t.meta["CONFIG"] = json.dumps(cfg, sort_keys=True, default=str)
    for i, note in enumerate(notes, 1):
        t.meta[f"FLAGNT{i:02d}"] = note
    for k, v in (meta or {}).items():
        t.meta[k] = v
    for k in list(t.meta):
        t.meta[k] = fits_safe(t.meta[k])
    return t


def _assess(model, result, snr, cv_scatter, distance_threshold):
    """Quality flags from the model's training labels, and why tests were skipped."""
    why = {}
    try:
        training = training_labels(model)
    except InvalidInputError:
        training = None
        why[StarFlag.OUTSIDE_HULL] = why[StarFlag.FAR_FROM_TRAINING] = "the model holds no training labels"
    if training is not None and cv_scatter is None:
        why[StarFlag.FAR_FROM_TRAINING] = "no CV scatter given (the unit of the label distance)"
    quality = assess(
        result,
        training=training,
        cv_scatter=cv_scatter if training is not None else None,
        distance_threshold=distance_threshold,
        hull=training is not None,
        snr=snr,
    )
    return quality, why


def result_to_table(
    result,
    *,
    id_column: str = "ID",
    meta=None,
    quality=None,
    training_ids=None,
    survey_labels=None,
    survey_prefix: str = "SURVEY_",
    survey_id_column=None,
) -> Table:
    """A catalogue of a bare result without its model: :func:`build_catalogue` with
    ``model=None`` (kept for callers that have no model; prefer :func:`build_catalogue`)."""
    return build_catalogue(
        None,
        result,
        quality=quality,
        training_ids=training_ids,
        survey_labels=survey_labels,
        survey_name=survey_prefix.removesuffix("_"),
        survey_id_column=survey_id_column,
        id_column=id_column,
        meta=meta,
    )


def make_catalogue(result, *, model=None, **kwargs) -> Table:
    """:func:`build_catalogue` with the result first (kept for earlier callers)."""
    return build_catalogue(model, result, **kwargs)


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
    """Read a catalogue written by :func:`write_table` (FITS, ECSV, CSV or parquet); FITS column
    descriptions come back from TCOMMn and the columns listed in ``DEXCOLS`` get
    ``meta['unit_text'] = 'dex'`` again."""
    path = Path(path)
    if not path.exists():
        raise SurveyFormatError(f"catalogue {path} does not exist")
    name = path.name.lower()
    fmt = (
        "fits"
        if name.endswith((".fits", ".fit", ".fits.gz"))
        else {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".parquet": "parquet"}.get(Path(name).suffix)
    )
    table = Table.read(path, format=fmt)
    if fmt == "fits":  # column descriptions travel as TCOMMn
        hdr = fits.getheader(path, 1)
        for i in range(1, int(hdr.get("TFIELDS", 0)) + 1):
            name, comm = hdr.get(f"TTYPE{i}"), hdr.get(f"TCOMM{i}")
            if comm and name in table.colnames and not table[name].description:
                table[name].description = comm
        for i in range(1, int(hdr.get("TFIELDS", 0)) + 1):
            table.meta.pop(f"TCOMM{i}", None)
        for name in str(hdr.get("DEXCOLS", "")).split():
            if name in table.colnames:
                table[name].meta["unit_text"] = "dex"
    return table


def _fits_hdu(table: Table) -> fits.BinTableHDU:
    """A binary-table HDU with TCOMMn (descriptions), TDISPn (formats) and the names of
    the columns in dex (``DEXCOLS``): ``dex`` is no FITS unit, and a TUNITn = 'dex' makes
    every plain ``Table.read`` warn (astropy drops ``u.dex`` itself)."""
    hdu = fits.table_to_hdu(table)
    dex = [name for name in table.colnames if (table[name].meta or {}).get("unit_text") == "dex"]
    if dex:
        hdu.header["DEXCOLS"] = " ".join(dex)
    for i, name in enumerate(table.colnames, 1):
        col = table[name]
        if col.description:
            hdu.header[f"TCOMM{i}"] = fits_safe(str(col.description))[:68]
        if col.format and f"TDISP{i}" not in hdu.header:
            disp = _tdisp(col.format)
            if disp:
                hdu.header[f"TDISP{i}"] = disp
    return hdu


def _tdisp(fmt: str) -> str | None:
    """FITS TDISP of a Python format such as ``"{:.1f}"`` (F12.1), or None."""
    spec = fmt.strip("{}:")
    if spec.startswith(".") and spec[-1] in "fegEG" and spec[1:-1].isdigit():
        p = int(spec[1:-1])
        code = {"f": "F", "e": "E", "E": "E", "g": "G", "G": "G"}[spec[-1]]
        return f"{code}{p + 10}.{p}"
    return None


#: Name endings :func:`write_table` writes: FITS (``.fits``, ``.fit``, gzipped), CSV, ECSV.
TABLE_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".csv", ".ecsv", ".parquet")


def write_table(table: Table, path, *, overwrite: bool = False) -> Path:
    """Write a table atomically (FITS if the suffix is .fits/.fit/.fits.gz, else CSV/ECSV/parquet
    by suffix; parquet keeps units and descriptions in its astropy metadata). FITS files carry TCOMMn column descriptions, TDISPn display formats and
    every unit, ``dex`` included.

    Parameters
    ----------
    table : astropy.table.Table
    path : path-like
        Output file; its suffix (one of :data:`TABLE_SUFFIXES`) picks the format.
    overwrite : bool
        Replace an existing file (default: refuse).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputPathError
        The suffix is not one of :data:`TABLE_SUFFIXES` (checked before anything is written).
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(TABLE_SUFFIXES):
        raise OutputPathError(f"{path}: a table is written as {', '.join(TABLE_SUFFIXES)}; got {path.name!r}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            fits.HDUList([fits.PrimaryHDU(), _fits_hdu(table)]).writeto(tmp, overwrite=True)
        else:
            fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".parquet": "parquet"}[Path(name).suffix]
            table.write(tmp, format=fmt, overwrite=True)
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
    if join_type not in ("inner", "left"):
        raise InvalidInputError(f"join_type must be 'inner' or 'left'; got {join_type!r}")
    if sky:
        from astropy.coordinates import SkyCoord  # lazy: coordinates load slowly, only sky joins need them

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
            raise CrossMatchError(
                f"{int((counts > 1).sum())} right sources match several left sources "
                f"within {max_separation} arcsec: ambiguous sky join"
            )
        lt = left.copy(copy_data=False)
        rt = right.copy(copy_data=False)
        lt["_ROW"] = np.arange(len(left))
        lt["_MATCH"] = np.where(ok, idx, -1)
        rt["_MATCH"] = np.arange(len(right))
        out = join(lt, rt, keys="_MATCH", join_type=join_type, table_names=list(table_names))
        out.sort("_ROW")
        rows = np.asarray(out["_ROW"])
        matched = ok[rows]
        out["SEPARATION"] = MaskedColumn(
            np.where(matched, sep.arcsec[rows], np.nan),
            mask=~matched,
            unit="arcsec",
            description="separation of the sky match",
        )
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
            raise CrossMatchError(
                f"{side} catalogue has duplicated ids in {key!r}, e.g. {uniq[counts > 1][:3].tolist()}"
            )
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
