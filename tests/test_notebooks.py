"""Every notebook in notebooks/ runs headless on small sizes (BAYESCANNON_NB_SMALL=1), on a
fresh clone too (without ../shared/data the notebooks fall back to the built-in simulator),
and shows its figures inline. The uncertainty study compiles one NUTS model (tens of
seconds on 2 cores)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: figures each notebook must display (a figure built without pyplot shows only when it is a
#: cell's value: this catches a cell that builds one and shows nothing)
MIN_FIGURES = {"quickstart.ipynb": 3, "uncertainty_study.ipynb": 8}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("BAYESCANNON_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the notebooks switch to the inline backend themselves
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= MIN_FIGURES.get(path.name, 1), f"{path.name} showed {len(figures)} figures"


def test_notebooks_are_valid_and_committed_without_outputs():
    import nbformat

    assert NOTEBOOKS, "no notebook in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert any("BAYESCANNON_NB_SMALL" in c.source for c in code)
        assert any("%matplotlib inline" in c.source for c in code), f"{path.name} hides its figures"
        assert not any('matplotlib.use("Agg")' in c.source for c in code)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path.name
