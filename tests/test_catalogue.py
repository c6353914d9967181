"""Survey catalogues: FITS round trip with units and masks, header, joins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from bayescannon.errors import CrossMatchError
from bayescannon.flags import StarFlag
from bayescannon.survey.catalogue import (
    catalogue_config,
    join_catalogues,
    label_description,
    make_catalogue,
    read_catalogue,
    result_to_table,
    write_table,
)
from bayescannon.validate.quality import assess

NAMES = ["TEFF", "LOGG", "FE_H", "MG_FE"]


def _result(n=6, asymmetric=False, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal([4800, 2.5, -0.3, 0.1], [300, 0.5, 0.3, 0.1], size=(n, 4))
    e = rng.uniform(0.5, 1.5, size=(n, 4)) * [50, 0.1, 0.05, 0.03]
    y[2] = np.nan
    e[2] = np.nan
    flags = np.zeros(n, np.int64)
    flags[2] = StarFlag.NO_PIXELS
    flags[4] = StarFlag.AT_BOUND | StarFlag.LARGE_CHI2
    ds = xr.Dataset(
        {
            "labels": (("star", "label_name"), y),
            "errors": (("star", "label_name"), e),
            "covariance": (("star", "label_name", "label_name_2"), np.einsum("nk,kl->nkl", e**2, np.eye(4))),
            "chi2": ("star", np.where(np.isnan(y[:, 0]), np.nan, 100.0)),
            "reduced_chi2": ("star", np.where(np.isnan(y[:, 0]), np.nan, 1.1)),
            "n_pixels": ("star", np.where(np.isnan(y[:, 0]), 0, 95)),
            "converged": ("star", ~np.isnan(y[:, 0])),
            "flags": ("star", flags),
            "n_iter": ("star", np.full(n, 5)),
        },
        coords={"star": [f"2M{i:08d}" for i in range(n)], "label_name": NAMES, "label_name_2": NAMES},
        attrs={"model_training_hash": "ab" * 32, "uncertainty": "formal (inverse Fisher matrix, s² included)"},
    )
    if asymmetric:
        ds["errors_upper"] = ds["errors"] * 1.5
        ds["errors_lower"] = ds["errors"] * 0.5
    return ds


def test_fits_round_trip_keeps_units_masks_and_flag_bits(tmp_path):
    res = _result()
    path = write_table(result_to_table(res, meta={"SURVEY": "MOCK"}), tmp_path / "cat.fits")
    t = read_catalogue(path)  # filterwarnings=error: no UnitsWarning, no VerifyWarning
    # dex is no FITS unit (astropy drops u.dex and warns on TUNITn = 'dex'): the DEXCOLS
    # card names the dex columns and read_catalogue restores them
    assert t["TEFF"].unit == "K" and t["LOGG"].unit is None and t["MG_FE"].unit is None
    assert t["LOGG"].meta["unit_text"] == "dex" and t["e_MG_FE"].meta["unit_text"] == "dex"
    assert "unit_text" not in t["TEFF"].meta
    hdr = fits.getheader(path, 1)
    cols = {hdr[f"TTYPE{i}"]: i for i in range(1, hdr["TFIELDS"] + 1)}
    assert "e_LOGG" in hdr["DEXCOLS"].split() and hdr[f"TDISP{cols['TEFF']}"].endswith(".1")
    assert hdr[f"TCOMM{cols['e_TEFF']}"] == "formal 1-sigma uncertainty of TEFF"
    assert "ORIGIN" in hdr and "DATE" in hdr and "formal" in hdr["ERRMODEL"]
    # no model: the flags that need the training set are absent, never placeholders
    assert "FLAG_OUTSIDE_HULL" not in t.colnames and "FLAG_FAR_FROM_TRAINING" not in t.colnames
    assert any("FLAG_OUTSIDE_HULL absent" in str(v) for k, v in t.meta.items() if k.startswith("FLAGNT"))
    assert "surface gravity" in t["LOGG"].description and t["MG_FE"].description.startswith("[Mg/Fe]")
    for name in NAMES:
        assert t[name].mask[2] and not t[name].mask[[0, 1, 3]].any()
        np.testing.assert_allclose(t[f"e_{name}"][[0, 1, 3]], res["errors"].values[[0, 1, 3], NAMES.index(name)])
    assert t["FLAGS"].dtype.kind == "i" and t["FLAGS"][4] == StarFlag.AT_BOUND | StarFlag.LARGE_CHI2
    assert t["FLAG_NO_PIXELS"][2] and t["FLAG_AT_BOUND"][4] and not t["FLAG_AT_BOUND"][0]
    for bit in StarFlag:
        card = t.meta[f"FLAGBT{int(bit).bit_length() - 1:02d}"]
        assert card.startswith(f"{bit.name}: bit {int(bit).bit_length() - 1} (value {int(bit)})")
    assert t.meta["MODELHSH"] == "ab" * 32 and t.meta["SURVEY"] == "MOCK" and "BCVERS" in t.meta
    assert t.meta["ERRMODEL"].isascii() and "s2" in t.meta["ERRMODEL"]


def test_asymmetric_errors_become_upper_and_lower_columns():
    t = result_to_table(_result(asymmetric=True))
    res = _result()
    for k, name in enumerate(NAMES):
        np.testing.assert_allclose(t[f"E_{name}"][[0, 1]], 1.5 * res["errors"].values[[0, 1], k])
        np.testing.assert_allclose(t[f"e_{name}"][[0, 1]], 0.5 * res["errors"].values[[0, 1], k])
    assert label_description("ALPHA_M") == "[alpha/M] (dex)"
    cal = _result()
    cal["errors_formal"] = cal["errors"] * 0.1
    cal["half_width_68"] = cal["errors"] * 1.1
    cal["half_width_95"] = cal["errors"] * 2.2
    t = result_to_table(cal)
    np.testing.assert_allclose(t["HW95_TEFF"][[0, 1]], 2.2 * cal["errors"].values[[0, 1], 0])
    assert t["HW95_TEFF"].unit == "K" and t["HW95_TEFF"].mask[2]
    np.testing.assert_allclose(t["e_TEFF"][[0, 1]], cal["errors"].values[[0, 1], 0])  # calibrated, not formal
    assert t.meta["ERRMODEL"].startswith("calibrated")


@pytest.fixture
def catalogue_inputs(trained):
    truth, model = trained
    y = truth.labels(40)
    flux, ivar = truth.spectra(y, model.label_offset_, model.label_scale_)
    from bayescannon.spectra import make_spectra

    ids = [f"S{i:03d}" for i in range(40)]
    ds = make_spectra(
        model.wavelength_,
        flux,
        ivar,
        ids=ids,
        snr=np.sqrt(ivar[:, 0]),
        ra=np.linspace(10, 11, 40),
        dec=np.linspace(-5, -4, 40),
        tmass_id=[f"2M{i:08d}" for i in range(40)],
    )
    return model, ds, y


def test_make_catalogue_has_the_documented_schema(tmp_path, catalogue_inputs):
    model, ds, y = catalogue_inputs
    res = model.infer(ds)
    sflags = np.zeros(40, np.int64)
    sflags[5] = 4
    q = assess(res, model=model, cv_scatter=[30.0, 0.05, 0.03], snr=ds["snr"].values, min_snr=60, survey_flags=sflags)
    survey = Table({"ID": ds["star"].values[::2].astype(str), "TEFF": y[::2, 0] + 50.0, "e_TEFF": np.full(20, 80.0)})
    cat = make_catalogue(
        res,
        model=model,
        spectra=ds,
        quality=q,
        training_ids=["S000", "S001"],
        survey_labels=survey,
        survey_name="APOGEE",
        config={"n_folds": 8},
        extra_ids=["tmass_id"],
    )
    path = write_table(cat, tmp_path / "cat.fits")
    t = read_catalogue(path)
    assert t["TMASS_ID"][3] == "2M00000003"
    for col in (
        "ID",
        "RA",
        "DEC",
        "TEFF",
        "e_TEFF",
        "CHI2",
        "REDUCED_CHI2",
        "SNR",
        "LABEL_DISTANCE",
        "IN_HULL",
        "FLAGS",
        "IN_TRAINING",
        "APOGEE_TEFF",
        "APOGEE_e_TEFF",
        "SURVEY_FLAGS",
    ):
        assert col in t.colnames, col
    # survey label columns read without units get the label's unit (TEFF: K), as TEFF itself
    assert t["RA"].unit == "deg" and t["APOGEE_TEFF"].unit == "K" and t["APOGEE_e_TEFF"].unit == "K"
    assert t["TEFF"].unit == "K"
    np.testing.assert_allclose(t["APOGEE_TEFF"][::2], y[::2, 0] + 50.0)
    assert t["APOGEE_TEFF"].mask[1::2].all()  # stars the survey table lacks are masked
    assert list(t["IN_TRAINING"]).count(True) == 2 and t["IN_TRAINING"][0]
    assert np.flatnonzero(t["FLAG_SURVEY_FLAGGED"]).tolist() == [5] and t["SURVEY_FLAGS"][5] == 4
    low = t["SNR"] < 60
    assert np.array_equal(t["FLAG_LOW_SNR"], low) and np.array_equal((t["FLAGS"] & StarFlag.LOW_SNR) != 0, low)
    cfg = catalogue_config(t)
    assert cfg["n_folds"] == 8 and cfg["model"]["label_names"] == model.label_names
    assert t.meta["MODELHSH"] == model.training_hash_ and t.meta["LABELS"] == " ".join(model.label_names)
    with pytest.raises(CrossMatchError):
        make_catalogue(res, survey_labels=Table({"ID": ["nobody"], "TEFF": [1.0]}))


def test_join_by_id_and_by_sky():
    a = Table(
        {
            "ID": ["a", "b", "c", "d"],
            "RA": [10.0, 20.0, 30.0, 40.0],
            "DEC": [0.0, 1.0, 2.0, 3.0],
            "TEFF": [1.0, 2.0, 3.0, 4.0],
        }
    )
    b = Table(
        {
            "ID": ["c", "a", "x"],
            "RA": [30.0 + 0.3 / 3600, 10.0, 50.0],
            "DEC": [2.0, 0.0, 5.0],
            "TEFF": [30.0, 10.0, 50.0],
        }
    )
    j = join_catalogues(a, b, keys="ID", table_names=("L", "R"))
    assert sorted(j["ID"]) == ["a", "c"]
    assert np.allclose(j["TEFF_R"], 10 * j["TEFF_L"])
    s = join_catalogues(a, b, sky=True, max_separation=1.0, table_names=("L", "R"))
    assert list(s["ID_L"]) == ["a", "c"] and list(s["ID_R"]) == ["a", "c"]
    assert s["SEPARATION"][1] == pytest.approx(0.3 * np.cos(np.radians(2.0)), rel=1e-3)
    left = join_catalogues(a, b, sky=True, join_type="left", table_names=("L", "R"))
    assert len(left) == 4 and left["SEPARATION"].mask.sum() == 2
    with pytest.raises(CrossMatchError, match="no id"):
        join_catalogues(a, Table({"ID": ["zz"]}))
    with pytest.raises(CrossMatchError, match="duplicated"):
        join_catalogues(a, Table({"ID": ["a", "a"]}))
    with pytest.raises(CrossMatchError, match="within"):
        join_catalogues(a, b[2:], sky=True, max_separation=0.1)


def test_catalogue_command(tmp_path, catalogue_inputs, capsys):
    from bayescannon.cli import main
    from bayescannon.io import write_spectra

    model, ds, y = catalogue_inputs
    mpath = model.save(tmp_path / "model.nc")
    spath = write_spectra(ds, tmp_path / "spectra.nc", overwrite=True)
    tl = Table({n: y[:, k] for k, n in enumerate(model.label_names)})
    tl.write(tmp_path / "train.fits")
    Table({"LABEL": model.label_names, "RMS": [30.0, 0.05, 0.03]}).write(tmp_path / "cv_summary.ecsv")
    out = tmp_path / "cat.fits"
    assert (
        main(
            [
                "catalogue",
                str(mpath),
                str(spath),
                "-o",
                str(out),
                "--cv-summary",
                str(tmp_path / "cv_summary.ecsv"),
                "--training-labels",
                str(tmp_path / "train.fits"),
                "--min-snr",
                "60",
                "--no-progress",
                "--report-format",
                "md",
            ]
        )
        == 0
    )
    t = read_catalogue(out)
    assert len(t) == 40 and np.isfinite(np.asarray(t["LABEL_DISTANCE"], float)).all()
    assert np.array_equal(t["FLAG_LOW_SNR"], t["SNR"] < 60)
    report = (tmp_path / "cat_report.md").read_text()
    assert "kiel.png" in report and (tmp_path / "cat_flags.ecsv").is_file()
    assert "wrote 40 stars" in capsys.readouterr().out
    # --figures: errors vs S/N, label distributions, Kiel diagram; --json: one JSON object only
    figs = tmp_path / "figs"
    argv = ["catalogue", str(mpath), str(spath), "-o", str(out), "--min-snr", "60", "--no-progress"]
    assert main([*argv, "--report-format", "md", "--overwrite", "--json", "--figures", str(figs)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    summary = json.loads(printed[0])
    t2 = read_catalogue(out)  # without --training-labels: no label-distance flags this time
    assert summary["n_stars"] == 40 and summary["n_flagged"] == int((t2["FLAGS"] != 0).sum()) > 0
    assert summary["flag_counts"]["LOW_SNR"] == int((t2["SNR"] < 60).sum()) > 0
    names = sorted(p.name for p in figs.iterdir())
    assert names == ["errors_vs_snr.png", "kiel.png", "label_distributions.png"]
    assert sorted(summary["figures"]) == sorted(str(figs / n) for n in names)
