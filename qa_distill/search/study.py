"""An Optuna study over the distillation temperature T and weight alpha (and optionally the lr).

The data, windows, teacher and teacher-logits cache are prepared once per process and shared by
every trial; a trial only trains and scores a fresh student, and only the study's best model is
kept, logged and scored on the full dev set. The pieces: `search_space` (ranges and sampler),
`study_storage` (where the study lives, so it resumes and workers share it), `search_trial` (a
trial's config, MLflow run and pruning) and `search_report` (table, plots, summary).

MLflow: one parent run per process (named after the study) holds the best parameters, scores,
the report and the best model; each trial is a nested run under it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from qa_distill.config import RunConfig, SearchConfig, registered_name
from qa_distill.data.features import cache_dir
from qa_distill.errors import ConfigError
from qa_distill.inference.evaluate import evaluate_model
from qa_distill.inference.mlflow_model import log_qa_model
from qa_distill.runtime import processes
from qa_distill.runtime.distributed import world_size
from qa_distill.search.space import SearchSpace
from qa_distill.search.storage import (
    WORKER_ATTR,
    best_number,
    default_storage,
    fail_orphaned_trials,
    open_study,
    redact,
)
from qa_distill.search.summary import log_summary, summarise, write_report
from qa_distill.search.trial import PruningCallback, trial_config, trial_dir, trial_run
from qa_distill.tracking import runs as tracking
from qa_distill.training import preflight
from qa_distill.training.runs import (
    Prepared,
    Teacher,
    load_student,
    load_teacher,
    prepare,
    teacher_logits,
    train_distill,
)
from qa_distill.validation import validate_search

log = logging.getLogger(__name__)
LOGGED_ATTR = "best_model"  # study attribute: {"trial": number, "uri": model URI} of the last best model logged


def warm_teacher_cache(prepared: Prepared, teacher: Teacher) -> None:
    """Compute the teacher-logits cache before the first trial, one worker at a time.

    A teacher that cannot be run then stops the search before any trial, and workers started
    together compute it once instead of each on its own.
    """
    lock = cache_dir(prepared.config.data.cache_dir) / "teacher_logits.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        teacher_logits(prepared, teacher)


class Objective:
    """Trains one student per trial on the shared data and teacher; keeps only the best model.

    A completed trial's model stays on disk while it is the study's best; every other trial's
    directory is deleted once scored. `best_here` is the trial whose model this process kept.
    """

    def __init__(self, prepared: Prepared, teacher: Teacher, space: SearchSpace) -> None:
        self.prepared = prepared
        self.teacher = teacher
        self.space = space
        self.trials_run: list[int] = []
        self.best_here: int | None = None

    def trial_dir(self, number: int) -> Path:
        return trial_dir(self.prepared.config, number)

    def __call__(self, trial: optuna.Trial) -> float:
        config = trial_config(self.prepared.config, trial.number, self.space.suggest(trial))
        # the budget each trial had, for the trials table (a study may cut the recipe to fit)
        budget = {"train_questions": len(self.prepared.train_examples),
                  "dev_questions": len(self.prepared.dev_examples), "epochs": config.training.epochs}
        trial.set_user_attr(WORKER_ATTR, processes.process_tag())  # a later worker can tell if this one died
        for key, value in budget.items():
            trial.set_user_attr(key, value)
        with trial_run(config, trial):
            p = dataclasses.replace(self.prepared, config=config, student=load_student(config))
            metrics = train_distill(p, self.teacher, callbacks=[PruningCallback(trial)], log_model=False)
            trial.set_user_attr("exact_match", metrics["exact_match"])
            return metrics["f1"]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback, run once the trial's state is stored."""
        self.trials_run.append(trial.number)
        if trial.state == TrialState.COMPLETE and best_number(study) == trial.number:
            self.drop_best_here()
            self.best_here = trial.number
        else:
            shutil.rmtree(self.trial_dir(trial.number), ignore_errors=True)

    def holds(self, best_trial: int | None) -> bool:
        """Whether this process kept the model of the study's best trial (a worker only holds
        the best of its own trials)."""
        return self.best_here is not None and self.best_here == best_trial

    def drop_best_here(self) -> None:
        if self.best_here is not None:
            shutil.rmtree(self.trial_dir(self.best_here), ignore_errors=True)
            self.best_here = None


def _logged_uri(study: optuna.Study, number: int | None) -> str | None:
    logged = study.user_attrs.get(LOGGED_ATTR) or {}
    return logged.get("uri") if number is not None and logged.get("trial") == number else None


def orphaned_model(objective: Objective, study: optuna.Study, number: int | None) -> Path | None:
    """The saved model of trial `number` when the worker that trained it is gone without logging it."""
    if number is None or _logged_uri(study, number):
        return None
    (trial,) = (t for t in study.get_trials(deepcopy=False) if t.number == number)
    path = objective.trial_dir(number)
    if processes.is_alive(trial.user_attrs.get(WORKER_ATTR)) or not (path / "config.json").is_file():
        return None
    return path


def best_model_path(objective: Objective, study: optuna.Study, best_trial: int | None) -> Path | None:
    """The best trial's saved model if this process logs it: its own, or one its dead worker left."""
    if objective.holds(best_trial):
        return objective.trial_dir(best_trial)
    return orphaned_model(objective, study, best_trial)


def log_best_model(
    objective: Objective, study: optuna.Study, summary: dict[str, Any], registered: str | None
) -> str | None:
    """Log (and register) the best model if this process trained it, or if the worker that trained
    it died before logging it (from its saved weights); else drop what it kept.

    With several workers only the one that ran the best trial holds its model, so a model is
    registered once per improvement, not once per worker. Returns the best model's URI, also when
    another worker logged it.
    """
    best = summary["best_trial"]
    path = best_model_path(objective, study, best)
    if path is None:
        objective.drop_best_here()
        return _logged_uri(study, best)
    # of two workers adopting one model, one logs it (the lock outside the model: not logged with it)
    with open(path.parent / "logging-best-model.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not objective.holds(best):
            if uri := _logged_uri(study, best):
                return uri
            log.warning("trial %d's worker died before logging the study's best model: logging it from %s",
                        best, path)
            summary["model_logged_for_dead_worker"] = True
        uri = log_qa_model(path, registered)
        study.set_user_attr(LOGGED_ATTR, {"trial": best, "uri": uri})
    mlflow.set_tag("model_uri", uri)
    return uri


def score_on_full_dev(objective: Objective, study: optuna.Study, summary: dict[str, Any]) -> dict[str, float]:
    """Trials score on a dev subset to fit a budget; with `search.full_dev_score` the best model
    is then scored on all of it. Off by default: the study's run would stay open for as long as
    the whole dev set takes (an hour on a CPU, for a search of minutes), and
    `qa-distill evaluate --model <the registered best>` gives that score on demand."""
    config = objective.prepared.config
    if not (config.search.full_dev_score and config.data.dev_questions):
        return {}
    path = best_model_path(objective, study, summary["best_trial"])
    if path is None:
        return {}
    full = dataclasses.replace(config.data, dev_questions=None)
    scores = evaluate_model(str(path), full, backend="fp32")  # the reference
    result = {"best_full_dev_f1": scores["f1"], "best_full_dev_exact_match": scores["exact_match"],
              "full_dev_questions": scores["dev_questions"]}
    mlflow.log_metrics(result)
    return result


def search_params(search: SearchConfig) -> dict[str, Any]:
    """The `search` section, beside the configuration the parent run already logs (storage without
    its password)."""
    params = {f"search.{key}": value for key, value in dataclasses.asdict(search).items()}
    params["search.storage"] = redact(search.storage) if search.storage else ""
    return params


def run_search(config: RunConfig, *, pruner: BasePruner | None = None) -> dict[str, Any]:
    """Run `config.search.n_trials` trials (or until its `timeout`) of the study in this process.

    Counts, best trial and report cover the whole study, including other workers' and earlier
    runs' trials. The report goes to `search.results_stem` (default `<output_dir>/report/<study>`).
    """
    began = time.perf_counter()
    search = config.search
    validate_search(search)
    if world_size() > 1:
        raise ConfigError("search runs whole trials per process: start workers on one --storage "
                          "instead of launching it with torchrun or accelerate launch")
    space = SearchSpace.of(search)
    study_name = search.study_name or f"distill-{config.recipe}"
    storage = search.storage or default_storage(config)
    preflight.connect(config.tracking)
    prepared = prepare(config)
    teacher = load_teacher(config, prepared.student)
    warm_teacher_cache(prepared, teacher)
    k = config.distillation
    baseline = space.baseline(k)
    study = open_study(study_name, storage, search.sampler_seed, pruner=pruner, first_params=baseline)
    fail_orphaned_trials(study)  # a worker killed mid-trial: its trial fails and is retried now, not in minutes
    objective = Objective(prepared, teacher, space)
    tags = {"optuna_study": study_name, "optuna_storage": redact(storage), "role": "search"}
    # a worker killed mid-study never ended its parent run; its trial is retried by Optuna
    processes.close_dead_runs(f"tags.optuna_study = '{study_name}' and tags.role = 'search'")
    tags[processes.PROCESS_TAG] = processes.process_tag()
    with tracking.mlflow_run(config, run_name=study_name, tags=tags) as run:
        mlflow.log_params(search_params(search))
        study.optimize(
            objective, n_trials=search.n_trials, timeout=search.timeout, catch=(Exception,),
            callbacks=[objective.after_trial], gc_after_trial=True,
        )
        summary = summarise(study, objective.trials_run)
        summary |= score_on_full_dev(objective, study, summary)
        summary |= {"wall_seconds": time.perf_counter() - began, "storage": redact(storage)}
        stem = Path(search.results_stem) if search.results_stem else Path(config.output_dir) / "report" / study_name
        log_summary(summary, write_report(study, stem))
        registered = registered_name(config.recipe, "search-best") if search.register else None
        summary["model_uri"] = log_best_model(objective, study, summary, registered)
        return {**summary, "run_id": run.info.run_id}
