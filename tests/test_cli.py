"""The CLI, called through main([...])."""

import pytest
from astropy.table import Table

from bayescannon.cli import main


def test_help_everywhere(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "infer", "simulate", "demo"):
        assert cmd in out
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


def test_simulate_train_infer_round_trip(tmp_path, capsys):
    spectra = tmp_path / "train.nc"
    labels = tmp_path / "labels.csv"
    assert main(["simulate", "-o", str(spectra), "-n", "120", "--seed", "3", "--labels-out", str(labels)]) == 0
    model = tmp_path / "model.nc"
    assert (
        main(
            ["train", str(spectra), str(labels), "-o", str(model), "--labels", "TEFF", "LOGG", "FE_H", "--no-progress"]
        )
        == 0
    )
    test = tmp_path / "test.nc"
    assert main(["simulate", "-o", str(test), "-n", "20", "--seed", "4"]) == 0
    cat = tmp_path / "cat.fits"
    assert main(["infer", str(model), str(test), "-o", str(cat), "--no-progress"]) == 0
    t = Table.read(cat)
    assert len(t) == 20
    for col in ("ID", "TEFF", "e_TEFF", "LOGG", "e_LOGG", "FE_H", "CHI2", "FLAGS"):
        assert col in t.colnames
    assert t["TEFF"].unit == "K"
    assert "FLAGBT00" in t.meta
    # stored label columns of the spectra file also work as training labels
    assert (
        main(["train", str(spectra), "-o", str(tmp_path / "m2.nc"), "--labels", "TEFF", "LOGG", "--no-progress"]) == 0
    )


def test_train_with_label_errors_makes_the_labels_latent(tmp_path, capsys):
    import json

    import numpy as np

    from bayescannon import CannonModel

    spectra = tmp_path / "train.nc"
    labels = tmp_path / "labels.csv"
    assert main(["simulate", "-o", str(spectra), "-n", "300", "--seed", "5", "--labels-out", str(labels)]) == 0
    t = Table.read(labels)
    rng = np.random.default_rng(0)
    for name, e in (("TEFF", 25.0), ("LOGG", 0.04), ("FE_H", 0.03)):
        t[f"e_{name}"] = np.full(len(t), e)
        t[name] = t[name] + e * rng.standard_normal(len(t))
    t.write(labels, overwrite=True)
    model = tmp_path / "model.nc"
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                str(spectra),
                str(labels),
                "-o",
                str(model),
                "--labels",
                "TEFF",
                "LOGG",
                "FE_H",
                "--label-errors",
                "e_TEFF",
                "e_LOGG",
                "e_FE_H",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: one JSON object, nothing else on stdout
    summary = json.loads(out[0])
    assert summary["latent_labels"]["converged"] and summary["latent_labels"]["calibrated"]
    m = CannonModel.load(model)
    assert int(m.latent_converged_) == 1
    # a column count that does not match the labels is a clear error, not a crash
    assert (
        main(
            [
                "train",
                str(spectra),
                str(labels),
                "-o",
                str(tmp_path / "model2.nc"),  # a new file: model.nc exists (no --overwrite)
                "--labels",
                "TEFF",
                "LOGG",
                "FE_H",
                "--label-errors",
                "e_TEFF",
                "--no-progress",
            ]
        )
        == 1
    )
    assert "--label-errors" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    rc = main(["infer", str(tmp_path / "missing.nc"), str(tmp_path / "x.nc"), "-o", str(tmp_path / "c.fits")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_demo_runs_and_writes_its_products(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--outdir", str(out), "--n-train", "250", "--n-test", "60"]) == 0
    text = capsys.readouterr().out
    assert "scatter" in text and "TEFF" in text
    assert "calibrated 68% coverage, lowest-highest over the 5 quintiles" in text  # per-bin coverage shown
    for name in ("model.nc", "catalogue.fits", "one_to_one.png"):
        assert (out / name).is_file()


def test_preprocess_then_infer_chunk_folder(tmp_path, capsys):
    """Survey scale from the CLI: files → chunk folder (resumable) → infer chunk by chunk."""
    import numpy as np

    from bayescannon import CannonModel
    from bayescannon import io as bio
    from bayescannon import preprocess as pp

    rng = np.random.default_rng(8)
    wl = bio.lamost_wavelength(npix=600)
    files = tmp_path / "files"
    files.mkdir()
    teff = rng.uniform(4500, 6000, 9)
    for i in range(9):
        path = files / f"spec-{i:03d}.fits"
        if i == 4:
            path.write_bytes(b"not fits")  # skipped and listed, the run goes on
            continue
        depth = 0.3 * (teff[i] - 4000) / 2000
        flux = 100 * (1 - depth * np.exp(-0.5 * ((wl - 3900) / 3) ** 2)) + rng.normal(0, 0.5, wl.size)
        bio.write_lamost(path, wl, flux, np.full(wl.size, 4.0), header={"OBSID": i, "Z": rng.normal(0, 1e-4)})
    out = tmp_path / "chunks"
    argv = [
        "preprocess",
        str(files),
        "-o",
        str(out),
        "--grid",
        "3760",
        "4150",
        "--chunk-size",
        "3",
        "--L",
        "30",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "1 file(s) skipped" in capsys.readouterr().out
    skipped = Table.read(out / "skipped.ecsv")
    assert len(skipped) == 1 and skipped["path"][0].endswith("spec-004.fits")
    chunks = sorted(out.glob("chunk_*.nc"))
    assert len(chunks) == 3
    # the same as the library pipeline on the readable files
    good = [p for p in sorted(files.glob("*.fits")) if p.name != "spec-004.fits"]
    grid = 10 ** np.arange(np.log10(3760), np.log10(4150), 1e-4)
    direct = pp.add_snr(pp.normalise_ho2017(pp.to_rest_frame(bio.read_many(good), new_wavelength=grid), L=30.0))
    combined = pp.read_chunks(out)
    np.testing.assert_array_equal(combined["star"].values, direct["star"].values)
    # chunks change the float32 blocking of the smoothing (precision="single": ≲ 1e-5)
    np.testing.assert_allclose(combined["flux"].values, direct["flux"].values, rtol=1e-5)
    # a second run resumes: nothing is rewritten
    stamps = [c.stat().st_mtime_ns for c in chunks]
    assert main(argv) == 0
    assert [c.stat().st_mtime_ns for c in chunks] == stamps
    # infer over the chunk folder = infer on the combined container
    keep = np.array([i != 4 for i in range(9)])
    model = CannonModel(["TEFF"], order=1).fit(combined, labels=teff[keep][:, None])
    model.save(tmp_path / "m.nc")
    cat = tmp_path / "cat.fits"
    work = tmp_path / "work"
    assert (
        main(["infer", str(tmp_path / "m.nc"), str(out), "-o", str(cat), "--work-dir", str(work), "--no-progress"]) == 0
    )
    t = Table.read(cat)
    ref = model.infer(combined)
    np.testing.assert_array_equal(np.asarray(t["ID"]).astype(str), combined["star"].values.astype(str))
    np.testing.assert_allclose(t["TEFF"], ref["labels"].values[:, 0], rtol=1e-10)
    assert len(list(work.glob("result_chunk_*.nc"))) == 3


def test_an_output_never_replaces_an_input(tmp_path, capsys):
    """`train spectra.nc -o spectra.nc` (or infer -o MODEL) is refused before anything runs;
    the input file is left byte for byte as it was."""
    spectra = tmp_path / "s.nc"
    assert main(["simulate", "-o", str(spectra), "-n", "30", "--seed", "1"]) == 0
    before = spectra.read_bytes()
    capsys.readouterr()
    code = main(["train", str(spectra), "-o", str(spectra), "--labels", "TEFF", "LOGG", "--no-progress"])
    assert code == 1
    assert "is also an input" in capsys.readouterr().err
    assert spectra.read_bytes() == before


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bayescannon", "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "infer" in out.stdout


def test_help_shows_every_default():
    """Every option that has a default says so in its command's --help (an astronomer should not
    have to read the source to learn that `simulate -n` writes 1000 stars)."""
    import argparse

    from bayescannon.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            default = action.default
            if not action.option_strings or default is None or isinstance(default, bool):
                continue
            if default is argparse.SUPPRESS or action.nargs == 0 or (isinstance(default, list) and not default):
                continue
            # the option's own help paragraph, from its flag up to the next option
            formatter = p._get_formatter()
            formatter.add_argument(action)
            entry = " ".join(formatter.format_help().split())
            if "default" not in entry.lower():
                missing.append(f"{name} {'/'.join(action.option_strings)} (default {default!r})")
        assert "--overwrite" in text
        assert "(default: )" not in text, name  # an empty list is no default to show
    assert not missing, missing


def _all_parsers():
    import argparse

    from bayescannon.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [("bayescannon", parser), *sub.choices.items()]


def test_every_option_of_every_command_has_help():
    """No bare option in any --help: each action (positional or optional) says what it does."""
    import argparse

    missing = []
    for name, p in _all_parsers():
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = (action.help or "").strip()
            if not text or text.lower().startswith("default:") or text is argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_help_formatter_keeps_descriptions_and_shows_defaults():
    from bayescannon.cli import HelpFormatter

    for _, p in _all_parsers():
        assert p.formatter_class is HelpFormatter
    sample = dict(_all_parsers())["sample"]
    text = " ".join(sample.format_help().split())
    for flag in ("--draws", "--tune", "--chains"):
        assert flag in text
    assert "(default: 1000)" in text and "(default: 4)" in text


def test_training_progress_bar_measures_pixels(monkeypatch):
    """The bar counts pixels finished (converged or neutral) and ends at the pixel count,
    not at the iteration where everything converged (it used to stop at 5/101)."""
    import numpy as np
    import tqdm.auto

    from bayescannon.core.train import fit_pixels

    seen = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            self.total, self.n = total, 0

        def update(self, k):
            assert k >= 0
            self.n += k
            seen.append(self.n)

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            seen.append(("closed", self.n, self.total))

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    rng = np.random.default_rng(0)
    n, p = 200, 50
    x = rng.normal(size=(n, 2))
    design = np.column_stack([np.ones(n), x, x**2])
    theta = rng.normal(size=(p, 5)) * 0.1
    ivar = np.full((n, p), 1e4)
    flux = design @ theta.T + rng.normal(size=(n, p)) * (0.01 + 0.02 * rng.uniform(size=p))
    result = fit_pixels(flux, ivar, design, progressbar=True)
    assert seen[-1] == ("closed", p, p)
    counts = [c for c in seen if not isinstance(c, tuple)]
    assert counts == sorted(counts) and counts[-1] == p
    # one update per iteration that ran, one at the end; the bar was not full before the last pass
    assert result.n_iter + 1 <= len(counts) <= result.n_iter + 2 and counts[0] < p


def test_calibrate_writes_its_figures_with_proper_axis_labels(tmp_path, capsys):
    from matplotlib.image import imread

    train, test = tmp_path / "train.nc", tmp_path / "test.nc"
    assert main(["simulate", "-o", str(train), "-n", "150", "--seed", "3"]) == 0
    assert main(["simulate", "-o", str(test), "-n", "120", "--seed", "4"]) == 0
    model = tmp_path / "model.nc"
    argv = ["train", str(train), "-o", str(model), "--labels", "TEFF", "LOGG", "FE_H", "--no-progress"]
    assert main(argv) == 0
    figs = tmp_path / "figs"
    assert main(["calibrate", str(model), str(test), "--figures", str(figs)]) == 0
    names = sorted(p.name for p in figs.iterdir())
    assert names == ["coverage_curve.png", "coverage_map.png", "errors_vs_snr.png", "zscores.png"]
    assert all(imread(figs / n).shape[0] > 100 for n in names)
    out = capsys.readouterr().out
    assert "wrote 4 figures" in out
    # how well the 120 calibration stars pin down a quintile's coverage: sqrt(0.68 * 0.32 / 24) = 0.095
    assert "120 calibration stars (24 per quintile): a quintile's 68 % coverage is known to +-0.095" in out
    # a second run does not replace them without --overwrite
    assert main(["calibrate", str(model), str(test), "--figures", str(figs), "-o", str(tmp_path / "m2.nc")]) == 1
    # --json: one JSON object only, with the coverage the text table shows
    import json

    capsys.readouterr()
    argv = ["calibrate", str(model), str(test), "--report-only", "--json", "--figures", str(tmp_path / "f2")]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert summary["model"] is None and summary["n_stars"] == 120 and len(summary["figures"]) >= 3
    assert "calibration_stars" not in summary  # --report-only: nothing was calibrated
    formal = summary["coverage"]["formal"]
    assert set(formal) == {"TEFF", "LOGG", "FE_H"} and all(0 <= v["0.68"] <= v["0.95"] <= 1 for v in formal.values())
