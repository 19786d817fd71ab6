"""`main`'s plan: the whole chain resolved and checked before its first step (`dry_run`).

Every step's configuration and arguments as the step will load them, the teacher URI `distill`
will get, the output directories and the results place, the speed test's backends, questions and
dev set, the data and model sources (`data/sources.py`), that the requirements of the model each
training step logs are installed, and the tracking store. A problem is one line naming the step
and the setting (`ConfigError`, exit 2), before any training.

The tables go to `experiments/results/` only for a run at its committed recipe's own budget (no
overrides, no other data, a 1,000-question speed test of the default backends); any other run
writes them beside its outputs (`<output root>/results/`) and says so. Such a run's speed test is
in proportion to it unless asked otherwise: as many questions as its dev set (at most the
recipe's), on fp32 only (one compiled graph per model, `speedtest.speed.compile_plan`).

`recipe=auto` is the gpu recipe where torch sees CUDA, else the cpu recipe. `fit_budget` sizes
the chain to `budget_minutes` (60 on a CPU unless given): it measures this machine's rates
(`training/probe.py`), models each step (`runtime/budget.py`) and, where the recipe does not fit,
adds seeded subsets of the train and dev questions as overrides and checks the chain again: such a
run is not at its recipe's budget, so its tables go beside its outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from qa_distill.config import (
    DEFAULT_BACKENDS,
    DEFAULT_DEV_JSON,
    EXPERIMENTS_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    ROLES,
    RunConfig,
    SpeedConfig,
    TrackingConfig,
    WorkflowConfig,
    registered_uri,
)
from qa_distill.data.sources import check_data, check_model_source
from qa_distill.errors import ConfigError, QaDistillError
from qa_distill.inference.requirements import pinned_requirements
from qa_distill.recipes import load_config, load_speedtest, load_tracking, recipe_path
from qa_distill.reporting.budgets import SPEED_QUESTIONS, speed_stem
from qa_distill.reporting.report import ROLE_NAMES
from qa_distill.runtime import budget
from qa_distill.runtime.hardware import cpu_name
from qa_distill.runtime.processes import seconds_running
from qa_distill.speedtest.speed import compile_seconds
from qa_distill.training import preflight, probe

CPU_BUDGET_MINUTES = 60.0  # main's budget on a machine without CUDA, unless given
STARTUP_SECONDS = 10.0  # a step's start where /proc cannot tell this process's own


def machine_recipe(recipe: str) -> tuple[str, str]:
    """`recipe`, or for `auto` the machine's one, and why (for the start line)."""
    if recipe != "auto":
        return recipe, f"recipe {recipe}"
    if torch.cuda.is_available():
        return "gpu", f"recipe auto: gpu, torch sees CUDA ({torch.cuda.get_device_name(0)})"
    return "cpu", "recipe auto: cpu, torch sees no CUDA device"


def budget_seconds(wf: WorkflowConfig) -> float | None:
    """`budget_minutes` in seconds: 60 minutes on a CPU unless given, none on CUDA, 0 none."""
    minutes = wf.budget_minutes
    if minutes is None:
        minutes = 0.0 if torch.cuda.is_available() else CPU_BUDGET_MINUTES
    if minutes < 0:
        raise ConfigError(f"budget_minutes must be >= 0 (0: no budget), got {minutes:g}")
    return minutes * 60 or None


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


@dataclass
class Plan:
    """What `main` will run, resolved and checked before its first step (`dry_run`)."""

    recipe: str  # as the steps get it (a YAML file as an absolute path; auto resolved)
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


def _speed(wf: WorkflowConfig, recipe: str, configs: dict[str, RunConfig], *, full: bool) -> SpeedConfig:
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
    chosen, why = machine_recipe(wf.recipe)
    recipe = _recipe_argument(chosen)
    name = recipe_path(recipe).stem
    output_root = Path(wf.output_dir).resolve() if wf.output_dir else PROJECT_ROOT / "outputs" / name
    configs = _configs(wf, recipe, output_root)
    full = _full_budget(wf, recipe)
    with _step("speedtest"):
        speed = _speed(wf, recipe, configs, full=full)
        speed.models = [f"{ROLE_NAMES[role]}={registered_uri(name, role, version=1)}" for role in ROLES]
        speed.run_name = f"{name}-speed"
        dev_json = Path(speed.dev_json or DEFAULT_DEV_JSON)
        if not dev_json.is_file():
            raise ConfigError(f"speed.dev_json {str(dev_json)!r} is not a file: pass --dev-json <SQuAD dev JSON>")
    notes = [why] if wf.recipe == "auto" else []
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


def _speed_shape(wf: WorkflowConfig, plan: Plan, *, full: bool) -> budget.SpeedShape:
    speed = _speed(wf, plan.recipe, plan.configs, full=full)
    passes = 2 * (len(speed.backends) + speed.hf_baseline)  # batch 1 and the throughput pass
    return budget.SpeedShape(speed.questions, not wf.speed_questions, passes, speed.warmup,
                             compile_seconds(len(ROLES), speed.backends))


def chain_shape(wf: WorkflowConfig, plan: Plan, measured: probe.Measured) -> budget.ChainShape:
    """The planner's view of `plan`'s chain on this machine: measured rates, the recipe's sizes,
    and each step's start as long as this process took to reach its first step."""
    roles = {}
    for role, config in plan.configs.items():
        evaluations = max(1, math.ceil(config.training.epochs)) if config.training.eval_each_epoch else 1
        shape = budget.RoleShape(measured.rates[role], config.training.epochs, evaluations)
        if role == "distill":
            shape = replace(shape, teacher=measured.rates["teacher"],
                            teacher_on_the_fly=config.distillation.teacher_on_the_fly)
        roles[role] = shape
    started = seconds_running()
    return budget.ChainShape(
        roles, measured.train_questions, measured.dev_questions, measured.train_windows_per_question,
        measured.dev_windows_per_question, measured.tokenize_seconds_per_question,
        speed=_speed_shape(wf, plan, full=plan.results_stem is None),
        sized_speed=_speed_shape(wf, plan, full=False),
        step_overhead=STARTUP_SECONDS if started is None else max(started - measured.seconds, STARTUP_SECONDS),
        batch_size=plan.configs["teacher"].training.batch_size,  # the recipes' roles share one
    )


def fit_budget(wf: WorkflowConfig, plan: Plan, *, earlier: tuple[str, budget.BudgetPlan] | None = None,
               ) -> tuple[WorkflowConfig, Plan, budget.BudgetPlan | None]:
    """`wf` and `plan` sized to the budget (unchanged where the recipe fits or there is none),
    with the budget plan; the start line says the budget and where the time goes. `earlier` (run
    id, plan) is the plan an earlier run of the same chain on this CPU followed: kept, not measured
    again, so that a rerun reuses and continues that run's steps instead of training other sizes."""
    seconds = budget_seconds(wf)
    if seconds is None:
        return wf, plan, None
    if earlier is not None:
        run_id, sized = earlier
        where = budget.describe(sized)
        plan.notes.append(f"budget {seconds / 60:g} min on {cpu_name()}: the plan of this chain's run {run_id}, "
                          f"kept so its steps are reused or continued (another budget_minutes plans anew); {where}")
    else:
        measured = probe.measure(plan.configs)
        shape = chain_shape(wf, plan, measured)
        spent = seconds_running() or measured.seconds
        sized = budget.plan_budget(shape, seconds - spent)
        where = budget.describe(sized)
        plan.notes.append(f"budget {seconds / 60:g} min on {cpu_name()}, {spent:.0f} s of it spent on checks and a "
                          f"{measured.seconds:.0f} s probe; {where}")
    if sized.sized:
        wf = replace(wf, overrides=" ".join([wf.overrides.strip(), *sized.overrides()]).strip(),
                     speed_questions=wf.speed_questions or sized.speed_questions)
        notes = plan.notes
        plan = dry_run(wf)
        plan.notes = notes + [n for n in plan.notes if n not in notes]
    return wf, plan, sized
