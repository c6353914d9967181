"""Compiled evaluation of an XGBoost booster's trees (numba), for the Monte Carlo secants.

The linear propagation (:mod:`~bayescannon.homogenise.propagate`) needs, for every star,
the median offset at its catalogue values and at one error below and above them along each
input label: ``1 + 2k`` points. XGBoost's ``inplace_predict`` evaluates every tree of every
quantile at every point (``(1 + 2k) × n_quantiles × n_trees`` traversals per star). Two
facts make most of that unnecessary:

* the secants need the median only, not the other quantiles;
* moving a star along input ``i`` changes a tree's output only if the path of the star's
  unperturbed inputs through that tree tests input ``i``: every other test on the path
  sees the same values and sends the perturbed star to the same leaf. Only those trees are
  walked again, from the root, with input ``i`` replaced.

:func:`median_secants` does this in one pass over the stars (parallel over stars), exactly
(the same float32 comparisons and missing-value directions as XGBoost; leaf values are
summed in float64). :class:`TreeArrays` packs a booster's trees into flat arrays, read
from XGBoost's JSON model.
"""

from __future__ import annotations

import json
import logging

import numba
import numpy as np

from bayescannon.errors import ModelFileError

logger = logging.getLogger(__name__)

__all__ = ["TreeArrays", "median_secants", "predict_trees"]


class TreeArrays:
    """A booster's trees as flat arrays (absolute node indices; ``-1`` children at leaves).

    Attributes
    ----------
    left, right : int32 (n_nodes,)
    feature : int32 (n_nodes,)
    threshold : float32 (n_nodes,)
        Split condition (go left when ``x < threshold``); the leaf value at leaves.
    default_left : bool (n_nodes,)
        Direction of a missing (NaN) input.
    roots : int32 (n_trees,)
    group : int32 (n_trees,)
        The output (quantile) each tree adds to.
    base : float64 (n_groups,)
        Base score of every output.
    """

    def walk_arrays(self) -> tuple:
        """The arrays the compiled walkers take, in their argument order."""
        return (
            self.left,
            self.right,
            self.feature,
            self.threshold,
            self.default_left,
            self.roots,
            self.group,
            self.base,
        )

    @classmethod
    def from_booster(cls, booster) -> TreeArrays:
        """Pack the trees of an ``xgboost.Booster`` (numerical splits only)."""
        model = json.loads(booster.save_raw("json"))
        learner = model["learner"]
        gbm = learner["gradient_booster"]["model"]
        trees = gbm["trees"]
        n_groups = max(1, int(learner["learner_model_param"].get("num_target", "1")))
        base = np.atleast_1d(np.asarray(json.loads(learner["learner_model_param"]["base_score"]), dtype=float))
        if base.size == 1 and n_groups > 1:
            base = np.full(n_groups, float(base[0]))
        self = cls()
        sizes = [len(t["left_children"]) for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if any(any(t.get("split_type", [0])) for t in trees):
            raise ModelFileError("offset model trees with categorical splits are not supported")

        def cat(key, dtype):
            return np.concatenate([np.asarray(t[key], dtype=dtype) for t in trees]) if trees else np.zeros(0, dtype)

        left, right = cat("left_children", np.int64), cat("right_children", np.int64)
        node_off = np.repeat(offsets[:-1], sizes)
        self.left = np.where(left >= 0, left + node_off, -1).astype(np.int32)
        self.right = np.where(right >= 0, right + node_off, -1).astype(np.int32)
        self.feature = cat("split_indices", np.int32)
        self.threshold = cat("split_conditions", np.float32)
        self.default_left = cat("default_left", np.int8).astype(bool)
        self.roots = offsets[:-1].astype(np.int32)
        self.group = np.asarray(gbm["tree_info"], dtype=np.int32)
        self.base = base.astype(float)
        return self


@numba.njit(cache=True, inline="always")
def _leaf(left, right, feature, threshold, default_left, node, x, sub_feature, sub_value):
    """The leaf a row reaches from ``node``; input ``sub_feature`` reads ``sub_value``."""
    while left[node] >= 0:
        f = feature[node]
        v = sub_value if f == sub_feature else x[f]
        if np.isnan(v):
            node = left[node] if default_left[node] else right[node]
        elif v < threshold[node]:
            node = left[node]
        else:
            node = right[node]
    return node


@numba.njit(cache=True, inline="always")
def _path_mask(left, right, feature, threshold, default_left, node, x):
    """The leaf a row reaches and the bitmask of the inputs its path tests (inputs < 63)."""
    mask = np.int64(0)
    while left[node] >= 0:
        f = feature[node]
        if f < 63:
            mask |= np.int64(1) << np.int64(f)
        v = x[f]
        if np.isnan(v):
            node = left[node] if default_left[node] else right[node]
        elif v < threshold[node]:
            node = left[node]
        else:
            node = right[node]
    return node, mask


@numba.njit(cache=True, parallel=True)
def _predict(x, left, right, feature, threshold, default_left, roots, group, base):  # pragma: no cover - compiled
    n = x.shape[0]
    g = base.shape[0]
    out = np.empty((n, g))
    for r in numba.prange(n):
        acc = base.copy()
        for t in range(roots.shape[0]):
            leaf = _leaf(left, right, feature, threshold, default_left, roots[t], x[r], -1, np.float32(0.0))
            acc[group[t]] += threshold[leaf]
        out[r] = acc
    return out


@numba.njit(cache=True, parallel=True)
def _secants(x, steps, k, left, right, feature, threshold, default_left, roots, group, base, g):  # pragma: no cover
    n = x.shape[0]
    out = np.empty((n, 1 + 2 * k))
    for r in numba.prange(n):
        xr = x[r]
        acc = np.zeros(1 + 2 * k)
        acc[0] = base[g]
        for t in range(roots.shape[0]):
            if group[t] != g:
                continue
            leaf0, mask = _path_mask(left, right, feature, threshold, default_left, roots[t], xr)
            v0 = np.float64(threshold[leaf0])
            acc[0] += v0
            for i in range(k):
                if i < 63 and (mask >> np.int64(i)) & np.int64(1) == 0:
                    continue  # the path does not test input i: the same leaf
                for side in range(2):
                    sub = np.float32(np.float64(xr[i]) + steps[r, i, side])
                    leaf = _leaf(left, right, feature, threshold, default_left, roots[t], xr, i, sub)
                    acc[1 + 2 * i + side] += np.float64(threshold[leaf]) - v0
        out[r, 0] = acc[0]
        for c in range(1, 1 + 2 * k):
            out[r, c] = acc[0] + acc[c]
    return out


def predict_trees(trees: TreeArrays, X) -> np.ndarray:
    """Raw outputs (n, n_groups) of the packed trees at ``X`` (float32 inputs, as XGBoost)."""
    x = np.ascontiguousarray(X, dtype=np.float32)
    return _predict(x, *trees.walk_arrays())


def median_secants(trees: TreeArrays, X, steps, group: int) -> np.ndarray:
    """Output ``group`` at ``X`` and with input ``i`` moved by ``steps[:, i, 0]`` and ``steps[:, i, 1]``.

    Parameters
    ----------
    trees : TreeArrays
    X : array (n, n_features)
    steps : array (n, k, 2)
        Moves of the first ``k`` inputs (0 or NaN: no move).
    group : int
        The output (the median's).

    Returns
    -------
    numpy.ndarray, shape (1 + 2k, n)
        The output at ``X``, then at every move in the order (input 0 low, input 0 high,
        input 1 low, ...); a move whose input value is NaN gives the output at ``X``.
    """
    x = np.ascontiguousarray(X, dtype=np.float32)
    steps = np.nan_to_num(np.ascontiguousarray(steps, dtype=float))
    k = steps.shape[1]
    out = _secants(
        x,
        steps,
        k,
        *trees.walk_arrays(),
        int(group),
    )
    return out.T
