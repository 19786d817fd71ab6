"""The life of a training run: checkpoints, signals, resuming, and runs whose process died.

- Every training run carries the tag `qa_distill.process` (processes.py), so a rerun can tell a
  RUNNING run whose process is gone (SIGKILL, a lost machine) from a live one.
- A checkpoint is *complete* once its seal (`qa_distill_checkpoint.json`) is written, by atomic
  rename, after everything the Trainer saves; the seal carries the run id, the training time so
  far and the run's identity (configuration, data and model fingerprints). A directory without
  a seal is a save cut short and is removed; older checkpoints are removed only once a newer one
  is sealed, so a kill at any moment leaves one loadable checkpoint.
- A rerun resumes the same MLflow run from the last sealed checkpoint when its identity matches,
  and refuses with one line when it does not (deleting another configuration's progress without
  being asked would be worse than stopping).
- SIGTERM and SIGINT during training stop it after the current step with a final checkpoint;
  the run ends KILLED. Outside the training loop they interrupt at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from qa_distill.config import RunConfig, launched_by_mlflow_run
from qa_distill.errors import ConfigError, Interrupted
from qa_distill.runtime.distributed import is_main_process
from qa_distill.runtime.processes import PROCESS_TAG, close_dead_runs, process_tag, stops_to
from qa_distill.tracking import runs as tracking

log = logging.getLogger(__name__)

SEAL = "qa_distill_checkpoint.json"
# settings that change how a run is executed or recorded, not what it trains
_NOT_IDENTITY = {
    "run.output_dir", "data.data", "data.train_file", "data.dev_file", "data.cache_dir", "model.name",
    "distillation.teacher", "distillation.teacher_cache", "training.resume", "training.threads",
    "training.eval_batch_size", "training.logging_steps", "training.save_steps", "training.save_minutes",
}


# --- checkpoints ------------------------------------------------------------------------------

def run_identity(config: RunConfig, **fingerprints: str) -> dict[str, str]:
    """What a checkpoint was trained on: the settings that shape the model, plus content hashes
    of the data and the models (paths may move; contents may change under the same path)."""
    # answers: not the weights, but every epoch's dev score in the resumed run's history
    sections = ("run.", "data.", "model.", "training.", "answers.")
    sections += ("distillation.",) if config.role == "distill" else ()
    settings = {
        k: str(v) for k, v in config.flat().items() if k.startswith(sections) and k not in _NOT_IDENTITY
    }
    return settings | {f"fingerprint.{k}": v for k, v in fingerprints.items()}


@dataclass
class Checkpoint:
    path: Path
    step: int
    run_id: str
    identity: dict[str, str]
    train_seconds: float


def _step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1]) if path.name.rsplit("-", 1)[-1].isdigit() else -1


def checkpoints(output_dir: str | Path) -> list[Path]:
    found = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and _step(p) >= 0]
    return sorted(found, key=_step)


def last_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    """The last sealed checkpoint; unsealed directories (a save cut short) are removed."""
    last = None
    for path in checkpoints(output_dir):
        try:
            seal = json.loads((path / SEAL).read_text())
        except (OSError, ValueError):
            log.warning("removing %s: its save did not complete", path)
            shutil.rmtree(path, ignore_errors=True)
            continue
        last = Checkpoint(path, _step(path), seal["run_id"], seal["identity"], seal["train_seconds"])
    return last


def seal(path: Path, run_id: str, identity: dict[str, str], train_seconds: float) -> None:
    """Mark a checkpoint complete (atomic rename), then remove the ones before it."""
    tmp = path / f"{SEAL}.tmp"
    tmp.write_text(json.dumps({"run_id": run_id, "identity": identity, "train_seconds": train_seconds}))
    os.replace(tmp, path / SEAL)
    for older in checkpoints(path.parent):
        if _step(older) < _step(path):
            shutil.rmtree(older, ignore_errors=True)


def _differences(saved: dict[str, str], now: dict[str, str]) -> str:
    keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)} there, {now.get(k)} now" for k in keys[:4])


def resume_point(config: RunConfig, identity: dict[str, str]) -> Checkpoint | None:
    """The checkpoint this run continues from, or None to start fresh; refuses another config's."""
    found = last_checkpoint(config.output_dir)
    if found is None:
        return None
    if not config.training.resume:
        log.warning("training.resume=false: removing the checkpoints in %s", config.output_dir)
        for path in checkpoints(config.output_dir):
            shutil.rmtree(path, ignore_errors=True)
        return None
    if found.identity != identity:
        raise ConfigError(
            f"{config.output_dir} holds {found.path.name} of another configuration "
            f"({_differences(found.identity, identity)}); rerun with that configuration to resume it, "
            "choose another --output-dir, or set training.resume=false to start over"
        )
    return found


# --- training ---------------------------------------------------------------------------------

class Checkpointing(TrainerCallback):
    """Seals every checkpoint, saves every `save_minutes`, and turns a signal into a clean stop.

    While the Trainer is in its step loop, SIGTERM/SIGINT only set a flag: the next step end
    saves a checkpoint and stops training, and the end of training raises Interrupted. Outside
    the loop (evaluation at the end, logging) and on a second signal, Interrupted is raised at once.
    """

    def __init__(self, run_id: str, identity: dict[str, str], base_seconds: float, *, save_minutes: float | None):
        self.run_id = run_id
        self.identity = identity
        self.base_seconds = base_seconds
        self.save_seconds = save_minutes * 60 if save_minutes else None
        self.began = self.last_save = time.monotonic()
        self.in_loop = False
        self.signum: int | None = None

    def train_seconds(self) -> float:
        """Training time of this run over all its parts (each resumed from the last one's checkpoint)."""
        return self.base_seconds + time.monotonic() - self.began

    def handle(self, signum: int, frame: Any) -> None:
        if not self.in_loop or self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        log.warning("%s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = self.last_save = time.monotonic()
        self.in_loop = True

    def on_step_end(self, args, state, control, **kwargs):
        due = self.save_seconds is not None and time.monotonic() - self.last_save >= self.save_seconds
        if due or self.signum is not None:
            control.should_save = True
        if self.signum is not None:
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.signum is not None:  # stopping mid-epoch: saved at the step, no evaluation to wait for
            control.should_evaluate = control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            seal(path, self.run_id, self.identity, self.train_seconds())
        self.last_save = time.monotonic()

    def on_train_end(self, args, state, control, **kwargs):
        self.in_loop = False
        if self.signum is not None:
            raise Interrupted(self.signum)


@dataclass
class Life:
    """What a training run's code needs from its lifecycle."""

    run_id: str | None  # None in the other processes of a distributed launch
    resume: Checkpoint | None
    checkpointing: Checkpointing

    @property
    def callbacks(self) -> list[TrainerCallback]:
        return [self.checkpointing]


def _resumable(run_id: str, experiment: str) -> bool:
    """Whether the checkpoint's run can be reopened: same store and experiment, not under `mlflow run`."""
    if launched_by_mlflow_run():
        return False  # `mlflow run` made the run to log into
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    found = mlflow.get_experiment_by_name(experiment)
    return found is not None and run.info.experiment_id == found.experiment_id


@contextlib.contextmanager
def training_run(config: RunConfig, identity: dict[str, str]) -> Iterator[Life]:
    """The MLflow run of one training entry point, resumed if a checkpoint of it exists.

    Refuses (one line) while another live process trains into the same output directory. The
    other processes of a distributed launch resume from the same checkpoint with no MLflow run of
    their own (`Life.run_id` None): only the main one logs, saves and seals.
    """
    if not is_main_process():
        resume = resume_point(config, identity)
        stopper = Checkpointing("", identity, resume.train_seconds if resume else 0.0,
                                save_minutes=config.training.save_minutes)
        with stops_to(stopper.handle):
            yield Life(None, resume, stopper)
        return
    tracking.setup(config.tracking)
    mine = f"tags.`{tracking.OUTPUT_DIR_TAG}` = '{config.output_dir}' and tags.role = '{config.role}'"
    _, alive = close_dead_runs(mine)
    if alive:
        raise ConfigError(f"{config.output_dir} is in use by the live run {alive[0]}: wait for it to end, "
                          "or choose another --output-dir")
    resume = resume_point(config, identity)
    run_id = resume.run_id if resume and _resumable(resume.run_id, config.tracking.experiment) else None
    tags = {PROCESS_TAG: process_tag()} | ({"resumed_from": str(resume.path)} if resume else {})
    with tracking.mlflow_run(config, tags=tags, run_id=run_id) as run:
        stopper = Checkpointing(run.info.run_id, identity, resume.train_seconds if resume else 0.0,
                                save_minutes=config.training.save_minutes)
        if resume:
            log.warning("resuming run %s from %s", run.info.run_id, resume.path)
        try:
            with stops_to(stopper.handle):
                yield Life(run.info.run_id, resume, stopper)
        except (Interrupted, KeyboardInterrupt) as stop:
            mlflow.set_tag(tracking.STOPPED_BY, signal.Signals(getattr(stop, "signum", signal.SIGINT)).name)
            mlflow.end_run("KILLED")
            raise
