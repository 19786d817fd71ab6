"""`main`: a recipe's whole chain as child runs of one MLflow parent run, reusing what is done.

The steps are the entry points teacher, student, distill, speedtest and report, in that order.
`distill` gets the teacher step's model as an exact URI (`models:/<registered name>/3`, or
`runs:/<id>/model` where nothing is registered), never the recipe's default `latest`; `speedtest` gets the exact
versions of the three trained models. Before the first step starts, `plan.dry_run` checks them all
as they will run (one line naming the step and the setting) and says where the tables will go.

A step's key is a hash of its entry point, its parameters, the runs it reads (the report's
input), the recipe file's content, the data's fingerprint and the git commit of the project.
Before a step runs, `main` looks in the experiment for runs with that key (MLflow's
multistep-workflow pattern):
- a FINISHED one is reused, not rerun;
- else the newest unfinished one (failed, killed, or left RUNNING by a SIGKILL) is continued as
  the same run by the same command, and a training step resumes from the checkpoint in its
  output_dir (runs.py);
- else a new child run of the parent is created and run.
Killed halfway and started again, `main` so reuses what finished and continues from the first
unfinished step. The key knows the commit, not uncommitted changes: commit before relying on reuse.
Ctrl-C or SIGTERM stops the chain: the step saves a checkpoint and ends its run KILLED, then the
parent ends KILLED, and the rerun continues that parent.

Each step runs as `mlflow.projects.run(<project root>, <entry point>, run_id=<child run>,
env_manager="local")`, in a process of its own rather than in this one: a step is then exactly the
command a user can run alone (`mlflow run . -e teacher`), each starts with fresh memory, torch
threads and caches, and a crash ends only that step's run FAILED, which stops `main`. The child
run is created here first, carrying its key and parent id, so that a step killed before it
logged anything is still found and continued next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
import psutil
from mlflow import MlflowClient
from mlflow.entities import Param, Run
from mlflow.exceptions import ExecutionException
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from qa_distill.config import PROJECT_ROOT, ROLES, RunConfig, WorkflowConfig, launched_run_id, registered_uri
from qa_distill.data.squad import data_fingerprint
from qa_distill.errors import Interrupted
from qa_distill.recipes import recipe_path
from qa_distill.reporting.report import ROLE_NAMES
from qa_distill.runtime.budget import BudgetPlan
from qa_distill.runtime.hardware import cpu_name
from qa_distill.runtime.processes import STOPS, stops_to
from qa_distill.runtime.progress import PLANNED_TRAIN_SECONDS
from qa_distill.tracking import runs as tracking
from qa_distill.workflow.plan import budget_seconds, dry_run, fit_budget

log = logging.getLogger(__name__)

STEP_KEY = "qa_distill.step_key"  # tag of every step run: what `main` looks runs up by
STEP = "qa_distill.step"  # tag: the step's entry point
MAIN_KEY = "qa_distill.main_key"  # tag of the parent run: the chain it runs (recipe, inputs, settings)
BUDGET_TAG = "budget_minutes"  # tag of the parent and of each step run it ran: main's budget (0: none)
PLAN_TAG = "qa_distill.budget_plan"  # tag of the parent: the budget plan it followed (JSON), which a rerun keeps


@dataclass(frozen=True)
class Step:
    entry_point: str
    parameters: dict[str, str]
    reads: tuple[str, ...] = ()  # ids of earlier step runs it reads without naming them in a parameter


@dataclass(frozen=True)
class StepResult:
    run_id: str
    action: str  # "reused", "resumed" or "ran"


@dataclass(frozen=True)
class KeyInputs:
    """What every step's key depends on besides its entry point and parameters."""

    recipe_sha256: str
    data_fingerprint: str
    git_commit: str


def step_key(step: Step, inputs: KeyInputs) -> str:
    spec = {"entry_point": step.entry_point, "parameters": step.parameters, "reads": step.reads, **vars(inputs)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def key_inputs(recipe: str, configs: dict[str, RunConfig]) -> KeyInputs:
    recipe_sha = hashlib.sha256(recipe_path(recipe).read_bytes()).hexdigest()
    data = sorted({data_fingerprint(config.data) for config in configs.values()})
    return KeyInputs(recipe_sha, ";".join(data), get_git_commit(str(PROJECT_ROOT)) or "")


def tagged_runs(experiment_id: str, tag: str, *, value: str) -> list[Run]:
    """Runs of the experiment whose `tag` is `value`, newest first."""
    return MlflowClient().search_runs(
        [experiment_id], f"tags.`{tag}` = '{value}'", order_by=["attributes.start_time DESC"]
    )


def run_step(step: Step, inputs: KeyInputs, parent: Run, run_name: str) -> StepResult:
    """Reuse the step's finished run, or continue its unfinished one, or run it anew."""
    client = MlflowClient()
    key = step_key(step, inputs)
    found = tagged_runs(parent.info.experiment_id, STEP_KEY, value=key)
    finished = next((r for r in found if r.info.status == "FINISHED"), None)
    if finished is not None:
        log.warning("%s: reusing finished run %s", step.entry_point, finished.info.run_id)
        return StepResult(finished.info.run_id, "reused")
    if found:
        run_id, action = found[0].info.run_id, "resumed"
        client.set_tag(run_id, MLFLOW_PARENT_RUN_ID, parent.info.run_id)
        log.warning("%s: continuing unfinished run %s (%s)", step.entry_point, run_id, found[0].info.status)
    else:
        run_id, action = _child_run(step, key, inputs, parent, run_name), "ran"
    before = {child.pid for child in psutil.Process().children()}
    try:
        mlflow.projects.run(
            str(PROJECT_ROOT), step.entry_point, parameters=step.parameters, env_manager="local",
            experiment_id=parent.info.experiment_id, run_id=run_id, synchronous=True,
        )
    except Interrupted as stop:  # Ctrl-C reached the step too; a SIGTERM to main alone is passed on
        started = [child for child in psutil.Process().children() if child.pid not in before]
        for child in started if stop.signum == signal.SIGTERM else ():
            child.terminate()
        psutil.wait_procs(started)  # the step saves its checkpoint and ends its run KILLED
        raise
    except ExecutionException:
        stopped_by = client.get_run(run_id).data.tags.get(tracking.STOPPED_BY)
        if stopped_by:  # a signal stopped the step alone: the chain stops as it did
            raise Interrupted(signal.Signals[stopped_by]) from None
        raise
    return StepResult(run_id, action)


def _child_run(step: Step, key: str, inputs: KeyInputs, parent: Run, run_name: str) -> str:
    """A child run with the tags and params `mlflow run` would give it, and the step key."""
    client = MlflowClient()
    tags = {
        MLFLOW_PARENT_RUN_ID: parent.info.run_id,
        MLFLOW_SOURCE_NAME: str(PROJECT_ROOT),
        MLFLOW_SOURCE_TYPE: "PROJECT",
        MLFLOW_USER: parent.info.user_id,  # the UI's "Created by"
        MLFLOW_PROJECT_ENTRY_POINT: step.entry_point,
        STEP_KEY: key,
        STEP: step.entry_point,
    }
    if inputs.git_commit:
        tags[MLFLOW_GIT_COMMIT] = inputs.git_commit
    run = client.create_run(parent.info.experiment_id, tags=tags, run_name=run_name)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in step.parameters.items()])
    return run.info.run_id


def exact_model_uri(run_id: str, config: RunConfig) -> str:
    """The model version a run of `config` registered, else the run's own model."""
    versions = MlflowClient().search_model_versions(f"name = '{config.registered_name}' and run_id = '{run_id}'")
    if versions:
        return registered_uri(config.recipe, config.role, version=max(int(v.version) for v in versions))
    return f"runs:/{run_id}/model"


def main_key(wf: WorkflowConfig, inputs: KeyInputs, *, machine: str = "") -> str:
    """What identifies a chain: its settings as given (before a budget sizes them), its steps'
    inputs and, under a budget, the machine whose rates sized it."""
    spec = [asdict(wf), asdict(inputs), machine]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def earlier_plan(experiment_id: str, key: str) -> tuple[str, BudgetPlan] | None:
    """The newest run of chain `key` that recorded its budget plan, and the plan: a rerun follows
    it, so that its steps keep their keys (and are reused or continued) rather than following a
    new probe's slightly different sizes."""
    for run in tagged_runs(experiment_id, MAIN_KEY, value=key):
        if PLAN_TAG in run.data.tags:
            return run.info.run_id, BudgetPlan.from_json(run.data.tags[PLAN_TAG])
    return None


@contextmanager
def parent_run(experiment_id: str, key: str, *, run_name: str) -> Iterator[Run]:
    """The chain's parent run: the newest unfinished parent of the same chain continued (a stopped
    `main` rerun adds no second parent), else a new one. Ends KILLED when a signal stopped the
    chain, FAILED on an error. Under `mlflow run`, the run it launched then only points to the
    continued parent: FINISHED, with a note naming it."""
    client = MlflowClient()
    found = tagged_runs(experiment_id, MAIN_KEY, value=key)
    unfinished = next((r.info.run_id for r in found if r.info.status != "FINISHED"), None)
    launched = launched_run_id()
    if unfinished and launched and launched != unfinished:
        client.set_tag(launched, MLFLOW_RUN_NOTE, f"This `mlflow run` continued the stopped chain in run {unfinished}.")
        client.set_terminated(launched, "FINISHED")
    if unfinished:
        log.warning("main: continuing the stopped chain's run %s", unfinished)
    with mlflow.start_run(run_id=unfinished, run_name=None if unfinished else run_name) as active:
        mlflow.set_tag(MAIN_KEY, key)
        with stops_to(_stop):  # put back only once the parent has ended, its stop ignoring further ones
            try:
                yield client.get_run(active.info.run_id)
            except (Interrupted, KeyboardInterrupt):
                mlflow.end_run("KILLED")
                raise


def _stop(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM stops the chain: the step ends its run KILLED, then the parent. Further
    stops are ignored meanwhile (`mlflow run` sends SIGTERM after Ctrl-C); the step still takes
    a second Ctrl-C, which ends it at once."""
    for stop in STOPS:
        signal.signal(stop, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum))


def run_main(wf: WorkflowConfig) -> dict[str, Any]:
    """The `main` entry point: `dry_run`, then every step in one parent run; returns each
    step's run and action, and where the tables went."""
    plan = dry_run(wf)
    inputs = key_inputs(plan.recipe, plan.configs)  # sizes change none of them
    experiment_id = tracking.setup(plan.tracking)
    key = main_key(wf, inputs, machine=cpu_name() if budget_seconds(wf) else "")
    wf, plan, sized = fit_budget(wf, plan, earlier=earlier_plan(experiment_id, key))
    for note in plan.notes:
        print(f"qa-distill main: {note}", file=sys.stderr, flush=True)
    recipe, name, configs, speed = plan.recipe, plan.name, plan.configs, plan.speed
    results: dict[str, StepResult] = {}
    with parent_run(experiment_id, key, run_name=f"{name}-main") as parent:
        minutes = f"{(budget_seconds(wf) or 0) / 60:g}"
        mlflow.set_tags({"recipe": name, "role": "main", BUDGET_TAG: minutes, "cpu": cpu_name()})
        if sized is not None:
            mlflow.set_tag(PLAN_TAG, sized.to_json())
            mlflow.log_params({"budget.train_questions": sized.train_questions,
                               "budget.dev_questions": sized.dev_questions, "budget.sized": sized.sized})
        experiment = MlflowClient().get_experiment(parent.info.experiment_id).name

        def run(step: Step) -> None:
            planned = sized.costs[step.entry_point] if sized else {}
            os.environ[PLANNED_TRAIN_SECONDS] = f"{planned.get('train', 0.0):.0f}"  # its progress warns past it
            began = time.monotonic()
            result = run_step(step, inputs, parent, f"{name}-{step.entry_point}")
            mlflow.set_tags({f"step.{step.entry_point}.run_id": result.run_id,
                             f"step.{step.entry_point}.action": result.action})
            if result.action != "reused":
                MlflowClient().set_tag(result.run_id, BUDGET_TAG, minutes)
            mlflow.log_metrics({f"step.{step.entry_point}.seconds": time.monotonic() - began,
                                f"step.{step.entry_point}.planned_seconds": sum(planned.values())})
            results[step.entry_point] = result

        def model_uri(role: str) -> str:
            return exact_model_uri(results[role].run_id, configs[role])

        def training(role: str, **extra: str) -> Step:
            return Step(role, {"recipe": recipe, "data": wf.data, "output_dir": configs[role].output_dir,
                               "overrides": wf.overrides, "experiment": experiment, **extra})

        run(training("teacher"))
        run(training("student"))
        run(training("distill", teacher=model_uri("teacher")))
        models = " ".join(f"{ROLE_NAMES[role]}={model_uri(role)}" for role in ROLES)
        mlflow.set_tag("speedtest.models", models)
        run(Step("speedtest", {
            "recipe": recipe, "models": models, "questions": str(speed.questions),
            "backends": " ".join(speed.backends), "threads": str(speed.threads), "dev_json": speed.dev_json,
            "run_name": speed.run_name, "output": speed.output, "experiment": experiment,
        }))
        run(Step("report", {"recipe": recipe, "output": str(plan.results_stem or ""), "experiment": experiment},
                 reads=tuple(result.run_id for result in results.values())))
        tracking.copy_outcome(results["report"].run_id, parent.info.run_id)  # the table and its figures
    os.environ.pop(PLANNED_TRAIN_SECONDS, None)
    return {"run_id": parent.info.run_id, "experiment": experiment, "results": str(plan.results_dir),
            "steps": {step: vars(result) for step, result in results.items()}}
