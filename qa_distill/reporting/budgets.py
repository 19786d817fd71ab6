"""Honest tables: one table compares runs of one budget, and a committed table holds its recipe's.

Two rules, checked before a table is written:
- `report` puts runs in one table only if they share their budget: train questions, max_length,
  dev questions and data (content fingerprints of the train and dev questions); the student and
  the distilled student also share epochs (the teacher may train longer, as in the paper recipe),
  unless each trained the epochs its recipe gives its role (the gpu recipe's student alone stops
  at 3, where it overfits, its distilled student at 8). Otherwise it names the runs that differ
  and writes nothing.
- The tables committed under experiments/results/ are written only at full budget, so a
  test-sized run never overwrites them: `report`'s default output takes runs at the budget their
  recipe file sets (no overrides of it), `speedtest`'s default output a run of the recipe's
  registered models on 1,000 questions with the default backends (those the base install runs,
  `backends.DEFAULT_BACKENDS`). Anything else needs `--output`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from qa_distill.config import DEFAULT_BACKENDS, EXPERIMENTS_DIR, RESULTS_DIR, ROLES, SpeedConfig, registered_name
from qa_distill.errors import ConfigError
from qa_distill.recipes import load_config

# budget item -> column of mlflow.search_runs
BUDGET = {
    "train_questions": "params.data.train_questions",
    "epochs": "params.training.epochs",
    "max_length": "params.data.max_length",
    "dev_questions": "metrics.dev_questions",
    "train_data": "params.run.train_fingerprint",
    "dev_data": "params.run.dev_fingerprint",
}
_STUDENTS_ONLY = {"epochs"}
SPEED_QUESTIONS = 1000  # the committed speed tables' sample


def _text(value: object) -> str:
    """A param or metric as comparable text: 16000, 16000.0 and "16000" read alike."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(not logged)"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value) or "(all)"


def _at_role_lengths(recipe: str | None, runs: pd.DataFrame) -> bool:
    """Whether each run trained the epochs its committed recipe gives its role."""
    if recipe is None or not (EXPERIMENTS_DIR / f"{recipe}.yaml").exists():
        return False
    return all(_text(row.get("params.training.epochs")) == _text(load_config(recipe, row["tags.role"]).training.epochs)
               for _, row in runs.iterrows())


def check_comparable(runs: pd.DataFrame, *, recipe: str | None = None) -> None:
    """Refuse runs (one row per role, as from mlflow.search_runs) whose budgets differ; students
    of `recipe` may differ in epochs where each trained its role's epochs."""
    problems = []
    for item, column in BUDGET.items():
        rows = runs[runs["tags.role"] != "teacher"] if item in _STUDENTS_ONLY else runs
        if item in _STUDENTS_ONLY and _at_role_lengths(recipe, rows):
            continue
        values = {f"{row['tags.role']} run {row['run_id']}": _text(row.get(column)) for _, row in rows.iterrows()}
        if len(set(values.values())) > 1:
            problems.append(f"{item}: " + ", ".join(f"{run} has {value}" for run, value in values.items()))
    if problems:
        raise ConfigError("runs of different budgets cannot share one table: " + "; ".join(problems))


def report_stem(recipe: str, output: str | None, runs: pd.DataFrame) -> Path:
    """`output`, else experiments/results/<recipe> if every run is at its recipe file's budget."""
    if output:
        return Path(output)
    stem = RESULTS_DIR / recipe
    if not (EXPERIMENTS_DIR / f"{recipe}.yaml").exists():
        return stem  # no committed recipe, no committed table
    differences = []
    for _, row in runs.iterrows():
        teacher = row.get("params.distillation.teacher")  # logged by distill runs only
        config = load_config(recipe, row["tags.role"],
                             explicit={"distillation.teacher": teacher if isinstance(teacher, str) else None})
        expected = {
            "train_questions": config.data.train_questions, "epochs": config.training.epochs,
            "max_length": config.data.max_length, "dev_questions(configured)": config.data.dev_questions,
            "data": config.data.data,
        }
        logged = {
            "train_questions": row.get("params.data.train_questions"), "epochs": row.get("params.training.epochs"),
            "max_length": row.get("params.data.max_length"),
            "dev_questions(configured)": row.get("params.data.dev_questions"), "data": row.get("params.data.data"),
        }
        differences += [
            f"{row['tags.role']} run {row['run_id']} has {item} {_text(logged[item])}, the recipe {_text(value)}"
            for item, value in expected.items()
            if _text(logged[item]) != _text(value if value is not None else "")
        ]
    if differences:
        raise ConfigError(f"not writing over {stem}.csv, which holds recipe {recipe!r} at its own budget: "
                          + "; ".join(differences) + "; pass --output for this table")
    return stem


def speed_stem(recipe: str, speed: SpeedConfig) -> Path:
    """`speed.output`, else experiments/results/<run_name> for a full-budget test of the recipe's models."""
    if speed.output:
        return Path(speed.output)
    registered = tuple(f"models:/{registered_name(recipe, role)}/" for role in ROLES)
    ours = all(source.partition("=")[2].startswith(registered) for source in speed.models)
    full = speed.questions == SPEED_QUESTIONS and set(speed.backends) == set(DEFAULT_BACKENDS)
    if not (ours and full):
        raise ConfigError(f"experiments/results/ holds full-budget speed tests of registered models only "
                          f"({SPEED_QUESTIONS} questions, the default backends): pass --output for this one")
    return RESULTS_DIR / speed.run_name
