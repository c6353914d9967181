"""Sphinx directive ``.. bayescannon-catalogue-schema::``: the catalogue columns, generated.

It trains a small model on the built-in simulator, calibrates it on held-out simulated
stars, infers calibrated labels of a few more and passes them through the one catalogue
builder (:func:`bayescannon.survey.catalogue.build_catalogue`); the page lists every column
it writes (name, type, unit, description) and the header keywords, so the schema page
never drifts from the code.
"""

from __future__ import annotations

import numpy as np
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]


def _example_catalogue():
    from bayescannon import CannonModel
    from bayescannon.bayes import calibrate
    from bayescannon.simulate import simulate_survey
    from bayescannon.survey.catalogue import build_catalogue

    train = simulate_survey(300, instrument="lamost", rng=1)
    held = simulate_survey(300, instrument="lamost", rng=2)
    test = simulate_survey(20, instrument="lamost", rng=3)
    model = CannonModel(LABELS, random_state=0).fit(train)
    labels = np.column_stack([held[n].values for n in LABELS])
    calibrate(model, held["flux"].values, held["ivar"].values, labels, n_folds=0)
    result = model.infer(test, uncertainty="calibrated")
    return build_catalogue(model, result, spectra=test, config={"command": "docs"})


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("*", "\\*") or " "


class CatalogueSchema(SphinxDirective):
    """A table of the columns of a catalogue (calibrated errors, four labels) and its header keys."""

    has_content = False

    def run(self):
        table = _example_catalogue()
        rows = [
            (c.name, c.dtype.name if c.dtype.kind != "U" else "string", c.unit or "", c.description or "")
            for c in table.columns.values()
        ]
        rst = [
            ".. list-table:: Columns (labels TEFF, LOGG, FE_H, ALPHA_FE; calibrated errors)",
            "   :header-rows: 1",
            "",
        ]
        rst += ["   * - column", "     - type", "     - unit", "     - description"]
        for name, dtype, unit, desc in rows:
            rst += [f"   * - ``{name}``", f"     - {_cell(dtype)}", f"     - {_cell(unit)}", f"     - {_cell(desc)}"]
        rst += ["", "Header keywords: " + ", ".join(f"``{k}``" for k in table.meta if isinstance(k, str)) + ".", ""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(rst, source="bayescannon-catalogue-schema"), container)
        return container.children


def setup(app):
    app.add_directive("bayescannon-catalogue-schema", CatalogueSchema)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
