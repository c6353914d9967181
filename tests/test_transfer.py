"""End-to-end label transfer (Ho+2017) on the two-survey mock: APOGEE labels onto LAMOST spectra.

The default test runs the whole CLI pipeline once on a small mock (400 stars in both
surveys, 130 LAMOST-only, 9 corrupted LAMOST files) and checks, against the truth:

* transferred labels of the stars kept out of training are on the APOGEE scale: their
  mean offset from the truth is within 10 % of the simulated LAMOST pipeline offset,
  plus 3 standard errors (scatter / sqrt(n)), plus the quadratic Cannon's own mean bias
  on this simulator (``CANNON_FLOOR``, see below);
* their scatter is smaller than that of the LAMOST pipeline's own labels;
* [alpha/M], which the LAMOST pipeline never measured, is transferred;
* every corrupted file, ambiguous cross-match, flagged or bad reference star is listed
  with the step and the reason, and the run completes;
* steps re-run from their saved output.

``CANNON_FLOOR``: a quadratic Cannon trained on 1,600 simulated LAMOST spectra with
*true* labels (no survey pipeline, no preprocessing) still has a mean bias of
+3.9 +- 1.1 K, +0.008 +- 0.003 and +0.007 +- 0.001 dex on 1,000 unseen stars (the
simulator is deliberately not quadratic: saturated lines, molecular bands), and
-0.003 +- 0.0005 in [alpha/M]. No transfer can beat that, so it is part of the
tolerance.
"""

from __future__ import annotations

import json
import logging
import shutil
import tomllib

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table

from bayescannon.cli import main
from bayescannon.errors import InvalidInputError
from bayescannon.model import CannonModel
from bayescannon.simulate.mocksurvey import CORRUPTIONS, example_config, make_mock_survey
from bayescannon.survey.catalogue import build_catalogue, read_catalogue
from bayescannon.survey.transfer import STEPS, TransferConfig, TransferPipeline, evaluate

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
CANNON_FLOOR = {"TEFF": 4.0, "LOGG": 0.008, "FE_H": 0.007, "ALPHA_M": 0.003}


def _s(col) -> np.ndarray:
    """A (possibly masked) string column as plain stripped strings."""
    data = col.filled("") if hasattr(col, "filled") else col
    return np.char.strip(np.asarray(data).astype(str))


def _config(mock_dir, *, output="run", n_folds=3, cleanup_mode="cv", holdout=0.1, max_iter=3):
    cfg = tomllib.loads(example_config(output, n_folds=n_folds, cleanup_folds=n_folds))
    cfg["cleanup"]["mode"] = cleanup_mode
    cfg["cleanup"]["max_iter"] = max_iter
    cfg["train"]["holdout_fraction"] = holdout
    return cfg


def _write_config(path, cfg):
    lines = []

    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    def section(name, d):
        scalars = {k: v for k, v in d.items() if not (isinstance(v, dict) and k in ("ranges", "bitmasks"))}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict) and k in ("ranges", "bitmasks"):
                lines.append(f"[{name}.{k}]")
                lines.extend(f"{kk} = {value(vv)}" for kk, vv in v.items())

    for k, v in cfg.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {value(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            section(k, v)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The mock and one complete CLI run on it."""
    mock_dir = tmp_path_factory.mktemp("transfer_mock")
    mock = make_mock_survey(
        mock_dir,
        n_both=400,
        n_lamost_only=130,
        n_apogee_only=20,
        apogee_spectra=(),
        corruptions=tuple(CORRUPTIONS),
        lamost_snr=(30.0, 300.0),
        seed=7,
    )
    cfg = _config(mock_dir, max_iter=2)
    cfg["cuts"]["min_snr"] = 35.0
    cfg["validate"]["n_folds"] = 2  # the statistics are only checked for presence here
    cfg["bootstrap"] = {"n_models": 3, "n_folds": 2}  # the Ho preset's bootstrap, small (20 models: own tests)
    cfg_path = _write_config(mock_dir / "test.toml", cfg)
    assert main(["transfer", str(cfg_path)]) == 0
    pipe = TransferPipeline(cfg_path)
    return mock, cfg_path, pipe


def test_transferred_labels_are_on_the_reference_scale(run):
    mock, _, pipe = run
    ev = Table.read(pipe.step_dir("evaluate") / "evaluation.fits")
    rows = {str(r["LABEL"]): r for r in ev}
    for name in ("TEFF", "LOGG", "FE_H"):
        r = rows[name]
        assert r["N"] >= 150
        # mean offset from the truth: within 10 % of the simulated LAMOST offset (+ noise + floor)
        tol = 0.1 * abs(r["OFFSET_MEAN"]) + 3.0 * r["SE_BIAS"] + CANNON_FLOOR[name]
        assert abs(r["BIAS"]) <= tol, (name, r["BIAS"], tol)
        # smaller scatter (and RMS) than the LAMOST pipeline's own labels
        assert r["SCATTER"] < r["Y_SCATTER"], name
        assert r["RMS"] < r["Y_RMS"], name
    # where the simulated offset is large (Teff, logg) the transfer removes it
    for name in ("TEFF", "LOGG"):
        assert abs(rows[name]["BIAS"]) < abs(rows[name]["OFFSET_MEAN"])


def test_alpha_is_transferred_although_lamost_never_measured_it(run):
    mock, _, pipe = run
    cat = Table.read(pipe.output / "catalogue.fits")
    assert "LAMOST_ALPHA_M" not in cat.colnames and "ALPHA_M" in cat.colnames
    ev = {str(r["LABEL"]): r for r in Table.read(pipe.step_dir("evaluate") / "evaluation.fits")}["ALPHA_M"]
    truth = mock.truth
    spread = np.std(truth["ALPHA_M"][truth["IN_LAMOST"]])
    # informative: the error is a fraction of the spread of [alpha/M] in the population
    assert ev["SCATTER"] < 0.5 * spread
    assert abs(ev["BIAS"]) <= 3.0 * ev["SE_BIAS"] + CANNON_FLOOR["ALPHA_M"]


def test_every_bad_file_and_star_is_listed_with_its_reason(run):
    mock, _, pipe = run
    excl = Table.read(pipe.output / "excluded.fits")
    step, reason, files, ids = _s(excl["STEP"]), _s(excl["REASON"]), _s(excl["FILE"]), _s(excl["ID"])
    truth = mock.truth
    kinds = dict(zip(_s(mock.corrupted["KIND"]), _s(mock.corrupted["FILENAME"]), strict=True))
    obsid_of = {k: str(o) for k, o in zip(_s(truth["CORRUPTION"]), truth["OBSID"], strict=True) if k}

    def row_for_file(kind):
        hit = np.flatnonzero(files == kinds[kind])
        assert hit.size, f"{kind}: file {kinds[kind]} not listed"
        return hit[0]

    expected_read = {
        "not_fits": "not a readable FITS",
        "truncated": "truncated",
        "missing_z": "keyword Z",
        "bad_wavelength": "increasing",
    }
    for kind, words in expected_read.items():
        i = row_for_file(kind)
        assert step[i] == "read" and words in reason[i], (kind, reason[i])
        assert ids[i] == kinds[kind].rsplit(".", 1)[0], ids[i]  # the file stem stands in for the id
    dup = np.flatnonzero(ids == obsid_of["duplicate_obsid"])
    assert dup.size == 2 and all(step[dup] == "read") and all("duplicated id" in reason[i] for i in dup)
    expected_pre = {
        "no_overlap": "does not overlap",
        "all_masked": "no usable pixel",
        "bad_redshift": "no valid redshift",
    }
    for kind, words in expected_pre.items():
        i = np.flatnonzero(ids == obsid_of[kind])
        assert i.size == 1 and step[i[0]] == "preprocess" and words in reason[i[0]], (kind, reason[i])
    i = np.flatnonzero(ids == obsid_of["missing_radec"])
    assert step[i[0]] == "crossmatch" and "coordinates" in reason[i[0]]
    # the run labelled every other star, including the one without coordinates
    cat = Table.read(pipe.output / "catalogue.fits")
    cat_ids = set(_s(cat["ID"]))
    unlabelled = {obsid_of[k] for k in CORRUPTIONS if k != "missing_radec"}
    assert not unlabelled & cat_ids
    assert obsid_of["missing_radec"] in cat_ids
    n_good_lamost = int(truth["IN_LAMOST"].sum()) - len(unlabelled)
    assert len(cat) == n_good_lamost
    # ambiguous cross-matches (a close APOGEE neighbour, a duplicated APOGEE row)
    for col in ("CLOSE_PAIR", "DUPLICATE_APOGEE_ID"):
        sid = str(truth["OBSID"][np.flatnonzero(truth[col])[0]])
        i = np.flatnonzero(ids == sid)
        assert step[i[0]] == "crossmatch" and "catalogue rows within" in reason[i[0]]
    # STAR_BAD-flagged reference stars are cut, the unflagged bad labels cleaned up
    flagged = {str(o) for o in truth["OBSID"][truth["APOGEE_FLAGGED"]]}
    cut_ids = set(ids[step == "cuts"])
    assert flagged <= cut_ids
    assert all("ASPCAPFLAG" in r for r, s in zip(reason, ids, strict=True) if s in flagged)
    outliers = {str(o) for o in truth["OBSID"][truth["APOGEE_OUTLIER"]]} - cut_ids
    cleaned = set(ids[step == "cleanup"])
    holdout = set(_s(Table.read(pipe.step_dir("cleanup") / "holdout.fits")["ID"]))
    assert outliers - holdout <= cleaned, f"bad reference labels not cleaned: {outliers - holdout - cleaned}"
    n_ref = json.loads((pipe.step_dir("cleanup") / "done.json").read_text())["n_reference"]
    assert len(cleaned - outliers) <= 0.05 * n_ref  # few good stars dropped
    # the catalogue says why a star is not in the training set
    status = dict(zip(_s(cat["ID"]), _s(cat["REFERENCE_STATUS"]), strict=True))
    some = next(iter(cleaned))
    assert status[some].startswith("excluded (cleanup)")


def test_summary_holdout_is_on_the_reference_scale(run):
    _, _, pipe = run
    summary = json.loads((pipe.output / "summary.json").read_text())
    assert summary["n_holdout"] > 20
    assert summary["n_excluded"]["read"] == 6  # 4 unreadable files + 2 claiming one OBSID
    for name in ("TEFF", "LOGG", "FE_H"):
        h = summary["holdout_vs_reference"][name]
        # held-out reference stars: transferred labels agree with APOGEE better than LAMOST's own
        assert h["rms"] < h["lamost_rms"]
    assert set(summary["validation"]) == set(LABELS)


def test_steps_rerun_from_saved_output(run, caplog):
    _, cfg_path, pipe = run
    before = Table.read(pipe.output / "catalogue.fits")
    assert main(["transfer", str(cfg_path), "--from", "infer", "--no-log-file"]) == 0
    after = Table.read(pipe.output / "catalogue.fits")
    for name in LABELS:
        np.testing.assert_array_equal(np.asarray(before[name]), np.asarray(after[name]))
    # a changed configuration: the saved upstream output is refused, naming the step, not mixed in
    cfg = TransferConfig.from_toml(cfg_path)
    cfg.data["cuts"]["min_snr"] = 55.0
    with pytest.raises(
        InvalidInputError,
        match=r"step 'cuts' cannot be used \(step '\w+' depends on it\): .*different configuration"
        r" \[cuts\.min_snr: [\d.]+ -> 55\.0\].*--from cuts",
    ):
        TransferPipeline(cfg).run(only="catalogue")
    # nothing half-written is left behind
    leftovers = [p for p in pipe.output.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    for step in STEPS:
        assert pipe.is_done(step)


def _copy_of_run(run, tmp_path):
    """The mock folder with its finished run, copied (so that it can be damaged)."""
    mock, cfg_path, _ = run
    copy = tmp_path / "mock"
    shutil.copytree(mock.outdir, copy)
    return copy, TransferPipeline(copy / cfg_path.name)


def test_resume_reuses_only_verified_matching_steps(run, tmp_path, caplog, capsys):
    copy, pipe = _copy_of_run(run, tmp_path)
    before = Table.read(pipe.output / "catalogue.fits")
    files = {p: p.stat().st_mtime_ns for p in pipe.output.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="bayescannon.survey.transfer"):
        pipe.run()
    steps = pipe.steps_to_run()
    assert caplog.text.count("saved output matches") == len(steps)
    assert {p: p.stat().st_mtime_ns for p in pipe.output.rglob("*") if p.is_file()} == files  # nothing rewritten
    capsys.readouterr()
    assert main(["transfer", str(copy / "test.toml"), "--no-log-file"]) == 0  # the CLI resumes the same way
    text = capsys.readouterr().out
    assert text.count("saved output reused") == len(steps)
    assert f"{len(steps)} step(s) done ({len(steps)} reused from saved output)" in text
    # --json: one object, every step named with its saved summary
    import json

    assert main(["transfer", str(copy / "test.toml"), "--no-log-file", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    ran = json.loads(lines[0])["steps"]
    assert list(ran) == list(steps) and all(d["reused"] and d["files"] for d in ran.values())

    # a saved file damaged: that step and every later one are recomputed, the earlier reused
    model = pipe.step_dir("train") / "model.nc"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bayescannon.survey.transfer"):
        TransferPipeline(copy / "test.toml").run()
    assert "step cleanup: saved output matches" in caplog.text
    assert "step train: saved output not reused" in caplog.text and "changed or corrupted" in caplog.text
    assert "step infer: saved output matches" not in caplog.text
    after = Table.read(pipe.output / "catalogue.fits")
    for name in LABELS:  # deterministic: the recomputed steps give the same catalogue
        np.testing.assert_array_equal(np.asarray(before[name]), np.asarray(after[name]))


def test_changed_input_files_are_never_mixed_with_saved_output(run, tmp_path):
    copy, pipe = _copy_of_run(run, tmp_path)
    assert pipe._verify("catalogue")[1] is None
    # the same configuration, but one input file's content changed (a catalogue re-downloaded)
    ref = copy / "apogee_allstar.fits"
    table = Table.read(ref)
    table["TEFF"][0] += 100.0
    table.write(ref, overwrite=True)
    fresh = TransferPipeline(copy / "test.toml")
    data, problem = fresh._verify("read")
    assert data is None and "other input files" in problem
    with pytest.raises(
        InvalidInputError,
        match=r"step 'read' cannot be used \(step '\w+' depends on it\): .*other input files.*--from read",
    ):
        fresh.run(start="validate")


def test_a_step_without_its_inputs_fails_clearly(run, tmp_path, capsys):
    mock, cfg_path, _ = run
    cfg = _config(mock.outdir, output=str(tmp_path / "empty_run"))
    path = _write_config(mock.outdir / "empty.toml", cfg)
    assert main(["transfer", str(path), "--step", "train"]) == 1
    err = capsys.readouterr().err
    assert "no saved output" in err and "--from" in err


def test_evaluate_needs_truth_rows(run):
    mock, _, pipe = run
    cat = Table.read(pipe.output / "catalogue.fits")
    truth = mock.truth.copy()
    truth["OBSID"] = -1
    with pytest.raises(InvalidInputError, match="truth"):
        evaluate(cat, truth, LABELS, truth_id_column="OBSID")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.update(colour="red"), "unknown configuration key"),
        (lambda c: c["cleanup"].update(n_sigmas=3), "unknown configuration key 'cleanup.n_sigmas'"),
        (lambda c: c["reference"]["labels"].pop("ALPHA_M"), "ALPHA_M"),
        (lambda c: c["crossmatch"].update(method="telepathy"), "method"),
        (lambda c: c["train"].update(holdout_fraction=1.5), "holdout_fraction"),
        (lambda c: c["cuts"].update(min_snrr=3), "quality-cut"),
        (lambda c: c.update(label_names=[]), "label_names"),
        (lambda c: c["target"].pop("spectra"), "spectra"),
    ],
)
def test_configuration_errors(tmp_path, change, match):
    cfg = _config(tmp_path)
    change(cfg)
    with pytest.raises(InvalidInputError, match=match):
        TransferConfig(cfg, base_dir=tmp_path)


def test_no_spectra_files(tmp_path):
    cfg = _config(tmp_path)
    cfg["target"]["spectra"] = ["nowhere/*.fits"]
    with pytest.raises(InvalidInputError, match="match no file"):
        TransferPipeline(TransferConfig(cfg, base_dir=tmp_path)).run(only="read")


@pytest.mark.slow
def test_full_size_reproduction(tmp_path):
    """Ho+2017 at a fuller size: 2,000 stars in both surveys, 600 LAMOST-only, CV clean-up."""
    mock = make_mock_survey(
        tmp_path / "mock", n_both=2000, n_lamost_only=600, n_apogee_only=200, apogee_spectra=(), seed=11
    )
    cfg = _config(mock.outdir, n_folds=5, cleanup_mode="cv", holdout=0.1, max_iter=5)
    cfg["validate"]["n_folds"] = 8
    pipe = TransferPipeline(TransferConfig(cfg, base_dir=mock.outdir))
    result = pipe.run()
    stats = result["evaluate"]["statistics"]
    for name in ("TEFF", "LOGG", "FE_H"):
        s = stats[name]
        tol = 0.1 * abs(s["offset_mean"]) + 3.0 * s["se_bias"] + CANNON_FLOOR[name]
        assert abs(s["bias"]) <= tol, (name, s)
        assert s["scatter"] < s["y_scatter"] and s["rms"] < s["y_rms"], name
    a = stats["ALPHA_M"]
    assert abs(a["bias"]) <= 3.0 * a["se_bias"] + CANNON_FLOOR["ALPHA_M"]


def test_the_catalogue_is_the_one_builders(run):
    """Transfer writes the catalogue that build_catalogue makes of its saved inference
    (same columns, values and units as `catalogue` / `infer -o` would write), with the
    hull and distance flags evaluated on the model's training labels."""
    _, _, pipe = run
    cat = read_catalogue(pipe.output / "catalogue.fits")
    model = CannonModel.load(pipe.step_dir("train") / "model.nc")
    result = xr.load_dataset(pipe.step_dir("infer") / "labels.nc", engine="h5netcdf")
    ref = build_catalogue(model, result, uncertainty="formal")
    assert "FLAG_OUTSIDE_HULL" in cat.colnames and "FLAG_FAR_FROM_TRAINING" in cat.colnames
    assert "formal" in str(cat.meta["ERRMODEL"])
    for name in model.label_names:
        for col in (name, f"e_{name}"):
            np.testing.assert_array_equal(np.asarray(cat[col]), np.asarray(ref[col]), err_msg=col)
            assert str(cat[col].unit) == str(ref[col].unit), col
    np.testing.assert_array_equal(np.asarray(cat["FLAG_OUTSIDE_HULL"]), np.asarray(ref["FLAG_OUTSIDE_HULL"]))


def test_ho_preset_preselects_and_bootstraps_in_the_pipeline(run):
    """The default (``ho2017``) preset: the infer step records the pre-selection of every star
    on its LAMOST labels and lists the dropped ones; the catalogue carries e_BOOT_* from the
    bootstrap step (3 models here, to keep the test fast; 20 by default)."""
    _, _, pipe = run
    assert pipe.config.data["preset"] == "ho2017" and pipe.config.data["preselect"]["enabled"]
    pre = Table.read(pipe.step_dir("infer") / "preselection.fits")
    labels = xr.load_dataset(pipe.step_dir("infer") / "labels.nc", engine="h5netcdf")
    labelled = set(np.asarray(labels["star"].values).astype(str))
    selected = np.asarray(pre["PRESELECTED"], bool)
    d = np.ma.filled(np.ma.asarray(pre["PRESELECT_DISTANCE"], dtype=float), np.nan)
    # exactly the selected stars are labelled; a dropped star is beyond the cut
    assert set(_s(pre["ID"])[selected]) == labelled
    assert np.all(d[~selected] > 2.5) and np.all(~(d[selected] > 2.5))
    # stars of the training population (the training set itself) are all selected
    training = set(_s(Table.read(pipe.step_dir("cleanup") / "training_set.fits")["ID"]))
    assert all(selected[_s(pre["ID"]) == t].all() for t in list(training)[:50])
    excluded = Table.read(pipe.output / "excluded.fits")
    pre_rows = excluded[_s(excluded["STEP"]) == "infer"]
    assert set(_s(pre_rows["ID"])) == set(_s(pre["ID"])[~selected])
    assert all("pre-selection" in r for r in _s(pre_rows["REASON"]))
    cat = read_catalogue(pipe.output / "catalogue.fits")
    models = Table.read(pipe.step_dir("bootstrap") / "bootstrap_models.fits")
    assert len(models) == 3 and int(cat.meta["NBOOT"]) == 3
    for name in LABELS:
        e = np.ma.filled(np.ma.asarray(cat[f"e_BOOT_{name}"], dtype=float), np.nan)
        assert np.isfinite(e).mean() > 0.95 and np.all(e[np.isfinite(e)] >= 0)
        assert str(cat[f"e_BOOT_{name}"].unit) == str(cat[name].unit)
        assert np.all(np.isfinite(models[f"CV_SCATTER_{name}"]))
