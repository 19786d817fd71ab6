"""MLflow: one run per entry point, metrics from the Trainer, the model as an MLflow model.

A run that raises ends FAILED (MLflow's `start_run` context does that); lifecycle.py ends an
interrupted training KILLED and reopens it to resume.
Under `mlflow run`, the run it created (MLFLOW_RUN_ID) is the one we log into.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from transformers import TrainerCallback

from qa_distill.config import RunConfig, TrackingConfig, launched_by_mlflow_run, tracking_uri

OUTPUT_DIR_TAG = "qa_distill.output_dir"


def setup(config: TrackingConfig) -> None:
    """Point MLflow at the store; create the experiment with artifacts inside the project."""
    mlflow.set_tracking_uri(tracking_uri(config))
    if launched_by_mlflow_run():
        return  # `mlflow run` already chose the experiment and created the run
    if mlflow.get_experiment_by_name(config.experiment) is None:
        mlflow.create_experiment(config.experiment, artifact_location=_artifact_root(tracking_uri(config)))
    mlflow.set_experiment(config.experiment)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store beside its database file, whatever the working directory."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides
    return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns").as_uri()


@contextmanager
def mlflow_run(
    config: RunConfig,
    run_name: str | None = None,
    nested: bool = False,
    tags: dict | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run with the configuration logged as params; `run_id` reopens a run to resume it."""
    setup(config.tracking)
    name = None if run_id else run_name or f"{config.recipe}-{config.role}"
    # tags given to start_run are written with the run: a process killed a moment later leaves
    # a run that can still be found by its output directory and role
    tags = {"recipe": config.recipe, "role": config.role, OUTPUT_DIR_TAG: config.output_dir, **(tags or {})}
    with mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=tags) as run:
        log_new_params({k: _param(v) for k, v in config.flat().items()})
        yield run


def log_new_params(params: dict[str, Any]) -> None:
    """Log the params the active run does not have yet: a resumed run keeps its first values."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


def _param(value: Any) -> str:
    return "" if value is None else str(value)[:6000]


class MlflowMetrics(TrainerCallback):
    """Sends every numeric value the Trainer logs (loss, lr, EM/F1 per epoch) to the active run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {
            k: float(v)
            for k, v in (logs or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if numeric and mlflow.active_run() is not None:
            mlflow.log_metrics(numeric, step=state.global_step)
