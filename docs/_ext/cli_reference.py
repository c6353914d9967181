"""Sphinx directive ``.. bayescannon-cli::``: the CLI reference, generated from the parsers.

For every command of :func:`bayescannon.cli.build_parser` it writes a section with the
command's description and its ``--help`` text (options, defaults), so that the reference
never drifts from the code.
"""

from __future__ import annotations

import argparse

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


class CliReference(SphinxDirective):
    """Sections ``bayescannon <command>`` with each command's ``--help``."""

    has_content = False

    def run(self):
        from bayescannon.cli import build_parser

        parser = build_parser()
        rst = ["bayescannon", "-" * len("bayescannon"), "", ".. code-block:: text", ""]
        rst += ["   " + line for line in parser.format_help().splitlines()] + [""]
        for name, sub in sorted(_subparsers(parser).items()):
            title = f"bayescannon {name}"
            rst += [title, "-" * len(title), "", ".. code-block:: text", ""]
            rst += ["   " + line for line in sub.format_help().splitlines()] + [""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(rst, source="bayescannon-cli"), container)
        return container.children


def setup(app):
    app.add_directive("bayescannon-cli", CliReference)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
