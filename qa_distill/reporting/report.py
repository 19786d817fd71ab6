"""`qa-distill report`: a recipe's MLflow runs as one pandas table (CSV and Markdown).

One row per model: the latest finished run of each role (`teacher`, `student`, `distill`, the
last shown as `distilled`), with its dev EM/F1, training time and what it was trained on (windows,
CPU, and `main`'s budget), and
beside them the p50 latency per backend that the speed test tagged its registered version with.
"""

from __future__ import annotations

import math

import mlflow
import pandas as pd

from qa_distill.config import TrackingConfig
from qa_distill.errors import ConfigError
from qa_distill.reporting.budgets import check_comparable, report_stem
from qa_distill.reporting.tables import write_tables
from qa_distill.tracking.registry import with_latency
from qa_distill.tracking.runs import setup

ROLE_NAMES = {"teacher": "teacher", "student": "student", "distill": "distilled"}
_METRICS = ("exact_match", "f1", "train_seconds", "teacher_cache_seconds", "dev_questions", "train_windows_per_second")
_PARAMS = {
    "model.name": "base_model",
    "model.layer_stride": "layer_stride",
    "data.train_questions": "train_questions",
    "training.epochs": "epochs",
    "distillation.temperature": "temperature",
    "distillation.alpha": "alpha",
    "distillation.hidden_weight": "hidden_weight",
    "distillation.attention_weight": "attention_weight",
    "distillation.layer_map": "layer_map",
    "run.train_windows": "train_windows",
    "run.cpu": "cpu",
}
_TAGS = {"budget_minutes": "budget_minutes"}  # main's budget the run was sized for (0: none)


def recipe_runs(recipe: str, experiment_id: str) -> pd.DataFrame:
    """Finished runs of a recipe's training roles in one experiment."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.recipe = '{recipe}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[runs["tags.role"].isin(list(ROLE_NAMES))] if "tags.role" in runs else runs


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The newest run per role, as a row per model in teacher, student, distilled order."""
    rows = []
    for role, name in ROLE_NAMES.items():
        found = runs[runs["tags.role"] == role] if "tags.role" in runs else runs.iloc[0:0]
        if found.empty:
            continue
        run = found.iloc[0]
        row = {"model": name}
        row |= {m: run.get(f"metrics.{m}") for m in _METRICS}
        row |= {col: run.get(f"params.{p}") for p, col in _PARAMS.items()}
        row |= {col: run.get(f"tags.{t}") for t, col in _TAGS.items()}
        if role != "distill":
            row |= dict.fromkeys(("temperature", "alpha", "hidden_weight", "attention_weight", "layer_map"))
        row["run_id"] = run["run_id"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["dev_questions"] = table["dev_questions"].astype(int)
        table["train_minutes"] = (table["train_seconds"] / 60).round(1)
    return table


def run_report(recipe: str, tracking: TrackingConfig, *, output: str | None = None) -> pd.DataFrame:
    """Build the table of a recipe, write it, and log it to MLflow as a `<recipe>-report` run."""
    experiment_id = setup(tracking)
    runs = recipe_runs(recipe, experiment_id)
    table = with_latency(results_table(runs))
    if table.empty:
        raise ConfigError(f"no finished teacher/student/distill runs of recipe {recipe!r} in experiment "
                          f"{mlflow.get_experiment(experiment_id).name!r} of {mlflow.get_tracking_uri()}")
    chosen = runs[runs["run_id"].isin(table["run_id"])]
    check_comparable(chosen, recipe=recipe)
    csv, md = write_tables(table, report_stem(recipe, output, chosen))
    with mlflow.start_run(run_name=f"{recipe}-report"):
        mlflow.set_tags({"recipe": recipe, "role": "report"})
        mlflow.log_metrics(summary_metrics(table))
        mlflow.log_artifact(str(csv))
        mlflow.log_artifact(str(md))
    return table


def summary_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`<model>.<figure>` of every number in the table (`distilled.f1`, `teacher.int8_p50_ms`):
    the report run's, copied onto the `main` parent, so the runs list shows the chain's outcome."""
    return {
        f"{row['model']}.{column}": float(value)
        for row in table.to_dict("records")
        for column, value in row.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
