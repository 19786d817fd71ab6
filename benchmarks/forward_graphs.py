"""Forward pass at batch 1: the eager model vs its traced graphs, with and without the mask.

For each backend, the predictor's model answers the windows of `--questions` dev questions one
question at a time (the latency case), three ways, side by side in rotating order:

- `eager`: the model's own forward (transformers' Python, mask building included);
- `traced, masked`: the traced graph given the attention mask, as for a padded batch;
- `traced`: what the predictor runs (`TracedLogits`): the graph without the mask where the batch
  has no padding, which is every one-window question.

Prints median milliseconds and the ratios, and writes
experiments/results/forward-graphs-bench.{csv,md}.

    python benchmarks/forward_graphs.py [--model models:/qa-distill-cpu-distill/latest] [--questions 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from qa_distill.config import DEFAULT_DEV_JSON, RESULTS_DIR
from qa_distill.data import load_questions
from qa_distill.features import encode_windows
from qa_distill.predictor import QAPredictor
from qa_distill.tables import write_tables
from qa_distill.timing import in_turns
from qa_distill.tracing import EagerLogits, TracedLogits

Inputs = dict[str, torch.Tensor]


def question_batches(predictor: QAPredictor, questions: list[dict]) -> list[Inputs]:
    """The model inputs the predictor builds for each question asked alone."""
    return [
        inputs
        for q in questions
        for _, _, inputs in predictor.batches(encode_windows(
            predictor.tokenizer, [q["question"]], [q["context"]], predictor.max_length, predictor.doc_stride))
    ]


def variants(predictor: QAPredictor) -> dict[str, Callable[[Inputs], object]]:
    traced = predictor.forward
    if not isinstance(traced, TracedLogits):
        raise SystemExit(f"{predictor.source} ({predictor.backend}) did not trace: nothing to compare")

    def masked(inputs: Inputs) -> object:
        return traced.padded(*(inputs[name] for name in traced.names))

    return {"eager": EagerLogits(predictor.model, predictor.input_names),
            "traced, masked": masked, "traced": traced}


@torch.inference_mode()
def time_variants(runs: dict[str, Callable[[Inputs], object]], batches: list[Inputs],
                  repeats: int, block: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, taking turns on every `block` batches (a slow spell hits
    all), each repeat starting the turns one variant later.

    Variants of one runtime can take turns batch by batch; two runtimes need longer turns, since
    each leaves its worker threads spinning for a while after a call (OpenMP for torch, ONNX
    Runtime's own pool) and would otherwise be timed against the other's.
    """
    for run in runs.values():
        for inputs in batches[:5]:
            run(inputs)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    blocks = [batches[i : i + block] for i in range(0, len(batches), block)]
    for r in range(repeats):
        for name, chunk in in_turns(list(runs), blocks, first=r):
            for inputs in chunk:
                began = time.perf_counter()
                runs[name](inputs)
                seconds[name].append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/qa-distill-cpu-distill/latest")
    parser.add_argument("--backends", nargs="+", default=["int8", "fp32"])
    parser.add_argument("--dev-json", default=str(DEFAULT_DEV_JSON))
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = load_questions(args.dev_json, args.questions, seed=1)
    rows = []
    for backend in args.backends:
        predictor = QAPredictor(args.model, backend)
        seconds = time_variants(variants(predictor), question_batches(predictor, questions), args.repeats)
        for name, values in seconds.items():
            ms = 1000.0 * np.asarray(values)
            rows.append({"model": args.model, "backend": backend, "forward": name,
                         "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                         "questions": len(questions), "repeats": args.repeats, "threads": args.threads})
    table = pd.DataFrame(rows)
    eager = table[table["forward"] == "eager"].set_index("backend")["median_ms"]
    table["speedup_vs_eager"] = table["backend"].map(eager) / table["median_ms"]
    csv, md = write_tables(table, RESULTS_DIR / "forward-graphs-bench")
    print(table.to_string(index=False))
    print(f"({csv}, {md})")


if __name__ == "__main__":
    main()
