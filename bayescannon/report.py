"""Validation reports: headings, text, tables and figures written as Markdown or HTML.

A :class:`Report` collects content in order; :meth:`Report.write` renders it to
``report.md`` or ``report.html`` (chosen by the suffix) and writes the figures beside it
as PNG (and PDF on request), referenced by relative paths so the folder can be moved.

>>> rep = Report("Cross-validation")                                  # doctest: +SKIP
>>> rep.add_table(cv.summary, caption="bias and scatter per label")   # doctest: +SKIP
>>> rep.add_figure(scatter_vs_snr(cv), "scatter_vs_snr")              # doctest: +SKIP
>>> rep.write("out/report.html")                                      # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import html
import logging
import re
from pathlib import Path

import numpy as np

from bayescannon._version import __version__
from bayescannon.errors import InvalidInputError
from bayescannon.plots import save_figure

logger = logging.getLogger(__name__)

__all__ = ["Report", "format_value"]


def format_value(v, digits: int = 4) -> str:
    """A table cell: masked/NaN → ``—``, floats to ``digits`` significant digits."""
    if v is None or v is np.ma.masked or (np.ma.isMaskedArray(v) and np.ma.getmaskarray(v).all()):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "—"
        return f"{float(v):.{digits}g}"
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def _rows(table):
    """Column names and formatted rows of an astropy Table or a list of dicts."""
    if hasattr(table, "colnames"):
        cols = list(table.colnames)
        rows = [[format_value(row[c]) for c in cols] for row in table]
        return cols, rows
    if isinstance(table, list) and (not table or isinstance(table[0], dict)):
        cols = list(dict.fromkeys(k for row in table for k in row))
        return cols, [[format_value(row.get(c)) for c in cols] for row in table]
    raise InvalidInputError(f"cannot tabulate a {type(table).__name__}; give an astropy Table or a list of dicts")


class Report:
    """An ordered collection of report content.

    Parameters
    ----------
    title : str
    formats : sequence of str
        Figure formats to write (``"png"`` always first: it is what the report shows).
    """

    def __init__(self, title: str, *, formats=("png",)):
        self.title = title
        self.formats = ["png", *[f for f in formats if f != "png"]]
        self.items: list[tuple] = []
        self._figure_names: set[str] = set()

    def add_heading(self, text: str, level: int = 2) -> Report:
        self.items.append(("heading", text, int(level)))
        return self

    def add_text(self, text: str) -> Report:
        """A paragraph (plain text; Markdown emphasis is left as is)."""
        self.items.append(("text", text))
        return self

    def add_table(self, table, *, caption: str | None = None, max_rows: int = 200) -> Report:
        """A table (astropy Table or list of dicts); longer tables are cut with a note."""
        cols, rows = _rows(table)
        extra = max(len(rows) - max_rows, 0)
        self.items.append(("table", cols, rows[:max_rows], caption, extra))
        return self

    def add_figure(self, fig, name: str, *, caption: str | None = None) -> Report:
        """A matplotlib figure, written as ``<name>.png`` (and other formats) beside the
        report."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        if safe in self._figure_names:
            raise InvalidInputError(f"figure name {name!r} used twice in this report")
        self._figure_names.add(safe)
        self.items.append(("figure", fig, safe, caption))
        return self

    def add_files(self, files, *, caption: str = "Machine-readable outputs") -> Report:
        """A list of files written beside the report (tables, catalogues)."""
        self.items.append(("files", [str(f) for f in files], caption))
        return self

    # ------------------------------------------------------------------ rendering
    def _write_figures(self, folder: Path) -> dict:

        out = {}
        for item in self.items:
            if item[0] == "figure":
                _, fig, name, _ = item
                paths = save_figure(fig, folder / f"{name}.png", formats=self.formats)
                out[name] = [p.name for p in paths]
        return out

    def to_markdown(self, figures: dict | None = None) -> str:
        figures = figures or {}
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

        lines = [f"# {self.title}", "", f"*bayescannon {__version__}, {stamp}*", ""]
        for item in self.items:
            kind = item[0]
            if kind == "heading":
                lines += ["#" * max(1, min(item[2], 6)) + " " + item[1], ""]
            elif kind == "text":
                lines += [item[1], ""]
            elif kind == "table":
                _, cols, rows, caption, extra = item
                if caption:
                    lines += [f"**{caption}**", ""]
                lines.append("| " + " | ".join(cols) + " |")
                lines.append("|" + "|".join("---" for _ in cols) + "|")
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                if extra:
                    lines.append(f"\n*({extra} more rows in the machine-readable table)*")
                lines.append("")
            elif kind == "figure":
                _, _, name, caption = item
                files = figures.get(name, [f"{name}.png"])
                lines += [f"![{caption or name}]({files[0]})", ""]
                if caption:
                    lines += [f"*{caption}*" + ("" if len(files) < 2 else f" ({', '.join(files[1:])})"), ""]
            elif kind == "files":
                lines += [f"**{item[2]}**", ""] + [f"- `{f}`" for f in item[1]] + [""]
        return "\n".join(lines)

    def to_html(self, figures: dict | None = None) -> str:
        figures = figures or {}
        esc = html.escape
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

        parts = [
            "<!DOCTYPE html>",
            f"<html><head><meta charset='utf-8'><title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #bbb;padding:2px 6px;"
            "text-align:right}th{background:#eee}img{max-width:100%}</style></head><body>",
            f"<h1>{esc(self.title)}</h1><p><em>bayescannon {esc(__version__)}, {stamp}</em></p>",
        ]
        for item in self.items:
            kind = item[0]
            if kind == "heading":
                lvl = max(1, min(item[2], 6))
                parts.append(f"<h{lvl}>{esc(item[1])}</h{lvl}>")
            elif kind == "text":
                parts.append(f"<p>{esc(item[1])}</p>")
            elif kind == "table":
                _, cols, rows, caption, extra = item
                parts.append("<table>" + (f"<caption>{esc(caption)}</caption>" if caption else ""))
                parts.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
                parts.append("</table>")
                if extra:
                    parts.append(f"<p><em>({extra} more rows in the machine-readable table)</em></p>")
            elif kind == "figure":
                _, _, name, caption = item
                files = figures.get(name, [f"{name}.png"])
                links = " ".join(f"<a href='{esc(f)}'>{esc(f.rsplit('.', 1)[-1])}</a>" for f in files[1:])
                parts.append(
                    f"<figure><img src='{esc(files[0])}' alt='{esc(caption or name)}'>"
                    f"<figcaption>{esc(caption or '')} {links}</figcaption></figure>"
                )
            elif kind == "files":
                parts.append(
                    f"<p><strong>{esc(item[2])}</strong></p><ul>"
                    + "".join(f"<li><a href='{esc(f)}'><code>{esc(f)}</code></a></li>" for f in item[1])
                    + "</ul>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path) -> Path:
        """Write the report (``.md`` or ``.html``) and its figures; returns the path."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".md", ".html", ".htm"):
            raise InvalidInputError(f"report must be .md or .html; got {path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        figures = self._write_figures(path.parent)
        text = self.to_markdown(figures) if suffix == ".md" else self.to_html(figures)
        path.write_text(text, encoding="utf-8")
        logger.info("wrote report %s (%d figures)", path, len(figures))
        return path
