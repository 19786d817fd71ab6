"""The package's layers hold: every module imports from the layers below its own (the contract in
pyproject.toml, checked by import-linter), and no modules import one another in a circle, not
even a lazy one."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import qa_distill

PACKAGE = Path(qa_distill.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"


def module_name(path: Path) -> str:
    """`qa_distill/inference/predictor.py` -> `qa_distill.inference.predictor` (a package's
    `__init__.py` is the package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules a file imports anywhere in it (a function-local import is a dependency
    too: it only defers the circle to the first call)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qa_distill"):
            # `from qa_distill.training import runs` imports the module runs, or a name of the package
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return (found & known) - {module_name(path), "qa_distill"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports; packages' `__init__` modules leave out the
    package of a module they import (Python imports the package first, not as a circle)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, known) for p in paths}
    return {module: {m for m in imports if not module.startswith(m + ".")} for module, imports in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
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
    predictor, models = "qa_distill.inference.predictor", "qa_distill.models"
    assert {predictor, models, "qa_distill.saved_model", "qa_distill.training.runs"} <= set(graph)
    assert "qa_distill.saved_model" in graph[models] and models in graph[predictor]  # the graph sees imports
    assert find_cycle(graph) is None


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    """import-linter on `config`, in a process of its own: it disables the loggers of the modules
    already imported, which later tests listen to."""
    code = ("from importlinter.cli import lint_imports; "
            f"raise SystemExit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True)


def _layers() -> list[str]:
    (layers,) = re.findall(r"^layers = \[(.*?)^\]", PYPROJECT.read_text(), re.M | re.S)
    return [name.strip() for layer in re.findall(r'"([^"]+)"', layers) for name in layer.split("|")]


def test_every_module_and_sub_package_is_in_a_layer():
    """A new top-level module or sub-package outside the contract would be free to import anything."""
    top_level = {module_name(p) for p in PACKAGE.glob("*.py")} | {
        module_name(p.parent) for p in PACKAGE.glob("*/__init__.py")
    }
    assert top_level - {"qa_distill"} == set(_layers())


def test_no_module_imports_from_a_layer_above_its_own():
    checked = lint_imports(PYPROJECT)
    assert checked.returncode == 0, checked.stdout[-3000:]


def test_the_layer_check_fails_on_an_upward_import(tmp_path):
    """The contract is checked, not just read: a copy of it whose layers are upside down fails."""
    text = PYPROJECT.read_text()
    layers = _layers()
    upside_down = text.replace(f'"{layers[0]}",', '"__top__",').replace(f'"{layers[-1]}",', f'"{layers[0]}",')
    upside_down = upside_down.replace('"__top__",', f'"{layers[-1]}",')
    (tmp_path / "pyproject.toml").write_text(upside_down)
    checked = lint_imports(tmp_path / "pyproject.toml")
    assert checked.returncode == 1 and "BROKEN" in checked.stdout, checked.stdout[-3000:] + checked.stderr[-3000:]
