"""The run `mlflow run` launched, kept in the experiment the configuration names.

`mlflow run` creates the entry point's run before any project code runs: in the experiment given
by `--experiment-name` (or MLFLOW_EXPERIMENT_NAME), else in `Default`, and an MLproject file
cannot name one. So `mlflow run . -e teacher` alone would leave its run in `Default`. A run
launched into `Default` therefore moves to the configured experiment (`qa-distill`, or the
recipe's `tracking.experiment`, or `--experiment`): MLflow has no move, so a new run there takes
the launched run's tags, params and start time, and this process logs into the new one. The
launched run stays in `Default`, FINISHED and empty but for a note naming the new run: it cannot
be deleted, because `mlflow run` (3.17) sets the status of its run once the command exits and
fails on a deleted one. A run launched into an experiment the user named stays where it is.
"""

from __future__ import annotations

import logging

from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from qa_distill.config import hand_over_launched_run, launched_run_id

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "Default"
DEFAULT_EXPERIMENT_ID = "0"
MOVED_TO = "qa_distill.moved_to"  # tag left on the launched run: the run that took its place


def experiment_id() -> str:
    """The experiment of the run `mlflow run` launched."""
    return MlflowClient().get_run(launched_run_id()).info.experiment_id


def move_to(experiment_id: str) -> str:
    """Re-create the launched run in `experiment_id`, leaving the original FINISHED with a note naming
    the new one; returns `experiment_id`."""
    client = MlflowClient()
    launched = client.get_run(launched_run_id())
    moved = client.create_run(
        experiment_id, start_time=launched.info.start_time, tags=launched.data.tags, run_name=launched.info.run_name
    )
    new_id, old_id = moved.info.run_id, launched.info.run_id
    client.log_batch(new_id, params=[Param(k, v) for k, v in launched.data.params.items()])
    name = client.get_experiment(experiment_id).name
    client.set_tag(old_id, MOVED_TO, new_id)
    client.set_tag(old_id, MLFLOW_RUN_NOTE, f"moved to run {new_id} in experiment {name}")
    client.set_terminated(old_id, "FINISHED")
    hand_over_launched_run(new_id, experiment_id)
    log.warning("mlflow run put run %s in experiment Default: continuing as run %s in experiment %s",
                old_id, new_id, name)
    return experiment_id

