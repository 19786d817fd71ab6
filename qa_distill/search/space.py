"""What the search samples: the ranges of temperature T and weight alpha (and optionally the lr).

Also the sampler, TPE seeded per trial: several workers share a study and a crashed one resumes
it, so a trial's parameters follow from (seed, trial number), never from a process's history.
The ranges come from the recipe's `search` section, checked with it (`recipes.validate_search`).
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

from qa_distill.config import SearchConfig


@dataclass(frozen=True)
class SearchSpace:
    """The ranges a trial samples from; `learning_rate` is None when the lr is not searched."""

    temperature: tuple[float, float] = (1.0, 10.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    learning_rate: tuple[float, float] | None = None

    def contains(self, temperature: float, alpha: float) -> bool:
        return self.temperature[0] <= temperature <= self.temperature[1] and self.alpha[0] <= alpha <= self.alpha[1]

    @classmethod
    def of(cls, search: SearchConfig) -> SearchSpace:
        """The space of a `search` section (checked by `recipes.validate_search`)."""
        return cls(search.temperature_range, search.alpha_range, search.lr_range if search.search_lr else None)

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
