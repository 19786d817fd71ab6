"""The layer terms' ablation: a recipe's distill run four times, logits only, + hidden states,
+ attention, + both, each through `qa-distill distill`, as `<results>.csv` and `.md`.

Each row is its own process and output directory (`<output-dir>/<row>`); a row whose directory
holds the finished metrics of the same settings is read, not rerun, and a row killed midway
resumes from its checkpoint. The runs log to the MLflow experiment `<recipe>-ablation` and
register nothing, so the recipe's own `report` table keeps its distilled student. The teacher is
the recipe's registered one (train it first: `qa-distill teacher --recipe cpu`) or `--teacher`.

    python experiments/ablation.py --recipe cpu   # experiments/results/cpu-ablation.csv|md

`--rows` runs some rows only, in the order given (a machine too slow for all four runs the one
that matters first). `--students "0,2,4;1,3,5"` runs the rows once per student, each cut from the
teacher's layers listed (`model.layers`), to compare where a student is cut from. Test-sized runs
(any `--set`), other students and partial tables need `--results`: experiments/results/
<recipe>-ablation holds all four rows of the recipe's own student at its full budget only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from qa_distill.config import PROJECT_ROOT, RESULTS_DIR, RunConfig
from qa_distill.errors import ConfigError, QaDistillError
from qa_distill.recipes import load_config, recipe_path
from qa_distill.reporting.tables import write_tables
from qa_distill.runtime.hardware import cpu_name
from qa_distill.tracking.registry import ModelVersionRef, exact_version
from qa_distill.training.lifecycle import run_identity
from qa_distill.training.preflight import connect

ROWS = (("logits only", False, False), ("+ hidden", True, False), ("+ attention", False, True), ("+ both", True, True))


def row_settings(args: argparse.Namespace, hidden: bool, attention: bool) -> list[str]:
    """The `--set` items of one row: the caller's, then its experiment and the row's weights."""
    return [*args.overrides, f"tracking.experiment={args.recipe_name}-ablation", "tracking.register_model=false",
            f"distillation.hidden_weight={args.hidden_weight if hidden else 0.0}",
            f"distillation.attention_weight={args.attention_weight if attention else 0.0}"]


def teacher_f1(ref: ModelVersionRef | None) -> float:
    """The dev F1 the run that registered the teacher logged, from the store MLflow points at (NaN
    for a teacher given as a path): each row then reads as a share of its teacher."""
    if ref is None:
        return float("nan")
    client = MlflowClient()
    run_id = client.get_model_version(ref.name, ref.version).run_id
    return client.get_run(run_id).data.metrics.get("f1", float("nan")) if run_id else float("nan")


def student_cut(layers: list[int] | None) -> list[str]:
    """The `--set` items of a student cut from `layers` (none: the recipe's own cut)."""
    return [] if layers is None else ["model.layer_stride=1", f"model.layers=[{','.join(map(str, layers))}]"]


def parse_students(text: str) -> list[list[int] | None]:
    """`--students`: layer lists separated by ';', each comma-separated ('' : the recipe's cut alone)."""
    if not text:
        return [None]
    try:
        return [[int(n) for n in part.split(",")] for part in text.split(";")]
    except ValueError:
        raise ConfigError(f"--students: {text!r} is not layer lists like '0,2,4;1,3,5'") from None


def run_row(args: argparse.Namespace, name: str, settings: list[str], config: RunConfig) -> dict:
    """The row's metrics: from its finished run of the same settings, else from `qa-distill distill`.
    The same settings are the resolved ones and the same teacher version, so a recipe edited since
    (say its alpha) or a teacher registered anew trains the row again instead of relabelling the old."""
    out = Path(args.output_dir) / re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    asked = {"recipe": args.recipe, "teacher": args.teacher, "settings": settings, "resolved": run_identity(config)}
    done = out / "ablation.json"
    if not (done.exists() and json.loads(done.read_text()) == asked and (out / "metrics.json").exists()):
        command = [sys.executable, "-m", "qa_distill.cli", "distill", "--recipe", args.recipe,
                   "--output-dir", str(out), "--teacher", args.teacher,
                   *(item for setting in settings for item in ("--set", setting))]
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        subprocess.run(command, check=True, cwd=PROJECT_ROOT, env=env)
        done.write_text(json.dumps(asked))
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cpu", help="recipe name from experiments/ or a YAML file")
    parser.add_argument("--teacher", default="", help="teacher model source (default: the recipe's registered one)")
    parser.add_argument("--hidden-weight", type=float, default=1.0, help="distillation.hidden_weight of its rows")
    parser.add_argument("--attention-weight", type=float, default=1.0, help="distillation.attention_weight of its rows")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--output-dir", default="", help="rows' model directories (default outputs/<recipe>/ablation)")
    parser.add_argument("--results", default="", help="table path stem (default experiments/results/<recipe>-ablation)")
    parser.add_argument("--rows", default=",".join(name for name, _, _ in ROWS),
                        help="comma-separated rows to run, in this order (default: all four)")
    parser.add_argument("--students", default="", help="';'-separated layer lists, the rows run for a student cut "
                                                        "from each (e.g. '0,2,4;1,3,5'; default: the recipe's cut)")
    args = parser.parse_args(argv)
    args.recipe_name = recipe_path(args.recipe).stem
    chosen = [name.strip() for name in args.rows.split(",")]
    known = {name: (hidden, attention) for name, hidden, attention in ROWS}
    if unknown := [name for name in chosen if name not in known]:
        raise ConfigError(f"--rows: no row {unknown[0]!r}; rows are {', '.join(map(repr, known))}")
    if len(set(chosen)) < len(chosen):
        raise ConfigError(f"--rows names a row twice: {args.rows!r}")
    students = parse_students(args.students)
    partial = sorted(chosen) != sorted(known) or students != [None]
    if not args.results and (args.overrides or args.recipe_name != args.recipe or partial):
        raise ConfigError("experiments/results/ holds all four rows of a committed recipe at its own budget: "
                          "pass --results for this one")
    args.output_dir = args.output_dir or str(PROJECT_ROOT / "outputs" / args.recipe_name / "ablation")
    settings = {(name if cut is None else f"{name}, layers {' '.join(map(str, cut))}"):
                [*row_settings(args, *known[name]), *student_cut(cut)] for cut in students for name in chosen}
    configs = {name: load_config(args.recipe, "distill", overrides=settings[name],  # all checked before any trains
                                 explicit={"distillation.teacher": args.teacher} if args.teacher else None)
               for name in settings}
    first = next(iter(configs.values()))
    connect(first.tracking)  # where the rows log and the teacher's `models:/` resolves
    ref = exact_version(first.distillation.teacher)  # one teacher for every row, pinned: `latest` may move
    args.teacher = ref.uri if ref else first.distillation.teacher
    teacher = teacher_f1(ref)
    rows = []
    for name, config in configs.items():
        metrics = run_row(args, name, settings[name], config)
        k, m = config.distillation, config.model
        rows.append({
            "row": name, "student_layers": " ".join(map(str, m.layers)) if m.layers else f"one in {m.layer_stride}",
            "hidden_weight": k.hidden_weight, "attention_weight": k.attention_weight,
            "temperature": k.temperature, "alpha": k.alpha, "exact_match": metrics["exact_match"],
            "f1": metrics["f1"], "teacher_f1": teacher, "f1_of_teacher_pct": 100 * metrics["f1"] / teacher,
            "train_minutes": metrics["train_seconds"] / 60,
            "windows_per_second": metrics["train_windows_per_second"], "epochs": config.training.epochs,
            "train_questions": config.data.train_questions, "dev_questions": metrics["dev_questions"],
            "cpu": cpu_name(),
        })
    table = pd.DataFrame(rows)
    write_tables(table, Path(args.results) if args.results else RESULTS_DIR / f"{args.recipe_name}-ablation",
                 formats={"train_minutes": ".1f", "f1_of_teacher_pct": ".1f", "dev_questions": ".0f",
                          "train_questions": ".0f"})
    return table


if __name__ == "__main__":
    try:
        print(main().to_markdown(index=False))
    except QaDistillError as exc:
        sys.exit(f"error: {exc}")
