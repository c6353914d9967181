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
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from astropy.table import Table, vstack

from bayescannon.errors import CrossMatchError, InsufficientDataError, InvalidInputError, LabelError
from bayescannon.model import CannonModel
from bayescannon.survey.catalogue import build_catalogue, join_ids
from bayescannon.validate.stats import summary_statistics

logger = logging.getLogger(__name__)

__all__ = ["CrossSurveyResult", "SurveyData", "common_stars", "compare_common", "run_cross_survey"]


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

    def __post_init__(self):
        self.code = self.code or self.name[:1].upper()
        self.label_code = self.label_code or self.name[:2].upper()
        if self.id_column not in self.labels.colnames:
            raise InvalidInputError(f"{self.name} label table has no id column {self.id_column!r}")

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
    """

    runs: dict
    models: dict
    catalogues: dict
    comparison: Table
    common: tuple
    config: dict = field(default_factory=dict)


def run_cross_survey(
    a: SurveyData,
    b: SurveyData,
    label_names,
    *,
    crossmatch=None,
    crossmatch_columns=("ID_A", "ID_B"),
    model_kwargs=None,
    giant_logg: float = 3.5,
    progressbar: bool = False,
) -> CrossSurveyResult:
    """The four spectra × label-scale runs and two combined catalogues.

    Parameters
    ----------
    a, b : SurveyData
    label_names : list of str
        Labels to transfer; a survey whose table lacks one is trained on the others
        (logged).
    crossmatch : Table, optional
        Id pairs of the common stars (default: equal ids).
    crossmatch_columns : (str, str)
    model_kwargs : dict, optional
        :class:`CannonModel` settings shared by the four runs (``order``,
        ``regularization``, ``random_state``, ...).
    giant_logg : float
        Stars with log g below it are giants in the comparison.
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
    """

    kw = dict(model_kwargs or {})
    ia, ib = common_stars(a, b, crossmatch, columns=crossmatch_columns)
    rows = {a.code: ia, b.code: ib}
    runs, models, tables = {}, {}, {}
    for lab in (a, b):
        names = [n for n in label_names if n in lab.labels.colnames]
        if len(names) < len(label_names):
            logger.warning(
                "%s labels lack %s: runs on the %s scale use %s",
                lab.name,
                sorted(set(label_names) - set(names)),
                lab.name,
                names,
            )
        if not names:
            raise LabelError(f"{lab.name} label table has none of the labels {list(label_names)}")
        # labels of the common stars on this scale, looked up through the ids of the
        # label survey's own spectra
        lab_rows = rows[lab.code]
        y = lab.label_matrix(lab.ids[lab_rows], names)
        ok = np.all(np.isfinite(y), axis=1)
        for spec in (a, b):
            code = f"{spec.code}C{lab.label_code}"
            train = rows[spec.code][ok]
            model = CannonModel(names, **kw)
            if train.size < model.vectorizer.n_terms + 1:
                raise InsufficientDataError(
                    f"{code}: {train.size} common stars with {lab.name} labels; the model needs "
                    f"{model.vectorizer.n_terms + 1}"
                )
            ds = spec.spectra
            model.fit(
                ds["flux"].values[train],
                ds["ivar"].values[train],
                y[ok],
                wavelength=ds["wavelength"].values,
                ids=spec.ids[train],
                progressbar=progressbar,
            )
            res = model.infer(ds, progressbar=progressbar)
            runs[code], models[code] = res, model
            own = [n for n in label_names if n in spec.labels.colnames]
            own += [f"e_{n}" for n in label_names if f"e_{n}" in spec.labels.colnames]
            cat = build_catalogue(
                model,
                res,
                spectra=ds,
                training_ids=spec.ids[train],
                survey_labels=spec.labels[[spec.id_column, *own]],
                survey_id_column=spec.id_column,
                survey_name=spec.name,
                config={"run": code, "spectra": spec.name, "label_scale": lab.name},
            )
            cat["SURVEY"] = np.full(len(cat), spec.name)
            cat["RUN"] = np.full(len(cat), code)
            common = np.zeros(len(cat), bool)
            common[rows[spec.code]] = True
            cat["COMMON"] = common
            tables.setdefault(lab.label_code, []).append(cat)
            logger.info("%s: trained on %d common stars, labelled %d %s spectra", code, train.size, len(cat), spec.name)
    catalogues = {}
    for code, parts in tables.items():
        # survey-specific label columns differ between the two parts: vstack masks them
        cat = vstack(parts, join_type="outer", metadata_conflicts="silent")
        cat.meta = {k: v for k, v in parts[0].meta.items() if k.startswith(("FLAGBT", "BCVERS", "EXTNAME"))}
        cat.meta["SCALE"] = code
        catalogues[code] = cat
    comparison = compare_common(a, b, runs, (ia, ib), label_names, giant_logg=giant_logg)
    config = {
        "label_names": list(label_names),
        "model": {k: v for k, v in kw.items() if k != "censors"},
        "surveys": [a.name, b.name],
        "n_common": int(ia.size),
        "giant_logg": giant_logg,
    }
    return CrossSurveyResult(runs, models, catalogues, comparison, (ia, ib), config)


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
