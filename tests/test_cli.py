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
    assert main(["train", str(spectra), str(labels), "-o", str(model), "--labels", "TEFF", "LOGG", "FE_H",
                 "--no-progress"]) == 0
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
    assert main(["train", str(spectra), "-o", str(tmp_path / "m2.nc"), "--labels", "TEFF", "LOGG",
                 "--no-progress"]) == 0


def test_errors_are_reported_not_raised(tmp_path, capsys):
    rc = main(["infer", str(tmp_path / "missing.nc"), str(tmp_path / "x.nc"), "-o", str(tmp_path / "c.fits")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_demo_runs_and_writes_its_products(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--outdir", str(out), "--n-train", "250", "--n-test", "60"]) == 0
    text = capsys.readouterr().out
    assert "scatter" in text and "TEFF" in text
    for name in ("model.nc", "catalogue.fits", "one_to_one.png"):
        assert (out / name).is_file()
