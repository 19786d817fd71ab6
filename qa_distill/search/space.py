"""What the search samples: the ranges of temperature T and weight alpha (and optionally the layer
terms' weights and the lr).

Also the sampler, TPE seeded per trial: several workers share a study and a crashed one resumes
it, so a trial's parameters follow from (seed, trial number), never from a process's history.
The ranges come from the recipe's `search` section, checked with it (`validation.validate_search`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from qa_distill.config import DistillConfig, SearchConfig

LAYER_WEIGHTS = ("hidden_weight", "attention_weight")  # distillation settings a search may join to T and alpha


@dataclass(frozen=True)
class SearchSpace:
    """The ranges a trial samples from; a range is None where its setting is not searched."""

    temperature: tuple[float, float] = (1.0, 10.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    learning_rate: tuple[float, float] | None = None
    hidden_weight: tuple[float, float] | None = None
    attention_weight: tuple[float, float] | None = None

    @classmethod
    def of(cls, search: SearchConfig) -> SearchSpace:
        """The space of a `search` section (checked by `validation.validate_search`)."""
        return cls(search.temperature_range, search.alpha_range, search.lr_range if search.search_lr else None,
                   search.hidden_weight_range if search.search_hidden_weight else None,
                   search.attention_weight_range if search.search_attention_weight else None)

    def baseline(self, settings: DistillConfig) -> dict[str, float] | None:
        """The recipe's own values of the searched distillation settings, None if one is out of range."""
        own = {"temperature": settings.temperature, "alpha": settings.alpha}
        own |= {name: getattr(settings, name) for name in LAYER_WEIGHTS if getattr(self, name)}
        inside = all(getattr(self, name)[0] <= value <= getattr(self, name)[1] for name, value in own.items())
        return own if inside else None

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        params = {
            "temperature": trial.suggest_float("temperature", *self.temperature, log=True),
            "alpha": trial.suggest_float("alpha", *self.alpha),
        }
        for name in LAYER_WEIGHTS:  # linear: 0 (the term off) is a value like any other
            if getattr(self, name):
                params[name] = trial.suggest_float(name, *getattr(self, name))
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

    def __init__(self, seed: int, *, first_params: dict[str, float] | None = None) -> None:
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
