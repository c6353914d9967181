"""Every notebook in notebooks/ runs headless on small sizes (BAYESCANNON_NB_SMALL=1).

Notebooks that use the APOGEE emulator (../shared/data) skip cleanly when it is absent.
The uncertainty study compiles one NUTS model (tens of seconds on 2 cores)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EMULATOR = ROOT / ".." / "shared" / "data" / "apogee_payne_emulator.npz"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if "emulator" in path.read_text() and not EMULATOR.exists():
        pytest.skip("../shared/data (APOGEE emulator) is not available")
    monkeypatch.setenv("BAYESCANNON_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_notebooks_are_valid():
    import nbformat

    assert NOTEBOOKS, "no notebook in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert any("BAYESCANNON_NB_SMALL" in c.source for c in nb.cells if c.cell_type == "code")
