"""The unified catalogue: one row per id, the combined value of every label with its 68 %
(and 95 %) interval, and each survey's calibrated value.

Columns: ``<L>``, ``<L>_LO``, ``<L>_HI`` (68.27 %: ΔNLL = 0.5), ``<L>_LO95``, ``<L>_HI95``
(ΔNLL = 1.92), ``N_<L>``, ``SURVEYS_<L>``, ``CHI2_<L>``, ``FLAGS_<L>`` (:class:`HomogFlag`
bits, listed in the header), and per survey ``<S>_<L>_CAL``, ``<S>_<L>_CAL_P16``,
``<S>_<L>_CAL_P84`` (the median and 15.87/84.13 percentiles of the calibrated Monte Carlo
draws; the reference anchor's own values and errors as given). Header: ``PATHS`` (JSON: the path each survey took, per label) and the package
versions.
"""

from __future__ import annotations

import enum
import json
from importlib import metadata

import numpy as np
from astropy.table import MaskedColumn, Table
from scipy import stats

from bayescannon._version import __version__
from bayescannon.homogenise.splitnormal import combine_chained, combine_split_normal
from bayescannon.results import label_description, label_unit

__all__ = ["HomogFlag", "unified_table", "package_versions", "DISCREPANT_P"]

#: Tail probability below which the χ² of a combination flags DISCREPANT.
DISCREPANT_P = 1e-3


class HomogFlag(enum.IntFlag):
    """Bits of ``FLAGS_<L>`` in the unified catalogue."""

    #: a survey gave P16 > value or P84 < value: that measurement was not used
    BAD_PERCENTILES = 1
    #: a combined measurement comes from a survey chained through another survey
    CHAINED = 2
    #: a combined measurement's inputs lie outside its offset model's training range
    EXTRAPOLATED = 4
    #: the combined measurements disagree (χ² tail probability < DISCREPANT_P)
    DISCREPANT = 8
    #: the id occurred more than once in a survey (the best row was kept)
    DUPLICATE = 16


def package_versions() -> dict:
    """Versions of bayescannon and the packages the homogenisation uses."""
    out = {"bayescannon": __version__}
    for pkg in ("xgboost", "mapie", "scikit-learn", "numpy", "astropy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _masked(values, **kw):
    values = np.asarray(values, dtype=float)
    return MaskedColumn(values, mask=~np.isfinite(values), **kw)


def unified_table(ids, data, rows, labels, cal, *, paths, models, inputs, id_column="ID", chain=None) -> Table:
    """Build the unified table (see the module docstring).

    ``chain`` (label → ``{"noise": {survey: (median, lower, upper, link_tau)}, "parent":
    {survey: parent or None}}``) makes the combination see the link errors that chained
    surveys share (:func:`~bayescannon.homogenise.splitnormal.combine_chained`); without it
    the calibrated values ``cal`` are combined as independent."""
    n = len(ids)
    t = Table()
    t[id_column] = ids
    names = list(data)
    for j, lab in enumerate(labels):
        unit = label_unit(lab)
        desc = label_description(lab)
        surveys = [s for s in names if s in cal[lab]]
        if surveys and chain is not None and all(s in chain[lab]["noise"] for s in surveys):
            noise, par = chain[lab]["noise"], chain[lab]["parent"]
            mu, s1, s2, tau = (np.column_stack([noise[s][i] for s in surveys]) for i in range(4))
            parent = [surveys.index(par[s]) if par.get(s) in surveys else -1 for s in surveys]
            value, ivs, n_used, chi2 = combine_chained(mu, s1, s2, tau, parent)
        elif surveys:
            mu, s1, s2 = (np.column_stack([cal[lab][s][i] for s in surveys]) for i in range(3))
            value, ivs, n_used, chi2 = combine_split_normal(mu, s1, s2)
        else:
            mu = np.full((n, 0), np.nan)
            value, n_used, chi2 = np.full(n, np.nan), np.zeros(n, dtype=int), np.full(n, np.nan)
            ivs = [(value, value), (value, value)]
        used = np.isfinite(mu)
        t[lab] = _masked(value, unit=unit, description=f"combined {desc}")
        t[f"{lab}_LO"] = _masked(ivs[0][0], unit=unit, description=f"{lab} 68% interval lower end")
        t[f"{lab}_HI"] = _masked(ivs[0][1], unit=unit, description=f"{lab} 68% interval upper end")
        t[f"{lab}_LO95"] = _masked(ivs[1][0], unit=unit, description=f"{lab} 95% interval lower end")
        t[f"{lab}_HI95"] = _masked(ivs[1][1], unit=unit, description=f"{lab} 95% interval upper end")
        t[f"N_{lab}"] = np.asarray(n_used, dtype=np.int16)
        t[f"N_{lab}"].description = f"measurements of {lab} combined"
        joined = np.full(n, "", dtype=object)
        for i, s in enumerate(surveys):  # a handful of surveys
            joined = np.where(used[:, i], np.where(joined == "", s, joined + "," + s), joined)
        t[f"SURVEYS_{lab}"] = joined.astype(str)
        t[f"SURVEYS_{lab}"].description = f"surveys combined for {lab}"
        t[f"CHI2_{lab}"] = _masked(chi2, description=f"chi2 of the {lab} combination (N-1 dof)")
        flags = np.zeros(n, dtype=np.int32)
        for i, s in enumerate(surveys):
            d = data[s]
            bad = np.zeros(n, dtype=bool)
            bad[rows[s]] = d.bad_percentiles[:, j]
            dup = np.zeros(n, dtype=bool)
            dup[rows[s]] = d.duplicated
            flags |= np.where(bad, int(HomogFlag.BAD_PERCENTILES), 0)
            flags |= np.where(dup, int(HomogFlag.DUPLICATE), 0)
            if len(paths[lab].get(s, ())) > 2:
                flags |= np.where(used[:, i], int(HomogFlag.CHAINED), 0)
            if s in models[lab]:
                ext = np.zeros(n, dtype=bool)
                ext[rows[s]] = models[lab][s].extrapolated(inputs(d))
                flags |= np.where(used[:, i] & ext, int(HomogFlag.EXTRAPOLATED), 0)
        with np.errstate(invalid="ignore"):
            p = stats.chi2.sf(np.nan_to_num(chi2), np.maximum(n_used - 1, 1))
        flags |= np.where((n_used >= 2) & (p < DISCREPANT_P), int(HomogFlag.DISCREPANT), 0)
        t[f"FLAGS_{lab}"] = flags
        t[f"FLAGS_{lab}"].description = "HomogFlag bits (FLAGBTnn header cards)"
    for s in names:
        for lab in labels:
            if s not in cal[lab]:
                continue
            m, a, b = cal[lab][s]
            t[f"{s}_{lab}_CAL"] = _masked(m, unit=label_unit(lab), description=f"{s} {lab} calibrated (median)")
            t[f"{s}_{lab}_CAL_P16"] = _masked(m - a, unit=label_unit(lab), description=f"{s} {lab} calibrated P16")
            t[f"{s}_{lab}_CAL_P84"] = _masked(m + b, unit=label_unit(lab), description=f"{s} {lab} calibrated P84")
    t.meta["PATHS"] = json.dumps({lab: {s: ">".join(p) for s, p in ps.items()} for lab, ps in paths.items()})
    t.meta["VERSIONS"] = json.dumps(package_versions())
    for f in HomogFlag:
        t.meta[f"FLAGBT{int(f).bit_length() - 1:02d}"] = f.name
    return t
