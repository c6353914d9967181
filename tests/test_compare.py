"""Comparison of posteriors with point-estimate pipelines (bayescannon.bayes.compare).

Known truth: our posteriors are Gaussian draws centred on truth + our noise with the right
width; a consistent pipeline reports truth + its noise with the right error, an
inconsistent one has an offset and understated errors.
"""

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table

from bayescannon.bayes.compare import canonical_label, compare_with_pipeline, outlier_table
from bayescannon.errors import CrossMatchError, InvalidInputError
from bayescannon.results import label_axis_text

NAMES = ["TEFF", "LOGG", "FE_H"]
SD = np.array([50.0, 0.05, 0.03])  # our posterior sd
PE = np.array([80.0, 0.08, 0.04])  # the pipeline's stated error
N = 400


def _ours(rng, n=N, draws=400):
    truth = np.column_stack([rng.uniform(4000, 5500, n), rng.uniform(1, 3.5, n), rng.uniform(-1.5, 0.3, n)])
    centre = truth + SD * rng.standard_normal((n, 3))
    samples = centre[None, None] + SD * rng.standard_normal((2, draws // 2, n, 3))
    ids = np.array([f"2M{i:08d}" for i in range(n)])
    post = xr.Dataset(
        {"labels": (("chain", "draw", "star", "label_name"), samples)},
        coords={"chain": [0, 1], "draw": np.arange(draws // 2), "star": ids, "label_name": NAMES},
    )
    return xr.DataTree.from_dict({"posterior": post}), truth, ids


def _aspcap(rng, truth, ids, *, offset=0.0, err_scale=1.0):
    """An ASPCAP-style table: APOGEE_ID, TEFF, TEFF_ERR, LOGG, LOGG_ERR, M_H, M_H_ERR, SNR."""
    p = truth + offset + PE * rng.standard_normal(truth.shape)
    t = Table()
    order = rng.permutation(len(ids))  # a different row order: joined by id
    t["APOGEE_ID"] = ids[order]
    for j, col in enumerate(["TEFF", "LOGG", "M_H"]):
        t[col] = p[order, j]
        t[f"{col}_ERR"] = np.full(len(ids), PE[j] * err_scale)
    t["SNR"] = rng.uniform(50, 300, len(ids))
    return t


def _z_band(n):
    return 4 / np.sqrt(2 * (n - 1))  # 4σ of a sample sd of n standard normals


def test_consistent_pipeline_gives_uniform_quantiles():
    rng = np.random.default_rng(1)
    tree, truth, ids = _ours(rng)
    res = compare_with_pipeline(tree, _aspcap(rng, truth, ids), label_map={"FE_H": "M_H"})
    assert list(res["label_name"].values) == NAMES and res.sizes["star"] == N
    assert np.all(res["ks_pvalue"].values > 1e-3), res["ks_pvalue"].values
    np.testing.assert_array_less(np.abs(res["z_sd"].values - 1.0), _z_band(N))
    np.testing.assert_array_less(np.abs(res["z_mean"].values), 4 / np.sqrt(N))
    # the two forms of the quantile agree for Gaussian posteriors: q = Φ(z) up to Monte Carlo error
    from scipy.special import ndtr

    assert np.max(np.abs(res["quantile"].values - ndtr(res["z"].values))) < 0.05
    assert np.all(np.abs(res["frac_within_68"].values - 0.683) < 3 * np.sqrt(0.683 * 0.317 / N))


def test_inconsistent_pipeline_is_detected():
    rng = np.random.default_rng(2)
    tree, truth, ids = _ours(rng)
    bad = _aspcap(rng, truth, ids, offset=np.array([100.0, 0.0, 0.0]), err_scale=0.3)
    bad["LOGG"][:5] += 1.0  # five gross outliers in log g
    res = compare_with_pipeline(tree, bad, label_map={"FE_H": "M_H"})
    assert np.all(res["ks_pvalue"].values < 1e-3), res["ks_pvalue"].values
    assert float(res["z_mean"].sel(label_name="TEFF")) > 0.5  # offset of +100 K: pipeline above us
    assert float(res["z_sd"].sel(label_name="FE_H")) > 1.1  # understated errors: z too wide
    out = outlier_table(res)
    logg_out = set(out[out["label_name"] == "LOGG"]["star"])
    moved = set(np.asarray(bad["APOGEE_ID"][:5]).astype(str))
    assert moved <= logg_out


def test_catalogue_input_and_thecannon_names():
    rng = np.random.default_rng(3)
    _, truth, ids = _ours(rng, n=300)
    centre = truth + SD * rng.standard_normal(truth.shape)
    cat = Table({"id": ids})
    for j, n in enumerate(NAMES):
        cat[n] = centre[:, j]
        cat[f"e_{n}"] = np.full(len(ids), SD[j])
    p = truth + PE * rng.standard_normal(truth.shape)
    tc = Table({"id": ids[:250], "Teff": p[:250, 0], "logg": p[:250, 1], "feh": p[:250, 2]})
    for j, n in enumerate(["Teff", "logg", "feh"]):
        tc[f"e_{n}"] = np.full(250, PE[j])
    res = compare_with_pipeline(cat, tc)
    assert res.sizes["star"] == 250  # stars missing from the pipeline are left out
    assert "FE_H=feh" in res.attrs["pipeline_columns"]
    assert np.all(res["ks_pvalue"].values > 1e-3)
    np.testing.assert_array_less(np.abs(res["z_sd"].values - 1.0), _z_band(250))
    # without the pipeline errors the z-scores are too wide: the errors are needed
    raw = compare_with_pipeline(cat, tc, use_pipeline_errors=False)
    expected = np.sqrt(SD**2 + PE**2) / SD  # 1.9, 1.9, 1.7
    np.testing.assert_array_less(np.abs(raw["z_sd"].values - expected), _z_band(250) * expected)


def test_canonical_names_and_errors():
    assert canonical_label("[Fe/H]") == "FE_H" == canonical_label("feh")
    assert canonical_label("Teff") == "TEFF" and canonical_label("afe") == "ALPHA_FE"
    rng = np.random.default_rng(4)
    tree, truth, ids = _ours(rng, n=20, draws=40)
    t = _aspcap(rng, truth, ids)
    t["APOGEE_ID"] = [f"X{i}" for i in range(20)]
    with pytest.raises(CrossMatchError, match="pipeline table"):
        compare_with_pipeline(tree, t)
    with pytest.raises(InvalidInputError, match="none of our labels"):
        compare_with_pipeline(tree, Table({"APOGEE_ID": ids, "VMAC": np.ones(20)}))


def test_plot_and_cli(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from bayescannon.cli import main
    from bayescannon.plots import pipeline_comparison

    rng = np.random.default_rng(5)
    tree, truth, ids = _ours(rng, n=60, draws=100)
    pipe = _aspcap(rng, truth, ids)
    res = compare_with_pipeline(tree, pipe, label_map={"FE_H": "M_H"})
    fig = pipeline_comparison(res)
    labels = {ax.get_xlabel() for ax in fig.axes}
    assert {"S/N", label_axis_text("TEFF"), label_axis_text("LOGG"), label_axis_text("FE_H")} <= labels, labels
    assert all(ax.get_ylabel() for ax in fig.axes)  # the quantile histograms too
    from matplotlib.ticker import NullFormatter

    snr_axes = [ax for ax in fig.axes if ax.get_xlabel() == "S/N"]
    fig.canvas.draw()
    for ax in snr_axes:  # minor ticks unlabelled: matplotlib's 3×10¹, 4×10¹, … overlapped
        assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)
        assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    tree.to_netcdf(tmp_path / "post.nc", engine="h5netcdf")
    pipe.write(tmp_path / "aspcap.fits")
    rc = main(
        [
            "compare",
            str(tmp_path / "post.nc"),
            str(tmp_path / "aspcap.fits"),
            "-o",
            str(tmp_path / "cmp.csv"),
            "--plot",
            str(tmp_path / "cmp.png"),
            "--map",
            "FE_H=M_H",
        ]
    )
    assert rc == 0 and (tmp_path / "cmp.png").stat().st_size > 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "cmp.csv")
    assert len(df) == 60 * 3 and {"z", "quantile", "snr"} <= set(df.columns)


def test_swapped_arguments_get_an_actionable_message(tmp_path, capsys):
    """`compare PIPELINE OURS` (a careless order): the message says which argument is which and
    lists the columns, instead of asking to 'name the labels' (the CLI has no such option)."""
    from bayescannon.cli import main

    rng = np.random.default_rng(6)
    _, truth, ids = _ours(rng, n=20, draws=20)
    cat = Table({"ID": ids})
    for j, n in enumerate(NAMES):
        cat[n] = truth[:, j]
        cat[f"e_{n}"] = np.full(len(ids), SD[j])
    cat.write(tmp_path / "ours.fits")
    _aspcap(rng, truth, ids).write(tmp_path / "aspcap.fits")
    rc = main(["compare", str(tmp_path / "aspcap.fits"), str(tmp_path / "ours.fits"), "-o", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and not (tmp_path / "c.csv").exists()
    assert "not the pipeline's table" in err and "compare OURS PIPELINE" in err and "APOGEE_ID" in err
    # the right order works
    assert (
        main(["compare", str(tmp_path / "ours.fits"), str(tmp_path / "aspcap.fits"), "-o", str(tmp_path / "c.csv")])
        == 0
    )
    text = capsys.readouterr().out
    assert "compared 20 stars" in text and not text.lstrip().startswith("{")
    # --json: the per-label statistics of the text table as one object (NaN → null)
    import json

    argv = ["compare", str(tmp_path / "ours.fits"), str(tmp_path / "aspcap.fits"), "-o", str(tmp_path / "c2.csv")]
    assert main([*argv, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    import pandas as pd

    compared = set(pd.read_csv(tmp_path / "c2.csv")["label_name"])  # FE_H needs --map FE_H=M_H: not compared
    assert summary["n_stars"] == 20 and set(summary["per_label"]) == compared and compared <= set(NAMES)
    assert all(v["n"] == 20 and 0 <= v["frac_within_68"] <= 1 for v in summary["per_label"].values())
    assert len(summary["outliers"]) == sum(v["n_outliers"] for v in summary["per_label"].values())
