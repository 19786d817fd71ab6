"""A model logged by the flat package of before the sub-packages (a pickle of
`qa_distill.mlflow_model.QAModel`, that package bundled as its code) still answers: MLflow puts
the model's own code first on `sys.path`, so a fresh process unpickles it from there. A process
that has already imported today's package finds no `qa_distill.mlflow_model` in it, so such a
model is loaded in a process of its own (or re-logged)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from qa_distill.inference.predictor import QAPredictor

from .conftest import child_env

pytestmark = pytest.mark.slow  # two processes import torch and mlflow; one logs a model
ROOT = Path(__file__).resolve().parents[1]
FLAT = "e1d67e9"  # the last commit of the flat layout
ROWS = [{"question": "Who won?", "context": "The Broncos won Super Bowl 50 in Santa Clara."},
        {"question": "Who wrote it?", "context": "It was written by Ada Lovelace in 1843."}]
LOG = """
import mlflow, qa_distill, sys
from qa_distill.mlflow_model import log_qa_model
assert qa_distill.__file__.startswith(sys.argv[2]), qa_distill.__file__
with mlflow.start_run():
    log_qa_model(sys.argv[1], "flat-qa")
"""
LOAD = """
import json, mlflow, sys
model = mlflow.pyfunc.load_model("models:/flat-qa/1")
import qa_distill
print(json.dumps({"answers": list(model.predict(json.loads(sys.argv[1]))), "package": qa_distill.__file__}))
"""


def _flat_package(into: Path) -> Path:
    """The package as it was at `FLAT`, from the git history (skips where there is none)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", FLAT, "qa_distill"], capture_output=True)
    if archive.returncode:
        pytest.skip(f"no git history with commit {FLAT} to rebuild the flat package from: {archive.stderr[-300:]!r}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run(script: str, *args: str, env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def flat_model(tiny_bert, tmp_path_factory) -> str:
    """The tiny model logged and registered by the flat package's code; its store's URI."""
    root = tmp_path_factory.mktemp("flat")
    old = _flat_package(root / "old")
    store = f"sqlite:///{root / 'mlflow.db'}"
    env = child_env(PYTHONPATH=str(old), MLFLOW_TRACKING_URI=store)
    _run(LOG, tiny_bert, str(old), env=env, cwd=root)
    return store


def test_a_fresh_process_answers_with_the_flat_code_bundled_with_the_model(flat_model, tiny_bert, tmp_path):
    env = child_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=flat_model)
    out = json.loads(_run(LOAD, json.dumps(ROWS), env=env, cwd=tmp_path).splitlines()[-1])
    assert "/code/qa_distill/" in out["package"]  # the model's own copy, not today's package
    # the same answers as today's predictor: the move changed no numbers
    assert out["answers"] == QAPredictor(tiny_bert).answer_batch([r["question"] for r in ROWS],
                                                                 [r["context"] for r in ROWS])

