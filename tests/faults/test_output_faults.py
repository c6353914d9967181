"""Fault injection: outputs never replace an existing file without --overwrite, never an input
of the same command even with it, and every output path is checked before any work.

For every command that writes files: (a) an existing output without --overwrite → exit 1, a
typed message naming the file, the file byte for byte as it was, and the command's ``run``
never called (nothing read, nothing computed); (b) with --overwrite the check passes (and for
the cheap commands the file is really replaced); (c) an output that is an input (same path,
another relative spelling, a symlink, a hard link) is refused even with --overwrite; (d) an
unsupported suffix is refused before work; (e) a folder that cannot be written → typed error.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pkgutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from bayescannon import commands
from bayescannon.cli import main
from bayescannon.errors import OutputExistsError, OutputIsInputError, OutputNotWritableError, OutputPathError
from bayescannon.pipeline.atomic import atomic_path, same_file, write_json
from bayescannon.survey.catalogue import write_table


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _command_modules():
    out = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if not info.name.startswith("_"):
            mod = importlib.import_module(f"{commands.__name__}.{info.name}")
            if hasattr(mod, "NAME"):
                out[mod.NAME] = mod
    return out


MODULES = _command_modules()


@pytest.fixture
def never_run(monkeypatch):
    """Replace every command's ``run`` with a recorder: a refused command never gets there."""
    calls = []
    for name, mod in MODULES.items():

        def fake(args, _name=name):
            calls.append((_name, args))
            return 0

        monkeypatch.setattr(mod, "run", fake)
    return calls


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Dummy input files (the command never runs, so their content does not matter)."""
    monkeypatch.chdir(tmp_path)
    d = {}
    for name in ("s.nc", "spec.fits", "m.nc", "labels.csv", "cat.fits", "members.csv", "cfg.toml"):
        (tmp_path / name).write_bytes(b"input " + name.encode())
        d[name] = tmp_path / name
    return d


# command → (argv given the output path, default output name; the output is a file, or a
# file inside the folder given to the command: (folder argument, file in it))
FILE_CASES = {
    "train": (lambda f, o: ["train", str(f["s.nc"]), "-o", str(o), "--labels", "TEFF"], "new.nc"),
    "infer": (lambda f, o: ["infer", str(f["m.nc"]), str(f["spec.fits"]), "-o", str(o)], "c.fits"),
    "calibrate": (lambda f, o: ["calibrate", str(f["m.nc"]), str(f["s.nc"]), "-o", str(o)], "cal.nc"),
    "catalogue": (lambda f, o: ["catalogue", str(f["m.nc"]), str(f["spec.fits"]), "-o", str(o)], "cat_out.fits"),
    "sample": (lambda f, o: ["sample", str(f["m.nc"]), str(f["s.nc"]), "-o", str(o)], "post.nc"),
    "simulate": (lambda f, o: ["simulate", "-o", str(o), "-n", "5"], "sim.nc"),
    "compare": (lambda f, o: ["compare", str(f["cat.fits"]), str(f["spec.fits"]), "-o", str(o)], "cmp.csv"),
    "to-zarr": (lambda f, o: ["to-zarr", str(f["s.nc"]), "-o", str(o)], "store.zarr"),
}
DIR_CASES = {
    "clusters": (lambda f, d: ["clusters", str(f["cat.fits"]), str(f["members.csv"]), "-o", str(d)], "report.html"),
    "repeats": (lambda f, d: ["repeats", str(f["cat.fits"]), "--group-column", "G", "-o", str(d)], "repeat_pairs.fits"),
    "validate": (lambda f, d: ["validate", str(f["s.nc"]), "--labels", "TEFF", "-o", str(d)], "cv_summary.ecsv"),
    "demo": (lambda f, d: ["demo", "--outdir", str(d)], "model.nc"),
    "mock-survey": (lambda f, d: ["mock-survey", str(d)], "anything.txt"),
    "mock-catalogues": (lambda f, d: ["mock-catalogues", str(d)], "anything.txt"),
    "mock-cross-survey": (lambda f, d: ["mock-cross-survey", str(d)], "anything.txt"),
    "cross-survey": (lambda f, d: ["cross-survey", str(f["cfg.toml"]), "-o", str(d)], "anything.txt"),
}
#: Commands whose outputs depend on a valid configuration file; their refusals are tested with
#: real configurations in their own test files (test_transfer, test_homogenise, test_preprocess).
CONFIGURED = {"preprocess", "transfer", "homogenise"}


def _existing_output(tmp_path, command):
    """argv and an existing output file of ``command``."""
    if command in FILE_CASES:
        build, name = FILE_CASES[command]
        out = tmp_path / name
        out.write_bytes(b"precious " + command.encode())
        return build, out, out
    build, name = DIR_CASES[command]
    folder = tmp_path / f"{command}_out"
    folder.mkdir()
    out = folder / name
    out.write_bytes(b"precious " + command.encode())
    return build, folder, out


def test_every_command_declares_its_outputs_and_takes_overwrite(capsys):
    for name, mod in MODULES.items():
        assert callable(getattr(mod, "outputs", None)), f"{name} declares no outputs(args)"
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "--overwrite" in capsys.readouterr().out, name
    assert set(FILE_CASES) | set(DIR_CASES) | CONFIGURED == set(MODULES)


@pytest.mark.parametrize("command", sorted(FILE_CASES) + sorted(DIR_CASES))
def test_existing_output_refused_before_any_work(command, files, tmp_path, never_run, capsys):
    build, arg, out = _existing_output(tmp_path, command)
    before = _digest(out)
    assert main(build(files, arg)) == 1
    err = capsys.readouterr().err
    assert (out.name in err or str(arg) in err) and "exists" in err, err
    assert "--overwrite" in err
    assert _digest(out) == before
    assert never_run == []  # nothing was read or computed
    # (b) with --overwrite the same run passes the check and gets to work
    assert main([*build(files, arg), "--overwrite"]) == 0
    assert [c[0] for c in never_run] == [command] and never_run[0][1].overwrite is True


@pytest.mark.parametrize("command", sorted(FILE_CASES) + sorted(DIR_CASES))
def test_absent_output_runs_without_overwrite(command, files, tmp_path, never_run):
    build, arg, out = _existing_output(tmp_path, command)
    out.unlink()
    assert main(build(files, arg)) == 0
    assert [c[0] for c in never_run] == [command] and never_run[0][1].overwrite is False


@pytest.mark.parametrize("command", ["train", "infer", "calibrate", "catalogue", "sample"])
@pytest.mark.parametrize("spelling", ["same", "relative", "symlink", "hardlink"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(command, spelling, files, tmp_path, never_run, capsys):
    # `infer m.nc s.fits -o s.fits` replaced the 43 MB spectra with a 37 KB catalogue
    spectra = files["spec.fits"] if command in ("infer", "catalogue") else files["s.nc"]
    if spelling == "same":
        out = spectra
    elif spelling == "relative":
        (tmp_path / "sub").mkdir()
        out = Path("sub") / ".." / spectra.name  # cwd is tmp_path
    elif spelling == "symlink":
        out = tmp_path / f"link{spectra.suffix}"
        out.symlink_to(spectra)
    else:
        out = tmp_path / f"hard{spectra.suffix}"
        os.link(spectra, out)
    before = _digest(spectra)
    build, _ = FILE_CASES[command]
    assert main([*build(files, out), "--overwrite"]) == 1
    assert "is also an input" in capsys.readouterr().err
    assert _digest(spectra) == before and never_run == []


@pytest.mark.parametrize(
    ("command", "input_name"), [("repeats", "catalogue_calibrated.fits"), ("validate", "cv_predictions.fits")]
)
def test_a_file_of_an_output_folder_that_is_an_input_is_refused(
    command, input_name, files, tmp_path, never_run, capsys
):
    folder = tmp_path / "out"
    folder.mkdir()
    inp = folder / input_name
    inp.write_bytes(b"the input")
    files = {**files, "cat.fits": inp, "s.nc": inp}
    build, _ = DIR_CASES[command]
    assert main([*build(files, folder), "--overwrite"]) == 1
    assert "is also an input" in capsys.readouterr().err and never_run == []
    assert inp.read_bytes() == b"the input"


@pytest.mark.parametrize(
    ("command", "name"),
    [("train", "m.txt"), ("infer", "c.txt"), ("calibrate", "cal.fits"), ("catalogue", "cat"), ("sample", "p.csv")]
    + [("simulate", "s.ecsv")],
)
def test_bad_suffix_is_refused_before_work(command, name, files, tmp_path, never_run, capsys):
    build, _ = FILE_CASES[command]
    assert main(build(files, tmp_path / name)) == 1
    err = capsys.readouterr().err
    assert "suffix must be one of" in err and name in err
    assert never_run == [] and not (tmp_path / name).exists()


def _deny_folder(monkeypatch, folder: Path):
    """Make creating files in ``folder`` fail as a read-only folder does (root ignores chmod)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("command", sorted(FILE_CASES) + sorted(DIR_CASES) + ["preprocess"])
def test_read_only_folder_is_a_typed_error_naming_it(command, files, tmp_path, never_run, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_folder(monkeypatch, ro)
    if command in FILE_CASES:
        build, name = FILE_CASES[command]
        argv = build(files, ro / name)
    elif command in DIR_CASES:
        argv = DIR_CASES[command][0](files, ro / "sub")  # a folder to create inside the read-only one
    else:
        argv = ["preprocess", str(files["s.nc"]), "-o", str(ro), "--grid", "4000", "5000"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"the folder {ro} cannot be written" in err, err
    assert never_run == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 folder")
def test_read_only_folder_by_permissions(files, tmp_path, never_run, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["simulate", "-o", str(ro / "s.nc"), "-n", "5"]) == 1
    finally:
        ro.chmod(0o755)
    assert "cannot be written" in capsys.readouterr().err and never_run == []


def test_output_under_a_file_is_refused(files, never_run, capsys):
    assert main(["simulate", "-o", str(files["s.nc"] / "x.nc"), "-n", "5"]) == 1
    assert "is not a folder" in capsys.readouterr().err and never_run == []


def test_preprocess_folder_that_is_an_input_is_refused(files, tmp_path, never_run, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    argv = ["preprocess", str(raw), "-o", str(raw), "--grid", "4000", "5000", "--overwrite"]
    assert main(argv) == 1
    assert "is also an input" in capsys.readouterr().err and never_run == []


def test_demo_refreshes_its_own_folder_but_not_a_foreign_one(files, tmp_path, never_run):
    folder = tmp_path / "demo_output"
    folder.mkdir()
    (folder / "model.nc").write_bytes(b"someone's model")
    assert main(["demo", "--outdir", str(folder)]) == 1
    (folder / MODULES["demo"].MARKER).write_text("written by `bayescannon demo`\n")
    assert main(["demo", "--outdir", str(folder)]) == 0  # the demo's own folder: refreshed by design


# ---------------------------------------------------------------- real runs (cheap commands)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from bayescannon import CannonModel
    from bayescannon.io import write_spectra
    from bayescannon.simulate.synthesis import simulate_survey

    d = tmp_path_factory.mktemp("outputs_real")
    ds = simulate_survey(60, instrument="apogee", snr=(80.0, 200.0), rng=3)  # calibrate needs >= 50
    write_spectra(ds, d / "s.nc")
    CannonModel(["TEFF", "LOGG"], order=1, random_state=0).fit(ds, progressbar=False).save(d / "m.nc")
    return d


def test_overwrite_really_replaces_and_without_it_nothing_changes(trained, tmp_path, capsys):
    out = tmp_path / "c.fits"
    out.write_bytes(b"old catalogue")
    argv = ["infer", str(trained / "m.nc"), str(trained / "s.nc"), "-o", str(out), "--no-progress"]
    assert main(argv) == 1 and out.read_bytes() == b"old catalogue"
    assert main([*argv, "--overwrite"]) == 0
    assert len(Table.read(out)) == 60
    sim = tmp_path / "sim.nc"
    sim.write_bytes(b"old spectra")
    assert main(["simulate", "-o", str(sim), "-n", "5", "--overwrite"]) == 0
    assert sim.read_bytes()[:4] == b"\x89HDF"  # netCDF4/HDF5


def test_calibrate_never_replaces_its_model(trained, tmp_path, capsys):
    """calibrate used to overwrite MODEL by default; now it writes MODEL_calibrated.nc beside it."""
    model = tmp_path / "m.nc"
    model.write_bytes((trained / "m.nc").read_bytes())
    before = _digest(model)
    assert main(["calibrate", str(model), str(trained / "s.nc"), "--n-folds", "3"]) == 0
    assert _digest(model) == before
    assert (tmp_path / "m_calibrated.nc").is_file()
    out = capsys.readouterr().out
    assert "m_calibrated.nc" in out
    assert "the calibration stars themselves (in-sample" in out  # never passed off as held-out coverage
    # again: the calibrated model exists now
    assert main(["calibrate", str(model), str(trained / "s.nc"), "--n-folds", "3"]) == 1
    assert "m_calibrated.nc exists" in capsys.readouterr().err
    assert (
        main(["calibrate", str(model), str(trained / "s.nc"), "--n-folds", "3", "-o", str(model), "--overwrite"]) == 1
    )
    assert _digest(model) == before


def test_a_holdout_set_that_is_not_held_out_is_refused_before_any_output(trained, tmp_path, capsys, caplog):
    """--holdout with the calibration (or training) stars used to report their in-sample
    coverage as held-out coverage; now it is refused before anything is written, and a few
    such stars are named in a warning."""
    import logging

    from bayescannon.io import write_spectra
    from bayescannon.simulate.synthesis import simulate_survey

    cal = simulate_survey(60, instrument="apogee", snr=(80.0, 200.0), rng=4)
    write_spectra(cal, tmp_path / "cal.nc")
    out = tmp_path / "mc.nc"
    model, spectra = str(trained / "m.nc"), str(tmp_path / "cal.nc")
    for holdout, what in ((spectra, "calibration"), (str(trained / "s.nc"), "training")):
        assert main(["calibrate", model, spectra, "--holdout", holdout, "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"60 of 60 --holdout stars ({holdout}) have exactly the reference labels of {what} stars" in err, err
        assert not out.exists()
    mixed = simulate_survey(60, instrument="apogee", snr=(80.0, 200.0), rng=5)
    for name in ("TEFF", "LOGG"):
        mixed[name].values[:3] = cal[name].values[:3]  # three calibration stars among new ones
    write_spectra(mixed, tmp_path / "mixed.nc")
    with caplog.at_level(logging.WARNING):
        assert main(["calibrate", model, spectra, "--holdout", str(tmp_path / "mixed.nc"), "-o", str(out)]) == 0
    assert "3 of 60 --holdout stars" in caplog.text
    assert "have exactly the reference labels of calibration stars (rows 0, 1, 2)" in caplog.text
    assert out.is_file()


# ---------------------------------------------------------------- library writers


def test_library_writers_refuse_to_replace_by_default(tmp_path):
    t = Table({"ID": ["a", "b"], "X": [1.0, 2.0]})
    path = write_table(t, tmp_path / "t.fits")
    before = _digest(path)
    with pytest.raises(OutputExistsError, match="t.fits"):
        write_table(t, path)
    assert _digest(path) == before
    write_table(Table({"ID": ["c"], "X": [3.0]}), path, overwrite=True)
    assert len(Table.read(path)) == 1
    with pytest.raises(OutputPathError, match="t.txt"):
        write_table(t, tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()
    j = write_json(tmp_path / "a.json", {"a": 1})
    with pytest.raises(OutputExistsError, match="a.json"):
        write_json(j, {"a": 2})
    with pytest.raises(OutputExistsError):
        with atomic_path(j) as tmp:
            tmp.write_text("x")
    assert '"a": 1' in j.read_text()
    assert isinstance(OutputExistsError("x"), FileExistsError | ValueError)
    assert isinstance(OutputNotWritableError("x"), PermissionError)


def test_library_write_spectra_and_posterior_refuse_by_default(trained, tmp_path):
    import xarray as xr

    from bayescannon.bayes.diagnostics import save_posterior
    from bayescannon.io import read_spectra, write_spectra

    ds = read_spectra(trained / "s.nc")
    target = tmp_path / "copy.nc"
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        write_spectra(ds, target)
    assert target.read_bytes() == b"keep"
    post = xr.Dataset({"labels": (("chain", "draw", "star"), np.zeros((1, 2, 3)))})
    tree = xr.DataTree.from_dict({"posterior": post})
    with pytest.raises(OutputExistsError):
        save_posterior(tree, target)
    assert target.read_bytes() == b"keep"
    with pytest.raises(OutputPathError, match="p.txt"):
        save_posterior(tree, tmp_path / "p.txt")


def test_same_file_sees_links(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    os.link(a, tmp_path / "h")
    (tmp_path / "s").symlink_to(a)
    assert same_file(a, tmp_path / "h") and same_file(a, tmp_path / "s")
    assert not same_file(a, tmp_path / "absent")
    (tmp_path / "b").write_text("x")
    assert not same_file(a, tmp_path / "b")
    with pytest.raises(OutputIsInputError):
        with atomic_path(tmp_path / "h", overwrite=True, inputs=[a]):
            pass
