"""The one output style of the commands: a human-readable summary on stdout by default,
``--json`` for one machine-readable JSON object instead (and nothing else on stdout).

A command builds its summary as a dict and its text as lines; :func:`say` prints the text
(silent under ``--json``), :func:`print_summary` prints the closing text or the JSON object.
Progress bars, log lines and :func:`note` (what a long command is doing before its first
output) go to stderr in both styles. This module is the only place in
:mod:`bayescannon.commands` that prints (a test reads the sources).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

__all__ = ["add_json_argument", "json_mode", "say", "note", "print_summary", "to_json"]


def add_json_argument(p) -> None:
    """Add ``--json`` to a command's parser."""
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout instead of text (for scripts)",
    )


def json_mode(args) -> bool:
    """Whether the command was asked for ``--json``."""
    return bool(getattr(args, "json", False))


def say(args, *lines: str) -> None:
    """Print human-readable lines (tables, progress notes): nothing under ``--json``."""
    if not json_mode(args):
        for line in lines:
            print(line)


def note(*lines: str) -> None:
    """Print progress notes on stderr (in both styles: stdout stays the summary's)."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def _plain(v):
    """JSON-able values: numpy scalars/arrays, paths; non-finite floats become None (JSON null)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return _plain(v.item())
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_json(summary: dict) -> str:
    """A summary as one line of strict JSON (NaN → null)."""
    return json.dumps(_plain(summary), allow_nan=False, default=str)


def print_summary(args, summary: dict, text: str | list[str] = ()) -> None:
    """The closing output of a command: ``text`` (a line or lines) by default, or ``summary``
    as one JSON object with ``--json``."""
    if json_mode(args):
        print(to_json(summary))
        return
    for line in [text] if isinstance(text, str) else text:
        print(line)
