"""The package's layout is its architecture: data flows one way, and a test says so.

Every import between bayescannon modules (module level and inside functions) is read
with :mod:`ast`. The test fails on

* an import cycle between modules,
* an import that runs against the layer order (a lower layer importing a higher one),
* ``from bayescannon.x import _private`` across subpackages,
* a function-level import of a bayescannon module (a sign of a cycle being dodged),
* a module over the size limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bayescannon"

#: Layers from the bottom up; a module may import only from its own layer or below.
#: ``bayescannon/__init__.py`` is the public facade and sits above everything.
LAYERS = [
    ("errors", "flags", "_version", "_typing", "_estimator"),
    ("spectra", "pipeline", "results", "censoring"),
    ("core",),
    ("io",),
    ("preprocess",),
    ("modelfile",),
    ("model",),
    ("bayes", "validate"),
    ("survey", "homogenise"),
    ("simulate",),
    ("plots", "report"),
    ("commands", "cli", "__main__", "_warmup"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}

#: Lines a module may have.
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path):
    """(target module, imported names, at module level?) for every bayescannon import."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top = {id(n) for n in tree.body}
    # imports inside `if TYPE_CHECKING:` at the top level count as module level
    for n in tree.body:
        if isinstance(n, ast.If):
            top.update(id(c) for c in n.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if not target.startswith("bayescannon"):
                continue
            names = [a.name for a in node.names]
            sub = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for t in sub or [target]:
                yield t, names, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bayescannon"):
                    yield a.name, [], id(node) in top


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


EDGES = {m: sorted({t for t, _, _ in _imports(m, p) if t != m}) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    rooms = {_room(m) for m in MODULES} - {"__init__"}
    assert rooms <= set(RANK), f"modules outside the layer table: {sorted(rooms - set(RANK))}"


def _find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every cycle met by a depth-first walk of ``graph`` (module -> imported modules)."""
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    graph = {m: [t for t in ts if t in MODULES and t != "bayescannon"] for m, ts in EDGES.items()}
    # a package's __init__ that re-exports its own submodules is not a cycle with them
    for m in graph:
        graph[m] = [t for t in graph[m] if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))]
    cycles = _find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_follow_the_layer_order():
    bad = []
    for m, targets in EDGES.items():
        if m == "bayescannon":
            continue
        for t in targets:
            if t == "bayescannon":
                bad.append(f"{m} imports the package facade (bayescannon/__init__.py)")
                continue
            if RANK[_room(t)] > RANK[_room(m)]:
                bad.append(f"{m} ({_room(m)}) imports {t} ({_room(t)}), a higher layer")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_subpackages():
    bad = []
    for m, path in MODULES.items():
        for t, names, _ in _imports(m, path):
            if _room(t) == _room(m):
                continue
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                bad.append(f"{m} imports private {private} from {t}")
    assert not bad, "\n".join(bad)


def test_no_function_level_imports_of_the_package():
    bad = [f"{m} imports {t} inside a function" for m, p in MODULES.items() for t, _, top in _imports(m, p) if not top]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (limit {MAX_LINES}): split it by concept"


def test_the_cycle_check_can_fail():
    """The cycle finder sees a planted cycle and passes an acyclic graph (guards against a
    check that passes vacuously)."""
    assert _find_cycles({"a": ["b"], "b": ["c"], "c": ["a"]}) == [["a", "b", "c", "a"]]
    assert _find_cycles({"a": ["b", "c"], "b": ["c"], "c": []}) == []
