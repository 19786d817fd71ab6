"""`main`'s time budget: the planner (qa_distill/runtime/budget.py) as pure functions, recipe=auto,
the budget's defaults, and the overrun line of a training step (qa_distill/runtime/progress.py)."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from qa_distill.cli import build_parser
from qa_distill.config import DistillConfig, WorkflowConfig
from qa_distill.errors import ConfigError
from qa_distill.runtime import progress
from qa_distill.runtime.budget import (
    MIN_BATCH_SIZE,
    MIN_SPEED_QUESTIONS,
    MIN_TRAIN_QUESTIONS,
    ChainShape,
    ModelRates,
    RoleShape,
    SpeedShape,
    describe,
    plan_budget,
    step_costs,
)
from qa_distill.workflow.plan import budget_seconds, machine_recipe

TEACHER = ModelRates(train=4.0, infer=20.0, latency=0.02)
STUDENT = ModelRates(train=8.0, infer=40.0, latency=0.01)


def shape(*, slower: float = 1.0) -> ChainShape:
    """The cpu recipe's chain: 16,000 train and 10,570 dev questions, at rates divided by `slower`."""
    teacher = ModelRates(TEACHER.train / slower, TEACHER.infer / slower, TEACHER.latency * slower)
    student = ModelRates(STUDENT.train / slower, STUDENT.infer / slower, STUDENT.latency * slower)
    return ChainShape(
        roles={"teacher": RoleShape(teacher, 1.0, 1), "student": RoleShape(student, 1.0, 1),
               "distill": RoleShape(student, 1.0, 1, teacher=teacher)},  # the logits cache
        train_questions=16000, dev_questions=10570, train_windows_per_question=1.1,
        dev_windows_per_question=1.05, tokenize_seconds_per_question=0.002,
        speed=SpeedShape(1000, False, 10, 10, 120.0), sized_speed=SpeedShape(1000, True, 4, 10, 30.0),
        step_overhead=20.0, batch_size=32,
    )


def test_a_recipe_that_fits_runs_as_it_is():
    plan = plan_budget(shape(), 10 * 3600)
    assert not plan.sized and plan.fits and plan.overrides() == []
    assert (plan.train_questions, plan.dev_questions) == (16000, 10570)
    assert plan_budget(shape(), None) == plan_budget(shape(), None) and not plan_budget(shape(), None).sized


def test_a_recipe_too_large_is_sized_to_fill_the_budget():
    full = plan_budget(shape(), None)
    plan = plan_budget(shape(), full.total / 2)
    assert plan.sized and plan.fits
    assert full.total / 2 * 0.98 <= plan.total <= full.total / 2  # fills it, never over
    # one factor for both splits: the chain keeps its proportions
    assert plan.train_questions / 16000 == pytest.approx(plan.dev_questions / 10570, rel=0.01)
    assert plan.overrides() == [f"data.train_questions={plan.train_questions}",
                                f"data.dev_questions={plan.dev_questions}", f"training.batch_size={plan.batch_size}"]
    assert set(plan.costs) == {"teacher", "student", "distill", "speedtest", "report"}


def test_a_sized_chain_times_questions_in_its_dev_share_and_a_given_number_as_given():
    full = plan_budget(shape(), None)
    assert full.speed_questions == 1000
    plan = plan_budget(shape(slower=3.0), 1800)
    share = plan.dev_questions / 10570
    assert plan.sized and plan.speed_questions == max(MIN_SPEED_QUESTIONS, round(1000 * share)) < 1000
    timed = sum(r.rates.latency for r in shape(slower=3.0).roles.values()) * 4 * (plan.speed_questions + 10)
    assert plan.costs["speedtest"]["evaluate"] == pytest.approx(timed)
    given = replace(shape(slower=3.0), sized_speed=SpeedShape(1000, False, 4, 10, 30.0))  # speed_questions=1000
    assert plan_budget(given, 1800).speed_questions == 1000
    assert plan_budget(given, 1800).train_questions < plan.train_questions  # its timing costs training


def test_a_sized_chain_shrinks_its_batch_with_its_questions_to_keep_the_recipes_steps():
    assert plan_budget(shape(), None).batch_size == 32  # fits: the recipe's
    full = plan_budget(shape(), None).total
    half = plan_budget(shape(), full / 2)
    assert half.batch_size == round(32 * half.train_questions / 16000) < 32
    assert 16000 / 32 * 0.9 < half.train_questions / half.batch_size < 16000 / 32 * 1.1  # about the recipe's steps
    tiny = plan_budget(shape(slower=30.0), 1800)
    assert tiny.train_questions < 16000 * MIN_BATCH_SIZE / 32 and tiny.batch_size == MIN_BATCH_SIZE
    small_batch = replace(shape(), batch_size=4)
    assert plan_budget(small_batch, full / 2).batch_size == 4  # never above the recipe's


def test_a_teacher_on_the_fly_costs_a_pass_per_epoch_inside_training_the_cache_one_before_it():
    windows = 16000 * 1.1
    def distill(**teacher) -> dict[str, float]:
        roles = {**shape().roles, "distill": RoleShape(STUDENT, 3.0, 1, teacher=TEACHER, **teacher)}
        return step_costs(replace(shape(), roles=roles), train_questions=16000, dev_questions=10570,
                          sized=False)["distill"]
    cached, on_the_fly = distill(), distill(teacher_on_the_fly=True)
    assert cached["train"] == pytest.approx(windows * 3 / STUDENT.train)
    assert cached["other"] - on_the_fly["other"] == pytest.approx(windows / TEACHER.infer)
    assert on_the_fly["train"] == pytest.approx(windows * 3 / STUDENT.train + windows * 3 / TEACHER.infer)
    assert DistillConfig(hidden_weight=1.0).teacher_on_the_fly and DistillConfig(teacher_cache=False).teacher_on_the_fly
    assert not DistillConfig().teacher_on_the_fly


def test_a_slower_machine_gets_fewer_questions():
    fast, slow = plan_budget(shape(), 3600), plan_budget(shape(slower=3.0), 3600)
    assert slow.train_questions < fast.train_questions < 16000
    assert slow.fits and slow.total <= 3600


def test_a_budget_below_the_smallest_chain_says_it_overruns():
    plan = plan_budget(shape(slower=50.0), 300)
    assert plan.sized and not plan.fits and plan.train_questions == MIN_TRAIN_QUESTIONS
    assert "give main a larger budget_minutes" in describe(plan)


def test_the_start_line_says_the_budget_the_sizes_and_minutes_per_step():
    plan = plan_budget(shape(), 1800)
    line = describe(plan)
    assert line.startswith("30.0 min left, expected ")
    assert f"{plan.train_questions} of 16000 train" in line
    assert f"teacher {plan.seconds['teacher'] / 60:.1f} (train " in line and "speedtest " in line


@pytest.mark.parametrize("cuda, expected", [(True, "gpu"), (False, "cpu")])
def test_recipe_auto_is_the_machines_recipe_and_an_explicit_one_wins(cuda, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _=0: "NVIDIA H200")
    recipe, why = machine_recipe("auto")
    assert recipe == expected and why.startswith(f"recipe auto: {expected}")
    assert ("CUDA (NVIDIA H200)" in why) == cuda
    assert machine_recipe("paper") == ("paper", "recipe paper")


def test_main_defaults_to_recipe_auto_and_parses_the_budget():
    parser = build_parser()
    args = parser.parse_args(["main"])
    assert args.recipe == "auto" == WorkflowConfig().recipe and args.budget_minutes is None
    assert parser.parse_args(["main", "--budget-minutes", ""]).budget_minutes is None  # MLproject's default
    assert parser.parse_args(["main", "--budget-minutes", "30"]).budget_minutes == 30.0


@pytest.mark.parametrize("cuda, minutes, seconds", [
    (False, None, 3600.0), (True, None, None), (False, 0.0, None), (True, 5.0, 300.0),
])
def test_the_budget_is_an_hour_on_a_cpu_none_on_cuda_unless_given(cuda, minutes, seconds, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert budget_seconds(WorkflowConfig(budget_minutes=minutes)) == seconds


def test_a_negative_budget_is_one_line():
    with pytest.raises(ConfigError, match="budget_minutes must be >= 0"):
        budget_seconds(WorkflowConfig(budget_minutes=-1.0))


def test_a_step_on_course_to_overrun_says_so_once_early(monkeypatch):
    clock = iter(float(t) for t in range(0, 1000, 10))  # every call: 10 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    bar = progress.Progress("training", 100, every=1e9, stream=stream, planned=300.0)
    for step in range(1, 11):
        bar.advance_to(step)  # 10 s a step: 1000 s for 100 steps, planned 300 s
    lines = [line for line in stream.getvalue().splitlines() if "on course" in line]
    assert len(lines) == 1 and "budget_minutes" in lines[0] and "data.train_questions" in lines[0]


def test_a_step_on_plan_says_nothing(monkeypatch):
    clock = iter(float(t) for t in range(0, 1000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    bar = progress.Progress("training", 100, every=1e9, stream=stream, planned=300.0)
    for step in range(1, 50):
        bar.advance_to(step)
    assert "on course" not in stream.getvalue()
