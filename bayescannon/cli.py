"""Command-line interface: ``bayescannon <command> ...``.

Argument parsing only: each command lives in ``bayescannon/commands/<name>.py`` and
defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this
module discovers them, so adding a command never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from pathlib import Path

from bayescannon import commands
from bayescannon._version import __version__
from bayescannon.errors import BayesCannonError, InvalidInputError

__all__ = ["main", "build_parser"]


def _commands():

    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayescannon",
        description="Put the spectra of one stellar survey onto the label scale of another.",
    )
    parser.add_argument("--version", action="version", version=f"bayescannon {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


#: Arguments that name what a command writes.
_OUTPUTS = ("output", "model_out")


def _input_files(args) -> set[Path]:
    """Existing files named by any other argument (single paths or lists of them)."""
    found = set()
    for name, value in vars(args).items():
        if name in _OUTPUTS or name.startswith("_"):
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str | Path) and Path(v).is_file():
                found.add(Path(v).resolve())
    return found


def check_outputs_are_not_inputs(args) -> None:
    """Refuse a run whose output file is one of its input files (it would be replaced).

    Raises
    ------
    InvalidInputError
        Naming the argument and the file.
    """
    inputs = _input_files(args)
    for name in _OUTPUTS:
        value = getattr(args, name, None)
        if value and Path(value).resolve() in inputs:
            raise InvalidInputError(
                f"--{name.replace('_', '-')} {value} is also an input of this command: "
                "choose another output path (inputs are never overwritten)"
            )


def main(argv=None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        check_outputs_are_not_inputs(args)
        return int(args._run(args) or 0)
    except BayesCannonError as exc:
        print(f"bayescannon {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
