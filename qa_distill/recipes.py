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

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from qa_distill.config import (
    EXPERIMENTS_DIR,
    PROJECT_ROOT,
    ROLES,
    SECTIONS,
    RunConfig,
    TrackingConfig,
    default_teacher,
    type_name,
)
from qa_distill.errors import ConfigError
from qa_distill.validation import validate, validate_speed

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
