"""The package's modules import one another in one direction: no circle, not even a lazy one."""

from __future__ import annotations

import ast
from pathlib import Path

import qa_distill

PACKAGE = Path(qa_distill.__file__).parent


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules a file imports anywhere in it (a function-local import is a dependency
    too: it only defers the circle to the first call)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "qa_distill":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qa_distill."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("qa_distill.")}
    return (found & known) - {path.stem}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.glob("*.py"))
    known = {p.stem for p in paths}
    return {p.stem: imported_modules(p, known) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, [])) is not None), None)


def test_find_cycle_finds_a_lazy_circle():
    assert find_cycle({"models": {"mlflow_model"}, "mlflow_model": {"predictor"}, "predictor": {"models"}}) == [
        "mlflow_model", "predictor", "models", "mlflow_model"
    ]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_among_the_packages_modules():
    graph = import_graph()
    assert {"models", "predictor", "mlflow_model", "saved_model"} <= set(graph)
    assert "saved_model" in graph["models"] and "models" in graph["predictor"]  # the graph sees imports
    assert find_cycle(graph) is None
