"""EM/F1 on the whole SQuAD v1.1 dev set of a recipe's students on each inference backend.

The speed test scores the 1,000 questions it times, where one changed answer moves F1 by up to
0.1, too coarse to tell a backend's cost from which questions were drawn (on the cpu recipe's
distilled student, int8 came out 1.00 F1 below fp32 there). This scores all 10,570 questions, through
`qa-distill evaluate`'s code (batches of 32 windows; int8 quantises each call's input with one
scale, so its answers can differ a little from batch 1's). fp32-maxpad is left out: padding
changes no answer (tested).

    python experiments/backend_accuracy.py [--recipe cpu]   # about 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from qa_distill.config import DEFAULT_DEV_JSON, DataConfig, registered_uri
from qa_distill.inference.evaluate import evaluate_model
from qa_distill.reporting.report import ROLE_NAMES
from qa_distill.reporting.tables import write_tables

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("fp32", "bf16", "int8")
ROLES = ("student", "distill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DEV_JSON.parent), help="hub name, directory or dev JSON")
    args = parser.parse_args()
    rows = []
    for role in ROLES:
        source = registered_uri(args.recipe, role)
        for backend in BACKENDS:
            scores = evaluate_model(source, DataConfig(data=args.data), backend=backend)
            rows.append({"model": ROLE_NAMES[role], "backend": backend, "exact_match": scores["exact_match"],
                         "f1": scores["f1"], "dev_questions": scores["dev_questions"]})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    fp32 = table[table["backend"] == "fp32"].set_index("model")["f1"]
    table["f1_vs_fp32"] = table["f1"] - table["model"].map(fp32)
    write_tables(table, ROOT / "experiments" / "results" / f"{args.recipe}-backend-accuracy",
                 formats={"dev_questions": ".0f"})


if __name__ == "__main__":
    main()
