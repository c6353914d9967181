"""Quality flags of inferred labels: distance to the training set, convex hull, fit
diagnostics, S/N and survey pipeline flags, combined into one StarFlag bitmask.

* :func:`label_distance` — Nandakumar+2022 eq. 5: the mean distance of a star's labels
  to its 10 nearest training stars, each label difference in units of the
  cross-validation scatter of that label. Large values mean the star sits where the
  training set has few or no stars and its labels are extrapolations.
* :func:`training_distances` and :func:`calibrate_distance_threshold` — the label
  distances of the training set's own cross-validated labels (each star against the
  other training stars) and the threshold at a percentile of them (99 by default), so
  that ``FAR_FROM_TRAINING`` flags about 1 % of stars drawn from the training
  population whatever the dimension, the density of the training set or the CV scatter.
* :func:`in_convex_hull` — is the label vector inside the convex hull of the training
  labels (a model-free test for extrapolation).
* :func:`assess` — all flags of one inference result: the test-step bits that
  :meth:`CannonModel.infer` sets (not converged, at a bound, few pixels, reduced χ²)
  with configurable thresholds, plus ``FAR_FROM_TRAINING``, ``OUTSIDE_HULL``,
  ``LOW_SNR`` and ``SURVEY_FLAGGED``.
* :func:`flag_table` — the combined flag table: the integer bitmask and one readable
  boolean column per bit.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr
from astropy.table import MaskedColumn, Table

from bayescannon.core import scaling
from bayescannon.errors import InsufficientDataError, InvalidInputError, ShapeMismatchError
from bayescannon.flags import StarFlag, flag_doc, flag_header
from bayescannon.results import result_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DISTANCE_PERCENTILE",
    "DEFAULT_DISTANCE_THRESHOLD",
    "DISTANCE_PRESETS",
    "calibrate_distance_threshold",
    "training_distances",
    "assess",
    "flag_table",
    "in_convex_hull",
    "label_distance",
    "training_labels",
]

#: Default threshold of the label distance above which a star is flagged
#: ``FAR_FROM_TRAINING``: ``"calibrated"`` = the :data:`DEFAULT_DISTANCE_PERCENTILE`-th
#: percentile of the training set's own cross-validated distances
#: (:func:`calibrate_distance_threshold`). A number is used as it is (units of eq. 5).
DEFAULT_DISTANCE_THRESHOLD = "calibrated"

#: Percentile of the training set's cross-validated label distances used as the
#: calibrated threshold: stars drawn from the training population are flagged at ~1 %.
DEFAULT_DISTANCE_PERCENTILE = 99.0

#: Named fixed thresholds. ``"nandakumar2022"``: 8, the paper's cut on eq. 5 (mean over
#: the 10 nearest training stars of the distance in units of the CV scatter). Eq. 5 grows
#: with the number of labels and falls with the density of the training set (the paper
#: had 4,418 training stars), so 8 means "far from the training set" only for a training
#: set like the paper's: :func:`assess` records which percentile of the training set's
#: own CV distances 8 is (``distance_threshold_training_percentile``), i.e. what 8 means
#: for this training set.
DISTANCE_PRESETS = {"nandakumar2022": 8.0}

#: Above this many labels the hull is tested by linear programming instead of Qhull
#: facets (the number of facets explodes with dimension).
_MAX_QHULL_DIM = 6


def training_labels(model) -> np.ndarray:
    """Physical training labels of a fitted model, shape (N_train, K).

    Model files store them (``training_labels``), so a model read from a file has them
    too, unless it was written without them."""

    model._check_fitted()
    if getattr(model, "training_labels_scaled_", None) is None:
        raise InvalidInputError("this model does not hold its training labels: pass training=")
    return scaling.unscale(model.training_labels_scaled_, model.label_offset_, model.label_scale_)


def _check_labels(labels, training, scale=None):
    y = np.asarray(labels, dtype=np.float64)
    tr = np.asarray(training, dtype=np.float64)
    if y.ndim == 1:
        y = y[None, :]
    if tr.ndim != 2 or y.ndim != 2 or y.shape[1] != tr.shape[1]:
        raise ShapeMismatchError(
            f"labels have shape {np.shape(labels)} and training labels {np.shape(training)}: "
            "both must be (stars, K) with the same K"
        )
    if not np.all(np.isfinite(tr)):
        raise InvalidInputError("training labels contain non-finite values")
    if scale is not None:
        s = np.asarray(scale, dtype=np.float64)
        if s.shape != (y.shape[1],):
            raise ShapeMismatchError(f"scale has shape {s.shape}; expected ({y.shape[1]},)")
        if not np.all(np.isfinite(s) & (s > 0)):
            raise InvalidInputError(f"scale must be finite and > 0 for every label; got {s}")
        return y, tr, s
    return y, tr, None


def label_distance(labels, training, scale, *, n_neighbours: int = 10) -> np.ndarray:
    """Mean distance to the ``n_neighbours`` nearest training stars (Nandakumar+2022
    eq. 5).

    ``D = (1/m) Σ_{j=1..m} sqrt( Σ_k ((ℓ_k − ℓ_k,j) / σ_k)² )`` over the m nearest
    training stars j, with σ_k the cross-validation scatter of label k.

    Parameters
    ----------
    labels : ndarray, shape (N, K)
        Inferred labels (NaN rows give NaN).
    training : ndarray, shape (M, K)
        Training labels.
    scale : ndarray, shape (K,)
        σ_k, e.g. :meth:`CrossValidation.scatter`.
    n_neighbours : int, default 10

    Returns
    -------
    ndarray, shape (N,)
    """
    from scipy.spatial import cKDTree

    y, tr, s = _check_labels(labels, training, scale)
    m = int(n_neighbours)
    if m < 1:
        raise InvalidInputError(f"n_neighbours must be >= 1; got {n_neighbours}")
    if tr.shape[0] < m:
        raise InsufficientDataError(f"{tr.shape[0]} training stars are fewer than n_neighbours={m}")
    out = np.full(y.shape[0], np.nan)
    ok = np.all(np.isfinite(y), axis=1)
    if ok.any():
        tree = cKDTree(tr / s)
        dist, _ = tree.query(y[ok] / s, k=m)
        out[ok] = np.asarray(dist).reshape(ok.sum(), m).mean(axis=1)
    return out


def training_distances(training, scale, *, cv_labels=None, n_neighbours: int = 10, random_state=0) -> np.ndarray:
    """Label distance (eq. 5) of each training star's cross-validated labels to the
    *other* training stars: the distribution that test stars of the training population
    follow.

    Parameters
    ----------
    training : ndarray, shape (M, K)
        Training (reference) labels.
    scale : ndarray, shape (K,)
        σ_k, the CV scatter.
    cv_labels : ndarray (M, K), optional
        The cross-validated labels of the training stars (row-aligned with
        ``training``; NaN rows give NaN). Without them the training labels perturbed by
        Gaussian noise of width σ_k (the CV scatter is the spread of the inferred labels
        about the reference ones) stand in, drawn with ``random_state``.
    n_neighbours : int, default 10
    random_state : int or numpy.random.Generator
        Seed of the noise when ``cv_labels`` is not given.

    Returns
    -------
    ndarray, shape (M,)
    """
    from scipy.spatial import cKDTree

    tr = np.asarray(training, dtype=np.float64)
    if cv_labels is None:
        _, tr, s = _check_labels(tr, tr, scale)
        rng = np.random.default_rng(random_state)
        y = tr + rng.normal(size=tr.shape) * s
    else:
        y, tr, s = _check_labels(cv_labels, tr, scale)
        if y.shape != tr.shape:
            raise ShapeMismatchError(f"cv_labels have shape {y.shape}; expected the training shape {tr.shape}")
    m = int(n_neighbours)
    if m < 1:
        raise InvalidInputError(f"n_neighbours must be >= 1; got {n_neighbours}")
    if tr.shape[0] < m + 1:
        raise InsufficientDataError(f"{tr.shape[0]} training stars are fewer than n_neighbours + 1 = {m + 1}")
    out = np.full(y.shape[0], np.nan)
    ok = np.flatnonzero(np.all(np.isfinite(y), axis=1))
    if ok.size:
        dist, idx = cKDTree(tr / s).query(y[ok] / s, k=m + 1)
        own = idx == ok[:, None]
        # leave the star itself out; when it is not among the m + 1, drop the farthest
        drop = np.where(own.any(axis=1), np.argmax(own, axis=1), m)
        keep = np.arange(m + 1)[None, :] != drop[:, None]
        out[ok] = dist[keep].reshape(ok.size, m).mean(axis=1)
    return out


def calibrate_distance_threshold(
    training,
    scale,
    *,
    cv_labels=None,
    percentile: float = DEFAULT_DISTANCE_PERCENTILE,
    n_neighbours: int = 10,
    random_state=0,
) -> float:
    """``FAR_FROM_TRAINING`` threshold: the ``percentile``-th percentile of
    :func:`training_distances` (99 by default: ~1 % of stars drawn from the training
    population are flagged).

    Returns
    -------
    float
    """
    if not 0.0 < float(percentile) < 100.0:
        raise InvalidInputError(f"percentile must be in (0, 100); got {percentile}")
    d = training_distances(training, scale, cv_labels=cv_labels, n_neighbours=n_neighbours, random_state=random_state)
    d = d[np.isfinite(d)]
    if d.size < 10:
        raise InsufficientDataError(f"only {d.size} training stars have finite cross-validated labels")
    return float(np.percentile(d, percentile))


def in_convex_hull(labels, training, *, tol: float = 1e-9) -> np.ndarray:
    """Whether each label vector lies inside the convex hull of the training labels.

    Labels are standardised by the training mean and standard deviation first. Up to
    6 labels the hull's facets come from Qhull and the test is one matrix product;
    beyond that, or when Qhull fails on a degenerate set, each star is tested by a
    linear program (is it a convex combination of training stars?).

    Parameters
    ----------
    labels : ndarray, shape (N, K)
    training : ndarray, shape (M, K)
    tol : float
        Tolerance in standardised units (points on the surface count as inside).

    Returns
    -------
    ndarray of bool, shape (N,)
        False for rows with non-finite labels.
    """
    y, tr, _ = _check_labels(labels, training)
    k = tr.shape[1]
    if tr.shape[0] < k + 1:
        raise InsufficientDataError(f"{tr.shape[0]} training stars cannot span a hull in {k} labels")
    mu, sd = tr.mean(axis=0), tr.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z, zt = (y - mu) / sd, (tr - mu) / sd
    ok = np.all(np.isfinite(z), axis=1)
    out = np.zeros(y.shape[0], dtype=bool)
    if not ok.any():
        return out
    if k == 1:
        out[ok] = (z[ok, 0] >= zt.min() - tol) & (z[ok, 0] <= zt.max() + tol)
        return out
    if k <= _MAX_QHULL_DIM:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = ConvexHull(zt)
        except QhullError as exc:
            logger.info("Qhull failed (%s); testing hull membership by linear programming", str(exc)[:80])
        else:
            eq = hull.equations  # (F, K+1): normal·x + offset <= 0 inside
            out[ok] = np.max(z[ok] @ eq[:, :-1].T + eq[:, -1], axis=1) <= tol
            return out
    out[ok] = _in_hull_lp(z[ok], zt)
    return out


def _in_hull_lp(points, vertices) -> np.ndarray:
    """Hull membership by linear programming: ∃ w ≥ 0, Σw = 1, Vᵀw = x."""
    from scipy.optimize import linprog

    m = vertices.shape[0]
    a_eq = np.vstack([vertices.T, np.ones((1, m))])
    c = np.zeros(m)
    res = np.zeros(points.shape[0], dtype=bool)
    for i, x in enumerate(points):  # one small LP per star; only for > 6 labels
        sol = linprog(c, A_eq=a_eq, b_eq=np.r_[x, 1.0], bounds=(0, None), method="highs")
        res[i] = sol.status == 0
    return res


def _per_star(values, n, name, dtype=float):
    if values is None:
        return None
    a = np.asarray(values, dtype=dtype)
    if a.shape != (n,):
        raise ShapeMismatchError(f"{name} has shape {a.shape} but the result has {n} stars")
    return a


def assess(
    result: xr.Dataset,
    *,
    model=None,
    training=None,
    cv_scatter=None,
    distance_threshold: float | str = DEFAULT_DISTANCE_THRESHOLD,
    distance_percentile: float = DEFAULT_DISTANCE_PERCENTILE,
    cv_labels=None,
    n_neighbours: int = 10,
    hull: bool = True,
    snr=None,
    min_snr: float | None = None,
    max_reduced_chi2: float | None = None,
    min_pixels: int | None = None,
    survey_flags=None,
    survey_flag_mask: int | None = None,
) -> xr.Dataset:
    """All quality flags of an inference result, combined into one bitmask.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :meth:`CannonModel.infer`.
    model : CannonModel, optional
        Fitted model; its training labels are used when ``training`` is not given.
    training : ndarray (M, K), optional
        Training labels (physical units, the result's label order).
    cv_scatter : array_like (K,) or CrossValidation, optional
        Unit of the label distance per label (Nandakumar+2022 use the CV scatter).
        Without it the label distance is not computed (NaN), ``FAR_FROM_TRAINING`` is
        not evaluated and the attrs say so (no ``distance_scale``). A CrossValidation
        also gives the cross-validated labels of its stars for the calibration.
    distance_threshold : float or str
        Stars with a label distance above it are flagged ``FAR_FROM_TRAINING``.
        ``"calibrated"`` (default): the ``distance_percentile``-th percentile of the
        training set's own cross-validated distances (:func:`calibrate_distance_threshold`;
        from the CrossValidation's labels and reference labels when ``cv_scatter`` is
        one, else from ``cv_labels`` or the training labels perturbed by the CV scatter).
        A name of :data:`DISTANCE_PRESETS` (``"nandakumar2022"``: 8) or a number is
        used as it is.
    distance_percentile : float
        Percentile of the calibrated threshold (99: ~1 % of the training population
        flagged).
    cv_labels : ndarray (M, K), optional
        Cross-validated labels of the training stars, row-aligned with the training
        labels, for the calibration.
    n_neighbours : int
        Neighbours in the label distance (Nandakumar+2022: 10).
    hull : bool
        Run the convex-hull test (``OUTSIDE_HULL``).
    snr : ndarray (N,), optional
        S/N per star, for ``LOW_SNR``.
    min_snr : float, optional
        Stars below it get ``LOW_SNR``.
    max_reduced_chi2 : float, optional
        Replaces the model's threshold of ``LARGE_CHI2``.
    min_pixels : int, optional
        Replaces the model's criterion of ``FEW_PIXELS`` (2 × the number of terms).
    survey_flags : ndarray of int (N,), optional
        The survey pipeline's own flags, carried into the output; stars with any bit
        of ``survey_flag_mask`` set get ``SURVEY_FLAGGED``.
    survey_flag_mask : int, optional
        Survey bits that count as bad (default: any bit).

    Returns
    -------
    xarray.Dataset
        Per star: ``flags`` (StarFlag bitmask), ``label_distance``, ``in_hull``,
        ``snr``, ``survey_flags`` and one boolean ``flag_<NAME>`` per StarFlag bit;
        attrs record the thresholds, which tests ran (``hull``; ``distance_scale``
        when the label distance was computed; ``min_snr``; ``survey_flag_mask``) and
        the bit documentation.
    """
    labels = np.asarray(result["labels"].values, dtype=np.float64)
    n = labels.shape[0]
    flags = np.asarray(result["flags"].values, dtype=np.int64).copy()
    if training is None and model is not None:
        training = training_labels(model)
    if max_reduced_chi2 is not None:
        if not max_reduced_chi2 > 0:
            raise InvalidInputError(f"max_reduced_chi2 must be > 0; got {max_reduced_chi2}")
        rchi2 = result["reduced_chi2"].values
        flags &= ~int(StarFlag.LARGE_CHI2)
        flags[np.isfinite(rchi2) & (rchi2 > max_reduced_chi2)] |= StarFlag.LARGE_CHI2
    if min_pixels is not None:
        flags &= ~int(StarFlag.FEW_PIXELS)
        flags[result["n_pixels"].values < int(min_pixels)] |= StarFlag.FEW_PIXELS
    attrs = {
        "n_neighbours": int(n_neighbours),
        "hull": int(bool(hull)),
    }
    dist = np.full(n, np.nan)
    if cv_scatter is not None:
        if training is None:
            raise InvalidInputError("the label distance needs the training labels: pass model= or training=")
        scale = np.asarray(cv_scatter.scatter() if hasattr(cv_scatter, "scatter") else cv_scatter, dtype=float)
        dist = label_distance(labels, training, scale, n_neighbours=n_neighbours)
        threshold, how, train_d = _distance_threshold(
            distance_threshold, training, scale, cv_scatter, cv_labels, distance_percentile, n_neighbours
        )
        flags[np.isfinite(dist) & (dist > threshold)] |= StarFlag.FAR_FROM_TRAINING
        attrs["distance_scale"] = [float(v) for v in scale]
        attrs["distance_threshold"] = threshold
        attrs["distance_threshold_method"] = how
        fin = train_d[np.isfinite(train_d)]
        attrs["distance_threshold_training_percentile"] = float(100.0 * np.mean(fin <= threshold))
        logger.info("FAR_FROM_TRAINING threshold %.3g (%s)", threshold, how)
    inside = np.ones(n, dtype=bool)
    if hull:
        if training is None:
            raise InvalidInputError("the convex-hull test needs the training labels: pass model= or training=")
        inside = in_convex_hull(labels, training)
        fin = np.all(np.isfinite(labels), axis=1)
        flags[fin & ~inside] |= StarFlag.OUTSIDE_HULL
    snr_arr = _per_star(snr, n, "snr")
    if snr_arr is None:
        snr_arr = np.full(n, np.nan)
    if min_snr is not None:
        if not np.isfinite(snr_arr).any():
            raise InvalidInputError("min_snr was given but no snr values")
        flags[np.isfinite(snr_arr) & (snr_arr < min_snr)] |= StarFlag.LOW_SNR
        attrs["min_snr"] = float(min_snr)
    sflags = _per_star(survey_flags, n, "survey_flags", dtype=np.int64)
    if sflags is None:
        sflags = np.zeros(n, dtype=np.int64)
    else:
        mask = -1 if survey_flag_mask is None else int(survey_flag_mask)
        flags[(sflags & mask) != 0] |= StarFlag.SURVEY_FLAGGED
        attrs["survey_flag_mask"] = mask
    if max_reduced_chi2 is not None:
        attrs["max_reduced_chi2"] = float(max_reduced_chi2)
    if min_pixels is not None:
        attrs["min_pixels"] = int(min_pixels)
    data = {
        "flags": ("star", flags),
        "label_distance": ("star", dist),
        "in_hull": ("star", inside if hull else np.ones(n, dtype=bool)),
        "snr": ("star", snr_arr),
        "survey_flags": ("star", sflags),
    }
    data.update({f"flag_{f.name}": ("star", (flags & int(f)) != 0) for f in StarFlag})
    out = result_dataset(  # numpy arrays without xarray's dask probe (bayescannon.results)
        data,
        {"star": result["star"].values},
        attrs={**attrs, **{f"flag_{name}": doc for name, doc in flag_doc(StarFlag).items()}},
    )
    out["label_distance"].attrs["description"] = (
        f"mean distance to the {n_neighbours} nearest training stars in units of the CV scatter"
    )
    counts = {f.name: int(((flags & int(f)) != 0).sum()) for f in StarFlag}
    logger.info("quality flags: %s", {k_: v for k_, v in counts.items() if v})
    return out


def _distance_threshold(threshold, training, scale, cv, cv_labels, percentile, n_neighbours):
    """(threshold, how it was chosen, the training set's own CV distances)."""
    ref, lab, source = training, cv_labels, "cv_labels"
    if hasattr(cv, "predictions") and cv_labels is None:
        ref, lab, source = cv.predictions["reference"].values, cv.predictions["labels"].values, "cross-validation"
    elif cv_labels is None:
        source = "training labels + CV-scatter noise"
    train_d = training_distances(ref, scale, cv_labels=lab, n_neighbours=n_neighbours)
    if isinstance(threshold, str):
        if threshold == "calibrated":
            fin = train_d[np.isfinite(train_d)]
            if fin.size < 10:
                raise InsufficientDataError(f"only {fin.size} training stars have finite cross-validated labels")
            value = float(np.percentile(fin, percentile))
            return value, f"calibrated: p{percentile:g} of the training set's CV distances ({source})", train_d
        if threshold not in DISTANCE_PRESETS:
            raise InvalidInputError(
                f"distance_threshold must be a number, 'calibrated' or one of {sorted(DISTANCE_PRESETS)}; "
                f"got {threshold!r}"
            )
        return float(DISTANCE_PRESETS[threshold]), f"preset {threshold}", train_d
    value = float(threshold)
    if not value > 0:
        raise InvalidInputError(f"distance_threshold must be > 0; got {threshold}")
    return value, "fixed", train_d


def flag_table(quality: xr.Dataset, *, id_column: str = "ID") -> Table:
    """The combined flag table: id, ``FLAGS`` bitmask, one boolean column per bit,
    ``LABEL_DISTANCE``, ``IN_HULL``, ``SNR`` and ``SURVEY_FLAGS``.

    Parameters
    ----------
    quality : xarray.Dataset
        Output of :func:`assess`.
    id_column : str

    Returns
    -------
    astropy.table.Table
        Bits documented in ``meta`` (``FLAGBTnn``).
    """
    t = Table()
    t[id_column] = np.asarray(quality["star"].values).astype(str)
    t["FLAGS"] = quality["flags"].values.astype(np.int64)
    t["FLAGS"].description = "StarFlag bitmask (bits in header FLAGBTnn cards)"
    qa = quality.attrs
    skipped = {
        StarFlag.FAR_FROM_TRAINING: None if "distance_scale" in qa else "no label distance (needs a CV scatter)",
        StarFlag.OUTSIDE_HULL: None if qa.get("hull", False) else "no convex-hull test",
        StarFlag.LOW_SNR: None if "min_snr" in qa else "no minimum S/N given",
        StarFlag.SURVEY_FLAGGED: None if "survey_flag_mask" in qa else "no survey pipeline flags given",
    }
    notes = []
    for f in StarFlag:
        v = quality[f"flag_{f.name}"].values
        if skipped.get(f):
            # not evaluated: masked, never a default value, and the header says why
            t[f"FLAG_{f.name}"] = MaskedColumn(np.zeros_like(v), mask=np.ones(v.shape, bool))
            notes.append(f"FLAG_{f.name} masked: not evaluated ({skipped[f]})")
        else:
            t[f"FLAG_{f.name}"] = v
    d = quality["label_distance"].values
    t["LABEL_DISTANCE"] = MaskedColumn(
        d, mask=~np.isfinite(d), description="mean distance to nearest training stars / CV scatter"
    )
    hull = quality["in_hull"].values
    t["IN_HULL"] = MaskedColumn(hull, mask=np.full(hull.shape, bool(skipped[StarFlag.OUTSIDE_HULL])))
    s = quality["snr"].values
    t["SNR"] = MaskedColumn(s, mask=~np.isfinite(s), description="signal-to-noise ratio")
    t["SURVEY_FLAGS"] = quality["survey_flags"].values.astype(np.int64)

    t.meta.update(flag_header())
    if "distance_threshold" in qa:
        t.meta["DISTTHR"] = float(qa["distance_threshold"])
        t.meta["DISTHOW"] = str(qa["distance_threshold_method"])
        t.meta["DISTPCT"] = float(qa["distance_threshold_training_percentile"])
    for i, note in enumerate(notes, 1):
        t.meta[f"FLAGNT{i:02d}"] = note
    return t
