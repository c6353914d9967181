"""Careless-user and bad-input audit of ``bayescannon homogenise`` (issue 13, "Bad input"):
the config, the catalogues (ids, missing values, sentinels, errors, units, ``where``) and the
command line. Each case gets a typed error naming what is wrong, or a documented rule with
a warning; never a silent wrong number, a traceback or a half-written output."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

pytest.importorskip("xgboost")
pytest.importorskip("mapie")

from bayescannon.cli import main
from bayescannon.errors import InsufficientDataError, InvalidInputError, SurveyFormatError
from bayescannon.homogenise import config_from_dict, load_config, prepare_survey, select_rows
from bayescannon.io import read_labels
from bayescannon.report import Report
from bayescannon.simulate.mockcatalogues import make_mock_catalogues, write_mock_catalogues

LABELS = ["TEFF", "LOGG", "FE_H"]
CONFIG = {"labels": ["TEFF"], "reference": {"TEFF": ["A"]}, "surveys": {"A": {"path": "a.fits"}}}


def _survey(ids, teff=(5000.0,), e_teff=(50.0,), **cols):
    n = len(ids)
    t = Table({"ID": ids, "TEFF": np.resize(np.asarray(teff, float), n), "E_TEFF": np.resize(np.asarray(e_teff), n)})
    for k, v in cols.items():
        t[k] = v
    return t


# ---------------------------------------------------------------- the config
@pytest.mark.parametrize("key", ["min_overlpa", "refrence_surveys", "feature"])
def test_a_misspelt_top_level_key_is_refused(key):
    # before: silently ignored (min_overlpa = 5000 ran with the default 200)
    with pytest.raises(InvalidInputError, match=rf"unknown key\(s\) \['{key}'\]"):
        config_from_dict({**CONFIG, key: 5000})


@pytest.mark.parametrize(
    "edit",
    [{"labels": "TEFF"}, {"features": "SNR"}, {"reference": {"TEFF": "A"}}, {"labels": ["TEFF", "TEFF"]}],
)
def test_a_bare_string_or_repeated_name_is_refused(edit):
    # before: labels = "TEFF" was read letter by letter ("label T has no reference survey")
    with pytest.raises(InvalidInputError, match=r"must be a list of names|more than once"):
        config_from_dict({**CONFIG, **edit})


@pytest.mark.parametrize("value", [0, -5, 1.5, "200", True])
def test_min_overlap_must_be_a_positive_integer(value):
    with pytest.raises(InvalidInputError, match="min_overlap must be a positive integer"):
        config_from_dict({**CONFIG, "min_overlap": value})
    surveys = {"A": {"path": "a.fits", "min_overlap": value}}
    with pytest.raises(InvalidInputError, match="survey A min_overlap must be a positive integer"):
        config_from_dict({**CONFIG, "surveys": surveys})


def test_survey_names_differing_only_in_case_are_refused():
    # before: APOGEE_TEFF_CAL and apogee_TEFF_CAL were both written (one FITS column name)
    surveys = {"APOGEE": {"path": "a.fits"}, "apogee": {"path": "b.fits"}}
    with pytest.raises(InvalidInputError, match="APOGEE and apogee differ only in case"):
        config_from_dict({**CONFIG, "reference": {"TEFF": ["APOGEE"]}, "surveys": surveys})


def test_the_same_rows_of_one_file_as_two_surveys_are_refused(tmp_path):
    # before: every LAMOST star was counted twice (N_TEFF up to 4 with three real surveys)
    same = {"A": {"path": "a.fits"}, "B": {"path": "./sub/../a.fits"}}
    (tmp_path / "sub").mkdir()
    with pytest.raises(InvalidInputError, match="surveys A and B read the same file"):
        config_from_dict({**CONFIG, "surveys": same}, base=tmp_path)
    # one file holding two surveys, told apart by where or by columns, is fine
    split = {"A": {"path": "a.fits", "where": "SRC == 1"}, "B": {"path": "a.fits", "where": "SRC == 2"}}
    assert list(config_from_dict({**CONFIG, "surveys": split}, base=tmp_path).surveys) == ["A", "B"]
    cols = {"A": {"path": "a.fits", "columns": {"TEFF": "TEFF_A"}}, "B": {"path": "a.fits"}}
    assert list(config_from_dict({**CONFIG, "surveys": cols}, base=tmp_path).surveys) == ["A", "B"]


def test_relative_paths_are_relative_to_the_config_not_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "my cats é"
    folder.mkdir()
    (folder / "c.toml").write_text('labels = ["TEFF"]\n[reference]\nTEFF = ["A"]\n[surveys.A]\npath = "a b.fits"\n')
    _survey(["1", "2"]).write(folder / "a b.fits")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("my cats é") / "c.toml")
    assert cfg.surveys["A"].path.resolve() == (folder / "a b.fits").resolve()
    assert len(cfg.read_catalogues()["A"]) == 2


# ---------------------------------------------------------------- ids
def test_integer_text_and_zero_padded_ids_match():
    # before: a zero-padded text id never matched the integer id of another survey
    # ("LAMOST has no path to the reference scale: overlaps REF=0")
    gaia = np.array([4_295_806_720, 38_655_544_960, 2**62 + 7], dtype=np.int64)
    forms = [gaia, gaia.astype(str), np.char.zfill(gaia.astype(str), 20), np.char.add("  ", gaia.astype(str))]
    got = [prepare_survey("S", _survey(ids), ["TEFF"], []).ids for ids in forms]
    for ids in got:
        np.testing.assert_array_equal(ids, gaia.astype(str))
    # text ids that are not all digits are kept as they are (stripped)
    np.testing.assert_array_equal(prepare_survey("S", _survey([" 2M007 ", "007"]), ["TEFF"], []).ids, ["2M007", "007"])


def test_float_ids_are_refused_when_digits_may_be_lost():
    np.testing.assert_array_equal(prepare_survey("S", _survey([3.0, 12.0]), ["TEFF"], []).ids, ["3", "12"])
    with pytest.raises(SurveyFormatError, match=r"survey GAIA: the id column .* 2\*\*53"):
        prepare_survey("GAIA", _survey([4.295806720123457e18, 1.0]), ["TEFF"], [])
    with pytest.raises(SurveyFormatError, match="not exact integers"):
        prepare_survey("GAIA", _survey([1.5, 2.0]), ["TEFF"], [])


def test_rows_without_an_id_are_skipped_not_merged_into_one_star(tmp_path, caplog):
    # before: two empty CSV id cells became one star "0" (that would match a real id 0)
    path = tmp_path / "s.csv"
    path.write_text("ID,TEFF,E_TEFF\na,5000,50\n,5200,50\n,5300,50\n0,5400,50\n")
    with caplog.at_level(logging.WARNING, logger="bayescannon"):
        d = prepare_survey("S", read_labels(path), ["TEFF"], [])
    assert d.ids.tolist() == ["a", "0"] and d.value[:, 0].tolist() == [5000.0, 5400.0]
    assert d.counts["missing_id"] == 2 and d.counts["duplicates"] == 0
    assert "survey S: 2 row(s) without an id (ID) skipped" in caplog.text
    with pytest.raises(SurveyFormatError, match="every row's id"):
        prepare_survey("S", _survey(MaskedColumn(["a", "b"], mask=[True, True])), ["TEFF"], [])


# ---------------------------------------------------------------- values and errors
@pytest.mark.parametrize("fmt", ["fits", "ascii.ecsv", "ascii.csv"])
def test_masked_cells_never_become_numbers(tmp_path, fmt):
    t = Table(_survey(["a", "b", "c", "d"], SNR=[10.0, 20.0, 30.0, 40.0]), masked=True)
    t["TEFF"].mask[0] = True
    t["E_TEFF"].mask[1] = True
    t["SNR"].mask[2] = True
    path = tmp_path / f"s.{fmt.split('.')[-1]}"
    t.write(path, format=fmt)
    d = prepare_survey("S", read_labels(path), ["TEFF"], ["SNR"])
    assert np.isnan(d.value[:2, 0]).all() and d.value[2:, 0].tolist() == [5000.0, 5000.0]
    assert np.isnan(d.features[2, 0]) and d.features[[0, 1, 3], 0].tolist() == [10.0, 20.0, 40.0]


def test_sentinels_are_missing_with_a_warning(caplog):
    # before: a table given to the Python API used TEFF = -9999 as a measurement
    t = _survey(["a", "b", "c", "d"], teff=[5000.0, -9999.0, 9999.0, 5100.0], e_teff=[50, 50, 50, 9999.0])
    t["MAG"] = [12.0, 99.99, 13.0, 14.0]
    with caplog.at_level(logging.WARNING, logger="bayescannon"):
        d = prepare_survey("RAVE", t, ["TEFF"], ["MAG"])
    assert d.value[:, 0].tolist()[0] == 5000.0 and np.isnan(d.value[1:, 0]).all()
    assert np.isnan(d.features[1, 0]) and d.features[[0, 2, 3], 0].tolist() == [12.0, 13.0, 14.0]
    assert "RAVE: 2 value(s) of TEFF are the sentinel -9999/9999" in caplog.text
    assert "1 value(s) of E_TEFF are the sentinel 9999" in caplog.text


def test_zero_infinite_and_missing_errors_are_skipped_and_counted(caplog):
    t = _survey(["a", "b", "c", "d", "e"], e_teff=[50.0, 0.0, np.inf, np.nan, -5.0])
    with caplog.at_level(logging.WARNING, logger="bayescannon"):
        d = prepare_survey("S", t, ["TEFF"], [])
    assert np.isfinite(d.value[:, 0]).tolist() == [True, False, False, False, False]
    assert d.counts["no_error"]["TEFF"] == 3  # before: not counted, not reported
    assert d.counts["bad_percentiles"]["TEFF"] == 1 and d.bad_percentiles[:, 0].tolist() == [0, 0, 0, 0, 1]
    assert "3 row(s) with TEFF but a zero, infinite or missing error skipped" in caplog.text


def test_percentiles_win_over_a_symmetric_error():
    t = _survey(["a"], teff=[5000.0], e_teff=[10.0], TEFF_P16=[4900.0], TEFF_P84=[5300.0])
    d = prepare_survey("S", t, ["TEFF"], [])
    assert (d.s1[0, 0], d.s2[0, 0]) == (100.0, 300.0)


def test_label_units_are_converted_or_refused(caplog):
    t = _survey(["a", "b"], teff=[5.0, 6.0], e_teff=[0.05, 0.1])
    t["TEFF"].unit = t["E_TEFF"].unit = "kK"
    with caplog.at_level(logging.WARNING, logger="bayescannon"):
        d = prepare_survey("S", t, ["TEFF"], [])
    np.testing.assert_allclose(d.value[:, 0], [5000.0, 6000.0])  # before: 5 and 6 "K"
    np.testing.assert_allclose(d.s1[:, 0], [50.0, 100.0])
    assert "column TEFF converted from kK to K" in caplog.text
    t["TEFF"].unit = t["E_TEFF"].unit = "dex"
    with pytest.raises(SurveyFormatError, match="survey S: column TEFF is in dex, which is not a unit of TEFF"):
        prepare_survey("S", t, ["TEFF"], [])


# ---------------------------------------------------------------- where, empty surveys, absent labels
def test_where_never_selects_a_row_with_a_missing_value():
    # before: a masked flag (data 0 under the mask) passed flag == 0
    t = Table({"FLAG": MaskedColumn([0, 0, 1, 0], mask=[False, True, False, False]), "SNR": [10.0, 20.0, 30.0, np.nan]})
    assert select_rows(t, "FLAG == 0").tolist() == [True, False, False, True]
    assert select_rows(t, "FLAG != 1").tolist() == [True, False, False, True]
    assert select_rows(t, "not (SNR > 15)").tolist() == [True, False, False, False]


def _write_config(tmp_path, text, tables):
    for name, t in tables.items():
        t.write(tmp_path / name)
    (tmp_path / "c.toml").write_text(text)
    return load_config(tmp_path / "c.toml")


def test_a_where_that_selects_nothing_is_named(tmp_path):
    # before: the survey was silently left out of the unified catalogue
    text = 'labels = ["TEFF"]\n[reference]\nTEFF = ["A"]\n[surveys.A]\npath = "a.fits"\nwhere = "TEFF > 1e9"\n'
    cfg = _write_config(tmp_path, text, {"a.fits": _survey(["1", "2"])})
    with pytest.raises(
        InvalidInputError, match=r"survey A \(.*a.fits\): where = 'TEFF > 1e9' selects none of its 2 rows"
    ):
        cfg.read_catalogues()
    with pytest.raises(InsufficientDataError, match="survey A: the catalogue has no rows"):
        prepare_survey("A", _survey([]), ["TEFF"], [])


def test_a_label_no_reference_survey_has_is_named(tmp_path):
    # before: a ValueError from GaussianMixture ("Found array with 0 sample(s)")
    text = 'labels = ["TEFF", "VSINI"]\n[reference]\nTEFF = ["A"]\nVSINI = ["A"]\n[surveys.A]\npath = "a.fits"\n'
    cfg = _write_config(tmp_path, text, {"a.fits": _survey(["1", "2"])})
    with pytest.raises(
        SurveyFormatError, match=r"label VSINI: none of its reference surveys \['A'\] has a VSINI column"
    ):
        cfg.read_catalogues()


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    "extra", [["--n-draws", "0"], ["--n-draws", "1"], ["--n-jobs", "0"], ["--seed", "-3"], ["--n-estimators", "0"]]
)
def test_nonsense_numbers_are_refused_by_the_parser(tmp_path, capsys, extra):
    # before: n-draws 1 wrote zero-width calibrated intervals; 0, seed -3 and n-estimators 0
    # were tracebacks (ValueError, AttributeError) after the reading
    with pytest.raises(SystemExit) as exc:
        main(["homogenise", str(tmp_path / "c.toml"), "-o", str(tmp_path / "u.fits"), *extra])
    assert exc.value.code == 2 and "must be >=" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_mock_catalogues_refuses_zero_stars(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["mock-catalogues", str(tmp_path / "m"), "--n-stars", "0"])
    assert "must be >= 1" in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def small_mock(tmp_path_factory):
    mock = make_mock_catalogues(1500, surveys=("APOGEE", "GALAH"), seed=5, min_overlap=100)
    return write_mock_catalogues(tmp_path_factory.mktemp("mock") / "m", mock)


@pytest.mark.parametrize("report", ["u.fits", "u_models", "u_models/rep"])
def test_a_report_dir_overlapping_another_output_is_refused_before_work(small_mock, tmp_path, capsys, report):
    # before (report = the output file): the catalogue and models were written, then a
    # FileExistsError traceback; (report = the models folder): report mixed into the models
    args = ["homogenise", str(small_mock), "-o", str(tmp_path / "u.fits"), "--report-dir", str(tmp_path / report)]
    assert main([*args, "--overwrite"]) == 1
    assert "overlaps" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_catalogue_is_written_last_and_names_its_models(small_mock, tmp_path, monkeypatch, capsys):
    import hashlib

    out = tmp_path / "u.fits"
    args = ["homogenise", str(small_mock), "-o", str(out), "--n-estimators", "20", "--n-draws", "20"]
    args += ["--report-format", "md"]

    def killed(self, path):
        raise KeyboardInterrupt  # the run dies while writing the report

    with monkeypatch.context() as m:
        m.setattr(Report, "write", killed)
        with pytest.raises(KeyboardInterrupt):
            main(args)
    assert not out.exists()  # before: the catalogue was written first, so it existed here
    assert main(args) == 1 and "exists" in capsys.readouterr().err  # the stale models folder is not taken
    assert main([*args, "--overwrite"]) == 0
    t = Table.read(out)
    digest = hashlib.sha256((tmp_path / "u_models" / "homogeniser.json").read_bytes()).hexdigest()
    assert t.meta["MODELS"] == "u_models" and t.meta["MODELSHA"] == digest
    report = (tmp_path / "u_report" / "homogenise_report.md").read_text()
    n_apogee = len(Table.read(small_mock.parent / "apogee.fits"))
    assert (
        "## Inputs" in report
        and f"| APOGEE | {n_apogee} | 0 | 0 | 0 missing, 0 no error, 0 bad percentiles |" in report
    )


# ---------------------------------------------------------------- a survey without one label
def test_a_label_a_survey_never_measures_is_left_out_of_its_deconvolution_exactly():
    """Before: a survey without any FE_H (e.g. Gaia RVS without metallicities) crashed in the
    mixture fit (no star with every label). Now the label is left out of its fit and embedded
    as an independent unit Gaussian, which a missing value's huge noise variance marginalises:
    ``D`` of the other labels is that of a fit on them alone, to rounding."""
    from bayescannon.homogenise.deconvolve import Deconvolution

    rng = np.random.default_rng(3)
    n = 3000
    x = np.column_stack([rng.uniform(4800, 6500, n), rng.normal(4.0, 0.4, n)])
    err = np.array([80.0, 0.15])
    v = x + rng.normal(0, 1, (n, 2)) * err
    ncov2 = np.broadcast_to(np.diag(err**2), (n, 2, 2)).copy()
    two = Deconvolution(random_state=0).fit(v, ncov2)
    v3 = np.column_stack([v, np.full(n, np.nan)])
    ncov3 = np.zeros((n, 3, 3))
    ncov3[:, :2, :2] = ncov2
    ncov3[:, 2, 2] = np.nan
    three = Deconvolution(random_state=0).fit(v3, ncov3)
    d2, d3 = two.shrinkage(v, ncov2), three.shrinkage(v3, ncov3)
    assert np.isnan(d3[:, 2]).all()
    for j in range(2):
        np.testing.assert_allclose(d3[:, j], d2[:, j], rtol=0, atol=1e-6 * err[j])
    with pytest.raises(InsufficientDataError, match="at least 20 are needed"):
        Deconvolution().fit(np.full((50, 2), np.nan), np.full((50, 2, 2), np.nan))


def test_a_survey_without_one_label_is_homogenised_on_the_others():
    from bayescannon.homogenise import Homogeniser

    mock = make_mock_catalogues(3000, surveys=("APOGEE", "GALAH", "RAVE"), seed=2, min_overlap=100)
    cats = dict(mock.catalogues)
    rave = cats["RAVE"].copy()
    rave.remove_columns([c for c in rave.colnames if c.startswith("FE_H") or c == "E_FE_H"])
    cats["RAVE"] = rave
    cfg = mock.config
    h = Homogeniser(
        cfg["labels"], cfg["reference"], features=cfg["features"], n_estimators=30, n_draws=20, min_overlap=100
    )
    out = h.fit_transform(cats)
    assert "RAVE" in h.deconvolution_ and "RAVE" in h.models_["TEFF"] and "RAVE" not in h.models_["FE_H"]
    on = np.isin(out["ID"], rave["ID"])
    assert np.isfinite(out["RAVE_TEFF_CAL"][on]).mean() > 0.9
    assert "RAVE_FE_H_CAL" not in out.colnames or not np.isfinite(out["RAVE_FE_H_CAL"]).any()
