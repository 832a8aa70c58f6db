"""The package's shape, checked: layers that only point down, no import cycles, short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ferkit"
MAX_FUNCTION_LINES = 80


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """Every import between ferkit modules, those inside functions included."""
    return grimp.build_graph("ferkit", include_external_packages=False, cache_dir=None)


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """The import cycles: groups of two or more modules that reach each other (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = set()
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.add(other)
                if other == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert strongly_connected(graph) == []


def test_nothing_imports_the_root_package(graph: grimp.ImportGraph) -> None:
    """`ferkit/__init__.py` exposes the public API; a module importing it would close a cycle."""
    assert graph.find_modules_that_directly_import("ferkit") == set()


def test_layers_contract_is_kept() -> None:
    """The import-linter contract in pyproject.toml (`lint-imports` runs the same in CI)."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], capture_output=True, text=True, cwd=SRC.parents[1], check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_no_function_over_80_lines() -> None:
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
