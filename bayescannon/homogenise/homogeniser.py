"""The :class:`Homogeniser`: put several surveys' label catalogues on one reference scale.

``Homogeniser(labels, reference, ...).fit(catalogues)`` learns, label by label:

1. the reference scale: the first reference survey of the label (the anchor) defines it;
   every further reference survey is calibrated onto the anchor first, and the joint
   reference value of a star is the split-normal combination of the reference surveys
   that measured it;
2. for every other survey, an :class:`~bayescannon.homogenise.offsets.OffsetModel` of
   ``target - survey`` on the common stars, where the target is the joint reference
   (direct overlap >= ``min_overlap``) or the calibrated values of the survey it is
   chained to (:func:`~bayescannon.homogenise.graph.survey_paths`);
3. the calibrated split normal of every measurement by Monte Carlo
   (:func:`~bayescannon.homogenise.propagate.propagate`), the model uncertainty
   accumulated along the path.

``transform(catalogues)`` applies the learned models to catalogues and combines the
calibrated measurements of each star (:func:`~bayescannon.homogenise.splitnormal.combine_split_normal`)
into the unified table (:func:`~bayescannon.homogenise.output.unified_table`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

from bayescannon._estimator import ParamsMixin
from bayescannon.errors import InsufficientDataError, InvalidInputError, NotFittedError
from bayescannon.homogenise.config import SurveyData, check_reference, prepare_survey
from bayescannon.homogenise.deconvolve import (
    Deconvolution,
    noise_covariance,
    split_normal_median,
    sum_median_shift,
)
from bayescannon.homogenise.graph import REF, edge_costs, survey_paths
from bayescannon.homogenise.offsets import DEFAULT_QUANTILES, OffsetModel
from bayescannon.homogenise.output import unified_table
from bayescannon.homogenise.propagate import propagate
from bayescannon.homogenise.splitnormal import combine_split_normal
from bayescannon.homogenise.validation import pair_validation
from bayescannon.pipeline.atomic import atomic_path, write_json
from bayescannon.pipeline.pool import blas_threads

logger = logging.getLogger(__name__)

__all__ = ["Homogeniser", "stack_surveys"]


def stack_surveys(data: Mapping[str, SurveyData]):
    """The union of every survey's ids and, per survey, the union index of its rows."""
    names = list(data)
    all_ids = np.concatenate([data[s].ids for s in names]) if names else np.array([], dtype=str)
    ids, inv = np.unique(all_ids, return_inverse=True)
    rows, start = {}, 0
    for s in names:
        rows[s] = inv[start : start + len(data[s].ids)]
        start += len(data[s].ids)
    return ids, rows


class Homogeniser(ParamsMixin):
    """Survey of Surveys homogenisation (see the module docstring and ``docs/guides/homogenise.md``).

    Parameters
    ----------
    labels : sequence of str
    reference : mapping label → list of survey names
        The first survey of each list is the anchor of that label's scale.
    features : sequence of str
        Offset-model inputs besides the survey's own labels (e.g. S/N, magnitude).
    id_column : str
    min_overlap : int or mapping survey → int
        Common stars needed for a direct calibration (per survey when a mapping; surveys
        not in it get 200).
    quantiles : sequence of float
        Quantiles of the boosted model (must include 0.025, 0.16, 0.5, 0.84, 0.975).
    n_estimators, max_depth, learning_rate, early_stopping_rounds : XGBoost settings
    split : (float, float, float, float)
        Fractions of the common stars for training, validation (early stopping),
        conformalisation and held-out test.
    n_draws : int
        Monte Carlo draws per measurement.
    propagation : {"linear", "exact"}
        How draws go through the offset models (see :mod:`~bayescannon.homogenise.propagate`).
    combination : {"independent", "chained"}
        How a star's measurements are combined: as independent split normals, or
        ``"chained"``, seeing the calibration-link uncertainty that surveys chained through
        another survey share (generalised least squares over the calibration tree,
        :func:`~bayescannon.homogenise.splitnormal.combine_chained`). "chained" is
        conservative: it treats all of a link's model uncertainty as shared, and on the
        mock it over-covers for stars of chained surveys (``docs/guides/homogenise.md``).
    chunk_size : int
        Stars per Monte Carlo chunk.
    n_jobs : int
        XGBoost threads.
    deconvolve : bool
        Remove the regression towards the population mean that a model of the survey's
        noisy labels learns (:mod:`~bayescannon.homogenise.deconvolve`), so that calibrated
        values are unbiased against the true labels, not shrinkage estimates. The term is
        taken out of the offsets *before* the trees are fitted (they learn ``target - survey
        - D``): ``D`` grows with each star's noise, and trees learn it only over the S/N
        range of the common stars (flat beyond), which pushed the faint stars of a survey
        away from the mean when ``D`` was subtracted after the fit. For split-normal errors
        ``D`` is the posterior-median shift
        (:meth:`~bayescannon.homogenise.deconvolve.Deconvolution.median_shrinkage`) and the
        error's own median is taken out too and added back per star by the propagation.
        A survey chained on a parent with split-normal errors also has the median of the
        parent's skewed error plus its own posterior scatter taken out
        (:meth:`_target_skew`, :func:`~bayescannon.homogenise.deconvolve.sum_median_shift`).
    random_state : int
    """

    def __init__(
        self,
        labels: Sequence[str] = ("TEFF", "LOGG", "FE_H"),
        reference: Mapping | None = None,
        *,
        features: Sequence[str] = (),
        id_column: str = "ID",
        min_overlap=200,
        quantiles=DEFAULT_QUANTILES,
        n_estimators: int = 300,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        early_stopping_rounds: int = 20,
        split=(0.6, 0.15, 0.15, 0.1),
        n_draws: int = 200,
        propagation: str = "linear",
        combination: str = "independent",
        chunk_size: int = 20000,
        n_jobs: int = 1,
        deconvolve: bool = True,
        random_state: int = 0,
    ):
        self.labels = labels
        self.reference = reference
        self.features = features
        self.id_column = id_column
        self.min_overlap = min_overlap
        self.quantiles = quantiles
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.early_stopping_rounds = early_stopping_rounds
        self.split = split
        self.n_draws = n_draws
        self.propagation = propagation
        self.combination = combination
        self.chunk_size = chunk_size
        self.n_jobs = n_jobs
        self.deconvolve = deconvolve
        self.random_state = random_state

    # get_params / set_params / clone: bayescannon._estimator.ParamsMixin

    # ------------------------------------------------------------------ helpers
    def _min_overlap(self, survey: str) -> int:
        if isinstance(self.min_overlap, Mapping):
            return int(self.min_overlap.get(survey, 200))
        return int(self.min_overlap)

    def _validate(self, catalogues) -> dict:
        labels = list(self.labels)
        if not labels:
            raise InvalidInputError("labels is empty")
        if self.reference is None:
            raise InvalidInputError("reference is required: {label: [survey, ...]}")
        if self.propagation not in ("linear", "exact"):
            raise InvalidInputError(f"propagation must be 'linear' or 'exact'; got {self.propagation!r}")
        if self.combination not in ("independent", "chained"):
            raise InvalidInputError(f"combination must be 'independent' or 'chained'; got {self.combination!r}")
        if len(self.split) != 4 or not np.isclose(sum(self.split), 1.0) or min(self.split) <= 0:
            raise InvalidInputError(f"split must be four positive fractions summing to 1; got {self.split}")
        if not isinstance(catalogues, Mapping) or not catalogues:
            raise InvalidInputError("catalogues must be a non-empty mapping survey name → table")
        check_reference(labels, self.reference, list(catalogues))
        data = {}
        for name, table in catalogues.items():
            if isinstance(table, SurveyData):
                data[name] = table
            elif isinstance(table, Table):
                data[name] = prepare_survey(name, table, labels, list(self.features), self.id_column)
            else:
                raise InvalidInputError(f"survey {name}: expected an astropy Table; got {type(table).__name__}")
        return data

    def _inputs(self, d: SurveyData) -> np.ndarray:
        return np.hstack([d.value, d.features])

    def _check_fitted(self):
        if not hasattr(self, "models_"):
            raise NotFittedError("this Homogeniser is not fitted: call fit first")

    # ------------------------------------------------------------------ fit
    def fit(self, catalogues: Mapping, *, executor=None) -> Homogeniser:
        """Learn the offset models from the survey catalogues (name → astropy Table with the
        standard columns, or :class:`~bayescannon.homogenise.config.SurveyData`). Returns self.

        ``executor`` (a :class:`bayescannon.pipeline.cluster.DaskExecutor`) runs the Monte
        Carlo propagation in blocks of ``chunk_size`` stars as its tasks; the result is the
        same as in this process (each block has its own generator seeded from ``random_state``).

        Raises
        ------
        SurveyFormatError
            A missing column, named with the survey.
        InsufficientDataError
            Too little overlap for a calibration, or a survey with no path to the reference
            (named with its overlaps).
        """
        self._executor = executor
        try:
            with blas_threads(self.n_jobs, user_api=None):
                return self._fit(catalogues)
        finally:
            self._executor = None

    def _fit(self, catalogues: Mapping) -> Homogeniser:
        data = self._validate(catalogues)
        rng = np.random.default_rng(self.random_state)
        ids, rows = stack_surveys(data)
        labels = list(self.labels)
        self.surveys_ = list(data)
        self.counts_ = {s: d.counts for s, d in data.items()}
        self.models_, self.paths_, self.tau_, self.overlaps_ = {}, {}, {}, {}
        self.training_, self.deconvolution_, self._shifts = {}, {}, {}
        self._noise = {}
        cal = {}
        for j, lab in enumerate(labels):
            cal[lab] = self._fit_label(j, lab, data, rows, len(ids), rng)
        self.validation_ = pair_validation(
            data, rows, len(ids), labels, cal, self.training_, list(self.features), self.paths_
        )
        self._fit_cache = (data, ids, rows, cal, self._noise)
        self._shifts = {}
        return self

    def _dense(self, n, rows, arr):
        out = np.full(n, np.nan)
        out[rows] = arr
        return out

    def _fit_label(self, j, lab, data, rows, n, rng):
        refs = list(self.reference[lab])
        anchor = refs[0]
        with_label = [s for s in data if np.isfinite(data[s].value[:, j]).any()]
        if anchor not in with_label:
            raise InsufficientDataError(f"{lab}: the reference survey {anchor} has no usable {lab} value")
        self.models_[lab], self.tau_[lab], self.training_[lab] = {}, {anchor: 0.0}, {}
        self.paths_[lab] = {anchor: [anchor]}
        cal = {anchor: self._calibrate(lab, anchor, data[anchor], rows[anchor], n, rng)}
        for r in refs[1:]:
            if r not in with_label:
                continue
            both = int((np.isfinite(cal[anchor][0][rows[r]]) & np.isfinite(data[r].value[:, j])).sum())
            if both < self._min_overlap(r):
                raise InsufficientDataError(
                    f"{lab}: reference survey {r} shares {both} stars with the anchor {anchor} "
                    f"(min_overlap {self._min_overlap(r)})"
                )
            self._fit_edge(lab, j, r, anchor, cal[anchor], data[r], rows[r], rng)
            self.paths_[lab][r] = [r, anchor]
            cal[r] = self._calibrate(lab, r, data[r], rows[r], n, rng)
        present = [r for r in refs if r in cal]
        if len(present) > 1:
            m, lo_hi, _, _ = combine_split_normal(*(np.column_stack([cal[r][i] for r in present]) for i in range(3)))
            lo, hi = lo_hi[0]
            ref = (m, m - lo, hi - m)
        else:
            ref = cal[anchor]
        others = [s for s in with_label if s not in refs]
        values = {REF: ref[0], **{s: self._dense(n, rows[s], data[s].value[:, j]) for s in others}}
        overlap, cost = edge_costs(values)
        self.overlaps_[lab] = {f"{a}|{b}": v for (a, b), v in overlap.items() if a < b}
        paths = survey_paths(others, overlap, cost, {s: self._min_overlap(s) for s in others}, label=lab)
        for s in sorted(others, key=lambda s: (len(paths[s]), others.index(s))):
            parent = paths[s][1]
            target = ref if parent == REF else cal[parent]
            # the split-normal scales of the target's own error: a survey's, or the anchor's
            # when it alone is the reference (a combination of several is taken as symmetric)
            src = parent if parent != REF else (anchor if len(present) == 1 else None)
            scales = None
            if src is not None:
                scales = tuple(self._dense(n, rows[src], getattr(data[src], a)[:, j])[rows[s]] for a in ("s1", "s2"))
            self._fit_edge(lab, j, s, parent, target, data[s], rows[s], rng, target_scales=scales)
            self.paths_[lab][s] = [p if p != REF else "+".join(present) for p in paths[s]]
            cal[s] = self._calibrate(lab, s, data[s], rows[s], n, rng)
        return cal

    def _fit_edge(self, lab, j, s, parent, target, d: SurveyData, rows, rng, target_scales=None):
        tmu = target[0][rows]  # the calibrated median (see propagate)
        tsig = 0.5 * (target[1][rows] + target[2][rows])
        common = np.flatnonzero(np.isfinite(tmu) & np.isfinite(d.value[:, j]))
        perm = rng.permutation(common)
        cuts = np.floor(np.cumsum(self.split)[:-1] * len(perm)).astype(int)
        splits = [np.searchsorted(common, p) for p in np.split(perm, cuts)]
        X = self._inputs(d)[common]
        y = tmu[common] - d.value[common, j]
        sig = np.sqrt(tsig[common] ** 2 + (0.5 * (d.s1[common, j] + d.s2[common, j])) ** 2)
        if self.deconvolve and s not in self.deconvolution_:
            ncov = noise_covariance(d.s1, d.s2, d.cov)
            try:
                self.deconvolution_[s] = Deconvolution(random_state=self.random_state).fit(d.value, ncov, d.s1, d.s2)
            except InsufficientDataError as err:  # the offsets are then learnt on the observed labels as they are
                logger.warning("survey %s: no deconvolution of its labels (%s)", s, err)
        shift = self._shift(s, d)
        if shift is not None:  # the model learns the offset alone: y minus D and the noise's own median
            y = y + shift[common, j] - self._noise_median(d)[common, j]
            if target_scales is not None:
                # and the median of the target's own skewed error plus this survey's posterior scatter
                y = y - self._target_skew(s, d, j, common, target_scales)
        model = OffsetModel(
            self.quantiles,
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            early_stopping_rounds=self.early_stopping_rounds,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        ).fit(
            X,
            y,
            splits,
            sigma_pair=sig,
            name=f"{s}→{parent} {lab}",
        )
        self.models_[lab][s] = model
        self.tau_[lab][s] = float(np.sqrt(model.tau_**2 + self.tau_[lab].get(parent, 0.0) ** 2))
        used = np.zeros(len(d.ids), dtype=bool)
        used[common[np.concatenate(splits[:3])]] = True
        self.training_[lab][s] = rows[used]
        model.parent_ = parent

    def _shift(self, s, d: SurveyData):
        """``-D`` (n, k) for survey ``s`` (None without a deconvolution), computed once per
        survey while fitting. ``D`` is the posterior-median shift the offset model needs
        (:meth:`~bayescannon.homogenise.deconvolve.Deconvolution.median_shrinkage`: the
        posterior mean shift, plus the change of the posterior's skewness for labels with
        asymmetric errors)."""
        if s not in self.deconvolution_:
            return None
        key = (s, id(d))
        if key not in self._shifts:
            ncov = noise_covariance(d.s1, d.s2, d.cov)
            self._shifts[key] = -np.nan_to_num(self.deconvolution_[s].median_shrinkage(d.value, ncov, d.s1, d.s2))
        return self._shifts[key]

    def _target_skew(self, s, d: SurveyData, j, common, target_scales) -> np.ndarray:
        """(len(common),) median of ``target - x`` plus the survey's own posterior scatter on
        its common stars (:func:`~bayescannon.homogenise.deconvolve.sum_median_shift`).

        A target that is another survey's calibrated median is ``x + E``, ``E`` median-zero
        at a fixed true label ``x`` but skewed when that survey's errors are split normals
        (``x - v`` has scales ``s1`` below, ``s2`` above, so ``E`` has ``s2`` below and ``s1``
        above). Given the survey's own value ``v``, the offset model sees ``E`` plus the
        scatter of ``x`` about ``v + D``, of variance ``(I + dD/dv) S`` (the deconvolution's
        posterior covariance, Gaussian), and learns the median of that sum, which is not 0:
        it is taken out of the offsets before the fit. 0 where the target's error is
        symmetric."""
        t1, t2 = (np.asarray(a, dtype=float)[common] for a in target_scales)
        asym = np.isfinite(t1) & np.isfinite(t2) & (t1 > 0) & (t2 > 0) & ~np.isclose(t1, t2)
        out = np.zeros(len(common))
        if not asym.any():
            return out
        idx = common[asym]
        ncov = noise_covariance(d.s1[idx], d.s2[idx], None if d.cov is None else d.cov[idx])
        _, jac = self.deconvolution_[s].shrinkage_and_slope(d.value[idx], ncov)
        k = d.value.shape[1]
        post = (np.eye(k)[None] + jac) @ np.where(np.isfinite(ncov), ncov, 0.0)
        sigma = np.sqrt(np.clip(post[:, j, j], 0.0, None))
        out[asym] = np.nan_to_num(sum_median_shift(sigma, t2[asym], t1[asym]))
        return out

    @staticmethod
    def _noise_median(d: SurveyData) -> np.ndarray:
        """(n, k) median of each measurement's error (``x - v``; 0 for a symmetric one or a
        missing label): added to the calibrated value by the propagation, not learnt by
        the trees, which would extrapolate it flat beyond the S/N of the common stars."""
        return np.nan_to_num(split_normal_median(d.s1, d.s2))

    def _calibrate(self, lab, s, d: SurveyData, rows, n, rng):
        """The calibrated (median, lower, upper) of survey ``s`` on the union index, with
        the model uncertainty accumulated along its path; the same without any model
        uncertainty and the survey's own link uncertainty per star go to
        ``self._noise[lab][s]`` for the combination (:func:`combine_chained`)."""
        j = list(self.labels).index(lab)
        model = self.models_[lab].get(s)
        X = self._inputs(d)
        tau = own = self.tau_[lab].get(s, 0.0)
        center = None
        if model is not None:  # the model's own uncertainty per star, the parent's accumulated one in quadrature
            parent = self.tau_[lab].get(model.parent_, 0.0)
            q = model.predict_quantiles(X)  # once: for tau and the centre of the draws
            own = model.predict_tau(X, quantiles=q)
            tau = np.sqrt(own**2 + parent**2)
            center = q[:, model.quantiles.index(0.5)]
        noise_med = None
        if model is not None and s in self.deconvolution_:  # the trees learnt the offset without it
            noise_med = (self._noise_median(d)[:, j], np.zeros_like(d.value))
        res = propagate(
            model,
            X,
            j,
            d.value,
            d.s1,
            d.s2,
            d.cov,
            tau,
            rng,
            n_draws=self.n_draws,
            chunk_size=self.chunk_size,
            propagation=self.propagation,
            executor=getattr(self, "_executor", None),
            return_noise=True,
            center=center,
            shift=noise_med,
        )
        # the link's own uncertainty where the survey has no measurement (a chained survey's
        # star seen through this survey): its model's single tau
        link = np.full(n, float(model.tau_) if model is not None else 0.0)
        link[rows] = own
        self._noise.setdefault(lab, {})[s] = (*(self._dense(n, rows, a) for a in res[3:]), link)
        return tuple(self._dense(n, rows, a) for a in res[:3])

    def _parents(self, lab) -> dict:
        """Each survey's parent in the calibration tree of ``lab`` (None: the root level,
        i.e. the anchor and the surveys calibrated on the joint reference)."""
        anchor = list(self.reference[lab])[0]
        out = {}
        for s in self.paths_[lab]:
            m = self.models_[lab].get(s)
            par = None if m is None else m.parent_
            out[s] = par if par in self.paths_[lab] and par != REF else None
        out[anchor] = None
        return out

    # ------------------------------------------------------------------ apply
    def transform(self, catalogues: Mapping, *, executor=None) -> Table:
        """The unified table of ``catalogues`` with the fitted models (fresh Monte Carlo draws
        from ``random_state + 1``; ``executor`` as for :meth:`fit`)."""
        self._check_fitted()
        self._executor = executor
        try:
            with blas_threads(self.n_jobs, user_api=None):
                return self._transform(catalogues)
        finally:
            self._executor = None

    def _transform(self, catalogues: Mapping) -> Table:
        data = self._validate(catalogues)
        rng = np.random.default_rng(self.random_state + 1)
        self._shifts, self._noise = {}, {}
        ids, rows = stack_surveys(data)
        cal = {}
        for lab, paths in self.paths_.items():
            cal[lab] = {}
            for s in sorted(paths, key=lambda s: len(paths[s])):
                if s not in data:
                    continue
                cal[lab][s] = self._calibrate(lab, s, data[s], rows[s], len(ids), rng)
        return self._table(data, ids, rows, cal, self._noise)

    def fit_transform(self, catalogues: Mapping, *, executor=None) -> Table:
        """:meth:`fit`, then the unified table of the same catalogues from the calibration
        computed while fitting."""
        self.fit(catalogues, executor=executor)
        with blas_threads(self.n_jobs, user_api=None):
            return self._table(*self._fit_cache)

    def _table(self, data, ids, rows, cal, noise) -> Table:
        chain = {lab: {"noise": noise.get(lab, {}), "parent": self._parents(lab)} for lab in self.labels}
        return unified_table(
            ids,
            data,
            rows,
            list(self.labels),
            cal,
            paths=self.paths_,
            models=self.models_,
            inputs=self._inputs,
            id_column=self.id_column,
            chain=chain if self.combination == "chained" else None,
        )

    # ------------------------------------------------------------------ files
    def summary(self) -> dict:
        """JSON-ready summary of the fit: paths, overlaps, per-model losses, coverage, tau."""
        self._check_fitted()
        models = {
            lab: {
                s: {
                    "parent": m.parent_,
                    "trees_per_quantile": m.best_iteration_ + 1,
                    "pinball": m.pinball_,
                    "coverage": {str(k): v for k, v in m.coverage_.items()},
                    "tau": m.tau_,
                    "tau_accumulated": self.tau_[lab][s],
                    "n_stars": m.n_train_,
                }
                for s, m in ms.items()
            }
            for lab, ms in self.models_.items()
        }
        return {
            "params": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.get_params().items()},
            "paths": self.paths_,
            "overlaps": self.overlaps_,
            "models": models,
            "counts": self.counts_,
        }

    def save_models(self, folder, *, overwrite: bool = False) -> Path:
        """Write every offset model (``<survey>_<label>.xgb.json`` + ``.conformal.json``) and
        ``homogeniser.json`` (parameters, paths, summary) into ``folder``, atomically."""
        self._check_fitted()
        folder = Path(folder)
        with atomic_path(folder, overwrite=overwrite, directory=True) as tmp:
            for lab, ms in self.models_.items():
                for s, m in ms.items():
                    m.save(tmp / f"{s}_{lab}")
            dec = {s: x.to_dict() for s, x in self.deconvolution_.items()}
            write_json(tmp / "homogeniser.json", {**self.summary(), "tau": self.tau_, "deconvolution": dec})
        return folder
