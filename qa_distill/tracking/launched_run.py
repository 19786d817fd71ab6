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

`mlflow run` (3.17) also overwrites how the command ended its run: once the command exits
non-zero it sets the run FAILED, even one the command ended KILLED after a Ctrl-C
(`_maybe_set_run_terminated` compares the run's status name with status numbers, so it never
sees the run ended). `keep_status` outlives the command to put the status back.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from qa_distill.config import hand_over_launched_run, launched_run_id

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "Default"
DEFAULT_EXPERIMENT_ID = "0"
MOVED_TO = "qa_distill.moved_to"  # tag left on the launched run: the run that took its place
OVERWRITE_WAIT_SECONDS = 10.0  # `mlflow run` overwrites within a second of the command's exit


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


def keep_status(run_id: str) -> None:
    """Before a failed command exits: if it ended `run_id` other than FAILED (KILLED by a stop, or
    FINISHED as a pointer to a moved run), start a detached watcher that restores that status and
    end time after `mlflow run` overwrites them with FAILED."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:  # the store is what failed: nothing this process could keep
        return
    if run.info.status in ("RUNNING", "FAILED"):
        return
    subprocess.Popen(
        [sys.executable, "-m", __name__, mlflow.get_tracking_uri(), run_id, run.info.status, str(run.info.end_time)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the reach of a second Ctrl-C to the terminal's job
        env={**os.environ, "MLFLOW_RUN_ID": ""},  # in no run of its own
    )


def restore_status(run_id: str, *, status: str, end_time: int, client: MlflowClient) -> bool:
    """Wait for `run_id` to leave `status`; if `mlflow run` made it FAILED, put `status` and `end_time`
    back. Any other change (a rerun continuing the run) is left alone. True if it restored."""
    deadline = time.monotonic() + OVERWRITE_WAIT_SECONDS
    while time.monotonic() < deadline:
        now = client.get_run(run_id).info.status
        if now == "FAILED":
            client.set_terminated(run_id, status, end_time=end_time)
            return True
        if now != status:
            return False
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="put back the status `mlflow run` overwrites")
    for name in ("tracking_uri", "run_id", "status", "end_time"):
        parser.add_argument(name)
    args = parser.parse_args()
    restore_status(args.run_id, status=args.status, end_time=int(args.end_time),
                   client=MlflowClient(args.tracking_uri))
