"""One output style across the commands: readable text by default, ``--json`` for exactly one
JSON object on stdout (NaN → null), printing only through :mod:`bayescannon.commands._summary`."""

import argparse
import ast
import json
from pathlib import Path

import numpy as np
import pytest

import bayescannon
from bayescannon.cli import build_parser, main
from bayescannon.commands._summary import to_json

#: Where the library may call print: the commands' one output helper and the two entry points
#: (the CLI's error line on stderr; ``python -m bayescannon._warmup``'s closing line).
PRINT_ALLOWED = {"commands/_summary.py", "cli.py", "_warmup.py"}


def _subparsers() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_command_takes_json(command):
    """Every command prints a summary, so every command offers it as one JSON object."""
    p = _subparsers()[command]
    flags = {s: a for a in p._actions for s in a.option_strings}
    assert "--json" in flags, f"{command} has no --json"
    action = flags["--json"]
    assert action.nargs == 0 and action.default is False and "JSON" in action.help
    assert p.parse_args([*_minimal_argv(p), "--json"]).json is True


def _minimal_argv(p) -> list[str]:
    """Placeholder values for the required arguments of a parser (parsing only, nothing run)."""
    argv = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if not a.option_strings and a.nargs not in ("?", "*"):
            argv += ["x"] * (a.nargs if isinstance(a.nargs, int) else 1)
        elif a.option_strings and a.required:
            argv += [a.option_strings[0], *(["1"] * (a.nargs if isinstance(a.nargs, int) else 1))]
    for group in p._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            argv += [first.option_strings[0], *(["1"] * (first.nargs if isinstance(first.nargs, int) else 1))]
    return argv


def _calls_to_print(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_only_the_output_helper_prints():
    """Commands print through ``_summary`` (one style, silenced by ``--json``); the rest of the
    library logs (``logging``) or shows progress bars (tqdm), never prints."""
    root = Path(bayescannon.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in PRINT_ALLOWED:
            continue
        offenders += [f"{rel}:{line}" for line in _calls_to_print(path)]
    assert not offenders, f"print outside bayescannon/commands/_summary.py: {offenders}"
    # the helper is the one place, and the check above does see its print calls
    assert _calls_to_print(root / "commands" / "_summary.py")


def test_to_json_is_strict_json_with_null_for_nan():
    text = to_json({"a": np.float64("nan"), "b": [1.0, np.inf], "c": np.arange(2), "d": Path("x/y"), "e": np.int64(3)})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": [0, 1], "d": "x/y", "e": 3}
    assert "NaN" not in text and "Infinity" not in text


def _run(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _one_object(out: str) -> dict:
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"--json printed {len(lines)} lines: {out!r}"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def _not_json(out: str) -> None:
    assert out.strip(), "no summary printed"
    assert not out.lstrip().startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_quick_commands_json_and_text(tmp_path, capsys):
    """simulate, to-zarr, mock-catalogues, mock-cross-survey and transfer --list-steps: with
    ``--json`` one object whose numbers match what was written; without it readable text
    carrying the same information."""
    spectra = tmp_path / "s.nc"
    s = _one_object(_run(["simulate", "-o", str(spectra), "-n", "12", "--seed", "2", "--json"], capsys))
    assert s["n_stars"] == 12 and Path(s["spectra"]) == spectra and spectra.is_file()
    _not_json(_run(["simulate", "-o", str(tmp_path / "t.nc"), "-n", "12", "--seed", "2"], capsys))

    z = _one_object(_run(["to-zarr", str(spectra), "-o", str(tmp_path / "s.zarr"), "--json"], capsys))
    assert (z["n_stars"], z["n_pixels"], z["n_chunks"]) == (12, s["n_pixels"], 1)
    text = _run(["to-zarr", str(spectra), "-o", str(tmp_path / "t.zarr"), "--stars-per-chunk", "5"], capsys)
    _not_json(text)
    assert f"wrote 12 spectra ({s['n_pixels']} pixels)" in text and "in 3 chunk(s)" in text

    opts = ["--n-stars", "600", "--min-overlap", "30", "--seed", "1"]
    m = _one_object(_run(["mock-catalogues", str(tmp_path / "mc"), *opts, "--json"], capsys))
    assert Path(m["config"]).is_file() and m["next"].startswith("bayescannon homogenise")
    text = _run(["mock-catalogues", str(tmp_path / "mc2"), *opts], capsys)
    _not_json(text)
    assert "run: bayescannon homogenise" in text

    argv = ["mock-cross-survey", str(tmp_path / "mx"), "--n-common", "30", "--n-only", "5", "--n-repeat", "5"]
    x = _one_object(_run([*argv, "--n-pixels", "20", "--json"], capsys))
    assert Path(x["config"]).is_file() and "cross-survey" in x["next"]


def test_transfer_list_steps_json(tmp_path, capsys):
    """transfer --list-steps: the same rows as the text table, as one object."""
    argv = ["mock-survey", str(tmp_path / "ms"), "--n-both", "30", "--n-lamost-only", "5", "--n-apogee-only", "5"]
    argv += ["--apogee-spectra", "--no-progress"]
    ms = _one_object(_run([*argv, "--json"], capsys))
    assert ms["n_apogee_files"] == 0 and Path(ms["config"]).is_file() and Path(ms["truth"]).is_file()
    cfg = ms["config"]
    listing = _one_object(_run(["transfer", cfg, "--list-steps", "--json"], capsys))
    steps = listing["steps"]
    assert steps and all(set(d) == {"step", "done", "dir"} for d in steps) and not any(d["done"] for d in steps)
    text = _run(["transfer", cfg, "--list-steps"], capsys)
    _not_json(text)
    assert [line.split()[0] for line in text.strip().splitlines()] == [d["step"] for d in steps]
