"""The pip requirements of the served model: what the code serving runs imports, pinned.

The MLflow model bundles the `qa_distill` package as code, but serving runs only part of it: the
module MLflow runs to build the model (`pyfunc_model.py`) and the package's modules it imports, in
turn (lazy imports inside functions included). The requirements are the third-party packages of
that import closure, read from the source rather than kept by hand so that the two cannot drift
apart, and so that what only training, searching or plotting imports (optuna, matplotlib, plotly)
stays out of a server's environment. `importlib.metadata` maps an import name to the distribution
that provides it (`yaml` -> PyYAML) and gives its version. The modules of optional backends
(`qa_distill.backends`, an extra such as `onnx`) are pinned where installed and left out where
not: the model then serves every backend but those. A torch built for the CPU (`2.13.0+cpu`)
comes with PyTorch's CPU wheel index: `torch==2.13.0` from PyPI alone is the CUDA build.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

from qa_distill.backends import TABLE
from qa_distill.errors import ModelError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # qa_distill/, sub-packages included
SERVING_MODULE = "qa_distill.inference.pyfunc_model"  # what MLflow runs to load the model
CPU_TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def _source(module: str, package_dir: Path) -> Path | None:
    """The file of a module of the package (a sub-package's `__init__.py`); None if not one."""
    parts = module.split(".")
    if parts[0] != package_dir.name:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(source: Path, module: str, package_dir: Path) -> set[str]:
    """Absolute names a module's source imports: `from x import y` gives both `x` and `x.y` (y
    may be a submodule), relative imports are made absolute."""
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            if base.split(".")[0] == package_dir.name:
                names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imported_modules(*, root: str = SERVING_MODULE, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Top-level names of the third-party modules in the import closure of `root`, a module of
    the package (importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too)."""
    seen: set[str] = set()
    third_party: set[str] = set()
    todo = [root]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            source = _source(name, package_dir)
            if source is None or name in seen:
                continue
            seen.add(name)
            for imported in _imports(source, name, package_dir):
                top = imported.split(".")[0]
                if top == package_dir.name:
                    todo.append(imported)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
    return third_party


def pinned_requirements(*, root: str = SERVING_MODULE, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """`distribution==version` for every distribution behind the serving code's imports, sorted;
    led by PyTorch's CPU index where torch is a CPU build. A local version label (`2.13.0+cpu`) is
    dropped: pip resolves the public version from an index."""
    providers = packages_distributions()
    optional = {name for spec in TABLE for name in spec.modules}
    imported = {m for m in imported_modules(root=root, package_dir=package_dir) if m in providers or m not in optional}
    missing = sorted(m for m in imported if m not in providers)
    if missing:
        raise ModelError(f"no installed distribution provides the module(s) {missing} the code imports")
    distributions = {d for m in imported for d in providers[m]}
    pins = sorted(f"{d}=={version(d).split('+')[0]}" for d in distributions)
    cpu_torch = "torch" in distributions and version("torch").endswith("+cpu")
    return [CPU_TORCH_INDEX, *pins] if cpu_torch else pins
