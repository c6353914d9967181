"""Censoring windows: the shipped APOGEE DR12 α-element windows, user window tables and
the ``censors="nandakumar2022-apogee"`` preset."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from conftest import shared_file

from bayescannon import CannonModel
from bayescannon.censoring import PRESETS, preset_windows, read_windows, resolve_censors
from bayescannon.commands._common import parse_censors
from bayescannon.errors import InvalidInputError, LabelError

PRESET = "nandakumar2022-apogee"


def test_shipped_apogee_windows_are_the_aspcap_element_windows():
    win = preset_windows(PRESET)
    assert sorted(win) == ["Ca", "Mg", "Si", "Ti"]
    t = Table.read(f"bayescannon/data/{PRESETS[PRESET]}", format="ascii.ecsv")
    counts = {e: int(t["N_PIXELS"][t["ELEMENT"] == e].sum()) for e in win}
    assert counts == {"Si": 159, "Mg": 123, "Ti": 75, "Ca": 40}  # pixels with weight > 0 (shared/data README)
    for w in win.values():
        assert np.all(w[:, 1] > w[:, 0]) and np.all((w > 15100) & (w < 17000))
    assert "Jo Bovy" in t.meta["source"]


def test_windows_match_the_filter_weights_on_the_apogee_grid():
    emu = np.load(shared_file("apogee_payne_emulator.npz"))
    wl = emu["wavelength"]
    for el, w in preset_windows(PRESET).items():
        weights = np.loadtxt(shared_file(f"apogee_dr12_element_windows/{el}.filt"))
        inside = np.zeros(wl.size, bool)
        for lo, hi in w:
            inside |= (wl >= lo) & (wl <= hi)
        assert np.array_equal(inside, weights > 0), el


def test_labels_get_their_element_or_the_alpha_union():
    win = preset_windows(PRESET)
    out = resolve_censors(PRESET, ["TEFF", "LOGG", "FE_H", "ALPHA_FE", "MG_FE"])
    assert sorted(out) == ["ALPHA_FE", "MG_FE"]
    assert len(out["ALPHA_FE"]) == sum(len(w) for w in win.values())
    np.testing.assert_array_equal(out["MG_FE"], win["Mg"])
    # a label given a preset by name gets the union of its windows; masks pass through
    mask = np.ones(5, bool)
    out = resolve_censors({"X_M": PRESET, "Y": mask}, ["X_M", "Y"])
    assert len(out["X_M"]) == sum(len(w) for w in win.values()) and out["Y"] is mask
    with pytest.raises(LabelError, match="none of the labels"):
        resolve_censors(PRESET, ["TEFF", "LOGG"])
    with pytest.raises(InvalidInputError, match="unknown censoring preset"):
        preset_windows("galah")


def test_user_window_table(tmp_path):
    """The documented format for e.g. the GALAH windows (Buder+2021 Table A2)."""
    t = Table({"ELEMENT": ["Mg", "Mg", "Ti"], "WAVE_LO": [5711.0, 7691.0, 4758.0], "WAVE_HI": [5712.0, 7692.5, 4759.0]})
    path = tmp_path / "galah_windows.ecsv"
    t.write(path)
    win = read_windows(path)
    np.testing.assert_array_equal(win["Mg"], [[5711.0, 5712.0], [7691.0, 7692.5]])
    out = resolve_censors(str(path), ["TEFF", "ALPHA_FE"])
    assert len(out["ALPHA_FE"]) == 3
    assert parse_censors([str(path)]) == str(path)
    assert parse_censors([f"ALPHA_FE:{PRESET}"]) == {"ALPHA_FE": PRESET}
    assert parse_censors(["ALPHA_FE:15300-15400"]) == {"ALPHA_FE": [(15300.0, 15400.0)]}
    t["WAVE_HI"][1] = 7690.0
    t.write(path, overwrite=True)
    with pytest.raises(InvalidInputError, match="row 1"):
        read_windows(path)
    with pytest.raises(InvalidInputError, match="lacks column"):
        Table({"ELEMENT": ["Mg"], "LO": [1.0]}).write(tmp_path / "bad.ecsv")
        read_windows(tmp_path / "bad.ecsv")


def test_censored_alpha_has_zero_theta_outside_the_windows_on_emulator_spectra(tmp_path):
    from bayescannon.simulate.emulator import load_emulator

    emu = load_emulator(shared_file("apogee_payne_emulator.npz"))
    rng = np.random.default_rng(3)
    names = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
    ds = emu.survey(emu.draw_labels(150, rng, vmacro=6.0), snr=(100, 250), rng=rng)
    ds = ds.isel(pixel=slice(0, 2500))  # 15,150-15,800 A: Mg, Si, Ti windows inside, fast
    wl = ds["wavelength"].values
    model = CannonModel(names, censors=PRESET, random_state=0).fit(ds)
    union = np.zeros(wl.size, bool)
    for lo, hi in resolve_censors(PRESET, names)["ALPHA_FE"]:
        union |= (wl >= lo) & (wl <= hi)
    assert 50 < union.sum() < 300
    np.testing.assert_array_equal(model.censor_mask_[:, 3], union)
    assert model.censor_mask_[:, :3].all()
    alpha_terms = model.vectorizer.exponents[:, 3] > 0
    assert np.all(model.theta_[~union][:, alpha_terms] == 0.0)
    assert np.abs(model.theta_[union][:, alpha_terms]).max() > 0  # it does act inside
    # the preset survives a model file
    path = tmp_path / "m.nc"
    model.save(path)
    back = CannonModel.load(path)
    assert back.censors == PRESET and np.array_equal(back.censor_mask_, model.censor_mask_)


def test_validate_reports_censored_scatter_beside_the_uncensored_one(tmp_path, capsys):
    """``bayescannon validate --censor``: on emulator spectra the censored [α/Fe] has θ = 0
    outside the windows, and the CV summary and report give the scatter of the same folds
    without censoring beside the censored one."""
    import json

    from bayescannon.cli import main
    from bayescannon.io import write_spectra
    from bayescannon.simulate.emulator import load_emulator

    emu = load_emulator(shared_file("apogee_payne_emulator.npz"))
    rng = np.random.default_rng(5)
    names = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
    ds = emu.survey(emu.draw_labels(120, rng, vmacro=6.0), snr=(100, 250), rng=rng).isel(pixel=slice(0, 2500))
    spectra = write_spectra(ds, tmp_path / "ref.nc", overwrite=True)
    out = tmp_path / "val"
    argv = ["validate", str(spectra), "--labels", *names, "--censor", f"ALPHA_FE:{PRESET}", "--n-folds", "3"]
    argv += [
        "--bootstrap",
        "0",
        "--n-jobs",
        "1",
        "--no-calibration",
        "--no-progress",
        "--report-format",
        "md",
        "--json",
    ]
    argv += ["--model-out", str(tmp_path / "m.nc"), "-o", str(out)]
    assert main(argv) == 0
    model = CannonModel.load(tmp_path / "m.nc")
    wl = ds["wavelength"].values
    union = np.zeros(wl.size, bool)
    for lo, hi in resolve_censors(PRESET, names)["ALPHA_FE"]:
        union |= (wl >= lo) & (wl <= hi)
    alpha_terms = model.vectorizer.exponents[:, 3] > 0
    assert np.all(model.theta_[~union][:, alpha_terms] == 0.0)
    summary = Table.read(out / "cv_summary.ecsv")
    assert list(summary["CENSORED"]) == [False, False, False, True]
    for col in ("RMS", "RMS_UNCENSORED", "BIAS_UNCENSORED", "HALF_P16_84_UNCENSORED"):
        assert np.all(np.isfinite(summary[col]))
    rms, rms_unc = np.asarray(summary["RMS"]), np.asarray(summary["RMS_UNCENSORED"])
    assert np.all(rms > 0) and np.all(rms_unc > 0)
    # a separate fit, not a copy: censoring [α/Fe] to ~200 of 2,500 pixels changes its scatter
    assert rms[3] != rms_unc[3] and 0.2 < rms[3] / rms_unc[3] < 5
    report = (out / "report.md").read_text()
    assert "RMS_UNCENSORED" in report and "without censoring" in report
    printed = json.loads(capsys.readouterr().out)  # --json: exactly one object on stdout
    assert printed["cv_uncensored"]["ALPHA_FE"]["censored"] is True
    assert np.isclose(printed["cv_uncensored"]["ALPHA_FE"]["rms"], rms_unc[3])
