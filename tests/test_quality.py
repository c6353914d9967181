"""Quality flags: label distance, convex hull, combined bitmask and flag table."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from bayescannon import CannonModel
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.flags import StarFlag, describe
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.validate.quality import assess, flag_table, in_convex_hull, label_distance


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
