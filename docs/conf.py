"""Sphinx configuration of the bayescannon documentation (``make docs``).

The API reference and the CLI reference are generated at build time from the package
itself (every name in each public module's ``__all__``; the argparse parsers), so that they
follow the code without hand edits.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))

import bayescannon  # noqa: E402

project = "bayescannon"
author = "bayescannon developers"
copyright = "2026, bayescannon developers"
release = bayescannon.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_nb",
    "cli_reference",
    "catalogue_schema",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

html_theme = "pydata_sphinx_theme"
html_title = f"bayescannon {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
}

# autodoc / autosummary / numpydoc
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # numpydoc docstrings state the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# myst / myst-nb: notebooks are executed at every build (no cache in the source tree)
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

intersphinx_mapping = {}
suppress_warnings = ["myst.header"]

# ---------------------------------------------------------------------------
# API reference: one page per public module, listing every name in its __all__
# ---------------------------------------------------------------------------
SKIP = {"bayescannon.commands", "bayescannon.__main__"}


def _public_modules():
    """Modules documented: the package, then every public module or subpackage with an
    ``__all__``; a subpackage without one is documented through its public submodules."""
    out = [bayescannon]
    for info in pkgutil.iter_modules(bayescannon.__path__):
        name = f"bayescannon.{info.name}"
        if info.name.startswith("_") or name in SKIP:
            continue
        mod = importlib.import_module(name)
        if getattr(mod, "__all__", None) is not None:
            out.append(mod)
        elif info.ispkg:
            for sub in pkgutil.iter_modules(mod.__path__):
                if sub.name.startswith("_"):
                    continue
                smod = importlib.import_module(f"{name}.{sub.name}")
                if getattr(smod, "__all__", None):
                    out.append(smod)
    return out


def write_api_pages(app=None):
    """Write ``api/<module>.rst`` (autosummary tables) and ``api/index.rst``."""
    api = HERE / "api"
    api.mkdir(exist_ok=True)
    # autosummary never removes a stub: start from none, so that a name dropped from an
    # __all__ leaves no orphan page (a warning under -W)
    shutil.rmtree(api / "generated", ignore_errors=True)
    pages = []
    for mod in _public_modules():
        # a module in __all__ (``bayescannon.errors``) has its own page, linked from the text
        names = [n for n in mod.__all__ if not inspect.ismodule(getattr(mod, n, None))]
        title = f"``{mod.__name__}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {mod.__name__}", "   :no-members:", ""]
        if names:
            lines += [f".. currentmodule:: {mod.__name__}", "", ".. autosummary::", "   :toctree: generated", ""]
            lines += [f"   {n}" for n in names]
        text = "\n".join(lines) + "\n"
        path = api / f"{mod.__name__}.rst"
        if not path.exists() or path.read_text() != text:  # unchanged pages keep Sphinx's cache valid
            path.write_text(text)
        pages.append(mod.__name__)
    index = [
        "API reference",
        "=============",
        "",
        "Every public name: each module lists the names in its ``__all__`` (generated at build time).",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ] + [f"   {p}" for p in pages]
    text = "\n".join(index) + "\n"
    if not (api / "index.rst").exists() or (api / "index.rst").read_text() != text:
        (api / "index.rst").write_text(text)


def copy_notebooks():
    """Copy ``notebooks/*.ipynb`` (committed without outputs) into ``docs/notebooks/`` (not
    tracked), where myst-nb executes them at every build."""
    dest = HERE / "notebooks"
    dest.mkdir(exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = dest / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            target.write_bytes(nb.read_bytes())


write_api_pages()
copy_notebooks()
# the docs build runs the notebooks at their small size (the tests do too): < 1 min each
os.environ.setdefault("BAYESCANNON_NB_SMALL", "1")
os.environ.setdefault("COLUMNS", "100")  # width of the generated --help text
