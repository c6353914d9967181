"""The compiled tree walker of the offset models (issue 13): exact against XGBoost."""

from __future__ import annotations

import numpy as np
import pytest

from bayescannon.homogenise.trees import TreeArrays, median_secants, predict_trees

xgb = pytest.importorskip("xgboost")

QUANTILES = np.array([0.16, 0.5, 0.84])


@pytest.fixture(scope="module")
def booster():
    rng = np.random.default_rng(0)
    n = 2000
    X = rng.normal(size=(n, 4))
    y = 0.3 * X[:, 0] + np.sin(2 * X[:, 1]) + 0.5 * rng.normal(size=n)
    X[:40, 2] = np.nan  # learned missing-value directions
    reg = xgb.XGBRegressor(
        objective="reg:quantileerror",
        quantile_alpha=QUANTILES,
        n_estimators=60,
        max_depth=4,
        tree_method="hist",
        n_jobs=1,
        random_state=0,
    )
    reg.fit(X, y)
    return reg.get_booster()[:50]


def test_packed_trees_predict_what_xgboost_predicts(booster):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 4))
    X[:100, 1] = np.nan
    X[100:200, 2] = np.nan
    ref = booster.inplace_predict(X.astype(np.float32))
    raw = predict_trees(TreeArrays.from_booster(booster), X)
    # XGBoost sorts crossing quantile outputs; float32 sums of 150 leaves differ by ~1e-6
    np.testing.assert_allclose(np.sort(raw, axis=1), ref, atol=2e-5 * np.abs(ref).max())


def test_median_secants_walk_again_only_what_moves_and_agree_with_full_walks(booster):
    rng = np.random.default_rng(2)
    n, k = 2000, 3
    X = rng.normal(size=(n, 4))
    X[:50, 0] = np.nan
    steps = np.stack([-rng.uniform(0, 1, (n, k)), rng.uniform(0, 1, (n, k))], axis=2)
    steps[50:60, 1] = 0.0
    trees = TreeArrays.from_booster(booster)
    got = median_secants(trees, X, steps, 1)
    assert got.shape == (1 + 2 * k, n)
    np.testing.assert_allclose(got[0], predict_trees(trees, X)[:, 1], atol=1e-9)
    for i in range(k):
        for side in range(2):
            moved = X.copy()
            moved[:, i] += steps[:, i, side]
            full = predict_trees(trees, moved)[:, 1]
            np.testing.assert_allclose(got[1 + 2 * i + side], full, atol=1e-9, err_msg=f"input {i} side {side}")
    np.testing.assert_array_equal(got[1:3, :50], np.broadcast_to(got[0, :50], (2, 50)))  # NaN input: no move
    np.testing.assert_array_equal(got[3:5, 50:60], np.broadcast_to(got[0, 50:60], (2, 10)))  # zero step
    # the moves change something: the secants are not all zero
    assert np.mean(np.abs(got[1] - got[0]) > 0) > 0.1
