"""A run stopped by SIGTERM in the middle of epoch 2 and rerun is the uninterrupted run: the same
loss at every later step, the same EM/F1, and a `train_loss` over every step (one test per role).

The signal is sent from inside the training (a callback), so it lands at a known step; the
Trainer's own handler in qa_distill/training/lifecycle.py turns it into a checkpoint and a stop.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import mlflow
import pytest
import yaml
from transformers import TrainerCallback

from qa_distill.errors import Interrupted
from qa_distill.recipes import load_config
from qa_distill.training.lifecycle import last_checkpoint
from qa_distill.training.runs import run_distill, run_finetune

ENTRY = {"teacher": run_finetune, "student": run_finetune, "distill": run_distill}


class SigtermAt(TrainerCallback):
    """Sends this process SIGTERM as step `step` begins (the stop saves after that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _config(tmp_path: Path, dev_sample: Path, model: str, role: str, out: str, **training):
    spec = {
        "data": {"data": str(dev_sample), "max_length": 96, "doc_stride": 32, "cache_dir": str(tmp_path / "cache"),
                 "train_questions": 16, "dev_questions": 16},
        "model": {"name": model},
        "training": {"epochs": 3, "batch_size": 4, "eval_batch_size": 32, "precision": "fp32", "threads": 1,
                     "logging_steps": 2, "save_minutes": None, **training},
        "tracking": {"register_model": False},
        "teacher": {},
        "student": {"model": {"layer_stride": 2}},
        "distill": {"model": {"layer_stride": 2}, "distillation": {"teacher": model}},
    }
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    return load_config(str(recipe), role, output_dir=str(tmp_path / out))


def _losses(run_id: str) -> dict[int, float]:
    """The logged loss by step (a step logged twice, before a kill and after the resume: the last)."""
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    return {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}


@pytest.mark.slow
@pytest.mark.parametrize(("role", "workers"), [("teacher", 0), ("student", 1), ("distill", 0)])
def test_stopped_mid_epoch_2_then_rerun_is_the_uninterrupted_run(tmp_path, dev_sample, tiny_bert, tracking_uri,
                                                                  role, workers):
    def config(out: str):
        return _config(tmp_path, dev_sample, tiny_bert, role, out, dataloader_workers=workers)

    whole = ENTRY[role](config("uninterrupted"))
    windows = int(mlflow.MlflowClient().get_run(whole["run_id"]).data.params["run.train_windows"])
    per_epoch = -(-windows // 4)
    stop = per_epoch + per_epoch // 2 + 1  # odd or even, it falls between two loss logs half the time
    with pytest.raises(Interrupted):
        ENTRY[role](config("interrupted"), callbacks=[SigtermAt(stop)])
    saved = last_checkpoint(tmp_path / "interrupted")
    assert per_epoch < saved.step < 2 * per_epoch  # mid-epoch 2

    resumed = ENTRY[role](config("interrupted"))
    assert resumed["run_id"] == saved.run_id
    expected, got = _losses(whole["run_id"]), _losses(resumed["run_id"])
    assert got == expected  # every step's loss, those after the resume included, bit for bit on one CPU
    assert (resumed["exact_match"], resumed["f1"]) == (whole["exact_match"], whole["f1"])
    mean = pytest.approx(whole["train_loss"], rel=1e-9)  # the same sum, added up in another order
    assert resumed["train_loss"] == mean
    assert mlflow.MlflowClient().get_run(resumed["run_id"]).data.metrics["train_loss"] == mean
    assert json.loads((tmp_path / "interrupted" / "metrics.json").read_text())["train_loss"] == mean
