"""An Optuna study over the distillation temperature T and weight alpha (and optionally the lr).

The data, windows, teacher and teacher-logits cache are prepared once per process and shared by
every trial; a trial only trains and scores a fresh student. The study lives in an RDB storage
(SQLite in the output directory by default, or any Optuna URL such as PostgreSQL), so a crashed
study resumes under the same name and several `search` processes on one study share the trials.

MLflow: one parent run per process (named after the study) holds the best parameters, scores,
the report and the best model; each trial is a nested run whose status follows the trial
(COMPLETE: FINISHED, PRUNED: KILLED, FAIL: FAILED; tag `state` says the same in Optuna's words).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import logging
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.exceptions import MlflowException
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner, MedianPruner
from optuna.samplers import BaseSampler, TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from transformers import TrainerCallback

from qa_distill import preflight, processes, tracking
from qa_distill.config import RunConfig, check_distillation
from qa_distill.distributed import world_size
from qa_distill.errors import ConfigError
from qa_distill.evaluate import evaluate_model
from qa_distill.features import cache_dir
from qa_distill.mlflow_model import log_qa_model
from qa_distill.runs import (
    Prepared,
    Teacher,
    load_student,
    load_teacher,
    prepare,
    teacher_logits,
    train_distill,
)
from qa_distill.tables import write_tables

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["number", "state", "temperature", "alpha", "f1", "exact_match"]


@dataclass(frozen=True)
class SearchSpace:
    """The ranges a trial samples from; `learning_rate` is None when the lr is not searched."""

    temperature: tuple[float, float] = (1.0, 10.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    learning_rate: tuple[float, float] | None = None

    def contains(self, temperature: float, alpha: float) -> bool:
        return self.temperature[0] <= temperature <= self.temperature[1] and self.alpha[0] <= alpha <= self.alpha[1]

    def check(self) -> None:
        """Bad ranges fail before any data is loaded, not at the first trial."""
        for temperature, alpha in zip(self.temperature, self.alpha, strict=True):
            check_distillation(temperature, alpha)
        if not (self.temperature[0] <= self.temperature[1] and self.alpha[0] <= self.alpha[1]):
            raise ConfigError(f"ranges need low <= high, got T {self.temperature}, alpha {self.alpha}")
        if self.learning_rate and not 0 < self.learning_rate[0] <= self.learning_rate[1]:
            raise ConfigError(f"lr range needs 0 < low <= high, got {self.learning_rate}")

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        params = {
            "temperature": trial.suggest_float("temperature", *self.temperature, log=True),
            "alpha": trial.suggest_float("alpha", *self.alpha),
        }
        if self.learning_rate:
            lr = trial.suggest_float("learning_rate", *self.learning_rate, log=True)
            params["learning_rate"] = lr
        return params


class TrialSeededTPE(BaseSampler):
    """TPE re-seeded from (seed, trial number) at each trial.

    One `TPESampler(seed)` per process would replay the same random start-up points in every
    worker sharing the study and in every rerun resuming it; seeding per trial keeps trials
    distinct and each one reproducible.
    """

    def __init__(self, seed: int, first_params: dict[str, float] | None = None) -> None:
        self._seed = seed
        self._tpe = TPESampler(seed=seed)
        # trial 0 takes these (the recipe's own T and alpha, the search's baseline): trial numbers
        # are unique in the storage, so of several workers exactly one runs it
        self._first = first_params or {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
        self._tpe = TPESampler(seed=seed)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial.number == 0 and self._first:
            return {}
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
    ) -> Any:
        if trial.number == 0 and name in self._first:
            return self._first[name]
        return self._tpe.sample_independent(study, trial, name, distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


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


def rdb_storage(url: str, attempts: int = 3) -> RDBStorage:
    """Optuna's storage with heartbeats, so a trial whose worker died is failed and retried.

    Workers started together on a new database race to create its tables; the losers retry
    once the winner has created them.
    """
    make = partial(
        RDBStorage, url, heartbeat_interval=60, grace_period=120,
        heartbeat_stale_trial_callback=retry_stale_trial,
    )
    for attempt in range(1, attempts):
        try:
            return make()
        except DBAPIError as exc:
            log.info("creating the Optuna tables failed (%s); retrying", exc.orig)
            time.sleep(attempt)
    return make()


def open_study(
    study_name: str,
    storage: str,
    sampler_seed: int,
    pruner: BasePruner | None = None,
    first_params: dict[str, float] | None = None,
) -> optuna.Study:
    """Create the study, or load it to resume or to join other workers; its objective is named
    `f1` (optuna-dashboard and the plots show that, not "Objective 0")."""
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb_storage(storage),
        load_if_exists=True,
        direction="maximize",
        sampler=TrialSeededTPE(sampler_seed, first_params),
        pruner=pruner or MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["f1"])
    return study


class PruningCallback(TrainerCallback):
    """Reports each evaluation's dev F1 to the trial; stops training when the pruner says so.

    The last evaluation is reported but never prunes: training is over, so pruning would save
    nothing and only throw away a finished trial (in a one-epoch study, every trial the pruner
    ranks below the median).
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.trial.report(metrics["eval_f1"], step=state.global_step)
        if state.global_step < state.max_steps and self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", state.epoch)
            raise optuna.TrialPruned(f"dev F1 {metrics['eval_f1']:.2f} at epoch {state.epoch:g}")


@contextmanager
def trial_run(config: RunConfig, trial: optuna.Trial) -> Iterator[mlflow.ActiveRun]:
    """A nested MLflow run whose status follows the trial: pruned KILLED, an error FAILED."""
    # role "search-trial" keeps trials out of the recipe's teacher/student/distilled table
    tags = {"optuna_study": trial.study.study_name, "optuna_trial_number": str(trial.number),
            "role": "search-trial"}
    with tracking.mlflow_run(config, f"trial-{trial.number}", nested=True, tags=tags) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.log_params(trial.params)
        try:
            yield run
        except optuna.TrialPruned:
            mlflow.set_tag("state", TrialState.PRUNED.name)
            mlflow.end_run("KILLED")  # ended here, so the context does not mark it FAILED
            raise
        except (Exception, KeyboardInterrupt):
            mlflow.set_tag("state", TrialState.FAIL.name)
            raise
        mlflow.set_tag("state", TrialState.COMPLETE.name)


def trial_config(base: RunConfig, number: int, params: dict[str, float]) -> RunConfig:
    """The run configuration of one trial: its own directory, no resuming, no registering."""
    config = copy.deepcopy(base)
    config.output_dir = str(Path(base.output_dir) / f"trial-{number}")
    config.distillation.temperature = params["temperature"]
    config.distillation.alpha = params["alpha"]
    config.training.learning_rate = params.get("learning_rate", base.training.learning_rate)
    config.training.resume = False  # a retried trial gets a new number, never an old checkpoint
    config.tracking.register_model = False
    return config


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
        return Path(self.prepared.config.output_dir) / f"trial-{number}"

    def __call__(self, trial: optuna.Trial) -> float:
        config = trial_config(self.prepared.config, trial.number, self.space.suggest(trial))
        # the budget each trial had, for the trials table (a study may cut the recipe to fit)
        budget = {"train_questions": len(self.prepared.train_examples),
                  "dev_questions": len(self.prepared.dev_examples), "epochs": config.training.epochs}
        for key, value in budget.items():
            trial.set_user_attr(key, value)
        with trial_run(config, trial):
            p = dataclasses.replace(self.prepared, config=config, student=load_student(config))
            metrics = train_distill(p, self.teacher, [PruningCallback(trial)], log_model=False)
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


def best_number(study: optuna.Study) -> int | None:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial.number if completed else None


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of the whole study (all workers), for the CSV report."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "temperature": t.params.get("temperature"),
            "alpha": t.params.get("alpha"),
            "f1": t.value,
            "exact_match": t.user_attrs.get("exact_match"),
            **({"learning_rate": t.params["learning_rate"]} if "learning_rate" in t.params else {}),
            "duration_s": duration,
            "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
            **{k: t.user_attrs.get(k) for k in ("train_questions", "dev_questions", "epochs")},
        })
    frame = pd.DataFrame(rows)
    optional = [c for c in frame.columns if c not in REPORT_COLUMNS]
    return frame.reindex(columns=REPORT_COLUMNS + optional)


# name -> (plot function name shared by the matplotlib and plotly backends, kwargs, complete
# trials it needs to mean anything)
PLOTS: dict[str, tuple[str, dict[str, Any], int]] = {
    "history": ("plot_optimization_history", {}, 0),
    "importances": ("plot_param_importances", {}, 2),
    "contour": ("plot_contour", {"params": ["temperature", "alpha"]}, 0),
    "intermediate": ("plot_intermediate_values", {}, 0),
}


def write_plots(study: optuna.Study, stem: Path) -> list[Path]:
    """Each plot as PNG (matplotlib backend) and HTML (plotly, its JavaScript inline so the page
    works offline); kaleido cannot render PNG here."""
    import matplotlib.pyplot as plt
    import optuna.visualization as plotly_vis
    import optuna.visualization.matplotlib as mpl_vis

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (function, kwargs, needs) in PLOTS.items():
            if complete < needs:
                log.info("no %s plot: %d complete trials, it needs %d", name, complete, needs)
                continue
            png, html = (stem.with_name(f"{stem.name}-{name}.{ext}") for ext in ("png", "html"))
            axes = getattr(mpl_vis, function)(study, **kwargs)
            figure = np.ravel(axes)[0].figure  # contour of 2 params is one Axes; more give a grid
            figure.savefig(png, dpi=100, bbox_inches="tight")
            plt.close(figure)
            getattr(plotly_vis, function)(study, **kwargs).write_html(html, include_plotlyjs=True)
            written += [png, html]
    return written


def write_report(study: optuna.Study, stem: Path) -> list[Path]:
    """The trials table and the plots, as `<stem>.csv|md`, `<stem>-<plot>.png|html`."""
    return [*write_tables(trials_frame(study), stem), *write_plots(study, stem)]


def summarise(study: optuna.Study, trials_run: list[int]) -> dict[str, Any]:
    """Best trial and counts over the whole study; `trials_run` are this process's trials."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "n_trials": len(states),
        "n_complete": states.count(TrialState.COMPLETE),
        "n_pruned": states.count(TrialState.PRUNED),
        "n_failed": states.count(TrialState.FAIL),
        "trials_run": trials_run,
        "best_trial": best_number(study),
    }
    if summary["best_trial"] is not None:
        best = study.best_trial
        summary |= {f"best_{k}": v for k, v in best.params.items()}
        summary |= {"best_f1": best.value, "best_exact_match": best.user_attrs.get("exact_match")}
    return summary


def log_summary(summary: dict[str, Any], files: list[Path]) -> None:
    """Best parameters as params, scores and counts as metrics, report files as artifacts."""
    numbers = ("best_f1", "best_exact_match", "n_trials", "n_complete", "n_pruned", "n_failed",
               "wall_seconds")
    mlflow.log_metrics({k: float(summary[k]) for k in numbers if summary.get(k) is not None})
    params = ("best_temperature", "best_alpha", "best_learning_rate", "best_trial")
    mlflow.log_params({k: summary[k] for k in params if summary.get(k) is not None})
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="report")


def log_best_model(
    objective: Objective, summary: dict[str, Any], registered: str | None
) -> str | None:
    """Log (and register) the best model if this process trained it; else drop what it kept.

    With several workers only the one that ran the best trial holds its model, so a model is
    registered once per improvement, not once per worker.
    """
    if not objective.holds(summary["best_trial"]):
        objective.drop_best_here()
        return None
    uri = log_qa_model(objective.trial_dir(objective.best_here), registered)
    mlflow.set_tag("model_uri", uri)
    return uri


def score_on_full_dev(objective: Objective, summary: dict[str, Any]) -> dict[str, float]:
    """Trials score on a dev subset to fit a budget; the best model is then scored on all of it."""
    data = objective.prepared.config.data
    if data.dev_questions is None or not objective.holds(summary["best_trial"]):
        return {}
    full = dataclasses.replace(data, dev_questions=None)
    scores = evaluate_model(str(objective.trial_dir(objective.best_here)), full, "fp32")  # the reference
    result = {"best_full_dev_f1": scores["f1"], "best_full_dev_exact_match": scores["exact_match"],
              "full_dev_questions": scores["dev_questions"]}
    mlflow.log_metrics(result)
    return result


def search_params(
    n_trials: int | None, timeout: float | None, sampler_seed: int, space: SearchSpace
) -> dict[str, Any]:
    """The search's own settings, beside the configuration the parent run already logs."""
    params: dict[str, Any] = {
        "search.n_trials": n_trials,
        "search.timeout": timeout,
        "search.sampler_seed": sampler_seed,
        "search.temperature_range": list(space.temperature),
        "search.alpha_range": list(space.alpha),
    }
    if space.learning_rate:
        params["search.lr_range"] = list(space.learning_rate)
    return params


def run_search(
    config: RunConfig,
    n_trials: int | None,
    timeout: float | None,
    study_name: str,
    storage: str | None,
    sampler_seed: int = 0,
    temperature_range: tuple[float, float] = (1.0, 10.0),
    alpha_range: tuple[float, float] = (0.0, 1.0),
    search_lr: bool = False,
    lr_range: tuple[float, float] = (1e-5, 3e-4),
    results_stem: Path | None = None,
    register_best: bool = True,
    pruner: BasePruner | None = None,
) -> dict[str, Any]:
    """Run `n_trials` trials (or until `timeout` seconds) of the study in this process.

    Counts, best trial and report cover the whole study, including other workers' and earlier
    runs' trials. The report goes to `results_stem` (default `<output_dir>/report/<study>`).
    """
    began = time.perf_counter()
    space = SearchSpace(temperature_range, alpha_range, lr_range if search_lr else None)
    space.check()
    if world_size() > 1:
        raise ConfigError("search runs whole trials per process: start workers on one --storage "
                          "instead of launching it with torchrun or accelerate launch")
    storage = storage or default_storage(config)
    preflight.connect(config.tracking)
    prepared = prepare(config)
    teacher = load_teacher(config, prepared.student)
    warm_teacher_cache(prepared, teacher)
    k = config.distillation
    baseline = {"temperature": k.temperature, "alpha": k.alpha} if space.contains(k.temperature, k.alpha) else None
    study = open_study(study_name, storage, sampler_seed, pruner, baseline)
    objective = Objective(prepared, teacher, space)
    tags = {"optuna_study": study_name, "optuna_storage": redact(storage), "role": "search"}
    # a worker killed mid-study never ended its parent run; its trial is retried by Optuna
    processes.close_dead_runs(f"tags.optuna_study = '{study_name}' and tags.role = 'search'")
    tags[processes.PROCESS_TAG] = processes.process_tag()
    with tracking.mlflow_run(config, run_name=study_name, tags=tags) as run:
        mlflow.log_params(search_params(n_trials, timeout, sampler_seed, space))
        study.optimize(
            objective, n_trials=n_trials, timeout=timeout, catch=(Exception,),
            callbacks=[objective.after_trial], gc_after_trial=True,
        )
        summary = summarise(study, objective.trials_run)
        summary |= score_on_full_dev(objective, summary)
        summary |= {"wall_seconds": time.perf_counter() - began, "storage": redact(storage)}
        stem = results_stem or Path(config.output_dir) / "report" / study_name
        log_summary(summary, write_report(study, stem))
        registered = f"qa-distill-{config.recipe}-search-best" if register_best else None
        summary["model_uri"] = log_best_model(objective, summary, registered)
        return {**summary, "run_id": run.info.run_id}
