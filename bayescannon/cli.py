"""Command-line interface: ``bayescannon <command> ...``.

Argument parsing only: each command lives in ``bayescannon/commands/<name>.py`` and
defines ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args) -> int`` and, when it
writes files, ``outputs(args)`` (the files it will write: checked before ``run``, see
:func:`check_command_outputs`) and, when a config file names more files it reads,
``inputs(args)`` (those files: never written over); this module discovers them, so adding a command never
touches this file. Every command takes ``--overwrite``.
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
from bayescannon.commands._outputs import check_outputs, input_paths
from bayescannon.errors import BayesCannonError

__all__ = ["main", "build_parser", "check_command_outputs", "HelpFormatter", "STANDARD_HELP"]


def _commands():
    """The command modules of :mod:`bayescannon.commands`, sorted by name."""

    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


def _shown_default(action: argparse.Action) -> str | None:
    """The default of an option as ``--help`` shows it, or None when there is none to show
    (positionals, flags, ``None`` and suppressed defaults)."""
    default = action.default
    if not action.option_strings or default is None or default is argparse.SUPPRESS or isinstance(default, bool):
        return None
    if action.nargs == 0 or (isinstance(default, (list, tuple)) and not default):
        return None
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return shown.replace("%", "%%")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The one ``--help`` style of every command: descriptions keep their line breaks
    (paragraphs, examples) and ``(default: X)`` is appended to an option's help unless the
    help already names its default, so that every option with a default shows it."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = _shown_default(action)
        if shown is None or "default" in text.lower():
            return text
        return f"{text} (default: {shown})"


#: Help of options that many commands share, used where a command gives none, so that the
#: same option reads the same in every ``--help``.
STANDARD_HELP = {
    "seed": "seed of the random number generator",
    "report_format": "format of the report",
    "plot_formats": "formats of the figures (one file per format)",
    "no_progress": "no progress bar",
    "id_column": "column of the star ids",
    "snr_column": "column of the signal-to-noise ratio",
    "chunk_size": "stars per chunk (bounds the memory used)",
    "outdir": "output folder",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``bayescannon`` parser with one sub-parser per command module.

    Returns
    -------
    argparse.ArgumentParser
        Also what the documentation's CLI reference is generated from.
    """
    parser = argparse.ArgumentParser(
        prog="bayescannon",
        description="Put the spectra of one stellar survey onto the label scale of another.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bayescannon {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _commands():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=HelpFormatter,
        )
        mod.add_arguments(p)
        for action in p._actions:  # an option without help text still shows its default
            if action.help is None and action.dest in STANDARD_HELP:
                action.help = STANDARD_HELP[action.dest]
            if action.help is None and _shown_default(action) is not None:
                action.help = f"default: {_shown_default(action)}"
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace output files that exist (an input of the command is never replaced)",
        )
        p.set_defaults(_run=mod.run, _outputs=getattr(mod, "outputs", None), _inputs=getattr(mod, "inputs", None))
    return parser


def check_command_outputs(args) -> None:
    """The pre-flight check of everything ``args`` will make its command write, run before the
    command reads or computes anything (:func:`bayescannon.commands._outputs.check_outputs`):
    supported suffixes, writable folders, no existing file without ``--overwrite``, and
    never an input of the same command, even with ``--overwrite``.

    Raises
    ------
    OutputPathError
        Or a subclass, naming the option and the file or folder.
    """
    declare = getattr(args, "_outputs", None)
    outs = list(declare(args)) if declare is not None else []
    # files a command reads besides its arguments (those a config file names): ``inputs(args)``
    named = getattr(args, "_inputs", None)
    extra = [Path(p) for p in named(args)] if named is not None else []
    check_outputs(outs, input_paths(args, outs) + extra, overwrite=bool(getattr(args, "overwrite", False)))


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
        check_command_outputs(args)
        return int(args._run(args) or 0)
    except BayesCannonError as exc:
        print(f"bayescannon {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
