"""Whether a run's data and starting model can be had, checked before anything loads.

A local path must hold what it names; a hub name must be in the local Hugging Face caches or the
hub must answer for it (an offline machine then hears so in one line, not from inside a step).
"""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

from qa_distill.config import DataConfig
from qa_distill.data.squad import is_local, local_files
from qa_distill.errors import ConfigError

HUB = "https://huggingface.co"


def on_hub(name: str, kind: str) -> bool:
    """Whether the hub's `kind` ("datasets" or "models") `name` is in the local Hugging Face
    caches, or the hub answers for it."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    if (hub / f"{kind}--{name.replace('/', '--')}").is_dir():
        return True
    datasets = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    if kind == "datasets" and datasets.is_dir() and any(datasets.glob(f"*{name.replace('/', '___')}*")):
        return True
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        urllib.request.urlopen(f"{HUB}/api/{kind}/{name}", timeout=5).close()
    except urllib.error.HTTPError as error:
        return error.code != 404  # it answered; 404: no such name
    except (urllib.error.URLError, OSError):
        return False
    return True


def check_data(data: DataConfig) -> None:
    """The train and dev questions can be found: local files, or a hub dataset within reach."""
    if not is_local(data):
        if not on_hub(data.data, "datasets"):
            raise ConfigError(f"data.data {data.data!r} is a hub dataset that is neither in the local "
                              f"Hugging Face cache nor reachable at {HUB}: pass --data <a SQuAD directory or JSON>")
        return
    for name, path in zip(("train", "dev"), local_files(data), strict=True):
        if path is None or not path.is_file():
            raise ConfigError(f"data.data {data.data!r}: no {name} file ({name}*.json, or data.{name}_file)")


def check_model_source(source: str) -> None:
    """A model to start from: a local directory, an installed package's, an MLflow URI (looked
    up when the step runs) or a hub model within reach."""
    if source.startswith("pypi:"):
        package = source[len("pypi:"):].replace("-", "_")
        if not package.isidentifier() or importlib.util.find_spec(package) is None:
            raise ConfigError(f"model.name {source!r}: package {package!r} is not installed")
        return
    if source.startswith(("runs:/", "models:/")):
        return
    if Path(source).exists() or source.startswith((".", "/")):
        if not (Path(source) / "config.json").is_file():
            raise ConfigError(f"model.name {source!r}: no such model directory (no config.json in it)")
        return
    if not on_hub(source, "models"):
        raise ConfigError(f"model.name {source!r} is a hub model that is neither in the local Hugging Face "
                          f"cache nor reachable at {HUB}: set model.name to a local model directory")
