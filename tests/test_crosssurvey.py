"""Cross-survey runs: two mock surveys observing partly the same stars, with a known
offset between their pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from bayescannon.errors import CrossMatchError
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.survey.crosssurvey import SurveyData, common_stars, run_cross_survey

NAMES = ["TEFF", "LOGG", "FE_H"]
OFFSET_B = np.array([80.0, 0.15, -0.08])  # pipeline B − truth
NOISE = {"A": np.array([30.0, 0.04, 0.02]), "B": np.array([60.0, 0.08, 0.04])}


def _surveys(seed=0, n_common=220, n_only=60):
    rng = np.random.default_rng(seed)
    lo, hi = np.array([4000.0, 1.0, -1.2]), np.array([5400.0, 3.5, 0.4])
    truth = lo + (hi - lo) * rng.uniform(0, 1, size=(n_common + 2 * n_only, 3))
    ta = np.r_[np.arange(n_common), n_common + np.arange(n_only)]
    tb = np.r_[np.arange(n_common), n_common + n_only + np.arange(n_only)]
    ids_a = [f"A{i:04d}" for i in ta]
    ids_b = [f"B{i:04d}" for i in tb]
    spec_a = mock_quadratic_survey(ta.size, 40, NAMES, labels=truth[ta], snr=(80, 200), ids=ids_a, rng=rng)
    spec_b = mock_quadratic_survey(
        tb.size, 30, NAMES, labels=truth[tb], snr=(60, 150), ids=ids_b, rng=rng, wavelength=np.linspace(4000, 5500, 30)
    )
    lab_a = Table(
        {"ID": ids_a, **{n: truth[ta, k] + rng.normal(0, NOISE["A"][k], ta.size) for k, n in enumerate(NAMES)}}
    )
    lab_b = Table(
        {
            "ID": ids_b,
            **{n: truth[tb, k] + OFFSET_B[k] + rng.normal(0, NOISE["B"][k], tb.size) for k, n in enumerate(NAMES)},
        }
    )
    lab_b["e_TEFF"] = np.full(tb.size, NOISE["B"][0])
    xm = Table({"ID_A": [f"A{i:04d}" for i in range(n_common)], "ID_B": [f"B{i:04d}" for i in range(n_common)]})
    a = SurveyData("APOGEE", spec_a, lab_a, label_code="AA")
    b = SurveyData("GALAH", spec_b, lab_b, label_code="GS")
    return a, b, xm, truth


@pytest.fixture(scope="module")
def run():
    a, b, xm, _truth = _surveys()
    return (
        a,
        b,
        run_cross_survey(
            a,
            b,
            NAMES,
            crossmatch=xm,
            model_kwargs={"random_state": 0},
            giant_logg=2.25,
            n_jobs=1,
            settings={"default": {"folds": 3}},  # 12 (the default) in the command test's config
        ),
    )


def test_four_runs_and_two_combined_catalogues(run):
    a, b, res = run
    assert set(res.runs) == {"ACAA", "ACGS", "GCAA", "GCGS"}
    n_a, n_b = a.spectra.sizes["star"], b.spectra.sizes["star"]
    for scale in ("AA", "GS"):
        cat = res.catalogues[scale]
        assert len(cat) == n_a + n_b
        assert (cat["SURVEY"] == "APOGEE").sum() == n_a and (cat["SURVEY"] == "GALAH").sum() == n_b
        assert cat["COMMON"].sum() == 2 * 220 and cat["IN_TRAINING"].sum() == 2 * 220
        assert {"TEFF", "e_TEFF", "APOGEE_TEFF", "GALAH_TEFF", "GALAH_e_TEFF", "FLAGS", "RUN"} <= set(cat.colnames)
        # each survey's own labels only on its own rows
        assert cat["GALAH_TEFF"].mask[cat["SURVEY"] == "APOGEE"].all()
        assert cat.meta["SCALE"] == scale and "FLAGBT00" in cat.meta
        # the hull flag is evaluated from each run's training labels (one builder); the
        # distance from each run's own k-fold CV scatter, threshold calibrated (p99)
        assert {"FLAG_OUTSIDE_HULL", "IN_HULL", "FLAG_FAR_FROM_TRAINING", "LABEL_DISTANCE"} <= set(cat.colnames)
        assert not np.ma.getmaskarray(cat["LABEL_DISTANCE"]).any()
        # stars of the training population: about 1 % beyond the p99 threshold
        assert np.asarray(cat["FLAG_FAR_FROM_TRAINING"]).mean() < 0.05
        assert np.array_equal(np.asarray(cat["FLAG_OUTSIDE_HULL"]), ~np.asarray(cat["IN_HULL"]))
        assert 0.5 < np.asarray(cat["IN_HULL"]).mean() < 1.0  # most stars inside, not all


def test_transfer_removes_the_pipeline_offset(run):
    _a, _b, res = run
    t = res.comparison
    n = 220
    before = t[(t["COMPARISON"] == "APOGEE - GALAH pipeline") & (t["POPULATION"] == "all")]
    noise = np.hypot(NOISE["A"], NOISE["B"])
    for k, name in enumerate(NAMES):
        row = before[before["LABEL"] == name][0]
        assert row["N"] == n
        assert abs(row["MEAN"] + OFFSET_B[k]) < 4 * noise[k] / np.sqrt(n)
        assert abs(row["SCATTER"] / noise[k] - 1) < 4 / np.sqrt(2 * n)
    for comp, scale in (("ACAA - GCAA", "APOGEE"), ("ACGS - GCGS", "GALAH")):
        after = t[(t["COMPARISON"] == comp) & (t["POPULATION"] == "all")]
        assert set(after["SCALE"]) == {scale}
        for k, name in enumerate(NAMES):
            row = after[after["LABEL"] == name][0]
            # both runs are on one scale: the pipeline offset is gone, up to the noise
            assert abs(row["MEAN"]) < 4 * row["SCATTER"] / np.sqrt(n)
            assert abs(row["MEAN"]) < abs(OFFSET_B[k]) / 3
    pops = set(t["POPULATION"])
    assert pops == {"all", "giants", "dwarfs"}
    g = t[(t["POPULATION"] == "giants") & (t["LABEL"] == "TEFF")]["N"]
    d = t[(t["POPULATION"] == "dwarfs") & (t["LABEL"] == "TEFF")]["N"]
    assert np.all(g + d == n)


def test_surveys_without_common_stars_raise():
    a, b, xm, _ = _surveys(seed=1, n_common=30, n_only=5)
    with pytest.raises(CrossMatchError, match="no star is common"):
        common_stars(a, b)  # different id schemes and no cross-match table
    ia, _ib = common_stars(a, b, xm)
    assert ia.size == 30 and np.array_equal(a.ids[ia], xm["ID_A"])
