"""Recipes become typed configuration (`config.py`), or a clear error before any work starts.

A run's configuration is built in layers, each winning over the one before: dataclass defaults,
the recipe's shared sections (`experiments/<recipe>.yaml`: `data`, `model`, `training`,
`answers`, `distillation`, `tracking`, `search`, `speed`), the recipe's section for the role
(`teacher`, `student`, `distill`), `section.key=value` overrides, then explicit arguments (a
command's own flags, also keyed `section.key`; an empty one leaves the layers below in place).
A distill run whose layers name no teacher gets the recipe's registered one
(`config.default_teacher`): a recipe copied under a new name then never reads another's teacher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from qa_distill.backends import usable
from qa_distill.config import (
    BACKENDS,
    EXPERIMENTS_DIR,
    PROJECT_ROOT,
    ROLES,
    SECTIONS,
    RunConfig,
    SearchConfig,
    SpeedConfig,
    TrackingConfig,
    check_distillation,
    default_teacher,
    type_name,
)
from qa_distill.errors import ConfigError

Overrides = list[str] | str | None
# settings that moved to another section: their old key gets an error naming the new one
MOVED = {"training.n_best": "answers.n_best", "training.max_answer_length": "answers.max_answer_length"}


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


def _items(value: Any) -> list[Any]:
    """A list setting from YAML (a list) or from one command-line string (space-separated)."""
    return value.split() if isinstance(value, str) else list(value)


def _coerce(value: Any, type_hint: Any, name: str) -> Any:
    """Turn a YAML/CLI value into the field's type, with an error that names the field."""
    if value is None:
        return None
    text = type_name(type_hint)
    try:
        if text == "tuple[float, float]":
            low, high = (float(v) for v in _items(value))
            return low, high
        if text.startswith("list[int"):  # YAML's [0, 2, 4], or "[0, 2, 4]" / "0 2 4" from a command line
            words = value.replace(",", " ").strip("[] ").split() if isinstance(value, str) else value
            return [_coerce(v, int, name) for v in words]
        if text.startswith(("tuple[str", "list[str")):
            items = [word for v in _items(value) for word in str(v).split()]
            return tuple(items) if text.startswith("tuple") else items
        if "bool" in text and not isinstance(value, bool):
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if text.startswith("int") and not isinstance(value, bool):
            number = float(value) if isinstance(value, float | str) else int(value)  # MLflow passes "8.0"
            if number != int(number):
                raise ConfigError(f"{name}: {value!r} is not a whole number")
            return int(number)
        if text.startswith("float"):
            return float(value)
        if text.startswith("str"):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: {value!r} is not a valid {text}") from None
    return value


def _apply(config: RunConfig, section: str, values: Mapping[str, Any], source: str) -> None:
    target = getattr(config, section)
    hints = get_type_hints(type(target))
    for key, value in values.items():
        if f"{section}.{key}" in MOVED:
            raise ConfigError(f"{source}: {section}.{key} is now {MOVED[f'{section}.{key}']}")
        if key not in hints:
            raise ConfigError(f"{source}: unknown setting {section}.{key} (known: {sorted(hints)})")
        setattr(target, key, _coerce(value, hints[key], f"{section}.{key}"))


def _apply_sections(config: RunConfig, sections: Mapping[str, Any] | None, source: str) -> None:
    for section, values in (sections or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r} (known: {list(SECTIONS)})")
        _apply(config, section, values or {}, source)


def parse_overrides(overrides: Overrides) -> dict[str, dict[str, Any]]:
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
        try:
            nested.setdefault(section, {})[name] = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: {raw!r} is not a YAML value (quote it, no spaces)") from None
    return nested


def _nest(explicit: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`{"distillation.alpha": 0.3, "data.data": ""}` -> nested dict, without the empty values."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in (explicit or {}).items():
        if isinstance(value, list | tuple) and not any(str(v).strip() for v in value):
            continue
        if value is None or value == "":
            continue
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
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


def _layered(recipe: str, role: str, overrides: Overrides, explicit: Mapping[str, Any] | None) -> RunConfig:
    path, spec = read_recipe(recipe)
    config = RunConfig(recipe=path.stem, role=role)
    _apply_sections(config, {k: v for k, v in spec.items() if k in SECTIONS}, str(path))
    if role:
        _apply_sections(config, spec.get(role) or {}, f"{path} [{role}]")
    for attr in ("data", "train_file", "dev_file"):
        value = getattr(config.data, attr)
        if value:
            setattr(config.data, attr, _resolve_relative(value, PROJECT_ROOT))
    _apply_sections(config, parse_overrides(overrides), "override")
    _apply_sections(config, _nest(explicit), "argument")
    if role == "distill" and not config.distillation.teacher:
        config.distillation.teacher = default_teacher(config.recipe)
    return config


def load_config(
    recipe: str,
    role: str,
    *,
    overrides: Overrides = None,
    explicit: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
) -> RunConfig:
    """The configuration of one run of `role` from `recipe`, then overrides, then `explicit`
    (`section.key -> value`, a command's own flags), checked."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: expected one of {ROLES}")
    config = _layered(recipe, role, overrides, explicit)
    config.output_dir = output_dir or str(PROJECT_ROOT / "outputs" / config.recipe / role)
    validate(config)
    return config


def load_tracking(recipe: str, *, experiment: str | None = None) -> TrackingConfig:
    """The tracking settings of commands outside the training roles (report, speedtest, main):
    the recipe's shared `tracking` section, then `experiment` if given."""
    return _layered(recipe, "", None, {"tracking.experiment": experiment}).tracking


def load_speedtest(recipe: str, *, overrides: Overrides = None, explicit: Mapping[str, Any] | None = None
                   ) -> RunConfig:
    """The speed test's configuration (its `speed` and `tracking` sections): the recipe's shared
    sections, overrides, then `explicit`; `speed` checked."""
    config = _layered(recipe, "", overrides, explicit)
    validate_speed(config.speed)
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
    for name, value in (("answers.n_best", config.answers.n_best),
                        ("answers.max_answer_length", config.answers.max_answer_length)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    check_distillation(k.temperature, k.alpha)
    check_layer_weights(k.hidden_weight, k.attention_weight)
    check_layer_map(k.layer_map)
    validate_search(config.search)


def check_layer_weights(hidden_weight: float, attention_weight: float) -> None:
    """The layer terms' weights finite and >= 0: the one check of the recipe and the search ranges."""
    for name, value in (("hidden_weight", hidden_weight), ("attention_weight", attention_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"distillation.{name} must be a finite number >= 0, got {value}")


def check_layer_map(layer_map: list[int] | None) -> None:
    """A map starts at the embeddings (0) and climbs: each student output is matched to a deeper
    teacher output than the one before (its length is checked against the models once loaded)."""
    if layer_map is None:
        return
    if len(layer_map) < 2 or layer_map[0] != 0 or any(b <= a for a, b in zip(layer_map, layer_map[1:], strict=False)):
        raise ConfigError(f"distillation.layer_map must start at 0 (embeddings) and increase, one teacher "
                          f"output per student output, e.g. [0, 2, 4, 6]; got {layer_map}")


def validate_search(search: SearchConfig) -> None:
    """Bad ranges fail before any data is loaded, not at the first trial."""
    for temperature, alpha in zip(search.temperature_range, search.alpha_range, strict=True):
        check_distillation(temperature, alpha)
    if not (search.temperature_range[0] <= search.temperature_range[1]
            and search.alpha_range[0] <= search.alpha_range[1]):
        raise ConfigError("search ranges need low <= high, got temperature_range "
                          f"{list(search.temperature_range)}, alpha_range {list(search.alpha_range)}")
    for name in ("hidden_weight_range", "attention_weight_range"):
        check_layer_weights(*getattr(search, name))
        if getattr(search, name)[0] > getattr(search, name)[1]:
            raise ConfigError(f"search ranges need low <= high, got {name} {list(getattr(search, name))}")
    if not 0 < search.lr_range[0] <= search.lr_range[1]:
        raise ConfigError(f"search.lr_range needs 0 < low <= high, got {list(search.lr_range)}")
    if "'" in search.study_name:  # the study's runs are found by an MLflow filter on its name
        raise ConfigError(f"search.study_name {search.study_name!r} must not contain a quote (')")
    for name, value in (("search.n_trials", search.n_trials), ("search.timeout", search.timeout)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def validate_speed(speed: SpeedConfig) -> None:
    """Known and installed backends, sensible counts: checked before any model is loaded."""
    unknown = [b for b in speed.backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}: expected some of {list(BACKENDS)} "
                          "(the hf-pipeline baseline is switched on and off by speed.hf_baseline)")
    if not speed.backends:
        raise ConfigError(f"no backend to time: give some of {list(BACKENDS)}")
    for backend in speed.backends:
        usable(backend)
    for what, value, least in (("questions", speed.questions, 1), ("threads", speed.threads, 1),
                               ("batch_size", speed.batch_size, 1), ("warmup", speed.warmup, 0)):
        if value < least:
            raise ConfigError(f"speed.{what} must be >= {least}, got {value}")
