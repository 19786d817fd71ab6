"""`main`'s time budget: the chain's cost from measured rates, and the questions that fit in it.

Pure functions, rates and the recipe's sizes in, seeded subsets out: `plan_budget` models each
step (training windows x epochs at the measured training rate, the teacher-logits pass, one
evaluation per epoch, the speed test's passes and compiles, and each step's fixed cost of starting,
loading and logging) and, where the recipe's sizes do not fit, scales its train and dev questions
by one factor, so the chain keeps its proportions and each step's learning-rate schedule is set
for the windows it trains (`data.train_questions`, `data.dev_questions`). Its batch shrinks by the
same factor, to no fewer than `MIN_BATCH_SIZE` windows (`training.batch_size`), so that it keeps
the recipe's optimizer steps as far as it can: on a 2-core Zen 3, the cpu recipe sized to 5,428
questions trained its student alone to 12.4 F1 in 190 steps of 32 windows and to 25.7 in 758 of 8.
A recipe that fits is returned as it is: no override, the same step keys as a run without a budget.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

STEPS = ("teacher", "student", "distill", "speedtest", "report")
# below these a sized chain stops shrinking (and says it will overrun): fewer questions teach nothing
MIN_TRAIN_QUESTIONS = 64
MIN_DEV_QUESTIONS = 32
MIN_BATCH_SIZE = 8  # a sized chain's smallest batch: the rate per window barely changes above it
MIN_SPEED_QUESTIONS = 100  # the fewest a sized chain's speed test times: a p50 and p90 still worth reading


@dataclass(frozen=True)
class ModelRates:
    """One model's measured speed on this machine."""

    train: float  # windows/s of training steps (forward, backward, optimizer)
    infer: float  # windows/s of forward passes at the evaluation batch size
    latency: float  # seconds per question at batch 1 (the speed test's timed pass)


@dataclass(frozen=True)
class RoleShape:
    """One training step: its model's rates, its epochs and evaluations."""

    rates: ModelRates
    epochs: float
    evaluations: int
    teacher: ModelRates | None = None  # distill: the teacher's rates
    teacher_on_the_fly: bool = False  # a teacher pass per epoch inside training, else one (the cache's) before it


@dataclass(frozen=True)
class SpeedShape:
    """The speed test as the chain will run it."""

    questions: int
    follows_dev: bool  # a sized chain times as many questions as its dev set (at most `questions`)
    passes: int  # timed passes over the questions, per model (backends and baseline, batch 1 and throughput)
    warmup: int
    compile_seconds: float  # all of its compiles, where nothing is cached


@dataclass(frozen=True)
class ChainShape:
    """The recipe's chain as the planner sees it."""

    roles: dict[str, RoleShape]
    train_questions: int  # the recipe's (all of the train file where it sets none)
    dev_questions: int
    train_windows_per_question: float
    dev_windows_per_question: float
    tokenize_seconds_per_question: float  # once, in the first step (the others read its cache)
    speed: SpeedShape  # at the recipe's own budget
    sized_speed: SpeedShape  # once sized (a test-sized chain's speed test)
    step_overhead: float  # seconds each step spends starting, loading and logging
    batch_size: int  # the recipe's training batch


@dataclass(frozen=True)
class BudgetPlan:
    """Questions per split and the expected seconds of each step's parts."""

    budget_seconds: float | None
    train_questions: int
    dev_questions: int
    costs: dict[str, dict[str, float]]  # step -> part (train, evaluate, other) -> seconds
    sized: bool  # the recipe's sizes did not fit: the overrides apply
    fits: bool
    speed_questions: int  # what the speed test times
    recipe_train_questions: int  # the recipe's own sizes, which `train_questions`/`dev_questions` share
    recipe_dev_questions: int
    batch_size: int  # windows per training step: the recipe's, or its share where sized

    @property
    def seconds(self) -> dict[str, float]:
        return {step: sum(parts.values()) for step, parts in self.costs.items()}

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def overrides(self) -> list[str]:
        """What the steps get: nothing where the recipe fits."""
        if not self.sized:
            return []
        return [f"data.train_questions={self.train_questions}", f"data.dev_questions={self.dev_questions}",
                f"training.batch_size={self.batch_size}"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BudgetPlan:
        """A plan as `to_json` wrote it: what a rerun of the same chain keeps."""
        return cls(**json.loads(text))


def step_costs(shape: ChainShape, *, train_questions: int, dev_questions: int,
               sized: bool) -> dict[str, dict[str, float]]:
    """Seconds per step and part at these question counts."""
    train_windows = train_questions * shape.train_windows_per_question
    dev_windows = dev_questions * shape.dev_windows_per_question
    costs: dict[str, dict[str, float]] = {}
    for n, (role, r) in enumerate(shape.roles.items()):
        other = shape.step_overhead
        if n == 0:
            other += (train_questions + dev_questions) * shape.tokenize_seconds_per_question
        train = train_windows * r.epochs / r.rates.train
        if r.teacher is not None:
            if r.teacher_on_the_fly:
                train += train_windows * r.epochs / r.teacher.infer
            else:
                other += train_windows / r.teacher.infer
        costs[role] = {"train": train, "evaluate": dev_windows * r.evaluations / r.rates.infer, "other": other}
    speed = shape.sized_speed if sized else shape.speed
    questions = speed_questions(shape, dev_questions=dev_questions, sized=sized)
    timed = sum(r.rates.latency for r in shape.roles.values()) * speed.passes * (questions + speed.warmup)
    costs["speedtest"] = {"evaluate": timed, "other": shape.step_overhead + speed.compile_seconds}
    costs["report"] = {"other": shape.step_overhead}
    return costs


def speed_questions(shape: ChainShape, *, dev_questions: int, sized: bool) -> int:
    """Questions the speed test times: unless given, a sized chain's in the share its dev set keeps
    (at least `MIN_SPEED_QUESTIONS`), so that on a slow CPU timing does not crowd out training."""
    speed = shape.sized_speed if sized else shape.speed
    if not speed.follows_dev:
        return speed.questions
    share = round(speed.questions * dev_questions / shape.dev_questions)
    return min(speed.questions, dev_questions, max(MIN_SPEED_QUESTIONS, share))


def _sizes(shape: ChainShape, factor: float) -> tuple[int, int]:
    train = max(min(shape.train_questions, MIN_TRAIN_QUESTIONS), round(factor * shape.train_questions))
    dev = max(min(shape.dev_questions, MIN_DEV_QUESTIONS), round(factor * shape.dev_questions))
    return train, dev


def sized_batch(shape: ChainShape, train_questions: int) -> int:
    """The recipe's batch in the share of its questions a sized chain trains (at least
    `MIN_BATCH_SIZE`, at most the recipe's): about the recipe's number of optimizer steps."""
    share = train_questions / shape.train_questions
    return max(min(shape.batch_size, MIN_BATCH_SIZE), min(shape.batch_size, round(shape.batch_size * share)))


def plan_budget(shape: ChainShape, budget_seconds: float | None) -> BudgetPlan:
    """The recipe's sizes where they fit `budget_seconds` (None: no budget), else the largest
    common fraction of its train and dev questions that does (found by bisection: cost grows with it)."""
    full = step_costs(shape, train_questions=shape.train_questions, dev_questions=shape.dev_questions, sized=False)
    plan = BudgetPlan(budget_seconds, shape.train_questions, shape.dev_questions, full, False, True,
                      speed_questions(shape, dev_questions=shape.dev_questions, sized=False),
                      shape.train_questions, shape.dev_questions, shape.batch_size)
    if budget_seconds is None or plan.total <= budget_seconds:
        return plan

    def at(factor: float) -> BudgetPlan:
        train, dev = _sizes(shape, factor)
        costs = step_costs(shape, train_questions=train, dev_questions=dev, sized=True)
        return BudgetPlan(budget_seconds, train, dev, costs, True, True,
                          speed_questions(shape, dev_questions=dev, sized=True),
                          shape.train_questions, shape.dev_questions, sized_batch(shape, train))

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if at(middle).total <= budget_seconds else (low, middle)
    best = at(low)
    return replace(best, fits=best.total <= budget_seconds)


def describe(plan: BudgetPlan) -> str:
    """The start line's budget part: the budget, minutes per step and where they go."""
    def minutes(seconds: float) -> str:
        return f"{seconds / 60:.1f}"

    steps = ", ".join(
        f"{step} {minutes(sum(parts.values()))} ("
        + " ".join(f"{part} {minutes(s)}" for part, s in parts.items() if s >= 0.5) + ")"
        for step, parts in plan.costs.items()
    )
    if plan.budget_seconds is None:
        head = f"no time budget; expected {minutes(plan.total)} min"
    else:
        head = f"{minutes(plan.budget_seconds)} min left, expected {minutes(plan.total)} min"
    if plan.sized:
        size = (f"sized to fit: {plan.train_questions} of {plan.recipe_train_questions} train and "
                f"{plan.dev_questions} of {plan.recipe_dev_questions} dev questions, {plan.speed_questions} timed, "
                f"batches of {plan.batch_size} windows")
    else:
        size = f"the recipe's {plan.recipe_train_questions} train and {plan.recipe_dev_questions} dev questions"
    line = f"{head}; {size}; minutes per step: {steps}"
    if not plan.fits:
        line += (f"; even the smallest chain ({MIN_TRAIN_QUESTIONS} train questions) overruns: "
                 "give main a larger budget_minutes")
    return line
