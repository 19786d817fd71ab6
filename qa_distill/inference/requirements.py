"""The pip requirements of this package's own code, pinned to the installed versions.

The MLflow model bundles the whole `qa_distill` package as code, so an environment that serves it
needs every third-party package any of its modules imports. Reading the imports from the source
(rather than a hand-kept list) keeps the two from drifting apart; `importlib.metadata` maps an
import name to the distribution that provides it (`yaml` -> PyYAML) and gives its version. The
modules of optional backends (`qa_distill.backends`, an extra such as `onnx`) are pinned where
installed and left out where not: the model then serves every backend but those.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

from qa_distill.backends import TABLE
from qa_distill.errors import ModelError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # qa_distill/, sub-packages included


def imported_modules(*, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Top-level names of the third-party modules the package's `.py` files import (absolute
    imports only: relative ones are the package itself)."""
    names: set[str] = set()
    for source in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("__future__", package_dir.name)}


def pinned_requirements(*, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """`distribution==version` for every distribution behind the package's imports, sorted. A
    local version label (`2.13.0+cpu`) is dropped: pip resolves the public version from an index."""
    providers = packages_distributions()
    optional = {name for spec in TABLE for name in spec.modules}
    imported = {m for m in imported_modules(package_dir=package_dir) if m in providers or m not in optional}
    missing = sorted(m for m in imported if m not in providers)
    if missing:
        raise ModelError(f"no installed distribution provides the module(s) {missing} the code imports")
    distributions = {d for m in imported for d in providers[m]}
    return sorted(f"{d}=={version(d).split('+')[0]}" for d in distributions)
