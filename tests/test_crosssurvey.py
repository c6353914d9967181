"""Cross-survey runs: two mock surveys observing partly the same stars, with a known
offset between their pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table, join

from bayescannon.cli import main
from bayescannon.errors import CrossMatchError, InvalidInputError
from bayescannon.simulate import mock_quadratic_survey
from bayescannon.simulate.crosssurveymock import OFFSET_B as OFFSET_B_MOCK
from bayescannon.survey.catalogue import read_catalogue
from bayescannon.survey.crosssurvey import RunSettings, SurveyData, common_stars, run_cross_survey
from bayescannon.survey.crosssurveyconfig import load_cross_survey_config

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


@pytest.fixture(scope="module")
def command_run(tmp_path_factory):
    """`mock-cross-survey` then `cross-survey` (3 folds) through the CLI."""
    root = tmp_path_factory.mktemp("xs")
    mock, out = root / "mock", root / "out"
    assert main(["mock-cross-survey", str(mock), "--n-common", "150", "--n-only", "50", "--n-repeat", "30"]) == 0
    assert main(["cross-survey", str(mock / "CONFIG.toml"), "-o", str(out), "--folds", "3", "--n-jobs", "1"]) == 0
    return mock, out


def test_cross_survey_command_writes_catalogues_report_and_tables(command_run):
    mock, out = command_run
    truth = Table.read(mock / "truth.fits")
    for run in ("ACAA", "ACGS", "GCAA", "GCGS"):
        assert (out / f"cv_{run}.ecsv").is_file() and (out / f"repeats_{run}.ecsv").is_file()
        assert (out / f"cv_{run}.png").is_file() and (out / f"precision_{run}.png").is_file()
    report = (out / "report.md").read_text()
    assert "Tables 1 and 3" in report and "Clusters on the APOGEE scale" in report
    for scale, offset in (("APOGEE", 0.0), ("GALAH", OFFSET_B_MOCK[2])):
        cat = read_catalogue(out / f"catalogue_{scale}_scale.fits")
        assert len(cat) == len(truth)  # every spectrum of both surveys, repeats included
        # Table A1 pass-through columns, repeat-calibrated errors beside the formal ones
        assert {"GAIA_DR3_SOURCE_ID", "PARALLAX", "DIST", "e_FE_H_FORMAL", "FLAG_SURVEY_FLAGGED"} <= set(cat.colnames)
        assert cat["PARALLAX"].unit == "mas"
        # each run's error model and repeat calibration recorded in the header
        assert {
            str(cat.meta[f"ERRM{r}"]).split(",")[0] for r in ("ACAA", "GCAA", "ACGS", "GCGS") if f"ERRM{r}" in cat.meta
        } == {"repeat-calibrated"}
        tj = join(cat, truth, keys="ID")
        gaia = np.asarray(tj["GAIA_DR3_SOURCE_ID"])
        # one Gaia id per star: shared by its repeat visits and by both surveys' spectra of it
        assert len(np.unique(gaia)) == 150 + 2 * 50
        assert len(np.unique(np.char.add(np.asarray(tj["STAR"]).astype(str), gaia.astype(str)))) == 400
        # the survey flags of the inputs (2 % of spectra) are carried
        assert 0 < np.asarray(cat["FLAG_SURVEY_FLAGGED"]).mean() < 0.05
        # the transferred [Fe/H] is on the scale of its training labels (offset included)
        d = np.asarray(tj["FE_H"]) - (np.asarray(tj["TRUE_FE_H"]) + offset)
        assert abs(np.median(d)) < 0.03
        # stars of the training population: the calibrated (p99) threshold flags about 1 %
        assert np.asarray(cat["FLAG_FAR_FROM_TRAINING"]).mean() < 0.03
        clusters = Table.read(out / f"clusters_{scale}_scale.ecsv")
        poor = clusters[clusters["CLUSTER"] == "CL_POOR"][0]
        assert poor["N_LOW_PROB"] == 8 and clusters.meta["PROBCOL"] == "MEMBERSHIP_PROB"
        assert abs(poor["OFFSET_FE_H"] - offset) < 0.05
    comp = Table.read(out / "comparison.ecsv")
    assert set(comp["POPULATION"]) == {"all", "giants", "dwarfs"}
    g = comp[(comp["COMPARISON"] == "APOGEE - GALAH pipeline") & (comp["LABEL"] == "LOGG")]
    assert g[g["POPULATION"] == "giants"]["N"][0] + g[g["POPULATION"] == "dwarfs"]["N"][0] == 150
    # the output folder is checked before any work: no silent overwrite
    before = (out / "comparison.ecsv").stat().st_mtime_ns
    assert main(["cross-survey", str(mock / "CONFIG.toml"), "-o", str(out), "--folds", "3"]) != 0
    assert (out / "comparison.ecsv").stat().st_mtime_ns == before


def test_cross_survey_config_errors(tmp_path, command_run):
    mock, _ = command_run
    text = (mock / "CONFIG.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[runs.GCGS]", "[runs.XCXX]").replace('"apogee.nc"', f'"{mock}/apogee.nc"'))
    for p in ("galah.nc", "apogee_labels.fits", "galah_labels.fits", "crossmatch.fits", "members.fits"):
        bad.write_text(bad.read_text().replace(f'"{p}"', f'"{mock / p}"'))
    bad.write_text(bad.read_text().replace('"literature.ecsv"', f'"{mock / "literature.ecsv"}"'))
    cfg = load_cross_survey_config(bad)
    a, b, xm = cfg.load_surveys()
    with pytest.raises(InvalidInputError, match="unknown run"):
        run_cross_survey(a, b, cfg.labels, crossmatch=xm, settings=cfg.runs)
    bad.write_text("foo = 1\n" + text)
    with pytest.raises(InvalidInputError, match="unknown key"):
        load_cross_survey_config(bad)
    bad.write_text(text.replace('"apogee.nc"', '"missing.nc"'))
    with pytest.raises(InvalidInputError, match=r"\[surveys.A\] spectra .*missing.nc does not exist"):
        load_cross_survey_config(bad)


def test_run_settings_repeat_combine_is_checked():
    assert RunSettings().repeat_combine == "max"  # the paper's rule stays the default
    assert RunSettings(repeat_combine="quadrature").repeat_combine == "quadrature"
    with pytest.raises(InvalidInputError, match="repeat_combine must be one of"):
        RunSettings(repeat_combine="sum")
