"""`main`: a recipe's whole chain as child runs of one MLflow parent run, reusing what is done.

The steps are the entry points teacher, student, distill, speedtest and report, in that order.
Before the first starts, `dry_run` checks the whole chain as the steps will see it: every step's
configuration and arguments, the output directories and the results place, the speed test's
backends and questions, the data and model sources (local, or in the Hugging Face cache, or on a
reachable hub), the teacher URI `distill` will get, the tracking store, and that the requirements
of the model each training step logs are installed. A problem is one line naming the step and
the setting (`ConfigError`, exit 2), before any training.

The tables go to `experiments/results/` only for a run at its committed recipe's own budget (no
overrides, no other data, a 1,000-question speed test of the default backends); any other run
writes them beside its outputs (`<output root>/results/`) and says so. Such a run's speed test is
in proportion to it unless asked otherwise: as many questions as its dev set (at most 1,000), on
fp32 only (one compiled graph per model, `speedtest.speed.compile_plan`).
`distill` gets the teacher step's model as an exact URI (`models:/<registered name>/3`, or
`runs:/<id>/model` where nothing is registered), never the recipe's default `latest`; `speedtest` gets the exact
versions of the three trained models.

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
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param, Run
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from qa_distill.config import (
    DEFAULT_BACKENDS,
    DEFAULT_DEV_JSON,
    EXPERIMENTS_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    ROLES,
    DataConfig,
    RunConfig,
    SpeedConfig,
    TrackingConfig,
    WorkflowConfig,
    registered_uri,
)
from qa_distill.data.squad import data_fingerprint, is_local, local_files
from qa_distill.errors import ConfigError, QaDistillError
from qa_distill.inference.requirements import pinned_requirements
from qa_distill.recipes import load_config, load_speedtest, load_tracking, recipe_path
from qa_distill.reporting.budgets import SPEED_QUESTIONS, speed_stem
from qa_distill.reporting.report import ROLE_NAMES
from qa_distill.tracking import runs as tracking
from qa_distill.training import preflight

log = logging.getLogger(__name__)
HUB = "https://huggingface.co"

STEP_KEY = "qa_distill.step_key"  # tag of every step run: what `main` looks runs up by
STEP = "qa_distill.step"  # tag: the step's entry point


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


def step_runs(experiment_id: str, key: str) -> list[Run]:
    """Runs of a step key in the experiment, newest first."""
    return MlflowClient().search_runs(
        [experiment_id], f"tags.`{STEP_KEY}` = '{key}'", order_by=["attributes.start_time DESC"]
    )


def run_step(step: Step, inputs: KeyInputs, parent: Run, run_name: str) -> StepResult:
    """Reuse the step's finished run, or continue its unfinished one, or run it anew."""
    client = MlflowClient()
    key = step_key(step, inputs)
    found = step_runs(parent.info.experiment_id, key)
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
    mlflow.projects.run(
        str(PROJECT_ROOT), step.entry_point, parameters=step.parameters, env_manager="local",
        experiment_id=parent.info.experiment_id, run_id=run_id, synchronous=True,
    )
    return StepResult(run_id, action)


def _child_run(step: Step, key: str, inputs: KeyInputs, parent: Run, run_name: str) -> str:
    """A child run with the tags and params `mlflow run` would give it, and the step key."""
    client = MlflowClient()
    tags = {
        MLFLOW_PARENT_RUN_ID: parent.info.run_id,
        MLFLOW_SOURCE_NAME: str(PROJECT_ROOT),
        MLFLOW_SOURCE_TYPE: "PROJECT",
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


def _recipe_argument(recipe: str) -> str:
    """A recipe file as an absolute path: the steps run in the project root, not here."""
    path = Path(recipe)
    return str(path.resolve()) if path.suffix in (".yaml", ".yml") and path.exists() else recipe


def _configs(wf: WorkflowConfig, recipe: str, output_root: Path) -> dict[str, RunConfig]:
    """Each training step's configuration as its step will load it; distill's with the teacher
    URI it will get (the teacher step's registered version, or its run's model)."""
    configs = {}
    for role in ROLES:
        with _step(role):
            configs[role] = load_config(
                recipe, role, overrides=wf.overrides, output_dir=str(output_root / role),
                explicit={"data.data": wf.data},
            )
    teacher = configs["teacher"]
    to_be = (registered_uri(teacher.recipe, "teacher", version=1) if teacher.tracking.register_model
             else "runs:/<teacher run>/model")
    with _step("distill"):
        load_config(recipe, "distill", overrides=wf.overrides, output_dir=configs["distill"].output_dir,
                    explicit={"data.data": wf.data, "distillation.teacher": to_be})
    return configs


@contextmanager
def _step(name: str) -> Iterator[None]:
    """A problem found while checking step `name` becomes one line that names the step."""
    try:
        yield
    except QaDistillError as error:
        raise ConfigError(f"{name} step: {error}") from None


def _on_hub(name: str, kind: str) -> bool:
    """Whether the hub's `kind` ("datasets" or "models") `name` is in the local Hugging Face
    caches, or the hub answers for it."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    if (hub / f"{kind}--{name.replace('/', '--')}").is_dir():
        return True
    datasets = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    if kind == "datasets" and datasets.is_dir() and any(datasets.glob(f"*{name.replace('/', '___')}*")):
        return True
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        urllib.request.urlopen(f"{HUB}/api/{kind}/{name}", timeout=5).close()
    except urllib.error.HTTPError as error:
        return error.code != 404  # it answered; 404: no such name
    except (urllib.error.URLError, OSError):
        return False
    return True


def check_data(data: DataConfig) -> None:
    """The train and dev questions can be found: local files, or a hub dataset within reach."""
    if not is_local(data):
        if not _on_hub(data.data, "datasets"):
            raise ConfigError(f"data.data {data.data!r} is a hub dataset that is neither in the local "
                              f"Hugging Face cache nor reachable at {HUB}: pass --data <a SQuAD directory or JSON>")
        return
    for name, path in zip(("train", "dev"), local_files(data), strict=True):
        if path is None or not path.is_file():
            raise ConfigError(f"data.data {data.data!r}: no {name} file ({name}*.json, or data.{name}_file)")


def check_model_source(source: str) -> None:
    """A model to start from: a local directory, an installed package's, an MLflow URI (looked
    up when the step runs) or a hub model within reach."""
    if source.startswith(("runs:/", "models:/", "pypi:")):
        if source.startswith("pypi:"):
            from qa_distill.models import resolve_source

            resolve_source(source)
        return
    if Path(source).exists() or source.startswith((".", "/")):
        if not (Path(source) / "config.json").is_file():
            raise ConfigError(f"model.name {source!r}: no such model directory (no config.json in it)")
        return
    if not _on_hub(source, "models"):
        raise ConfigError(f"model.name {source!r} is a hub model that is neither in the local Hugging Face "
                          f"cache nor reachable at {HUB}: set model.name to a local model directory")


@dataclass
class Plan:
    """What `main` will run, resolved and checked before its first step (`dry_run`)."""

    recipe: str  # as the steps get it (a YAML file as an absolute path)
    name: str
    output_root: Path
    configs: dict[str, RunConfig]
    tracking: TrackingConfig
    speed: SpeedConfig
    results_stem: Path | None  # None: each table's own default under experiments/results/
    notes: list[str] = field(default_factory=list)

    @property
    def results_dir(self) -> Path:
        return self.results_stem.parent if self.results_stem else RESULTS_DIR


def _full_budget(wf: WorkflowConfig, recipe: str) -> bool:
    """Whether the training steps run the committed recipe as its file sets them."""
    return recipe_path(recipe).parent == EXPERIMENTS_DIR and not wf.overrides.strip() and not wf.data


def _speed(wf: WorkflowConfig, recipe: str, configs: dict[str, RunConfig], full: bool) -> SpeedConfig:
    """The speed step's settings: `main`'s, else the recipe's speed section, else in proportion to
    a test-sized chain (its dev questions, fp32 only)."""
    recipe_speed = load_speedtest(recipe).speed
    questions = wf.speed_questions or recipe_speed.questions
    backends = tuple(wf.backends.split()) or recipe_speed.backends
    if not full and not wf.speed_questions:
        questions = min(questions, configs["distill"].data.dev_questions or questions)
    if not full and not wf.backends and recipe_speed.backends == DEFAULT_BACKENDS:
        backends = ("fp32",)
    return load_speedtest(recipe, explicit={
        "speed.questions": questions, "speed.backends": backends, "speed.threads": wf.threads,
        "speed.dev_json": wf.dev_json,
    }).speed


def dry_run(wf: WorkflowConfig) -> Plan:
    """Resolve and check every step before the first: a `ConfigError` naming the step and the
    setting, or the plan `run_main` follows."""
    recipe = _recipe_argument(wf.recipe)
    name = recipe_path(recipe).stem
    output_root = Path(wf.output_dir).resolve() if wf.output_dir else PROJECT_ROOT / "outputs" / name
    configs = _configs(wf, recipe, output_root)
    full = _full_budget(wf, recipe)
    with _step("speedtest"):
        speed = _speed(wf, recipe, configs, full)
        speed.models = [f"{ROLE_NAMES[role]}={registered_uri(name, role, version=1)}" for role in ROLES]
        speed.run_name = f"{name}-speed"
        dev_json = Path(speed.dev_json or DEFAULT_DEV_JSON)
        if not dev_json.is_file():
            raise ConfigError(f"speed.dev_json {str(dev_json)!r} is not a file: pass --dev-json <SQuAD dev JSON>")
    notes = []
    if wf.results_dir:
        results_stem: Path | None = Path(wf.results_dir).resolve() / name
    elif full and speed.questions == SPEED_QUESTIONS and set(speed.backends) == set(DEFAULT_BACKENDS):
        results_stem = None
    else:
        results_stem = output_root / "results" / name
        notes.append(f"not a full-budget run of a committed recipe: its tables go to {results_stem.parent}, "
                     f"not {RESULTS_DIR} (--results-dir to choose)")
    with _step("speedtest"):
        speed.output = f"{results_stem}-speed" if results_stem else ""
        speed_stem(name, speed)
        preflight.check_output_dir(str(results_stem.parent if results_stem else RESULTS_DIR), 0)
    for role, config in configs.items():
        with _step(role):
            preflight.check_output_dir(config.output_dir, 0)
            check_data(config.data)
            check_model_source(config.model.name)
    with _step("teacher"):
        try:
            pinned_requirements()
        except QaDistillError as error:
            raise ConfigError(f"the model it logs would not install: {error}") from None
    settings = load_tracking(recipe, experiment=wf.experiment)
    with _step("main"):
        preflight.connect(settings)
    return Plan(recipe, name, output_root, configs, settings, speed, results_stem, notes)


def run_main(wf: WorkflowConfig) -> dict[str, Any]:
    """The `main` entry point: `dry_run`, then every step in one parent run; returns each
    step's run and action, and where the tables went."""
    plan = dry_run(wf)
    for note in plan.notes:
        print(f"qa-distill main: {note}", file=sys.stderr, flush=True)
    recipe, name, configs, speed = plan.recipe, plan.name, plan.configs, plan.speed
    inputs = key_inputs(recipe, configs)
    tracking.setup(plan.tracking)
    results: dict[str, StepResult] = {}
    with mlflow.start_run(run_name=f"{name}-main") as active:
        mlflow.set_tags({"recipe": name, "role": "main"})
        parent = MlflowClient().get_run(active.info.run_id)
        experiment = MlflowClient().get_experiment(parent.info.experiment_id).name

        def run(step: Step) -> None:
            result = run_step(step, inputs, parent, f"{name}-{step.entry_point}")
            mlflow.set_tags({f"step.{step.entry_point}.run_id": result.run_id,
                             f"step.{step.entry_point}.action": result.action})
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
    return {"run_id": parent.info.run_id, "experiment": experiment, "results": str(plan.results_dir),
            "steps": {step: vars(result) for step, result in results.items()}}
