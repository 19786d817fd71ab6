"""One search trial's plumbing: its run configuration, its MLflow run and its pruning.

A trial is the distill run with the trial's T and alpha (and the searched layer weights), in its
own directory. It is a nested
MLflow run under the search's parent run, whose status follows the trial (COMPLETE: FINISHED,
PRUNED: KILLED, FAIL: FAILED; tag `state` says the same in Optuna's words), and it reports each
epoch's dev F1 to Optuna's pruner.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from qa_distill.config import RunConfig
from qa_distill.search.space import LAYER_WEIGHTS
from qa_distill.tracking import runs as tracking


class PruningCallback(TrainerCallback):
    """Reports each evaluation's dev F1 to the trial; stops training when the pruner says so.

    The last evaluation is reported but never prunes: training is over, so pruning would save
    nothing and only throw away a finished trial (in a one-epoch study, every trial the pruner
    ranks below the median).
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
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
    with tracking.mlflow_run(config, run_name=f"trial-{trial.number}", nested=True, tags=tags) as run:
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


def trial_dir(base: RunConfig, number: int) -> Path:
    """Where trial `number` of a search with configuration `base` keeps its model."""
    return Path(base.output_dir) / f"trial-{number}"


def trial_config(base: RunConfig, number: int, params: dict[str, float]) -> RunConfig:
    """The run configuration of one trial: its own directory, no resuming, no registering."""
    config = copy.deepcopy(base)
    config.output_dir = str(trial_dir(base, number))
    config.distillation.temperature = params["temperature"]
    config.distillation.alpha = params["alpha"]
    for name in LAYER_WEIGHTS:
        setattr(config.distillation, name, params.get(name, getattr(base.distillation, name)))
    config.training.learning_rate = params.get("learning_rate", base.training.learning_rate)
    config.training.resume = False  # a retried trial gets a new number, never an old checkpoint
    config.tracking.register_model = False
    return config
