"""Cross-survey runs: the four combinations of Nandakumar+2022 from one configuration.

Two surveys A and B observe partly the same stars, each with its own spectra and its own
pipeline labels. For every choice of spectra (A or B) and of label scale (A or B) a
Cannon model is trained on the common stars and applied to all spectra of that survey:

======  =====================  ==========================================
code    spectra                labels (scale)
======  =====================  ==========================================
ACAA    A                      A (e.g. APOGEE spectra, ASPCAP labels)
ACGS    A                      B (e.g. APOGEE spectra, GALAH SME labels)
GCAA    B                      A
GCGS    B                      B
======  =====================  ==========================================

(codes: first letter of the spectra survey, ``C`` for Cannon, then the label source
code of :class:`SurveyData`). The two runs on scale A give one combined catalogue of
every star of both surveys on scale A, and likewise for B. :func:`compare_common`
gives the comparison of the common stars before (pipeline A − pipeline B) and after
(Cannon on A spectra − Cannon on B spectra, same scale): mean and scatter of the
differences for all stars, giants and dwarfs (Nandakumar+2022 Tables 1 and 3).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from astropy.table import MaskedColumn, Table, vstack

from bayescannon.errors import CrossMatchError, InsufficientDataError, InvalidInputError, LabelError
from bayescannon.model import CannonModel
from bayescannon.survey.catalogue import build_catalogue, join_ids, spectra_snr
from bayescannon.validate.crossval import cross_validate
from bayescannon.validate.quality import DEFAULT_DISTANCE_THRESHOLD, assess
from bayescannon.validate.repeats import COMBINES, RECIPES, RepeatCalibration, calibrate_from_repeats
from bayescannon.validate.stats import summary_statistics

logger = logging.getLogger(__name__)

__all__ = [
    "PASSTHROUGH_COLUMNS",
    "CrossSurveyResult",
    "RunOutput",
    "RunSettings",
    "SurveyData",
    "common_stars",
    "compare_common",
    "run_codes",
    "run_cross_survey",
]


@dataclass
class SurveyData:
    """One survey: its spectra and its own pipeline labels.

    Attributes
    ----------
    name : str
        Survey name (``"APOGEE"``); column prefix of its own labels in catalogues.
    spectra : xarray.Dataset
        Spectra container; ``star`` holds the survey's ids.
    labels : astropy.table.Table
        The survey's pipeline labels with an id column (masked or NaN = missing).
    id_column : str
        Id column of ``labels`` (the same ids as ``spectra["star"]``).
    code : str, optional
        Letter of the spectra in run codes (default: first letter of ``name``).
    label_code : str, optional
        Code of the label source (default: first two letters of ``name``).
    """

    name: str
    spectra: xr.Dataset
    labels: Table
    id_column: str = "ID"
    code: str | None = None
    label_code: str | None = None
    groups: str | None = None
    flags_column: str | None = None
    flag_mask: int | None = None
    passthrough: list | None = None

    def __post_init__(self):
        self.code = self.code or self.name[:1].upper()
        self.label_code = self.label_code or self.name[:2].upper()
        if self.id_column not in self.labels.colnames:
            raise InvalidInputError(f"{self.name} label table has no id column {self.id_column!r}")
        for what, col in (("repeat group", self.groups), ("survey flag", self.flags_column)):
            if col is not None and col not in self.labels.colnames and col not in self.spectra:
                raise InvalidInputError(
                    f"{self.name}: {what} column {col!r} is neither a per-star variable of the spectra nor a "
                    f"column of the label table ({self.labels.colnames})"
                )

    def _column(self, col):
        """Per-spectrum values of ``col`` (spectra variable, else label table joined by id; masked where absent)."""
        if col in self.spectra:
            v = np.asarray(self.spectra[col].values)
            return np.ma.MaskedArray(v, mask=np.zeros(v.shape, bool))
        rows, hit = join_ids(self.ids, self.labels[self.id_column], what=f"{self.name} label table", require="none")
        c = self.labels[col]
        idx = np.where(hit, rows, 0)
        return np.ma.MaskedArray(np.asarray(np.ma.getdata(c))[idx], mask=~hit | np.ma.getmaskarray(c)[idx])

    def group_ids(self):
        """Star identifier of every spectrum (spectra of one star share it), masked
        where unknown; None without a ``groups`` column."""
        if self.groups is None:
            return None
        g = self._column(self.groups)
        return np.ma.MaskedArray(np.ma.getdata(g).astype(str), mask=np.ma.getmaskarray(g))

    def survey_flags(self, ids):
        """(survey flags per spectrum or None, mask of bad bits); spectra without a
        flag value get 0 (logged)."""
        if self.flags_column is None:
            return None, None
        f = self._column(self.flags_column)
        miss = np.ma.getmaskarray(f)
        if miss.any():
            logger.warning("%s: %d spectra have no %s value (taken as 0)", self.name, miss.sum(), self.flags_column)
        return np.ma.getdata(f).astype(np.int64) * ~miss, self.flag_mask

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.spectra["star"].values).astype(str)

    def label_matrix(self, ids, label_names) -> np.ndarray:
        """Labels of ``ids`` (N, K); NaN where missing (unknown id, masked, −9999)."""
        missing = [n for n in label_names if n not in self.labels.colnames]
        if missing:
            raise LabelError(f"{self.name} label table has no column(s) {missing}")
        rows, hit = join_ids(ids, self.labels[self.id_column], what=f"{self.name} label table", require="none")
        out = np.full((rows.size, len(label_names)), np.nan)
        for k, n in enumerate(label_names):
            col = self.labels[n]
            v = np.asarray(np.ma.getdata(col), dtype=float).copy()
            v[np.ma.getmaskarray(col) | (v <= -9998.5)] = np.nan
            out[hit, k] = v[rows[hit]]
        return out


def common_stars(a: SurveyData, b: SurveyData, crossmatch=None, *, columns=("ID_A", "ID_B")):
    """Row indices of the stars observed by both surveys.

    Parameters
    ----------
    a, b : SurveyData
    crossmatch : Table, optional
        Pairs of ids (``columns``); default: the same id in both surveys.
    columns : (str, str)
        Id columns of ``crossmatch`` for A and B.

    Returns
    -------
    ia, ib : ndarray of int
        Rows of A's and B's spectra of the common stars.
    """
    ida, idb = a.ids, b.ids
    if crossmatch is None:
        xa = xb = np.intersect1d(ida, idb)
    else:
        for c in columns:
            if c not in crossmatch.colnames:
                raise InvalidInputError(f"cross-match table has no column {c!r}; columns: {crossmatch.colnames}")
        xa = np.asarray(crossmatch[columns[0]]).astype(str)
        xb = np.asarray(crossmatch[columns[1]]).astype(str)
        for v, side in ((xa, a.name), (xb, b.name)):
            u, c = np.unique(v, return_counts=True)
            if (c > 1).any():
                raise CrossMatchError(f"cross-match lists {side} ids more than once: {u[c > 1][:3].tolist()}")
    ra, ha = join_ids(xa, ida, what=f"{a.name} spectra", require="none")
    rb, hb = join_ids(xb, idb, what=f"{b.name} spectra", require="none")
    keep = ha & hb
    if not keep.any():
        raise CrossMatchError(f"no star is common to {a.name} and {b.name} spectra (ids do not join)")
    return ra[keep].astype(np.int64), rb[keep].astype(np.int64)


#: Names of identifier and astrometry columns carried from a survey's label table into
#: the catalogues (Nandakumar+2022 Table A1) when present and ``passthrough`` is not
#: given; matched without regard to case.
PASSTHROUGH_COLUMNS = (
    "GAIA_DR3_SOURCE_ID",
    "GAIA_DR3_ID",
    "GAIADR3_SOURCE_ID",
    "DR3_SOURCE_ID",
    "SOURCE_ID",
    "TMASS_ID",
    "APOGEE_ID",
    "SOBJECT_ID",
    "STAR_ID",
    "PARALLAX",
    "PARALLAX_ERROR",
    "E_PARALLAX",
    "DIST",
    "E_DIST",
    "DISTANCE",
    "DISTANCE_ERROR",
    "R_MED_GEO",
    "R_LO_GEO",
    "R_HI_GEO",
    "PMRA",
    "PMDEC",
)


@dataclass
class RunSettings:
    """Settings of one of the four runs (Nandakumar+2022 trained each with its own).

    Attributes
    ----------
    labels : list of str, optional
        Labels of this run (default: the shared ``label_names``; labels its scale lacks
        are dropped, logged).
    model : dict
        :class:`CannonModel` settings (``order``, ``regularization``, ``censors`` — a
        mapping, a preset such as ``"nandakumar2022-apogee"`` or a window table —,
        ``random_state``, ...).
    cuts : dict
        Training-set cuts ``{name: (lo, hi)}`` on the run's reference labels, or on the
        spectra's S/N for ``"SNR"``; NaN bounds are open.
    folds : int
        k of the k-fold cross-validation (Nandakumar+2022: 12); 0 skips it (then no
        label distance and no ``FAR_FROM_TRAINING``: the CV scatter is its unit).
    distance_threshold : float or str
        ``FAR_FROM_TRAINING`` threshold (see :func:`bayescannon.validate.quality.assess`):
        ``"calibrated"`` (p99 of the training set's own CV distances), ``"nandakumar2022"``
        (8) or a number.
    repeats : str or None
        Recipe of the repeat-based error calibration
        (:func:`bayescannon.validate.repeats.calibrate_from_repeats`, default the paper's
        eq. 6); None skips it. It runs only where the spectra hold repeats.
    repeat_combine : {"max", "quadrature"}
        How the scaled formal errors and the precision floor combine: ``"max"`` (the
        paper, default) over-covers where formal errors vary from star to star at one
        S/N; ``"quadrature"`` adds the excess floor in quadrature (see
        :mod:`bayescannon.validate.repeats`).
    compare_uncensored : bool
        With censoring windows, also cross-validate the same model without them and
        report both CV scatters side by side.
    """

    labels: list | None = None
    model: dict = field(default_factory=dict)
    cuts: dict = field(default_factory=dict)
    folds: int = 12
    distance_threshold: float | str = DEFAULT_DISTANCE_THRESHOLD
    repeats: str | None = "nandakumar2022"
    compare_uncensored: bool = True
    repeat_combine: str = "max"

    def __post_init__(self):
        if int(self.folds) != self.folds or self.folds == 1 or self.folds < 0:
            raise InvalidInputError(f"folds must be 0 (no cross-validation) or an integer >= 2; got {self.folds!r}")
        if self.repeats is not None and self.repeats not in RECIPES:
            raise InvalidInputError(f"repeats must be one of {RECIPES} or None; got {self.repeats!r}")
        if self.repeat_combine not in COMBINES:
            raise InvalidInputError(f"repeat_combine must be one of {COMBINES}; got {self.repeat_combine!r}")
        for name, bounds in self.cuts.items():
            if np.shape(bounds) != (2,):
                raise InvalidInputError(f"cut {name!r} must be (lo, hi); got {bounds!r}")


@dataclass
class RunOutput:
    """Everything one run produced.

    Attributes
    ----------
    code : str
    model : CannonModel
    result : xarray.Dataset
        Inference of every spectrum of the run's survey (formal errors).
    catalogue : Table
    quality : xarray.Dataset
    n_training : int
    n_cut : dict
        Stars removed by each training cut.
    cv, cv_uncensored : CrossValidation or None
    repeats : RepeatCalibration or None
    repeats_status : str
        ``"calibrated (…)"`` or why the errors stay formal.
    """

    code: str
    model: CannonModel
    result: xr.Dataset
    catalogue: Table
    quality: xr.Dataset
    n_training: int
    n_cut: dict
    cv: object = None
    cv_uncensored: object = None
    repeats: RepeatCalibration | None = None
    repeats_status: str = ""


@dataclass
class CrossSurveyResult:
    """Result of :func:`run_cross_survey`.

    Attributes
    ----------
    runs : dict of str to xarray.Dataset
        Inference results by run code (``"ACAA"``, ...).
    models : dict of str to CannonModel
    catalogues : dict of str to Table
        Combined catalogue per label scale (keys: label codes of A and B).
    comparison : Table
        :func:`compare_common` of the common stars.
    common : (ndarray, ndarray)
        Rows of the common stars in A's and B's spectra.
    config : dict
    details : dict of str to RunOutput
        Per run: CV, repeat calibration, quality flags, its own catalogue.
    """

    runs: dict
    models: dict
    catalogues: dict
    comparison: Table
    common: tuple
    config: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def run_codes(a: SurveyData, b: SurveyData) -> list[str]:
    """The four run codes, ``<spectra code>C<label code>`` (A scale first)."""
    return [f"{spec.code}C{lab.label_code}" for lab in (a, b) for spec in (a, b)]


def _apply_cuts(cuts, names, y, snr, code):
    """Boolean keep mask of the training candidates and the count each cut removed."""
    keep = np.all(np.isfinite(y), axis=1)
    removed = {}
    for name, (lo, hi) in cuts.items():
        if name.upper() == "SNR":
            v = snr
        elif name in names:
            v = y[:, names.index(name)]
        else:
            raise InvalidInputError(f"{code}: cut on {name!r}, which is neither SNR nor a label of the run ({names})")
        lo = -np.inf if lo is None or not np.isfinite(lo) else float(lo)
        hi = np.inf if hi is None or not np.isfinite(hi) else float(hi)
        with np.errstate(invalid="ignore"):
            ok = (v >= lo) & (v <= hi)
        removed[name] = int((keep & ~ok).sum())
        keep &= ok
    return keep, removed


def _passthrough(spec: SurveyData, ids) -> dict:
    """Identifier/astrometry columns of ``spec.labels`` for the rows ``ids`` (masked where absent)."""
    cols = spec.passthrough
    if cols is None:
        upper = {c.upper(): c for c in spec.labels.colnames if c != spec.id_column}
        cols = [upper[n] for n in PASSTHROUGH_COLUMNS if n in upper]
    missing = [c for c in cols if c not in spec.labels.colnames]
    if missing:
        raise InvalidInputError(f"{spec.name} label table has no passthrough column(s) {missing}")
    rows, hit = join_ids(ids, spec.labels[spec.id_column], what=f"{spec.name} label table", require="none")
    out = {}
    for c in cols:
        col = spec.labels[c]
        data = np.asarray(np.ma.getdata(col))[np.where(hit, rows, 0)]
        mask = ~hit | np.ma.getmaskarray(col)[np.where(hit, rows, 0)]
        out[c.upper()] = MaskedColumn(data, mask=mask, unit=col.unit, description=col.description or f"{spec.name} {c}")
    return out


def _repeat_errors(settings, spec, res, snr, names, code):
    """(calibrated errors or None, RepeatCalibration or None, status text)."""
    if settings.repeats is None:
        return None, None, "not asked (repeats = none)"
    groups = spec.group_ids()
    if groups is None:
        return None, None, f"no repeat groups given for {spec.name}: formal errors"
    g = np.ma.getdata(groups).astype(str)
    good = ~np.ma.getmaskarray(groups) & (np.char.strip(g) != "")
    _, counts = np.unique(g[good], return_counts=True)
    if not (counts > 1).any():
        return None, None, f"no star of {spec.name} has two spectra: formal errors"
    labels, errors = res["labels"].values, res["errors"].values
    try:
        cal = calibrate_from_repeats(
            labels, errors, snr, groups, names, recipe=settings.repeats, combine=settings.repeat_combine, ids=spec.ids
        )
    except InsufficientDataError as exc:
        logger.warning("%s: repeat calibration not possible (%s): formal errors kept", code, exc)
        return None, None, f"not possible ({exc}): formal errors"
    scale = ", ".join(f"{n} x{s:.3g}" for n, s in zip(names, cal.scale))
    how = settings.repeats if settings.repeat_combine == "max" else f"{settings.repeats}, {settings.repeat_combine}"
    return cal.apply(errors, snr), cal, f"calibrated ({how}, {len(cal.pairs)} pairs; {scale})"


def _one_run(spec, lab, code, settings, train_rows, y_train, names, n_jobs, progressbar):
    """Train, cross-validate, infer, calibrate and flag one run; its catalogue."""
    ds = spec.spectra
    snr_all = spectra_snr(ds)
    keep, removed = _apply_cuts(settings.cuts, names, y_train, snr_all[train_rows], code)
    train, y = train_rows[keep], y_train[keep]
    model = CannonModel(names, **settings.model)
    if train.size < model.vectorizer.n_terms + 1:
        raise InsufficientDataError(
            f"{code}: {train.size} common stars with {lab.name} labels pass the cuts; the model needs "
            f"{model.vectorizer.n_terms + 1}"
        )
    flux, ivar, wl = ds["flux"].values, ds["ivar"].values, ds["wavelength"].values
    model.fit(flux[train], ivar[train], y, wavelength=wl, ids=spec.ids[train], progressbar=progressbar)
    cv = cv_unc = None
    if settings.folds:
        seed = settings.model.get("random_state", 0)
        kw = {"n_folds": int(settings.folds), "random_state": seed, "snr": snr_all[train], "n_jobs": n_jobs}
        cv = cross_validate(model, flux[train], ivar[train], y, ids=spec.ids[train], wavelength=wl, **kw)
        if settings.model.get("censors") and settings.compare_uncensored:
            plain = CannonModel(names, **{k: v for k, v in settings.model.items() if k != "censors"})
            cv_unc = cross_validate(plain, flux[train], ivar[train], y, ids=spec.ids[train], wavelength=wl, **kw)
    res = model.infer(ds, progressbar=progressbar)
    sflags, mask = spec.survey_flags(spec.ids)
    quality = assess(
        res,
        model=model,
        cv_scatter=cv,
        distance_threshold=settings.distance_threshold,
        snr=snr_all,
        survey_flags=sflags,
        survey_flag_mask=mask,
    )
    errors, cal, status = _repeat_errors(settings, spec, res, snr_all, names, code)
    own = [n for n in names if n in spec.labels.colnames]
    own += [f"e_{n}" for n in names if f"e_{n}" in spec.labels.colnames]
    cat = build_catalogue(
        model,
        res,
        spectra=ds,
        quality=quality,
        training_ids=spec.ids[train],
        survey_labels=spec.labels[[spec.id_column, *own]],
        survey_id_column=spec.id_column,
        survey_name=spec.name,
        config={"run": code, "spectra": spec.name, "label_scale": lab.name, "folds": int(settings.folds)},
    )
    if errors is not None:
        for k, n in enumerate(names):
            formal = cat[f"e_{n}"]
            cat[f"e_{n}_FORMAL"] = formal.copy()
            cat[f"e_{n}_FORMAL"].description = f"formal 1-sigma uncertainty of {n} (before the repeat calibration)"
            cat[f"e_{n}"] = MaskedColumn(
                errors[:, k], mask=~np.isfinite(errors[:, k]), unit=formal.unit, format=formal.format
            )
            cat[f"e_{n}"].description = f"1-sigma error of {n}: max(scale x formal, precision(S/N)) from repeats"
        cat.meta["ERRMODEL"] = f"repeat-calibrated, Nandakumar+2022 eq. 6 ({settings.repeats})"
    cat.meta["ERRCAL"] = status[:68]
    for name, col in _passthrough(spec, spec.ids).items():
        if name not in cat.colnames:
            cat[name] = col
    cat["SURVEY"] = np.full(len(cat), spec.name)
    cat["RUN"] = np.full(len(cat), code)
    logger.info(
        "%s: trained on %d common stars (cuts removed %s), labelled %d spectra", code, train.size, removed, len(cat)
    )
    return RunOutput(code, model, res, cat, quality, int(train.size), removed, cv, cv_unc, cal, status)


def run_cross_survey(
    a: SurveyData,
    b: SurveyData,
    label_names,
    *,
    crossmatch=None,
    crossmatch_columns=("ID_A", "ID_B"),
    model_kwargs=None,
    settings=None,
    giant_logg: float = 3.5,
    n_jobs: int | None = None,
    progressbar: bool = False,
) -> CrossSurveyResult:
    """The four spectra × label-scale runs and the two combined catalogues.

    Each run trains on the common stars with labels of its scale (after its cuts),
    cross-validates (k folds), labels every spectrum of its survey, calibrates the errors
    on repeat spectra where there are any (eq. 6; final error ``max(scale × formal,
    precision(S/N))``), and flags each star: label distance (eq. 5, threshold
    calibrated on the training set's own CV distances unless set), convex hull,
    survey flags. All catalogues come from :func:`build_catalogue`.

    Parameters
    ----------
    a, b : SurveyData
    label_names : list of str
        Labels to transfer (default of every run); a survey whose table lacks one is
        trained on the others (logged).
    crossmatch : Table, optional
        Id pairs of the common stars (default: equal ids).
    crossmatch_columns : (str, str)
    model_kwargs : dict, optional
        :class:`CannonModel` settings of runs that do not set their own.
    settings : dict of str to RunSettings or dict, optional
        Per-run settings by run code (:func:`run_codes`); a ``"default"`` entry applies
        to runs not listed. Default: ``RunSettings(model=model_kwargs)`` (12 folds).
    giant_logg : float
        Giants have log g below it, dwarfs at or above it (comparison statistics).
    n_jobs : int, optional
        Worker processes of the cross-validation.
    progressbar : bool

    Returns
    -------
    CrossSurveyResult

    Raises
    ------
    CrossMatchError
        No common stars.
    InsufficientDataError
        Too few common stars with labels for the model's terms.
    InvalidInputError
        Settings for an unknown run code, or a cut on an unknown label.
    """
    codes = run_codes(a, b)
    settings = dict(settings or {})
    unknown = set(settings) - set(codes) - {"default"}
    if unknown:
        raise InvalidInputError(f"settings for unknown run(s) {sorted(unknown)}; the runs are {codes}")
    default = settings.pop("default", None) or RunSettings(model=dict(model_kwargs or {}))
    if isinstance(default, Mapping):
        default = RunSettings(**{"model": dict(model_kwargs or {}), **default})
    per_run = {}
    for code in codes:
        s = settings.get(code, default)
        per_run[code] = RunSettings(**s) if isinstance(s, Mapping) else s
    ia, ib = common_stars(a, b, crossmatch, columns=crossmatch_columns)
    rows = {a.code: ia, b.code: ib}
    details, tables = {}, {}
    for lab in (a, b):
        for spec in (a, b):
            code = f"{spec.code}C{lab.label_code}"
            st = per_run[code]
            wanted = list(st.labels or label_names)
            names = [n for n in wanted if n in lab.labels.colnames]
            if len(names) < len(wanted):
                logger.warning(
                    "%s: %s labels lack %s; the run uses %s", code, lab.name, sorted(set(wanted) - set(names)), names
                )
            if not names:
                raise LabelError(f"{lab.name} label table has none of the labels {wanted}")
            # labels of the common stars on this scale, looked up through the ids of the
            # label survey's own spectra
            y = lab.label_matrix(lab.ids[rows[lab.code]], names)
            out = _one_run(spec, lab, code, st, rows[spec.code], y, names, n_jobs, progressbar)
            common = np.zeros(len(out.catalogue), bool)
            common[rows[spec.code]] = True
            out.catalogue["COMMON"] = common
            details[code] = out
            tables.setdefault(lab.label_code, []).append(out.catalogue)
    catalogues = {code: _combine(parts, code) for code, parts in tables.items()}
    runs = {c: d.result for c, d in details.items()}
    comparison = compare_common(a, b, runs, (ia, ib), label_names, giant_logg=giant_logg)
    config = {
        "label_names": list(label_names),
        "runs": {
            c: {
                "labels": [str(n) for n in d.model.label_names],
                "model": {k: v for k, v in per_run[c].model.items() if k != "censors"},
                "censors": per_run[c].model.get("censors")
                if isinstance(per_run[c].model.get("censors"), str)
                else None,
                "cuts": {k: list(v) for k, v in per_run[c].cuts.items()},
                "folds": int(per_run[c].folds),
                "n_training": d.n_training,
            }
            for c, d in details.items()
        },
        "surveys": [a.name, b.name],
        "n_common": int(ia.size),
        "giant_logg": giant_logg,
    }
    return CrossSurveyResult(
        runs, {c: d.model for c, d in details.items()}, catalogues, comparison, (ia, ib), config, details
    )


def _combine(parts, code):
    """One catalogue of both surveys' runs on one scale (survey-specific columns masked
    on the other survey's rows)."""
    cat = vstack(parts, join_type="outer", metadata_conflicts="silent")
    cat.meta = {k: v for k, v in parts[0].meta.items() if k.startswith(("FLAGBT", "BCVERS", "EXTNAME", "ORIGIN"))}
    cat.meta["SCALE"] = code
    for p in parts:
        run = str(p["RUN"][0]) if len(p) else "?"
        for key in ("DISTTHR", "ERRMODEL", "ERRCAL", "MODELHSH"):
            if key in p.meta:
                cat.meta[f"{key[:4]}{run}"[:8]] = p.meta[key]
    return cat


def compare_common(a: SurveyData, b: SurveyData, runs: dict, common, label_names, *, giant_logg: float = 3.5) -> Table:
    """Differences of the common stars, before and after the label transfer.

    Parameters
    ----------
    a, b : SurveyData
    runs : dict of str to xarray.Dataset
        Inference results by run code (from :func:`run_cross_survey`).
    common : (ndarray, ndarray)
        Rows of the common stars in A's and B's spectra.
    label_names : list of str
    giant_logg : float
        Giants: log g below this (on the scale of the comparison).

    Returns
    -------
    astropy.table.Table
        ``COMPARISON`` (``"A - B pipeline"`` or ``"<run A> - <run B>"``), ``SCALE``,
        ``POPULATION`` (all, giants, dwarfs), ``LABEL``, ``N``, ``MEAN``, ``SCATTER``
        (std), ``HALF_P16_84``; populations with fewer than 2 stars are reported with
        masked statistics.
    """
    ia, ib = common
    rows = []

    def add(comp, scale, la, lb, names, logg):
        d = la - lb
        pops = {"all": np.ones(d.shape[0], bool)}
        if logg is not None:
            pops["giants"] = logg < giant_logg
            pops["dwarfs"] = logg >= giant_logg
        for pop, sel in pops.items():
            st = summary_statistics(d[sel], axis=0) if sel.any() else None
            for k, n in enumerate(names):
                rows.append(
                    (
                        comp,
                        scale,
                        pop,
                        n,
                        int(st["n"][k]) if st else 0,
                        float(st["bias"][k]) if st else np.nan,
                        float(st["rms"][k]) if st else np.nan,
                        float(st["half_p16_84"][k]) if st else np.nan,
                    )
                )

    names = [n for n in label_names if n in a.labels.colnames and n in b.labels.colnames]
    la = a.label_matrix(a.ids[ia], names)
    lb = b.label_matrix(b.ids[ib], names)
    logg = la[:, names.index("LOGG")] if "LOGG" in names else None
    add(f"{a.name} - {b.name} pipeline", "native", la, lb, names, logg)
    for lab in (a, b):
        ca, cb = f"{a.code}C{lab.label_code}", f"{b.code}C{lab.label_code}"
        if ca not in runs or cb not in runs:
            continue
        ra, rb = runs[ca], runs[cb]
        rn = [str(n) for n in ra["label_name"].values]
        ya, yb = ra["labels"].values[ia], rb["labels"].values[ib]
        lg = lab.label_matrix(lab.ids[common[0] if lab is a else common[1]], ["LOGG"])[:, 0] if "LOGG" in rn else None
        add(f"{ca} - {cb}", lab.name, ya, yb, rn, lg)
    t = Table(
        rows=rows,
        names=("COMPARISON", "SCALE", "POPULATION", "LABEL", "N", "MEAN", "SCATTER", "HALF_P16_84"),
        dtype=(str, str, str, str, np.int64, float, float, float),
    )
    for col in ("MEAN", "SCATTER", "HALF_P16_84"):
        t[col] = np.ma.masked_invalid(t[col])
    return t
