"""The architecture as a test, so it stays what docs/architecture.md says.

Reads every product module's imports (top-level and inside functions alike, since a lazy
import is still a dependency) and checks the floors: each package may import only the floors
below it, never the reverse, and no module imports itself back through a cycle. Also that no
package folder grows past about a dozen modules, where a newcomer can no longer see its rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each floor and the floors it may import (besides itself). Ground floor first.
FLOORS: dict[str, set[str]] = {
    "core": set(),
    "storage": {"core"},
    "lineage": {"core", "storage"},
    "checks": {"core"},
    "engines": {"core"},
    "train": {"core", "storage", "engines"},
    "serve": {"core", "storage", "lineage", "engines"},
    "pipelines": {"core", "storage", "lineage", "checks", "engines", "train", "serve"},
}
MAX_MODULES = 12  # per package folder, __init__ included


def _modules() -> dict[str, Path]:
    """germline module name -> file, for every module of every floor."""
    out = {}
    for floor in FLOORS:
        for file in sorted((ROOT / floor).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(("germline", *parts))] = file
    return out


MODULES = _modules()


def _imports(file: Path) -> set[str]:
    """The germline modules `file` imports: `from a.b import c` counts as a.b.c when that is a
    module, else as a.b."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("germline."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("germline."):
            assert node.level == 0, f"{file}: relative import"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, file in MODULES.items():
        graph.add_node(name)
        for target in _imports(file):
            assert target in MODULES, f"{name} imports {target}, which does not exist"
            graph.add_edge(name, target)
    return graph


GRAPH = _graph()


def _floor(module: str) -> str:
    return module.split(".")[1]


def test_the_graph_is_read() -> None:
    """The checks below are only as good as the graph: it must hold the known dependencies."""
    assert ("germline.pipelines.generate.pipeline", "germline.pipelines.models.teacher") in (
        GRAPH.edges
    )
    assert ("germline.train.loop", "germline.engines") in GRAPH.edges  # a lazy import
    assert GRAPH.number_of_nodes() == len(MODULES) > 60


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_each_floor_imports_only_the_floors_below_it(floor: str) -> None:
    allowed = FLOORS[floor] | {floor}
    wrong = sorted(
        f"{src} -> {dst}"
        for src, dst in GRAPH.edges
        if _floor(src) == floor and _floor(dst) not in allowed
    )
    assert not wrong, f"{floor}/ may import only {sorted(allowed)}:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    cycles = list(nx.simple_cycles(GRAPH))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:10])


def test_the_floors_themselves_form_no_cycle() -> None:
    """Between floors the rules above already forbid it; this says so of the rules."""
    rules = nx.DiGraph([(f, g) for f, below in FLOORS.items() for g in below])
    assert nx.is_directed_acyclic_graph(rules)


def test_no_package_folder_is_crowded() -> None:
    crowded = {
        str(folder.relative_to(ROOT)): count
        for floor in FLOORS
        for folder in [ROOT / floor, *(p for p in (ROOT / floor).rglob("*") if p.is_dir())]
        if (count := len(list(folder.glob("*.py")))) > MAX_MODULES
    }
    assert not crowded, f"more than {MAX_MODULES} modules: {crowded}"


def test_every_package_folder_ships() -> None:
    """pyproject.toml lists the packages one by one (the floors map onto `germline.*`), so a
    new room left off the list works in the editable install and is missing from the wheel."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(("germline", *init.parent.relative_to(ROOT).parts))
        for floor in FLOORS
        for init in (ROOT / floor).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
