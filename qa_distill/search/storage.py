"""Where the study lives and how a `search` process opens it.

The study lives in an RDB storage (SQLite in the output directory by default, or any Optuna URL
such as PostgreSQL), so a crashed study resumes under the same name and several `search`
processes on one study share the trials. A trial whose worker died is failed (its MLflow run
too) and retried once instead of staying RUNNING: at once by a worker starting on the same host,
which sees that the process named in the trial's `worker` attribute is gone, and otherwise by any
worker once the trial's heartbeat is older than `GRACE_SECONDS`.
"""

from __future__ import annotations

import logging
import time
import warnings
from functools import partial
from pathlib import Path

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from optuna.pruners import BasePruner, MedianPruner
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from qa_distill.config import RunConfig
from qa_distill.runtime import processes
from qa_distill.search.space import TrialSeededTPE

log = logging.getLogger(__name__)

# A live worker writes its trial's heartbeat every HEARTBEAT_SECONDS (one row update, from a
# thread beside training); a trial is stale once three beats in a row are missing, which rides
# out a busy database or a long pause of the process without waiting Optuna's usual 2 minutes.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS
WORKER_ATTR = "worker"  # the trial's user attribute naming its process (`processes.process_tag`)


def default_storage(config: RunConfig) -> str:
    """An SQLite file beside the trials, so a crashed study resumes from disk."""
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'optuna.db'}"


def redact(url: str) -> str:
    """The storage URL without its password, for logs, params and the returned summary."""
    return make_url(url).render_as_string(hide_password=True)


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A worker died mid-trial: end the trial's MLflow run as FAILED, then retry it once."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    log.warning("trial %d: its worker is gone; MLflow run %s ended FAILED, the trial retried as a new one",
                trial.number, run_id or "(none)")
    if run_id:
        try:
            client = mlflow.MlflowClient()
            client.set_tag(run_id, "state", TrialState.FAIL.name)
            client.set_terminated(run_id, "FAILED")
        except MlflowException as exc:  # a run in another tracking store: Optuna still retries
            log.warning("cannot end MLflow run %s of stale trial %d: %s", run_id, trial.number, exc)
    with warnings.catch_warnings():  # Optuna's maintained retry policy, still marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
    retry(study, trial)


def rdb_storage(url: str, *, attempts: int = 3) -> RDBStorage:
    """Optuna's storage with heartbeats, so a trial whose worker died is failed and retried.

    Workers started together on a new database race to create its tables; the losers retry
    once the winner has created them.
    """
    make = partial(
        RDBStorage, url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=retry_stale_trial,
    )
    for attempt in range(1, attempts):
        try:
            return make()
        except DBAPIError as exc:
            log.info("creating the Optuna tables failed (%s); retrying", exc.orig)
            time.sleep(attempt)
    return make()


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail (and retry) the RUNNING trials whose worker is gone: on this host a process that no
    longer runs, anywhere a heartbeat older than the grace. Returns the numbers of the first kind
    (each failed trial gets its warning line from `retry_stale_trial`)."""
    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = trial.user_attrs.get(WORKER_ATTR)
        if tag is None or processes.is_alive(tag):
            continue  # no worker named yet, or not provably dead: the heartbeat decides
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another starting worker failed it first
            continue
        retry_stale_trial(study, storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    optuna.storages.fail_stale_trials(study)  # heartbeats older than the grace, on any host
    return failed


def open_study(
    study_name: str,
    storage: str,
    sampler_seed: int,
    *, pruner: BasePruner | None = None,
    first_params: dict[str, float] | None = None,
) -> optuna.Study:
    """Create the study, or load it to resume or to join other workers; its objective is named
    `f1` (optuna-dashboard and the plots show that, not "Objective 0")."""
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb_storage(storage),
        load_if_exists=True,
        direction="maximize",
        sampler=TrialSeededTPE(sampler_seed, first_params=first_params),
        pruner=pruner or MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["f1"])
    return study


def best_number(study: optuna.Study) -> int | None:
    """The study's best trial over all workers, None while no trial has completed (Optuna's
    `best_trial` raises then)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial.number if completed else None
