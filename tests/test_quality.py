"""Quality flags: label distance, convex hull, combined bitmask and flag table."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from bayescannon import CannonModel
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.flags import StarFlag, describe
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.validate.quality import (
    DISTANCE_PRESETS,
    assess,
    calibrate_distance_threshold,
    flag_table,
    in_convex_hull,
    label_distance,
    training_distances,
)


def _result(labels, *, flags=None, rchi2=None, npix=None):
    n, k = labels.shape
    names = [f"L{i}" for i in range(k)]
    return xr.Dataset(
        {
            "labels": (("star", "label_name"), labels),
            "errors": (("star", "label_name"), np.full((n, k), 0.1)),
            "flags": ("star", np.zeros(n, np.int64) if flags is None else flags),
            "reduced_chi2": ("star", np.ones(n) if rchi2 is None else rchi2),
            "n_pixels": ("star", np.full(n, 100) if npix is None else npix),
        },
        coords={"star": [f"s{i}" for i in range(n)], "label_name": names},
    )


def test_label_distance_is_mean_distance_to_nearest_training_stars():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 3)) * [100.0, 0.5, 0.2]
    test = rng.normal(size=(40, 3)) * [150.0, 0.7, 0.3]
    scale = np.array([50.0, 0.1, 0.05])
    d = label_distance(test, train, scale, n_neighbours=10)
    # brute force: every pair distance in units of the scatter
    full = np.sqrt((((test[:, None, :] - train[None, :, :]) / scale) ** 2).sum(-1))
    expect = np.sort(full, axis=1)[:, :10].mean(axis=1)
    np.testing.assert_allclose(d, expect, rtol=1e-12)
    test[3] = np.nan
    assert np.isnan(label_distance(test, train, scale)[3])
    with pytest.raises(InsufficientDataError):
        label_distance(test, train[:5], scale)
    with pytest.raises(InvalidInputError):
        label_distance(test, train, np.array([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("k", [2, 3, 7])
def test_convex_hull_of_a_cube(k):
    rng = np.random.default_rng(k)
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * k)).reshape(k, -1).T
    train = np.vstack([corners, rng.uniform(0, 1, size=(50, k))])
    inside = rng.uniform(0.05, 0.95, size=(20, k))
    outside = inside.copy()
    outside[:, 0] = rng.uniform(1.05, 2.0, size=20)
    res = in_convex_hull(np.vstack([inside, outside]), train)
    assert res[:20].all() and not res[20:].any()
    assert in_convex_hull(corners[:2], train).all()  # on the surface counts as inside


def test_assess_sets_each_bit_from_its_criterion():
    rng = np.random.default_rng(2)
    train = rng.uniform(0, 1, size=(400, 2))
    labels = np.vstack([rng.uniform(0.2, 0.8, size=(6, 2)), [[3.0, 3.0]], [[np.nan, np.nan]]])
    n = len(labels)
    base = np.zeros(n, np.int64)
    base[-1] = StarFlag.NO_PIXELS
    base[0] = StarFlag.LARGE_CHI2
    rchi2 = np.array([6.0, 1.0, 2.5, 1.0, 1.0, 1.0, 1.0, np.nan])
    npix = np.array([100, 100, 100, 15, 100, 100, 100, 0])
    snr = np.array([50.0, 50.0, 50.0, 50.0, 5.0, 50.0, 50.0, 50.0])
    survey = np.array([0, 0, 0, 0, 0, 4, 1, 0])
    res = _result(labels, flags=base, rchi2=rchi2, npix=npix)
    q = assess(
        res,
        training=train,
        cv_scatter=[0.05, 0.05],
        distance_threshold=3.0,
        snr=snr,
        min_snr=10,
        max_reduced_chi2=2.0,
        min_pixels=20,
        survey_flags=survey,
        survey_flag_mask=4,
    )
    f = q["flags"].values
    # threshold replaced: rchi2 2.5 > 2 is now flagged, 6 still is
    assert [bool(v & StarFlag.LARGE_CHI2) for v in f[:3]] == [True, False, True]
    assert bool(f[3] & StarFlag.FEW_PIXELS) and not f[1] & StarFlag.FEW_PIXELS
    assert describe(f[4]) == ["LOW_SNR"]
    assert bool(f[5] & StarFlag.SURVEY_FLAGGED) and not f[6] & StarFlag.SURVEY_FLAGGED  # bit 1 not in mask
    assert f[6] & StarFlag.OUTSIDE_HULL and f[6] & StarFlag.FAR_FROM_TRAINING
    assert f[-1] & StarFlag.NO_PIXELS and not f[-1] & StarFlag.OUTSIDE_HULL
    expected = label_distance(labels, train, [0.05, 0.05])
    np.testing.assert_allclose(q["label_distance"].values, expected)
    assert np.array_equal(q["flag_FAR_FROM_TRAINING"].values, np.nan_to_num(expected) > 3.0)
    t = flag_table(q)
    for bit in StarFlag:
        assert np.array_equal(t[f"FLAG_{bit.name}"], (t["FLAGS"] & int(bit)) != 0)
    assert np.array_equal(t["SURVEY_FLAGS"], survey)
    assert t.meta["FLAGBT10"].startswith("SURVEY_FLAGGED")
    with pytest.raises(InvalidInputError, match="training"):
        assess(res, cv_scatter=[0.1, 0.1])


def test_flags_separate_stars_inside_and_outside_the_training_set():
    names = ["TEFF", "LOGG", "FE_H"]
    ref = mock_quadratic_survey(250, 30, names, snr=(80.0, 200.0), rng=4)
    model = CannonModel(names).fit(ref)
    lo = np.array([4000.0, 1.0, -1.2])
    hi = np.array([5400.0, 3.5, 0.4])
    rng = np.random.default_rng(5)
    inside = lo + (hi - lo) * rng.uniform(0.25, 0.75, size=(30, 3))
    far = inside.copy()
    far[:, 2] = hi[2] + 0.6 * (hi[2] - lo[2])  # [Fe/H] well beyond the training range
    theta, s2 = ref["true_theta"].values, ref["true_s2"].values
    test = mock_quadratic_survey(60, 30, names, snr=150.0, theta=theta, s2=s2, labels=np.vstack([inside, far]), rng=6)
    res = model.infer(test)
    q = assess(res, model=model, cv_scatter=np.array([40.0, 0.06, 0.03]))
    f = q["flags"].values
    assert not np.any(f[:30] & StarFlag.OUTSIDE_HULL)
    assert np.all(f[30:] & StarFlag.OUTSIDE_HULL)
    assert np.all(q["label_distance"].values[30:] > q["label_distance"].values[:30].max())
    assert np.all(f[30:] & StarFlag.FAR_FROM_TRAINING)
    # the dataset records which tests ran, so a catalogue writes only evaluated flag columns
    assert q.attrs["hull"] == 1 and len(q.attrs["distance_scale"]) == 3 and "min_snr" not in q.attrs
    skipped = assess(res, hull=False)
    assert skipped.attrs["hull"] == 0 and "distance_scale" not in skipped.attrs
    assert not np.any(skipped["flags"].values & (StarFlag.OUTSIDE_HULL | StarFlag.FAR_FROM_TRAINING))


def test_training_distances_leave_each_star_out():
    train = np.array([[0.0], [1.0], [3.0], [6.0]])
    d = training_distances(train, [1.0], cv_labels=train, n_neighbours=1)
    # each star's nearest *other* training star, not itself (distance 0)
    np.testing.assert_allclose(d, [1.0, 1.0, 2.0, 3.0])
    d2 = training_distances(train, [1.0], cv_labels=train + 0.5, n_neighbours=2)
    np.testing.assert_allclose(d2, [(0.5 + 2.5) / 2, (1.5 + 1.5) / 2, (2.5 + 2.5) / 2, (3.5 + 5.5) / 2])


def _population(n, rng):
    """A correlated 4-label population (TEFF, LOGG, FE_H, ALPHA_FE)."""
    teff = rng.normal(4800, 300, n)
    logg = 2.5 + (teff - 4800) / 600 + rng.normal(0, 0.3, n)
    feh = rng.normal(-0.2, 0.3, n)
    alpha = 0.1 - 0.2 * feh + rng.normal(0, 0.05, n)
    return np.column_stack([teff, logg, feh, alpha])


def test_calibrated_distance_flags_one_percent_of_the_population_and_extrapolations():
    rng = np.random.default_rng(21)
    sigma = np.array([50.0, 0.1, 0.05, 0.03])  # the CV scatter
    train = _population(2000, rng)
    cv = train + rng.normal(size=train.shape) * sigma  # cross-validated labels of the training stars
    test = _population(4000, rng)
    test = test + rng.normal(size=test.shape) * sigma  # inferred labels of new stars of the population
    far = _population(400, rng) + rng.normal(size=(400, 4)) * sigma
    far[:, 2] = train[:, 2].max() + rng.uniform(0.3, 0.6, 400)  # [Fe/H] beyond the training range
    res = _result(np.vstack([test, far]))
    q = assess(res, training=train, cv_scatter=sigma, cv_labels=cv, hull=False)
    flagged = q["flag_FAR_FROM_TRAINING"].values
    # binomial spread of the test rate and of the p99 estimated from 2,000 training stars
    sd = np.sqrt(0.01 * 0.99 / 4000 + 0.01 * 0.99 / 2000)
    assert abs(flagged[:4000].mean() - 0.01) < 4 * sd
    assert flagged[4000:].mean() >= 0.95
    assert q.attrs["distance_threshold"] == pytest.approx(
        calibrate_distance_threshold(train, sigma, cv_labels=cv), rel=1e-12
    )
    assert q.attrs["distance_threshold_method"].startswith("calibrated: p99")
    assert q.attrs["distance_threshold_training_percentile"] == pytest.approx(99.0, abs=0.1)
    # without per-star CV labels the training labels + CV-scatter noise stand in: same calibration
    q2 = assess(res, training=train, cv_scatter=sigma, hull=False)
    assert abs(q2["flag_FAR_FROM_TRAINING"].values[:4000].mean() - 0.01) < 4 * sd
    # the paper's 8 is available by name, and the attrs say what it means for this training set
    q8 = assess(res, training=train, cv_scatter=sigma, cv_labels=cv, distance_threshold="nandakumar2022", hull=False)
    assert q8.attrs["distance_threshold"] == DISTANCE_PRESETS["nandakumar2022"] == 8.0
    pct = q8.attrs["distance_threshold_training_percentile"]
    assert pct == pytest.approx(100 * np.mean(training_distances(train, sigma, cv_labels=cv) <= 8.0))
    with pytest.raises(InvalidInputError, match="calibrated"):
        assess(res, training=train, cv_scatter=sigma, distance_threshold="paper", hull=False)


def test_flag_table_masks_tests_that_did_not_run():
    rng = np.random.default_rng(3)
    train = rng.uniform(0, 1, size=(100, 2))
    q = assess(_result(rng.uniform(0.2, 0.8, size=(5, 2))), training=train, hull=False)
    t = flag_table(q)
    for name in ("FLAG_FAR_FROM_TRAINING", "FLAG_OUTSIDE_HULL", "FLAG_LOW_SNR", "FLAG_SURVEY_FLAGGED"):
        assert t[name].mask.all()
    assert t["IN_HULL"].mask.all() and t["LABEL_DISTANCE"].mask.all()
    assert not np.ma.getmaskarray(t["FLAG_NO_PIXELS"]).any()
    notes = [str(v) for k, v in t.meta.items() if k.startswith("FLAGNT")]
    assert any("FLAG_OUTSIDE_HULL masked: not evaluated" in n for n in notes) and len(notes) == 4
    assert "DISTTHR" not in t.meta
