"""Tests of cross-matching and quality cuts (bayescannon.survey.reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, Table

from bayescannon.errors import CrossMatchError, InvalidInputError
from bayescannon.survey.reference import QualityCuts, apply_cuts, crossmatch_ids, crossmatch_sky

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

ARCSEC = 1 / 3600.0


# --------------------------------------------------------------------------------------
# identifier matches
# --------------------------------------------------------------------------------------


def test_crossmatch_ids_basic_and_prefix_key():
    a = Table({"APOGEE_ID": ["2M0001", " 2M0002 ", "2M0003", ""], "TEFF": [4000.0, 4100.0, 4200.0, 4300.0]})
    b = Table({"tmass": ["0003", "0001", "0009"], "snr": [30.0, 40.0, 50.0], "TEFF": [1.0, 2.0, 3.0]})
    matched, rejected = crossmatch_ids(a, b, "APOGEE_ID", "tmass", key=lambda s: s.removeprefix("2M"))
    assert list(matched["row_a"]) == [0, 2] and list(matched["row_b"]) == [1, 0]
    assert list(matched["snr"]) == [40.0, 30.0]
    assert "TEFF_a" in matched.colnames and "TEFF_b" in matched.colnames
    reasons = dict(zip(rejected["row"], rejected["reason"]))
    assert reasons[1] == "no match in table_b" and reasons[3] == "missing id in table_a"
    _, with_b = crossmatch_ids(a, b, "APOGEE_ID", "tmass", key=lambda s: s.removeprefix("2M"), report_unmatched_b=True)
    assert ("b", 2) in set(zip(with_b["table"], with_b["row"]))


def test_crossmatch_ids_case_and_missing_column():
    a = Table({"id": ["abc", "DEF"]})
    b = Table({"id": ["ABC", "def"]})
    m, _ = crossmatch_ids(a, b, "id")
    assert len(m) == 0
    m, _ = crossmatch_ids(a, b, "id", case_sensitive=False)
    assert len(m) == 2
    with pytest.raises(InvalidInputError, match="no column 'nope'"):
        crossmatch_ids(a, b, "nope")


def test_crossmatch_ids_duplicates():
    a = Table({"id": ["x", "y", "x", "z"], "v": [1, 2, 3, 4]})
    b = Table({"id": ["x", "y", "z", "z"]})
    with pytest.raises(CrossMatchError, match="duplicated id"):
        crossmatch_ids(a, b, "id")
    m, r = crossmatch_ids(a, b, "id", duplicates="first")
    assert list(m["row_a"]) == [0, 1, 3] and list(m["row_b"]) == [0, 1, 2]
    assert set(zip(r["table"], r["row"])) == {("a", 2), ("b", 3)}
    m, r = crossmatch_ids(a, b, "id", duplicates="reject")
    assert list(m["row_a"]) == [1]
    assert set(zip(r["table"], r["row"])) == {("a", 0), ("a", 2), ("a", 3), ("b", 2), ("b", 3)}
    assert all("duplicated" in s or "no match" in s for s in r["reason"])


# --------------------------------------------------------------------------------------
# sky matches
# --------------------------------------------------------------------------------------


def sky_tables():
    # B: four catalogue stars; A: targets constructed around them
    b = Table({"RA": [10.0, 20.0, 30.0, 40.0], "DEC": [-5.0, 0.0, 5.0, 10.0], "name": ["b0", "b1", "b2", "b3"]})
    a = Table(
        {
            "id": ["near0", "nearer0", "far", "b2_exact", "tie1", "tie2", "nocoord"],
            "RA": [10.0 + 0.5 * ARCSEC, 10.0 + 0.2 * ARCSEC, 50.0, 30.0, 20.0, 20.0, np.nan],
            "DEC": [-5.0, -5.0, 0.0, 5.0, 0.3 * ARCSEC, -0.3 * ARCSEC, 0.0],
        }
    )
    return a, b


def test_crossmatch_sky_one_to_one():
    a, b = sky_tables()
    matched, rejected = crossmatch_sky(a, b, 1.0, ra_a="RA", dec_a="DEC", id_a="id")
    assert list(matched["id"]) == ["nearer0", "b2_exact", "tie1"]
    assert list(matched["name"]) == ["b0", "b2", "b1"]
    np.testing.assert_allclose(matched["sep_arcsec"], [0.2 * np.cos(np.radians(5)), 0.0, 0.3], rtol=1e-6, atol=1e-9)
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert "is closer to table_a row 1" in reasons["near0"]
    assert "tied with table_a row 4" in reasons["tie2"] and "first row keeps it" in reasons["tie2"]
    assert "no table_b row within 1 arcsec" in reasons["far"]
    assert "missing" in reasons["nocoord"]
    assert len(matched) + len(rejected) == len(a)


def test_crossmatch_sky_multiple_candidates_and_units():
    b = Table({"ra": [100.0, 100.0 + 0.6 * ARCSEC, 120.0], "dec": [20.0, 20.0, 20.0]})
    a = Table({"ra": [100.0 + 0.25 * ARCSEC, 120.0], "dec": [20.0, 20.0 + 0.1 * ARCSEC]})
    m, r = crossmatch_sky(a, b, 1.0)
    assert list(m["n_candidates"]) == [2, 1] and list(m["row_b"]) == [0, 2]
    m, r = crossmatch_sky(a, b, 1.0, ambiguous="reject")
    assert list(m["row_a"]) == [1] and "2 table_b rows within" in r["reason"][0]
    with pytest.raises(CrossMatchError, match="more than one"):
        crossmatch_sky(a, b, 1.0, ambiguous="raise")
    # coordinates given in radians via column units
    ar = Table({"ra": np.radians(a["ra"]) * u.rad, "dec": np.radians(a["dec"]) * u.rad})
    m2, _ = crossmatch_sky(ar, b, 1.0)
    assert list(m2["row_b"]) == [0, 2]
    with pytest.raises(InvalidInputError, match="tolerance"):
        crossmatch_sky(a, b, 0.0)
    empty = crossmatch_sky(a, b[:0], 1.0)
    assert len(empty[0]) == 0 and len(empty[1]) == 2


def test_crossmatch_sky_many_random_pairs_is_one_to_one():
    rng = np.random.default_rng(0)
    n = 2000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    b = Table({"ra": ra, "dec": dec, "k": np.arange(n)})
    perm = rng.permutation(n)[:1500]
    jitter = rng.normal(0, 0.2 * ARCSEC, (2, perm.size))
    a = Table({"ra": (ra[perm] + jitter[0] / np.cos(np.radians(dec[perm]))) % 360, "dec": dec[perm] + jitter[1]})
    m, r = crossmatch_sky(a, b, 1.5)
    assert len(m) == 1500 and len(r) == 0
    np.testing.assert_array_equal(m["k"], perm)
    assert np.unique(m["row_b"]).size == len(m)


@pytest.mark.shared_data
def test_crossmatch_real_lamost_apogee_ids():
    ids_file = SHARED / "lamost_apogee_dr12_2mass_ids.txt"
    labels_file = SHARED / "apogee_dr12_labels.csv"
    if not (ids_file.exists() and labels_file.exists()):
        pytest.skip("../shared/data is absent")
    from bayescannon.io import read_labels

    lamost = Table({"tmass": np.loadtxt(ids_file, dtype=str)})
    apogee = read_labels(labels_file, id_column="APOGEE_ID")
    m, r = crossmatch_ids(lamost, apogee, "tmass", "APOGEE_ID", duplicates="first")
    assert len(m) > 5000
    assert np.all(np.asarray(m["tmass"]) == np.asarray(m["APOGEE_ID"]))
    assert len(m) + int(np.sum(r["table"] == "a")) == len(lamost)


# --------------------------------------------------------------------------------------
# quality cuts
# --------------------------------------------------------------------------------------


def catalogue():
    return Table(
        {
            "TEFF": MaskedColumn([4500.0, 7000.0, -9999.0, 5000.0, 4800.0, 4900.0], mask=[0, 0, 0, 0, 0, 1]),
            "LOGG": [2.5, 2.0, 2.2, 4.5, 2.4, 2.4],
            "snr": [120.0, 80.0, 90.0, 150.0, 30.0, 100.0],
            "ASPCAPFLAG": np.array([0, 0, 0, 1 << 23, 1 << 0, 0], dtype=np.int64),
            "STARFLAG": np.array([0, 1 << 3, 0, 0, 0, 0], dtype=np.int32),
        }
    )


def test_apply_cuts_reasons():
    cuts = QualityCuts.from_dict(
        {
            "ranges": {"TEFF": [3500, 5500], "LOGG": {"max": 3.9}},
            "min_snr": 50,
            "bitmasks": {"ASPCAPFLAG": ["STAR_BAD"], "STARFLAG": [0, 3, 4]},
        }
    )
    kept, excluded = apply_cuts(catalogue(), cuts)
    assert len(kept) == 1 and kept["TEFF"][0] == 4500.0
    reasons = dict(zip(excluded["row_index"], excluded["reason"]))
    assert reasons[1] == "TEFF outside [3500, 5500]; STARFLAG has rejected bit(s) [0, 3, 4]"
    assert reasons[2] == "TEFF missing"
    assert reasons[3] == "LOGG outside [-inf, 3.9]; ASPCAPFLAG has rejected bit(s) [23]"
    assert reasons[4] == "snr < 50"  # TEFF_WARN (bit 0) is not rejected
    assert reasons[5] == "TEFF missing"
    assert len(kept) + len(excluded) == len(catalogue())


def test_quality_cuts_from_toml_and_errors(tmp_path):
    text = """
min_snr = 50
require_finite = ["LOGG"]
[ranges]
TEFF = ["-inf", 5500]
[bitmasks]
ASPCAPFLAG = ["STAR_BAD", "TEFF_BAD"]
"""
    path = tmp_path / "cuts.toml"
    path.write_text(text)
    for src in (path, text):
        cuts = QualityCuts.from_toml(src)
        assert cuts.ranges["TEFF"] == (-np.inf, 5500.0)
        assert cuts.bitmasks["ASPCAPFLAG"] == (1 << 23) | (1 << 16)
    assert QualityCuts.from_dict(cuts.to_dict()) == cuts
    with pytest.raises(InvalidInputError, match="unknown bit name"):
        QualityCuts(bitmasks={"ASPCAPFLAG": ["STAR_GOOD"]})
    with pytest.raises(InvalidInputError, match="unknown quality-cut key"):
        QualityCuts.from_dict({"min_sn": 3})
    with pytest.raises(InvalidInputError, match="min 5.0 > max 1.0"):
        QualityCuts(ranges={"TEFF": (5, 1)})
    with pytest.raises(InvalidInputError, match="no column 'FE_H'"):
        apply_cuts(catalogue(), {"ranges": {"FE_H": [-1, 1]}})
    with pytest.raises(InvalidInputError, match="invalid TOML"):
        QualityCuts.from_toml("ranges = [")


def test_crossmatch_ignores_clashing_table_metadata():
    a = Table({"id": ["x", "y"]}, meta={"EXTNAME": "A"})
    b = Table({"id": ["y", "x"]}, meta={"EXTNAME": "B"})
    m, _ = crossmatch_ids(a, b, "id")  # pytest turns a MergeConflictWarning into an error
    assert list(m["row_b"]) == [1, 0]
