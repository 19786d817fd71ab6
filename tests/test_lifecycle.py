"""Killed, interrupted and rerun trainings on a tiny recipe: the CLI in a subprocess, killed for real.

The rerun goes through the same CLI entry point in this process (it saves the imports).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from qa_distill.cli import main
from qa_distill.training.lifecycle import SEAL

from .conftest import child_env

WORKTREE = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, dev_sample: Path, model: str, **training) -> Path:
    spec = {
        "data": {"data": str(dev_sample), "max_length": 96, "doc_stride": 32, "cache_dir": str(tmp_path / "cache"),
                 "train_questions": 16, "dev_questions": 16},
        "model": {"name": model},
        "training": {"epochs": 2, "batch_size": 4, "eval_batch_size": 32, "precision": "fp32", "threads": 1,
                     "logging_steps": 2, "save_steps": 1, "save_minutes": None, **training},
        "tracking": {"register_model": False},
        "teacher": {},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _command(recipe: Path, out: Path) -> list[str]:
    return ["teacher", "--recipe", str(recipe), "--output-dir", str(out)]


def _start(recipe: Path, out: Path, log: Path) -> subprocess.Popen:
    env = child_env(PYTHONPATH=str(WORKTREE))
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "qa_distill.cli", *_command(recipe, out)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < end, "timed out waiting for the run"
        time.sleep(0.05)


def _sealed(out: Path) -> list[Path]:
    return list(out.glob(f"checkpoint-*/{SEAL}"))


def _in_epoch_2(out: Path) -> bool:
    """Whether a sealed checkpoint of the second epoch, not at its start, exists."""
    for seal in _sealed(out):
        try:
            if json.loads((seal.parent / "trainer_state.json").read_text())["epoch"] > 1:
                return True
        except (OSError, ValueError):
            continue  # being removed as a newer one is sealed
    return False


def _losses(run_id: str) -> dict[int, float]:
    """The loss by step (a step logged before the kill and again after the resume: the last)."""
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    return {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}


def _runs(status: str | None = None):
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])  # this test's store (an earlier run set another)
    where = f"attributes.status = '{status}'" if status else ""
    return mlflow.search_runs(search_all_experiments=True, filter_string=where)


def _rerun(recipe: Path, out: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(argv=_command(recipe, out)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # after the Trainer's progress lines


@pytest.fixture()
def baseline(tmp_path, dev_sample, tiny_bert, tracking_uri, capsys) -> dict:
    """EM/F1 of the same recipe trained without interruption."""
    return _rerun(_recipe(tmp_path, dev_sample, tiny_bert), tmp_path / "uninterrupted", capsys)


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_resumes_the_same_run(tmp_path, dev_sample, tiny_bert, baseline, capsys):
    recipe, out, log = _recipe(tmp_path, dev_sample, tiny_bert), tmp_path / "out", tmp_path / "first.log"
    proc = _start(recipe, out, log)
    _wait_for(lambda: _in_epoch_2(out), proc, log)
    proc.kill()
    proc.wait()
    (killed,) = _runs("RUNNING")["run_id"]  # SIGKILL gives no chance to end the run
    result = _rerun(recipe, out, capsys)
    assert result["run_id"] == killed
    run = mlflow.MlflowClient().get_run(killed)
    assert run.info.status == "FINISHED" and "checkpoint-" in run.data.tags["resumed_from"]
    # the uninterrupted run, step by step (one thread each: the same sums in the same order)
    assert _losses(killed) == _losses(baseline["run_id"])
    assert (result["f1"], result["exact_match"]) == (baseline["f1"], baseline["exact_match"])
    assert result["train_loss"] == pytest.approx(baseline["train_loss"], rel=1e-9)
    assert result["train_seconds"] > 0 and _runs("RUNNING").empty


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_with_a_checkpoint_within_30_seconds(tmp_path, dev_sample, tiny_bert, tracking_uri,
                                                                          capsys):
    recipe, out, log = _recipe(tmp_path, dev_sample, tiny_bert), tmp_path / "out", tmp_path / "first.log"
    proc = _start(recipe, out, log)
    _wait_for(lambda: _sealed(out), proc, log)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 30
    assert "stopped by SIGTERM" in log.read_text()
    runs = _runs()
    assert list(runs["status"]) == ["KILLED"]
    assert _sealed(out)  # the final checkpoint
    first_seconds = json.loads(_sealed(out)[0].read_text())["train_seconds"]
    result = _rerun(recipe, out, capsys)
    assert result["run_id"] == runs["run_id"][0]
    assert result["train_seconds"] > first_seconds  # both parts count


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_no_run_stays_running(tmp_path, dev_sample, tiny_bert, tracking_uri, capsys):
    recipe = _recipe(tmp_path, dev_sample, tiny_bert, save_steps=None, batch_size=2, epochs=3)
    out, log = tmp_path / "out", tmp_path / "first.log"
    proc = _start(recipe, out, log)
    _wait_for(lambda: not _runs("RUNNING").empty, proc, log)
    proc.kill()
    proc.wait()
    assert not _sealed(out)
    (killed,) = _runs("RUNNING")["run_id"]
    result = _rerun(recipe, out, capsys)
    assert result["run_id"] != killed
    assert mlflow.MlflowClient().get_run(killed).info.status == "KILLED"
    assert _runs("RUNNING").empty
