"""The import layering of docs/DESIGN.md, read from the source (issue 10, item 16): no import cycle among
the modules of a package, and the data layer never imports the config composer above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "abaw"


def _imports(path: Path) -> set[str]:
    """Every ``abaw.*`` module a file imports, at top level or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("abaw")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("abaw"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _graph(package: str) -> dict[str, set[str]]:
    files = {f"abaw.{package}.{p.stem}": p for p in (PKG / package).glob("*.py") if p.stem != "__init__"}
    return {m: _imports(p) & set(files) for m, p in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path, m, n]
            if n not in state and (found := visit(n, [*path, m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [])):
            return found
    return None


@pytest.mark.parametrize("package", ["data", "features", "metrics", "models", "synth"])
def test_no_import_cycle_inside_a_package(package):
    assert _cycle(_graph(package)) is None, " -> ".join(_cycle(_graph(package)))


def test_data_layer_does_not_import_the_config_composer():
    for path in (PKG / "data").glob("*.py"):
        bad = {m for m in _imports(path) if m == "abaw.config" or m.startswith("abaw.config.")}
        assert not bad, f"{path.name} imports {sorted(bad)}"
