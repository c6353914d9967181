"""The two-instrument mock: same stars, real file layouts, known pipeline offsets, corruptions."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from astropy.table import Table

from bayescannon.cli import main
from bayescannon.errors import InvalidInputError, SurveyFormatError
from bayescannon.io import read_apstar, read_aspcapstar, read_labels, read_lamost
from bayescannon.simulate import PIPELINE_NOISE
from bayescannon.simulate.mocksurvey import CORRUPTIONS, LABELS, apogee_id, lamost_designation, make_mock_survey
from bayescannon.survey.reference import crossmatch_sky

C_KMS = 299_792.458
N_BOTH, N_LAMOST, N_APOGEE = 28, 10, 4


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    out = tmp_path_factory.mktemp("mock")
    return make_mock_survey(
        out,
        N_BOTH,
        N_LAMOST,
        N_APOGEE,
        lamost_layout="mixed",
        outlier_fraction=0.1,
        flagged_fraction=0.05,
        n_close_pairs=1,
        n_duplicate_ids=1,
        seed=3,
    )


def _read_lamost_quietly(path):
    # a truncated file makes astropy warn before the reader gives up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_lamost(path)


def test_the_same_stars_in_both_surveys(mock):
    t = mock.truth
    assert len(t) == N_BOTH + N_LAMOST + N_APOGEE
    assert (t["IN_APOGEE"] & t["IN_LAMOST"]).sum() == N_BOTH
    assert (t["IN_LAMOST"] & ~t["IN_APOGEE"]).sum() == N_LAMOST
    assert (t["IN_APOGEE"] & ~t["IN_LAMOST"]).sum() == N_APOGEE
    apogee = read_labels(mock.apogee_catalogue, id_column="APOGEE_ID")
    lamost = read_labels(mock.lamost_catalogue, id_column="obsid")
    # one close neighbour and one duplicated row are extra APOGEE rows
    assert len(apogee) == N_BOTH + N_APOGEE + 2
    assert len(lamost) == N_BOTH + N_LAMOST
    assert "ALPHA_M" in apogee.colnames and not any("alpha" in c.lower() for c in lamost.colnames)
    # positions of the shared stars agree to the astrometric errors (0.1" per axis per survey);
    # (reference.crossmatch_sky warns when both tables carry an EXTNAME: drop the metadata)
    lamost.meta.clear()
    apogee.meta.clear()
    matched, _ = crossmatch_sky(lamost, apogee, 1.0, ra_a="ra", dec_a="dec", ra_b="RA", dec_b="DEC", ambiguous="reject")
    assert len(matched) == N_BOTH - 2  # the two ambiguous stars are rejected
    # separation of two independent 0.1" (per axis) errors: Rayleigh with sigma = 0.14"
    assert np.all(matched["sep_arcsec"] < 5 * 0.1 * np.sqrt(2))


def test_apogee_files_in_the_real_layouts(mock):
    t = mock.truth[mock.truth["IN_APOGEE"]]
    ap = [p for p in mock.apogee_files if p.name.startswith("apStar-")]
    asp = [p for p in mock.apogee_files if p.name.startswith("aspcapStar-")]
    assert len(ap) == len(asp) == len(t)
    one = read_apstar(ap[0])
    sid = str(one["star"].values[0])
    assert re.fullmatch(r"2M\d{8}[+-]\d{7}", sid) and sid in set(t["APOGEE_ID"])
    wl = one["wavelength"].values
    assert 15000 < wl[0] < wl[-1] < 17000 and one["wavelength"].attrs["frame"] == "rest"
    assert np.nanmedian(one["flux"].values) > 10  # un-normalised
    norm = read_aspcapstar(asp[0])
    good = norm["ivar"].values > 0
    # continuum-normalised flux: a median a little below 1 (absorption lines)
    assert 0.7 < np.median(norm["flux"].values[good]) < 1.05
    np.testing.assert_allclose(norm["wavelength"].values, wl, rtol=1e-9)


def test_lamost_files_carry_z_and_observed_frame(mock):
    t = mock.truth
    good_files = [p for p in mock.lamost_files if p.name not in set(mock.corrupted["FILENAME"])]
    rows = {str(o): i for i, o in enumerate(t["OBSID"])}
    z_err = 1.0 / C_KMS  # the mock's redshift error (1 km/s)
    n_checked = 0
    for p in good_files[:12]:
        ds = read_lamost(p)
        sid = str(ds["star"].values[0])
        if t["CORRUPTION"][rows[sid]]:
            continue
        rv = t["LAMOST_RV"][rows[sid]]
        beta = rv / C_KMS
        z_true = np.sqrt((1 + beta) / (1 - beta)) - 1
        assert abs(float(ds["redshift"].values[0]) - z_true) < 5 * z_err
        assert ds["wavelength"].attrs["frame"] == "observed" and ds["wavelength"].attrs["medium"] == "vacuum"
        wl = ds["wavelength"].values
        assert 3800 < wl[0] < 4000 and 8800 < wl[-1] < 9000
        n_checked += 1
    assert n_checked >= 8


def test_pipeline_labels_scatter_about_the_truth_with_the_simulated_offsets(mock):
    t = mock.truth
    apogee = read_labels(mock.apogee_catalogue, id_column="APOGEE_ID")
    lamost = read_labels(mock.lamost_catalogue, id_column="obsid")
    a_index = {s: i for i, s in enumerate(np.asarray(apogee["APOGEE_ID"]).astype(str))}
    # APOGEE: truth + noise for the clean stars (outliers and flagged stars are wrong on purpose)
    clean = t["IN_APOGEE"] & ~t["APOGEE_OUTLIER"] & ~t["APOGEE_FLAGGED"]
    rows = np.asarray([a_index[s] for s in np.asarray(t["APOGEE_ID"][clean]).astype(str)])
    for k in LABELS:
        sim_key = "ALPHA_FE" if k == "ALPHA_M" else k
        z = (np.asarray(apogee[k])[rows] - np.asarray(t[k][clean])) / PIPELINE_NOISE["apogee"][sim_key]
        n = z.size
        assert abs(z.mean()) < 4 / np.sqrt(n), k
        assert 0.5 < z.std() < 1.6, k
    # the bad APOGEE labels are off by many sigma in the named label
    bad = t["APOGEE_OUTLIER"] | t["APOGEE_FLAGGED"]
    assert bad.sum() == round(0.1 * N_BOTH) + round(0.05 * N_BOTH)
    for i in np.flatnonzero(bad):
        k = t["BAD_LABEL"][i]
        d = apogee[k][a_index[t["APOGEE_ID"][i]]] - t[k][i]
        assert abs(d) > 6 * PIPELINE_NOISE["apogee"][k]
    flagged = np.asarray(apogee["ASPCAPFLAG"]) & (1 << 23) != 0
    assert flagged.sum() == t["APOGEE_FLAGGED"].sum()
    # LAMOST: truth + the documented label-dependent offset + noise
    l_index = {str(o): i for i, o in enumerate(lamost["obsid"])}
    sel = np.flatnonzero(t["IN_LAMOST"])
    rows = np.asarray([l_index[str(o)] for o in t["OBSID"][sel]])
    for k, col in (("TEFF", "teff"), ("LOGG", "logg"), ("FE_H", "feh")):
        resid = np.asarray(lamost[col])[rows] - np.asarray(t[k][sel]) - np.asarray(t[f"LAMOST_OFFSET_{k}"][sel])
        z = resid / PIPELINE_NOISE["lamost"][k]
        assert abs(z.mean()) < 4 / np.sqrt(z.size), k
        assert 0.5 < z.std() < 1.6, k
    # the offsets are label dependent (not a constant shift)
    assert np.std(t["LAMOST_OFFSET_TEFF"]) > 5.0


def test_every_corruption_is_written_and_fails_as_documented(mock):
    c = mock.corrupted
    assert sorted(c["KIND"]) == sorted(CORRUPTIONS)
    by_kind = {str(k): mock.outdir / "lamost" / str(f) for k, f in zip(c["KIND"], c["FILENAME"], strict=True)}
    for kind in ("not_fits", "truncated", "missing_z", "bad_wavelength"):
        with pytest.raises(SurveyFormatError):
            _read_lamost_quietly(by_kind[kind])
    assert np.isnan(read_lamost(by_kind["bad_redshift"])["redshift"].values[0])
    assert read_lamost(by_kind["no_overlap"])["wavelength"].values[0] > 9000
    assert not (read_lamost(by_kind["all_masked"])["ivar"].values > 0).any()
    ds = read_lamost(by_kind["missing_radec"])
    assert np.isnan(ds["ra"].values[0]) and np.isnan(ds["dec"].values[0])
    dup = read_lamost(by_kind["duplicate_obsid"])
    claimed = str(dup["star"].values[0])
    others = [p for p in mock.lamost_files if p != by_kind["duplicate_obsid"] and p.name != "x"]
    owners = []
    for p in others:
        try:
            if str(_read_lamost_quietly(p)["star"].values[0]) == claimed:
                owners.append(p)
        except SurveyFormatError:
            continue
    assert len(owners) == 1  # the genuine file of that OBSID
    # the truth table records which star each corruption hit
    assert set(mock.truth["CORRUPTION"][mock.truth["CORRUPTION"] != ""]) == set(CORRUPTIONS)


def test_identifiers():
    assert apogee_id([10.5], [-5.25])[0] == "2M00420000-0515000"
    assert lamost_designation([10.5], [-5.25])[0] == "J004200.00-051500.0"
    ids = apogee_id(np.linspace(0, 359.99, 50), np.linspace(-30, 80, 50))
    assert all(re.fullmatch(r"2M\d{8}[+-]\d{7}", s) for s in ids)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"corruptions": ("gremlins",)}, "unknown corruption"),
        ({"n_both": -1}, "non-negative"),
        ({"apogee_spectra": ("apVisit",)}, "apogee_spectra"),
        ({"lamost_snr": (0, 10)}, "lamost_snr"),
        ({"outlier_fraction": 0.7}, "outlier_fraction"),
        ({"lamost_layout": "dr1"}, "lamost_layout"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"n_both": 10, "n_lamost_only": 2, "n_apogee_only": 1, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        make_mock_survey(tmp_path / "m", **args)


def test_refuses_a_non_empty_folder(mock):
    with pytest.raises(InvalidInputError, match="not empty"):
        make_mock_survey(mock.outdir, 5, 1, 1, apogee_spectra=(), corruptions=())


def test_cli_writes_a_runnable_configuration(tmp_path, capsys):
    from bayescannon.survey.transfer import TransferConfig

    out = tmp_path / "cli_mock"
    rc = main(
        [
            "mock-survey",
            str(out),
            "--n-both",
            "6",
            "--n-lamost-only",
            "2",
            "--n-apogee-only",
            "1",
            "--apogee-spectra",
            "--no-corruptions",
            "--no-progress",
            "--seed",
            "2",
        ]
    )
    assert rc == 0
    assert "bayescannon transfer" in capsys.readouterr().out
    cfg = TransferConfig.from_toml(out / "transfer.toml")
    assert cfg.label_names == list(LABELS)
    assert cfg.path(cfg.data["reference"]["catalogue"]).is_file()
    assert len(list((out / "lamost").glob("spec-*.fits"))) == 8
    assert not list((out / "apogee").glob("*.fits"))
    assert len(Table.read(out / "truth.fits")) == 9
