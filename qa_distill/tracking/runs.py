"""MLflow: one run per entry point, metrics from the Trainer, the model as an MLflow model.

A run that raises ends FAILED (MLflow's `start_run` context does that); lifecycle.py ends an
interrupted training KILLED and reopens it to resume.
Under `mlflow run`, the run it created (MLFLOW_RUN_ID) is the one we log into.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from datasets import Dataset
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from transformers import TrainerCallback

from qa_distill.config import (
    RunConfig,
    TrackingConfig,
    launched_by_mlflow_run,
    launched_run_id,
    sqlite_file,
    tracking_uri,
)
from qa_distill.runtime.distributed import is_main_process
from qa_distill.tracking import launched_run

OUTPUT_DIR_TAG = "qa_distill.output_dir"


STOPPED_BY = "qa_distill.stopped_by"  # tag of a run a signal stopped: the signal's name (SIGINT, SIGTERM)


def setup(config: TrackingConfig) -> str:
    """Point MLflow at the store; create the experiment with artifacts inside the project.

    Returns the id of the experiment this process's runs go to."""
    mlflow.set_tracking_uri(tracking_uri(config))
    if launched_by_mlflow_run():
        # `mlflow run` created the run; one it put in Default joins the configured experiment
        current = launched_run.experiment_id()
        if current != launched_run.DEFAULT_EXPERIMENT_ID or config.experiment == launched_run.DEFAULT_EXPERIMENT:
            return current
        return launched_run.move_to(ensure_experiment(config.experiment))
    experiment_id = ensure_experiment(config.experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created (artifacts beside a SQLite store) if absent."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=_artifact_root(mlflow.get_tracking_uri()))


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store beside its database file, whatever the working directory."""
    database = sqlite_file(uri)
    if database is None:
        return None  # a tracking server decides
    return (database.resolve().parent / "mlruns").as_uri()


@contextmanager
def mlflow_run(
    config: RunConfig,
    *, run_name: str | None = None,
    nested: bool = False,
    tags: dict | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun | None]:
    """An MLflow run with the configuration logged as params; `run_id` reopens a run to resume it.

    None in the other processes of a distributed launch (torchrun, accelerate launch), which log
    nothing: one run per launch."""
    if not is_main_process():
        yield None
        return
    setup(config.tracking)
    name = None if run_id else run_name or f"{config.recipe}-{config.role}"
    # tags given to start_run are written with the run: a process killed a moment later leaves
    # a run that can still be found by its output directory and role
    tags = {"recipe": config.recipe, "role": config.role, OUTPUT_DIR_TAG: config.output_dir, **(tags or {})}
    with mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=tags) as run:
        if STOPPED_BY in run.data.tags:  # continued: its last stop is over, a crash now must not read as one
            mlflow.delete_tag(STOPPED_BY)
        log_new_params({k: _param(v) for k, v in config.flat().items()})
        yield run


def log_new_params(params: dict[str, Any]) -> None:
    """Log the params the active run does not have yet: a resumed run keeps its first values."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


def _param(value: Any) -> str:
    return "" if value is None else str(value)[:6000]


def log_dataset(dataset: Dataset, source: str, *, fingerprint: str, context: str) -> None:
    """Record which data the active run used (the UI's Datasets column): name, source and content
    fingerprint as digest, schema and row count; only this description, never the rows."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    if Path(source).exists():  # a local file ("local": said outright, as a bare path is ambiguous)
        uri = json.dumps({"uri": str(Path(source).resolve())})
        name, origin = Path(source).name, get_dataset_source_from_json(uri, source_type="local")
    else:  # a hub split, `name[split]`
        hub, _, split = source.partition("[")
        name, origin = source, HuggingFaceDatasetSource(path=hub, split=split.rstrip("]") or None)
    described = mlflow.data.from_huggingface(dataset, source=origin, name=name, digest=fingerprint[:36])
    mlflow.log_input(described, context=context)


def log_questions(sample: list[dict[str, Any]], source: str, *, context: str = "evaluation") -> None:
    """Record a sample of questions (a speed test's) as the active run's dataset input, its
    digest the hash of the question ids."""
    digest = hashlib.sha256(json.dumps(sorted(r["id"] for r in sample)).encode()).hexdigest()
    log_dataset(Dataset.from_list(sample), source, fingerprint=digest, context=context)


def log_to_run_and_parent(paths: list[Path]) -> None:
    """Artifacts of the active run, and of its parent run when it is a step of a workflow."""
    run = mlflow.active_run()
    parent = MlflowClient().get_run(run.info.run_id).data.tags.get(MLFLOW_PARENT_RUN_ID)
    for path in paths:
        mlflow.log_artifact(str(path))
        if parent:
            MlflowClient().log_artifact(parent, str(path))


def copy_outcome(source_run_id: str, target_run_id: str) -> None:
    """Copy a run's metrics and artifacts onto another: the report step's table onto `main`'s
    parent run (reused or not), so the runs list shows the chain's outcome without its children."""
    client = MlflowClient()
    metrics = client.get_run(source_run_id).data.metrics
    client.log_batch(target_run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(target_run_id, mlflow.artifacts.download_artifacts(run_id=source_run_id, dst_path=tmp))


class MlflowMetrics(TrainerCallback):
    """Sends every numeric value the Trainer logs (loss, lr, EM/F1 per epoch) to the active run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {
            k: float(v)
            for k, v in (logs or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if numeric and state.is_world_process_zero and mlflow.active_run() is not None:
            mlflow.log_metrics(numeric, step=state.global_step)


def log_result(role: str, result: dict[str, Any]) -> None:
    """Under `mlflow run`, a command without a run of its own (predict, evaluate, score) logs its
    result into the launched run, in the configured experiment; elsewhere it logs nothing."""
    if launched_run_id() is None:
        return
    setup(TrackingConfig())
    with mlflow.start_run():
        mlflow.set_tag("role", role)
        mlflow.log_metrics({k: float(v) for k, v in result.items() if isinstance(v, int | float)})
        mlflow.log_dict(result, f"{role}.json")
