"""Iterative reference-set clean-up (Ho+2017 §3) on spectra from a known quadratic model."""

from __future__ import annotations

import numpy as np
import pytest

from bayescannon import CannonModel
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.survey.cleanup import clean_reference_set, robust_scatter

LABELS = ["TEFF", "LOGG", "FE_H"]
N_STARS = 240
N_BAD = 10
# 1-sigma errors of the reference labels (physical units); the injected bad labels are
# 12-20 x larger, far beyond 4 sigma of (inference noise + label noise)
LABEL_NOISE = np.array([20.0, 0.04, 0.02])


@pytest.fixture(scope="module")
def reference():
    """A reference set: noisy labels for most stars, catastrophically wrong ones for N_BAD."""
    ds = mock_quadratic_survey(N_STARS, n_pixels=120, label_names=LABELS, snr=(80.0, 200.0), rng=5)
    truth = np.column_stack([ds[n].values for n in LABELS])
    rng = np.random.default_rng(6)
    labels = truth + rng.normal(size=truth.shape) * LABEL_NOISE
    bad = rng.choice(N_STARS, N_BAD, replace=False)
    which = rng.integers(0, len(LABELS), N_BAD)
    sign = rng.choice([-1.0, 1.0], N_BAD)
    labels[bad, which] += sign * rng.uniform(12.0, 20.0, N_BAD) * LABEL_NOISE[which]
    return ds, labels, bad, which


def _model():
    return CannonModel(LABELS, 2, random_state=0)


@pytest.mark.parametrize("mode", ["train", "cv"])
def test_finds_every_injected_bad_label(reference, mode):
    ds, labels, bad, which = reference
    res = clean_reference_set(
        _model(), ds["flux"].values, ds["ivar"].values, labels, ids=ds["star"].values, mode=mode, n_folds=3, n_sigma=4.0
    )
    dropped = np.flatnonzero(~res.kept)
    assert set(bad) <= set(dropped), f"missed {sorted(set(bad) - set(dropped))}"
    # clean stars beyond 4 sigma by chance: 2 P(|z| > 4) x 240 x 3 labels ~ 0.05 expected
    assert len(set(dropped) - set(bad)) <= 2
    assert res.converged and res.n_iter >= 2
    assert len(res.excluded) == dropped.size
    # each excluded row names the right label, with a reason and a deviation beyond 4 sigma
    ids = np.asarray(ds["star"].values).astype(str)
    for star, lab in zip(bad, which, strict=True):
        row = res.excluded[res.excluded["ID"] == ids[star]][0]
        assert LABELS[lab] in row["LABELS"].split(",")
        assert abs(row[f"DEV_{LABELS[lab]}"]) > 4.0
        assert "sigma" in row["REASON"] and LABELS[lab] in row["REASON"]
        assert row[f"REF_{LABELS[lab]}"] == pytest.approx(labels[star, lab])
    assert res.history["N_STARS"][0] == N_STARS
    assert res.history["N_EXCLUDED"].sum() == dropped.size


def test_scatter_of_kept_stars_matches_the_label_noise(reference):
    """After clean-up the robust scatter is that of the clean stars, not inflated by the bad ones."""
    ds, labels, bad, _ = reference
    res = clean_reference_set(_model(), ds["flux"].values, ds["ivar"].values, labels, mode="train")
    truth = np.column_stack([ds[n].values for n in LABELS])
    clean = np.ones(N_STARS, bool)
    clean[bad] = False
    # inferred - reference = (inferred - truth) - label noise: its scatter is at least the
    # label noise and, at these S/N, not much more
    sigma = res.scatter
    inf_err = robust_scatter(res.inferred[clean] - truth[clean])
    expected = np.sqrt(LABEL_NOISE**2 + inf_err**2)
    # relative standard error of a MAD-based sigma from ~230 stars: 1.17 / sqrt(230) = 8 %
    np.testing.assert_allclose(sigma, expected, rtol=0.25)
    assert np.all(sigma > 0.8 * LABEL_NOISE)


def test_rms_scatter_option_and_train_mode_agree_on_outliers(reference):
    ds, labels, bad, _ = reference
    res = clean_reference_set(
        _model(), ds["flux"].values, ds["ivar"].values, labels, mode="train", scatter="rms", max_iter=8
    )
    # the RMS is inflated by the outliers at first, so it may take more iterations, but
    # it ends with every bad label found
    assert set(bad) <= set(np.flatnonzero(~res.kept))
    assert res.scatter_kind == "rms"


def test_robust_scatter_of_gaussian_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, [1.0, 3.0], size=(4000, 2))
    x[:40, 0] = 1e6  # 1 % wild outliers do not move it much
    s = robust_scatter(x)
    # standard error of the MAD-based sigma: 1.17 sigma / sqrt(n) ~ 1.9 %; 1 % outliers
    # move the median of |x| by ~1.3 %
    np.testing.assert_allclose(s, [1.0, 3.0], rtol=0.06)
    assert np.isnan(robust_scatter(np.full((5, 1), np.nan)))[0]


def test_too_strict_threshold_raises(reference):
    ds, labels, _, _ = reference
    with pytest.raises(InsufficientDataError, match="too small|fewer than"):
        clean_reference_set(_model(), ds["flux"].values, ds["ivar"].values, labels, mode="train", n_sigma=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "bootstrap"}, "mode"),
        ({"scatter": "iqr"}, "scatter"),
        ({"n_sigma": -1.0}, "n_sigma"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_arguments(reference, kwargs, match):
    ds, labels, _, _ = reference
    with pytest.raises(InvalidInputError, match=match):
        clean_reference_set(_model(), ds["flux"].values, ds["ivar"].values, labels, **kwargs)


def test_container_input_uses_its_ids_and_labels(reference):
    ds, labels, bad, _ = reference
    ds2 = ds.copy()
    for i, n in enumerate(LABELS):
        ds2[n] = ("star", labels[:, i])
    res = clean_reference_set(_model(), ds2, mode="train")
    assert set(np.asarray(ds["star"].values)[bad]) <= set(res.excluded["ID"])


@pytest.fixture(scope="module")
def mixed_snr():
    """500 reference stars at S/N 30-150 (log-uniform), 20 of them with a bad label."""
    ds = mock_quadratic_survey(500, n_pixels=120, label_names=LABELS, snr=(30.0, 150.0), rng=15)
    truth = np.column_stack([ds[n].values for n in LABELS])
    rng = np.random.default_rng(16)
    labels = truth + rng.normal(size=truth.shape) * LABEL_NOISE
    bad = rng.choice(500, 20, replace=False)
    which = rng.integers(0, len(LABELS), 20)
    labels[bad, which] += rng.choice([-1.0, 1.0], 20) * rng.uniform(12.0, 20.0, 20) * LABEL_NOISE[which]
    return ds, truth, labels, bad


def test_default_keeps_clean_low_snr_stars_and_finds_bad_labels(mixed_snr):
    ds, truth, labels, bad = mixed_snr
    flux, ivar, ids = ds["flux"].values, ds["ivar"].values, ds["star"].values
    clean = np.ones(500, bool)
    clean[bad] = False
    # a clean set of mixed S/N: at most 1 % removed, and the iteration converges
    res = clean_reference_set(_model(), flux[clean], ivar[clean], labels[clean], ids=ids[clean], n_folds=3)
    assert res.history.meta["SCATTER"] == "binned"
    assert (~res.kept).sum() <= 0.01 * clean.sum(), res.excluded["ID", "LABELS"]
    assert res.converged
    # the same set with the bad labels: >= 95 % of them found, still <= 1 % of the clean removed
    res = clean_reference_set(_model(), flux, ivar, labels, ids=ids, n_folds=3)
    dropped = ~res.kept
    assert dropped[bad].mean() >= 0.95
    assert dropped[clean].sum() <= 0.01 * clean.sum()
    assert res.converged
