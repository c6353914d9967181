"""Offset models: quantile-boosted trees (XGBoost, pinball loss) conformalised with MAPIE.

For one survey and one label, :class:`OffsetModel` learns the distribution of the
difference ``target - survey`` (target: the reference scale, or the calibrated values of
the survey it is chained to) as a function of the survey's own labels and features:

1. XGBoost with ``objective="reg:quantileerror"`` fits all ``quantiles`` in one model,
   with early stopping on a validation split (pinball loss on train, validation and a
   held-out test split reported). The trees start from a linear least-squares fit of the
   offset on the standardised inputs (XGBoost's per-row ``base_margin``), not from a
   constant: early stopping on noisy offsets stops the boosting before it has built a
   trend out of piecewise-constant steps, and what it leaves unfitted is then the
   departure from the linear trend, not a fraction of the trend itself (which biased the
   calibrated values at both ends of every label range, low ones low and high ones high);
2. MAPIE's :class:`~mapie.regression.ConformalizedQuantileRegressor` (prefit, one per
   confidence level, 68 % and 95 %) computes on a conformalisation split the constant that
   widens (or narrows) the quantile interval so that it covers; its coverage is measured on
   the held-out test split;
3. the model's own uncertainty ``tau`` is the extra scatter, beyond the two measurements'
   errors, that the residuals on the conformalisation split need for 68.27 % of them to
   lie within their quadrature error (zero when none is needed).

Models are saved without pickle: the booster in XGBoost's JSON format, everything else as
JSON. xgboost and mapie are optional dependencies, imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from bayescannon.errors import InsufficientDataError, ModelFileError, NotFittedError
from bayescannon.homogenise.trees import TreeArrays, median_secants
from bayescannon.pipeline.atomic import write_atomic, write_json

logger = logging.getLogger(__name__)

__all__ = ["OffsetModel", "column_percentiles", "pinball_loss", "DEFAULT_QUANTILES", "LEVELS"]

#: Quantiles the boosted model fits (must hold 0.5 and the bounds of :data:`LEVELS`).
DEFAULT_QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)
#: Confidence levels of the conformal intervals and their quantile pairs.
LEVELS = {0.68: (0.16, 0.84), 0.95: (0.025, 0.975)}


def pinball_loss(y, pred, quantiles) -> float:
    """Mean pinball (quantile) loss over stars and quantiles; ``pred`` is (n, n_quantiles)."""
    q = np.asarray(quantiles)[None, :]
    d = np.asarray(y)[:, None] - pred
    return float(np.mean(np.maximum(q * d, (q - 1.0) * d)))


class _Column:
    """A fitted quantile of the multi-quantile booster, as the fitted regressor MAPIE
    expects (``predict`` gives one column)."""

    def __init__(self, predict, column: int, n_features: int):
        self._predict = predict
        self.column = column
        self.n_features_in_ = n_features
        self.fitted_ = True

    def fit(self, X, y):  # pragma: no cover - MAPIE's prefit mode never calls it
        raise NotImplementedError("a prefit quantile column is not refitted")

    def predict(self, X):
        return self._predict(np.asarray(X, dtype=float))[:, self.column]


class OffsetModel:
    """Quantile model of ``target - survey`` for one survey and label.

    Parameters
    ----------
    quantiles : sequence of float
    n_estimators, max_depth, learning_rate : int, int, float
        XGBoost settings (an upper bound on the number of trees: early stopping picks it).
    early_stopping_rounds : int
    n_jobs : int
        XGBoost threads (1 unless cores are free: threads on busy cores slow it badly).
    random_state : int
    """

    def __init__(
        self,
        quantiles=DEFAULT_QUANTILES,
        *,
        n_estimators: int = 300,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        early_stopping_rounds: int = 20,
        n_jobs: int = 1,
        random_state: int = 0,
    ):
        self.quantiles = tuple(float(q) for q in quantiles)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, splits, *, sigma_pair=None, shift=None, name: str = "offset"):
        """Fit on ``splits = (train, validation, conformalise, test)`` row indices.

        ``sigma_pair`` (n,) is the quadrature sum of the two measurements' errors, used for
        the model uncertainty ``tau_``; ``shift`` (n,) is added to the median correction
        (the errors-in-variables term) before the residuals behind ``tau_`` and the
        residual trends are taken. Returns self.
        """
        import xgboost as xgb  # lazy: optional dependency

        missing = [q for q in (0.5, *[b for pair in LEVELS.values() for b in pair]) if q not in self.quantiles]
        if missing:
            raise InsufficientDataError(f"{name}: quantiles {self.quantiles} lack {missing}")
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        tr, va, cf, te = (np.asarray(s) for s in splits)
        for part, idx in (("train", tr), ("validation", va), ("conformalisation", cf), ("test", te)):
            if len(idx) < 10:
                raise InsufficientDataError(f"{name}: only {len(idx)} stars in the {part} split (need >= 10)")
        reg = xgb.XGBRegressor(
            objective="reg:quantileerror",
            quantile_alpha=np.asarray(self.quantiles),
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            early_stopping_rounds=self.early_stopping_rounds,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        )
        self.linear_ = _linear_fit(X[tr], y[tr])
        nq = len(self.quantiles)
        reg.fit(
            X[tr],
            y[tr],
            base_margin=self._margin(X[tr], nq),
            eval_set=[(X[va], y[va])],
            base_margin_eval_set=[self._margin(X[va], nq)],
            verbose=False,
        )
        self.best_iteration_ = int(reg.best_iteration)
        self.booster_ = reg.get_booster()[: self.best_iteration_ + 1]
        self.booster_.set_param({"nthread": self.n_jobs})
        self._trees = None  # the compiled walker's arrays of the booster, built at first use
        self.n_features_in_ = X.shape[1]
        self.feature_range_ = column_percentiles(X[tr], [1, 99])  # NaN for an input never measured
        self.pinball_ = {
            part: pinball_loss(y[idx], self.predict_quantiles(X[idx]), self.quantiles)
            for part, idx in (("train", tr), ("validation", va), ("test", te))
        }
        self.conformal_ = self._conformalise(X[cf], y[cf])
        med = self.predict_median(X)
        if shift is not None:
            med = med + np.nan_to_num(np.asarray(shift, dtype=float))
        sig = None if sigma_pair is None else np.asarray(sigma_pair, dtype=float)
        self.tau_ = 0.0 if sig is None else model_scatter(y[cf] - med[cf], sig[cf])
        self.tau_bins_ = self._tau_bins(X[cf], y[cf] - med[cf], None if sig is None else sig[cf])
        self.coverage_ = {}
        for level in LEVELS:
            lo, hi = self.predict_interval(X[te], level)
            self.coverage_[level] = float(np.mean((y[te] >= lo) & (y[te] <= hi)))
        self.n_train_ = {"train": len(tr), "validation": len(va), "conformalisation": len(cf), "test": len(te)}
        self.residual_trends_ = residual_trends(X[te], y[te] - med[te])
        logger.info(
            "%s: %d trees/quantile, pinball train %.4g test %.4g, coverage68 %.3f coverage95 %.3f, tau %.3g",
            name,
            self.best_iteration_ + 1,
            self.pinball_["train"],
            self.pinball_["test"],
            self.coverage_[0.68],
            self.coverage_[0.95],
            self.tau_,
        )
        return self

    def _tau_bins(self, Xc, resid, sig, n_bins: int = 5) -> list:
        """``[[centres], [tau]]``: the model uncertainty in quantile bins of the predicted
        68 % half-width (where the trees see a wider spread of the offset, their own error is
        larger); one bin per ~100 stars at least."""
        if sig is None:
            return [[0.0], [0.0]]
        w = self._half_width(Xc)
        nb = int(max(1, min(n_bins, len(w) // 100)))
        edges = np.quantile(w, np.linspace(0, 1, nb + 1))
        which = np.clip(np.searchsorted(edges, w, side="right") - 1, 0, nb - 1)
        cent, tau = [], []
        for b in range(nb):  # a handful of bins
            sel = which == b
            if sel.sum() >= 10:
                cent.append(float(np.median(w[sel])))
                tau.append(model_scatter(resid[sel], sig[sel]))
        return [cent, tau] if cent else [[0.0], [self.tau_]]

    def _half_width(self, X) -> np.ndarray:
        q = self.predict_quantiles(X)
        return 0.5 * (q[:, self.quantiles.index(0.84)] - q[:, self.quantiles.index(0.16)])

    def predict_tau(self, X, *, quantiles=None) -> np.ndarray:
        """The model uncertainty of every row: :attr:`tau_bins_` interpolated at the
        predicted 68 % half-width (constant beyond the outer bins). ``quantiles``: the
        rows' :meth:`predict_quantiles`, when already at hand (not predicted again)."""
        self._check()
        cent, tau = getattr(self, "tau_bins_", [[0.0], [self.tau_]])
        q = self.predict_quantiles(X) if quantiles is None else np.asarray(quantiles, dtype=float)
        half = 0.5 * (q[:, self.quantiles.index(0.84)] - q[:, self.quantiles.index(0.16)])
        return np.interp(half, cent, tau)

    def _conformalise(self, Xc, yc) -> dict:
        from mapie.regression import ConformalizedQuantileRegressor  # lazy: optional dependency

        out = {}
        self.mapie_ = {}  # the MAPIE objects (not saved: the correction and scores are)
        for level, (ql, qh) in LEVELS.items():
            cols = [self.quantiles.index(q) for q in (ql, qh, 0.5)]
            est = [_Column(self.predict_quantiles, c, self.n_features_in_) for c in cols]
            cqr = ConformalizedQuantileRegressor(est, confidence_level=level, prefit=True)
            cqr.conformalize(Xc, yc)
            with warnings.catch_warnings():
                # MAPIE warns when a conformal correction makes some lower bound pass the
                # median; the bounds are used as they are (the check below holds them)
                warnings.simplefilter("ignore", UserWarning)
                _, iv = cqr.predict_interval(Xc[:1], symmetric_correction=True)
            q = self.predict_quantiles(Xc[:1])
            shift = float(q[0, cols[0]] - iv[0, 0, 0])
            qc = self.predict_quantiles(Xc)
            scores = np.maximum(qc[:, cols[0]] - yc, yc - qc[:, cols[1]])  # CQR conformity scores
            out[level] = {"lower": ql, "upper": qh, "correction": shift, "n": len(yc), "scores": scores.tolist()}
            self.mapie_[level] = cqr
        return out

    # ------------------------------------------------------------------ prediction
    def _check(self):
        if not hasattr(self, "booster_"):
            raise NotFittedError("this OffsetModel is not fitted: call fit or load first")

    def predict_quantiles(self, X) -> np.ndarray:
        """(n, n_quantiles) predicted quantiles of the offset, sorted along the quantiles
        (monotone rearrangement: boosted quantiles may cross)."""
        self._check()
        X = np.asarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            return np.zeros((0, len(self.quantiles)))
        # a model saved before the linear base has none: XGBoost's own base scores, not a zero margin
        margin = None if getattr(self, "linear_", None) is None else self._margin(X, len(self.quantiles))
        p = self.booster_.inplace_predict(X, base_margin=margin)
        return np.sort(np.asarray(p, dtype=float).reshape(len(X), -1), axis=1)

    def _linear(self, X) -> np.ndarray:
        """The linear base of the trees at ``X`` (n,): 0 for a model without one."""
        lin = getattr(self, "linear_", None)
        if lin is None:
            return np.zeros(len(X))
        z = (np.asarray(X, dtype=float) - lin["center"]) / lin["scale"]
        return lin["intercept"] + np.where(np.isfinite(z), z, 0.0) @ lin["coef"]

    def _margin(self, X, n_outputs: int) -> np.ndarray:
        """XGBoost's ``base_margin`` of every row and output: the linear base, for each quantile."""
        return np.repeat(self._linear(X)[:, None], n_outputs, axis=1).astype(np.float32)

    def predict_median(self, X) -> np.ndarray:
        """The median offset (the correction added to the survey's value)."""
        return self.predict_quantiles(X)[:, self.quantiles.index(0.5)]

    def median_secants(self, X, steps) -> np.ndarray:
        """Change of the median tree output when input ``i < k`` moves by ``steps[:, i, 0]``
        (below) and ``steps[:, i, 1]`` (above): (2k, n), in the order (input 0 below, input 0
        above, input 1 below, ...).

        Evaluated by the compiled walker of :mod:`~bayescannon.homogenise.trees`, which
        walks again only the trees whose path tests the moved input. The difference is of
        the median quantile's own trees (before XGBoost's sorting of crossing quantiles:
        a slope, not a level; the level is :meth:`predict_median`).
        """
        self._check()
        trees = getattr(self, "_trees", None)
        if trees is None:
            trees = self._trees = TreeArrays.from_booster(self.booster_)
        X = np.asarray(X, dtype=float)
        if X.shape[0] == 0:
            return np.zeros((2 * np.shape(steps)[1], 0))
        out = median_secants(trees, X, steps, self.quantiles.index(0.5))
        diff = out[1:] - out[0][None, :]
        lin = getattr(self, "linear_", None)
        if lin is not None:  # the linear base moves by its slope times the step (0 where the input is missing)
            k = np.shape(steps)[1]
            slope = (lin["coef"] / lin["scale"])[:k]
            moved = np.where(np.isfinite(X[:, :k])[:, :, None], steps * slope[None, :, None], 0.0)  # (n, k, 2)
            diff = diff + moved.reshape(len(X), 2 * k).T
        return diff

    def predict_interval(self, X, level: float = 0.68):
        """Conformalised interval ``(lower, upper)`` of the offset at ``level``."""
        self._check()
        info = self.conformal_[level]
        q = self.predict_quantiles(X)
        lo = q[:, self.quantiles.index(info["lower"])] - info["correction"]
        hi = q[:, self.quantiles.index(info["upper"])] + info["correction"]
        med = q[:, self.quantiles.index(0.5)]
        return np.minimum(lo, med), np.maximum(hi, med)

    def extrapolated(self, X) -> np.ndarray:
        """Rows whose inputs lie outside the 1st–99th percentile range of the training inputs."""
        self._check()
        X = np.asarray(X, dtype=float)
        lo, hi = self.feature_range_
        with np.errstate(invalid="ignore"):
            out = (X < lo) | (X > hi)
        return out.any(axis=1)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """Everything but the booster, as JSON-ready values."""
        self._check()
        return {
            "quantiles": list(self.quantiles),
            "params": {
                "n_estimators": self.n_estimators,
                "max_depth": self.max_depth,
                "learning_rate": self.learning_rate,
                "early_stopping_rounds": self.early_stopping_rounds,
                "n_jobs": self.n_jobs,
                "random_state": self.random_state,
            },
            "best_iteration": self.best_iteration_,
            "n_features": self.n_features_in_,
            "feature_range": np.where(np.isfinite(self.feature_range_), self.feature_range_, 0.0).tolist(),
            "pinball": self.pinball_,
            "conformal": {str(k): v for k, v in self.conformal_.items()},
            "coverage": {str(k): v for k, v in self.coverage_.items()},
            "tau": self.tau_,
            "tau_bins": self.tau_bins_,
            "n_stars": self.n_train_,
            "residual_trends": self.residual_trends_,
            "linear": None
            if getattr(self, "linear_", None) is None
            else {k: np.asarray(v).tolist() for k, v in self.linear_.items()},
        }

    def save(self, stem, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``<stem>.xgb.json`` (the booster) and ``<stem>.conformal.json``."""
        stem = Path(stem)
        booster = write_atomic(
            stem.with_name(stem.name + ".xgb.json"), lambda p: self.booster_.save_model(str(p)), overwrite=overwrite
        )
        meta = write_json(stem.with_name(stem.name + ".conformal.json"), self.to_dict(), overwrite=overwrite)
        return booster, meta

    @classmethod
    def load(cls, stem) -> OffsetModel:
        """Read a model written by :meth:`save`."""
        import xgboost as xgb  # lazy: optional dependency

        stem = Path(stem)
        bpath, mpath = stem.with_name(stem.name + ".xgb.json"), stem.with_name(stem.name + ".conformal.json")
        for p in (bpath, mpath):
            if not p.is_file():
                raise ModelFileError(f"offset model file {p} does not exist")
        try:
            meta = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{mpath} is not valid JSON ({exc})") from None
        self = cls(meta["quantiles"], **meta["params"])
        self.booster_ = xgb.Booster()
        self.booster_.load_model(str(bpath))
        self.booster_.set_param({"nthread": self.n_jobs})
        self.best_iteration_ = meta["best_iteration"]
        self.n_features_in_ = meta["n_features"]
        self.feature_range_ = np.asarray(meta["feature_range"], dtype=float)
        self.pinball_ = meta["pinball"]
        self.conformal_ = {float(k): v for k, v in meta["conformal"].items()}
        self.coverage_ = {float(k): v for k, v in meta["coverage"].items()}
        self.tau_ = meta["tau"]
        self.tau_bins_ = meta.get("tau_bins", [[0.0], [self.tau_]])
        self.n_train_ = meta["n_stars"]
        self.residual_trends_ = meta["residual_trends"]
        lin = meta.get("linear")  # absent in models saved before the linear base: none
        self.linear_ = None if lin is None else {k: np.asarray(v, dtype=float) for k, v in lin.items()}
        return self


def column_percentiles(X, q, empty: float = np.nan) -> np.ndarray:
    """Percentiles ``q`` (a scalar or a sequence) of each column over its finite entries;
    ``empty`` for a column with none (an input the survey never measures, e.g. a label it
    lacks: numpy would warn and give NaN)."""
    X = np.asarray(X, dtype=float)
    has = np.isfinite(X).any(axis=0) if len(X) else np.zeros(X.shape[1], dtype=bool)
    out = np.full(np.shape(q) + (X.shape[1],), empty)
    out[..., has] = np.nanpercentile(X[:, has], q, axis=0)
    return out


def _linear_fit(X, y, ridge: float = 1e-6):
    """Least-squares linear fit of ``y`` on the standardised columns of ``X`` (missing inputs
    at their centre, a tiny ridge for constant or collinear columns): ``{center, scale,
    coef, intercept}``, the base the trees start from."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    center = column_percentiles(X, 50, 0.0)
    scale = 1.4826 * column_percentiles(np.abs(X - center), 50, 1.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    z = (X - center) / scale
    z = np.where(np.isfinite(z), z, 0.0)
    ok = np.isfinite(y)
    a = np.column_stack([np.ones(ok.sum()), z[ok]])
    coef = np.linalg.solve(a.T @ a + ridge * len(a) * np.diag([0.0] + [1.0] * z.shape[1]), a.T @ y[ok])
    return {"center": center, "scale": scale, "coef": coef[1:], "intercept": float(coef[0])}


def model_scatter(residual, sigma, level: float = 0.6827, n_iter: int = 60) -> float:
    """The smallest ``tau >= 0`` with ``|residual| <= sqrt(sigma² + tau²)`` for the
    fraction ``level`` of the stars (0 when the errors alone already cover)."""
    r = np.abs(np.asarray(residual, dtype=float))
    s = np.asarray(sigma, dtype=float)
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    if r.size == 0 or np.mean(r <= s) >= level:
        return 0.0
    lo, hi = 0.0, float(np.max(r)) + 1e-12
    for _ in range(n_iter):
        m = 0.5 * (lo + hi)
        if np.mean(r <= np.sqrt(s**2 + m**2)) >= level:
            hi = m
        else:
            lo = m
    return hi


def residual_trends(X, residual, n_bins: int = 5) -> list:
    """Median residual in quantile bins of every input column: ``[[column, bin centres,
    medians, counts], ...]`` (JSON-ready)."""
    out = []
    X = np.asarray(X, dtype=float)
    for j in range(X.shape[1]):
        x = X[:, j]
        ok = np.isfinite(x) & np.isfinite(residual)
        if ok.sum() < 2 * n_bins:
            out.append([j, [], [], []])
            continue
        edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, n_bins + 1)))
        which = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, len(edges) - 2)
        cent, med, cnt = [], [], []
        for b in range(len(edges) - 1):  # a handful of bins
            sel = which == b
            if sel.any():
                cent.append(float(np.median(x[ok][sel])))
                med.append(float(np.median(residual[ok][sel])))
                cnt.append(int(sel.sum()))
        out.append([j, cent, med, cnt])
    return out
