"""Cluster validation: the APOGEE DR10 member reader, per-cluster statistics and trends."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from conftest import shared_file

from bayescannon.errors import CrossMatchError, InvalidInputError, SurveyFormatError
from bayescannon.validate.clusters import (
    LITERATURE_FE_H,
    cluster_statistics,
    cluster_trends,
    membership_table,
    read_apogee_cluster_members,
)

NAMES = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]


def _mock_clusters(seed=0):
    """Clusters with known mean [Fe/H], [α/Fe], scatter 0.05 and an injected Teff trend."""
    rng = np.random.default_rng(seed)
    spec = {"C1": (-2.0, 0.3, 40), "C2": (-1.0, 0.2, 25), "C3": (0.0, 0.0, 12), "C4": (0.2, 0.05, 2)}
    slope = 0.05  # dex per 1000 K in [Fe/H]
    ids, clusters, rows = [], [], []
    for c, (feh, alpha, n) in spec.items():
        teff = rng.uniform(4000, 5200, n)
        fe = feh + slope * (teff - 4600) / 1000 + rng.normal(0, 0.05, n)
        al = alpha + rng.normal(0, 0.03, n)
        logg = rng.uniform(1, 3, n)
        rows.append(np.column_stack([teff, logg, fe, al]))
        ids += [f"{c}_{i}" for i in range(n)]
        clusters += [c] * n
    field = rng.normal([4800, 2.5, -0.3, 0.1], [300, 0.5, 0.3, 0.1], size=(50, 4))
    labels = np.vstack(rows + [field])
    ids += [f"field{i}" for i in range(50)]
    return np.array(ids), labels, membership_table(ids[: len(clusters)], clusters), spec, slope


def test_cluster_statistics_recover_known_clusters():
    ids, labels, members, spec, slope = _mock_clusters()
    lit = {c: {"FE_H": v[0] + 0.1} for c, v in spec.items()}
    t = cluster_statistics(ids, labels, members, NAMES, literature=lit, min_members=3)
    assert list(t["CLUSTER"]) == sorted(spec)
    for row in t:
        feh, alpha, n = spec[row["CLUSTER"]]
        assert row["N_MEMBERS"] == n and row["N_MATCHED"] == n
        if n < 3:
            assert row["STATUS"].startswith("skipped") and np.ma.is_masked(row["MEDIAN_FE_H"])
            continue
        assert row["STATUS"] == "ok"
        # the Teff trend adds ~0.05 × 1.2/sqrt(12) ≈ 0.017 dex of spread to the 0.05 scatter
        spread = np.hypot(0.05, slope * 1.2 / np.sqrt(12))
        tol = 4 * 1.25 * spread / np.sqrt(n)
        assert abs(row["MEDIAN_FE_H"] - feh) < tol + slope * 0.1
        assert abs(row["OFFSET_FE_H"] - (row["MEDIAN_FE_H"] - feh - 0.1)) < 1e-12
        assert abs(row["SCATTER_FE_H"] / spread - 1) < 4 / np.sqrt(2 * (n - 1))
        assert abs(row["MEDIAN_ALPHA_FE"] - alpha) < 4 * 1.25 * 0.03 / np.sqrt(n)
        assert np.ma.is_masked(row["LIT_ALPHA_FE"])


def test_cluster_trends_recover_injected_slope():
    ids, labels, members, spec, slope = _mock_clusters(seed=1)
    t = cluster_trends(ids, labels, members, NAMES, x="TEFF", y=("FE_H", "ALPHA_FE"), min_members=5)
    fe = t[(t["LABEL"] == "FE_H") & (t["STATUS"] == "ok")]
    assert set(fe["CLUSTER"]) == {"C1", "C2", "C3"}
    assert np.all(np.abs(fe["SLOPE"] - slope) < 4 * fe["e_SLOPE"])
    al = t[(t["LABEL"] == "ALPHA_FE") & (t["STATUS"] == "ok")]
    assert np.all(np.abs(al["SLOPE"]) < 4 * al["e_SLOPE"])
    assert t[t["CLUSTER"] == "C4"]["STATUS"][0].startswith("skipped")


def test_membership_errors_are_typed():
    ids, labels, members, *_ = _mock_clusters()
    with pytest.raises(CrossMatchError, match="no member id"):
        cluster_statistics(np.char.add("X", ids), labels, members, NAMES)
    twice = membership_table(["C1_0", "C1_0"], ["C1", "C2"])
    with pytest.raises(CrossMatchError, match="more than one cluster"):
        cluster_statistics(ids, labels, twice, NAMES)


def test_reader_rejects_malformed_files(tmp_path):
    with pytest.raises(SurveyFormatError):
        read_apogee_cluster_members(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text(
        "./x/aspcapStar-v304-2M00000000+0000000.fits M67 1.0 4800 4810 2.5 2.6 0.0 0.01\n"
        "./x/no-id.fits M67 1.0 4800 4810 2.5 2.6 0.0 0.01\n"
    )
    with pytest.raises(SurveyFormatError, match=":2:"):
        read_apogee_cluster_members(bad)


@pytest.mark.shared_data
def test_real_apogee_dr10_members():
    t = read_apogee_cluster_members(shared_file("apogee_dr10_cluster_members.txt"))
    assert len(t) == 554 and len(set(t["CLUSTER"])) == 19 and len(set(t["ID"])) == 554
    counts = dict(zip(*np.unique(t["CLUSTER"], return_counts=True)))
    assert counts["M5"] == 103 and counts["Pleiades"] == 74
    assert t["TEFF"].unit == "K" and np.all((t["TEFF"] > 3000) & (t["TEFF"] < 7000))
    # Pleiades lines carry one more field than the others: masked, not invented
    assert t["COL18"].mask[t["CLUSTER"] != "Pleiades"].all() and not t["COL18"].mask[t["CLUSTER"] == "Pleiades"].any()
    y = np.column_stack([t[n] for n in ("TEFF", "LOGG", "FE_H")])
    s = cluster_statistics(t["ID"], y, t, ["TEFF", "LOGG", "FE_H"], min_members=5)
    ok = s[(s["STATUS"] == "ok") & ~s["LIT_FE_H"].mask]
    # the calibrated DR10 metallicities agree with the literature to ~0.1 dex
    assert len(ok) >= 10 and np.all(np.abs(ok["OFFSET_FE_H"]) < 0.15)
    assert set(LITERATURE_FE_H) <= set(t["CLUSTER"])


@pytest.mark.shared_data
def test_clusters_command_on_real_members(tmp_path, capsys):
    from bayescannon.cli import main

    members = shared_file("apogee_dr10_cluster_members.txt")
    t = read_apogee_cluster_members(members)
    cat = Table(
        {"ID": t["ID"], "TEFF": t["TEFF"], "LOGG": t["LOGG"], "FE_H": t["FE_H"], "FLAGS": np.zeros(len(t), np.int64)}
    )
    cat.meta["LABELS"] = "TEFF LOGG FE_H"
    path = tmp_path / "cat.fits"
    cat.write(path)
    out = tmp_path / "cl"
    assert (
        main(["clusters", str(path), str(members), "--min-members", "5", "-o", str(out), "--report-format", "md"]) == 0
    )
    stats = Table.read(out / "cluster_statistics.ecsv")
    assert len(stats) == 19 and (stats["STATUS"] == "ok").sum() == 18
    trends = Table.read(out / "cluster_trends.ecsv")
    assert set(trends["LABEL"]) == {"FE_H"}
    assert "trends_teff.png" in (out / "report.md").read_text()
    assert "18 of 19 clusters validated" in capsys.readouterr().out


def test_membership_probability_cut_removes_non_members():
    """Interlopers with a low membership probability (field stars at another [Fe/H]) bias
    the cluster median and inflate its scatter; the probability column (found by name)
    removes them, and the counts say how many."""
    ids, labels, members, spec, _ = _mock_clusters(seed=3)
    rng = np.random.default_rng(7)
    n_int = 15  # interlopers of C2 at [Fe/H] = +0.3, listed with probability <= 0.3
    extra_ids = np.array([f"int{i}" for i in range(n_int)])
    extra = np.column_stack(
        [rng.uniform(4000, 5200, n_int), rng.uniform(1, 3, n_int), np.full(n_int, 0.3), np.full(n_int, 0.0)]
    )
    ids2, labels2 = np.r_[ids, extra_ids], np.vstack([labels, extra])
    table = Table(
        {
            "ID": np.r_[members["ID"], extra_ids],
            "CLUSTER": np.r_[members["CLUSTER"], ["C2"] * n_int],
            "Membership_Prob": np.r_[rng.uniform(0.6, 1.0, len(members)), rng.uniform(0.0, 0.3, n_int)],
        }
    )
    cut = cluster_statistics(ids2, labels2, table, NAMES, min_members=3)
    raw = cluster_statistics(ids2, labels2, table, NAMES, min_members=3, probability_column=None)
    c2 = {t.meta["PROBCOL"]: t[t["CLUSTER"] == "C2"][0] for t in (cut, raw)}
    with_cut, without = c2["Membership_Prob"], c2["none (no membership-probability cut)"]
    n = spec["C2"][2]
    assert with_cut["N_MEMBERS"] == n + n_int and with_cut["N_LOW_PROB"] == n_int
    assert with_cut["N_USED"] == n and without["N_USED"] == n + n_int and without["N_LOW_PROB"] == 0
    # 15 of 40 stars 1.3 dex away: the scatter without the cut is several times larger
    assert without["SCATTER_FE_H"] > 5 * with_cut["SCATTER_FE_H"]
    assert abs(with_cut["MEDIAN_FE_H"] - spec["C2"][0]) < 0.06
    assert cut.meta["MINPROB"] == 0.5
    trends = cluster_trends(ids2, labels2, table, NAMES, min_members=5)
    assert trends[(trends["CLUSTER"] == "C2") & (trends["LABEL"] == "FE_H")]["N_USED"][0] == n
    with pytest.raises(InvalidInputError, match="outside"):
        bad = table.copy()
        bad["Membership_Prob"][0] = 42.0
        cluster_statistics(ids2, labels2, bad, NAMES)
    with pytest.raises(InvalidInputError, match="no probability column 'P'"):
        cluster_statistics(ids2, labels2, table, NAMES, probability_column="P")


DR10_CLUSTERS = {
    "M107", "M13", "M15", "M2", "M3", "M5", "M53", "M67", "M71", "M92",
    "N188", "N2158", "N2420", "N4147", "N5466", "N6791", "N6819", "N7789", "Pleiades",
}  # fmt: skip


def test_shipped_literature_table_covers_the_dr10_clusters_with_a_source_per_value():
    from bayescannon.validate.clusters import literature_table

    t = literature_table()
    assert set(t["CLUSTER"]) == DR10_CLUSTERS and len(t) == len(DR10_CLUSTERS)
    refs = t.meta["references"]
    has = ~t["FE_H"].mask
    # every value names a reference; every blank says so (never a made-up number)
    assert all(str(s) in refs for s in t["SOURCE"][has])
    assert all(str(s) == "not sourced here" for s in t["SOURCE"][~has])
    assert "not sourced" in " ".join(str(v) for v in t.meta.values()) or "left blank" in t.meta["notes"]
    assert set(t["CLUSTER"][t["TYPE"] == "globular"]) <= set(t["CLUSTER"][has])  # Harris (2010) has them all
    assert np.all((t["FE_H"][has] > -2.5) & (t["FE_H"][has] < 0.5))
    assert LITERATURE_FE_H == {str(r["CLUSTER"]): float(r["FE_H"]) for r in t[has]}
    assert LITERATURE_FE_H["M92"] == -2.31 and LITERATURE_FE_H["M5"] == -1.29
    # open clusters: only values read in a source (issue 14); the rest stay blank
    assert LITERATURE_FE_H["M67"] == 0.03 and LITERATURE_FE_H["N6791"] == 0.47
    src = {str(r["CLUSTER"]): str(r["SOURCE"]) for r in t}
    assert src["M67"] == "Pace2008" and "A&A 489, 403" in refs["Pace2008"]
    assert src["N6791"] == "Gratton2006" and "ApJ 642, 462" in refs["Gratton2006"]
    assert {"N188", "N2158", "N2420", "N6819", "N7789"} == set(t["CLUSTER"][~has])


def test_cluster_statistics_name_the_literature_source():
    rng = np.random.default_rng(0)
    ids = np.array([f"s{i}" for i in range(20)])
    members = membership_table(ids, ["M92"] * 10 + ["N2158"] * 10)
    y = np.column_stack([rng.normal(-2.3, 0.05, 20)])
    s = cluster_statistics(ids, y, members, ["FE_H"])
    row = {str(r["CLUSTER"]): r for r in s}
    assert "Harris" in row["M92"]["LIT_SOURCE"] and row["M92"]["LIT_FE_H"] == -2.31
    assert np.isclose(row["M92"]["OFFSET_FE_H"], row["M92"]["MEDIAN_FE_H"] + 2.31)
    # no sourced literature value: masked offset and no source, not a default number
    assert row["N2158"]["LIT_SOURCE"] == "" and np.ma.is_masked(row["N2158"]["OFFSET_FE_H"])
