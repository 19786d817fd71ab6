"""Checks of settings' values, run before any data or model is loaded: one `ConfigError` line each.

`recipes` runs `validate` on every configuration it builds; the speed test and the search call
`validate_speed` and `validate_search` on sections they take from elsewhere (flags, a study).
"""

from __future__ import annotations

import math

from qa_distill.backends import usable
from qa_distill.config import BACKENDS, RunConfig, SearchConfig, SpeedConfig
from qa_distill.errors import ConfigError


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
    if t.pad_to_multiple_of < 1:
        raise ConfigError(f"training.pad_to_multiple_of must be >= 1, got {t.pad_to_multiple_of}")
    check_layers(config.model.layer_stride, config.model.layers)
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


def check_layers(stride: int, layers: list[int] | None) -> None:
    """One way to cut the model: a stride >= 1, or a list of distinct layers in order (the model's
    own count is checked when it loads)."""
    if stride < 1:
        raise ConfigError(f"model.layer_stride must be >= 1, got {stride}")
    if layers is None:
        return
    if stride > 1:
        raise ConfigError(f"model.layers {layers} and model.layer_stride {stride}: give one of the two")
    if not layers or layers != sorted(set(layers)) or layers[0] < 0:
        raise ConfigError(f"model.layers must list layers >= 0 in increasing order, got {layers}")


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
