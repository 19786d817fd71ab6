"""Forward pass at batch 1: the predictor's compiled backends against the alternatives.

For each model this times, side by side in rotating turns on the windows of `--questions` dev
questions asked one at a time (the latency case):

- `compiled <backend>`: what `QAPredictor(model, backend).forward` runs (`compiled.py`:
  torch.export, int8 by torchao's PT2E, AOTInductor);
- `traced <backend>`: the path it replaced, deprecated in torch 2.13: TorchScript traced and
  frozen graphs (one given the mask, one without it for unpadded batches), int8 by torch.ao
  dynamic quantisation with the same three choices (`quantize.py`);
- `onnx fp32`, `onnx int8`: the model exported by `torch.onnx.export` (opset 23, where attention
  is one fused `Attention` node) and run by ONNX Runtime; int8 by ONNX Runtime's dynamic
  quantisation with the same choices;
- `eager fp32`, `eager bf16`: the model called directly, nothing compiled.

Accuracy against the compiled backend of the same precision: the largest logit difference and
the share of start/end argmaxes that agree on the same windows. Writes
experiments/results/maintained-backends-bench.{csv,md}. Needs the `bench` extra
(`pip install -e '.[bench]'`: the `onnx` extra's onnx, onnxscript, onnxruntime).

    python benchmarks/maintained_backends.py --model distilled=DIR --model teacher=DIR [--questions 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from qa_distill.config import DEFAULT_DEV_JSON, RESULTS_DIR
from qa_distill.data.features import encode_windows
from qa_distill.data.squad import load_questions
from qa_distill.inference.compiled import Logits, ModuleLogits, StartEnd, example_inputs
from qa_distill.inference.onnx_runtime import OnnxLogits, export_onnx, quantize_onnx_int8
from qa_distill.inference.predictor import QAPredictor
from qa_distill.reporting.tables import write_tables
from qa_distill.runtime.hardware import cpu_name, int8_products_exact
from qa_distill.speedtest.timing import in_turns

Inputs = dict[str, torch.Tensor]
Forward = Callable[[Inputs], Logits]
MASK = "attention_mask"


def question_batches(predictor: QAPredictor, questions: list[dict]) -> list[Inputs]:
    """The model inputs the predictor builds for each question asked alone."""
    return [
        inputs
        for q in questions
        for _, _, inputs in predictor.batches(encode_windows(
            predictor.tokenizer, [q["question"]], [q["context"]], max_length=predictor.max_length,
            stride=predictor.doc_stride))
    ]


@torch.inference_mode()
def time_variants(runs: dict[str, Forward], batches: list[Inputs], repeats: int, block: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, taking turns on every `block` batches (a slow spell hits
    all), each repeat starting the turns one variant later.

    Two runtimes need long turns: each leaves its worker threads spinning for a while after a
    call (OpenMP for torch and compiled libraries, ONNX Runtime's own pool), and turns batch by
    batch would time each against the other's.
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


def two_graphs(names: Sequence[str]) -> list[tuple[list[str], list[int]]]:
    """The inputs of the two graphs the former path ran, given the mask (for padded batches) and
    without it (unpadded), each with example window lengths that leave both axes free."""
    return [(list(names), [16, 10]), ([name for name in names if name != MASK], [16, 16])]


def traced_logits(model: nn.Module, names: Sequence[str], int8: bool) -> Forward:
    """The former path: torch.ao dynamic int8 (per channel, head float, full range where VNNI),
    then frozen TorchScript traces given the mask and, for unpadded batches, without it."""
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    class FullRange(nnqd.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecations this benchmark is about
        if int8:
            layers = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
                      if isinstance(module, nn.Linear) and module is not model.qa_outputs}
            linear = FullRange if int8_products_exact() else nnqd.Linear
            model = quantize_dynamic(model, layers, mapping={nn.Linear: linear})
        graphs = {}
        for graph_names, lengths in two_graphs(names):
            example = example_inputs(graph_names, model.config.vocab_size, lengths)
            traced = torch.jit.trace(StartEnd(model, graph_names).eval(), tuple(example.values()))
            graphs[MASK in graph_names] = ModuleLogits(torch.jit.freeze(traced), graph_names)

    def forward(inputs: Inputs) -> Logits:
        return graphs[not bool(inputs[MASK].all())](inputs)

    return forward


def onnx_logits(model: nn.Module, names: Sequence[str], int8: bool, threads: int) -> Forward:
    """ONNX Runtime sessions of `model` (the package's export and int8, `onnx_runtime.py`): one
    given the mask, one without it for unpadded batches (as the former traced path had)."""
    sessions = []
    with tempfile.TemporaryDirectory(prefix="qa-distill-onnx-") as tmp:
        for i, (graph_names, lengths) in enumerate(two_graphs(names)):
            path = export_onnx(model, graph_names, model.config.vocab_size, Path(tmp) / f"{i}.onnx", lengths=lengths)
            if int8:
                path = quantize_onnx_int8(path, path.with_suffix(".int8.onnx"))
            sessions.append(OnnxLogits(path, threads))

    def forward(inputs: Inputs) -> Logits:
        return sessions[1 if bool(inputs[MASK].all()) else 0](inputs)

    return forward


def candidates(source: str, threads: int) -> tuple[dict[str, Forward], dict[str, float], QAPredictor]:
    """Every forward pass of `source` to time, and the seconds each took to build (a compiled
    backend's from the cache where the speed test compiled it before)."""
    runs: dict[str, Forward] = {}
    build: dict[str, float] = {}

    def timed(name: str, make: Callable[[], Forward]) -> None:
        began = time.perf_counter()
        runs[name] = make()
        build[name] = time.perf_counter() - began

    for backend in ("int8", "fp32", "bf16"):
        timed(f"compiled {backend}", lambda b=backend: QAPredictor(source, backend=b).forward)
    fp32 = QAPredictor(source, backend="fp32")
    names = fp32.input_names
    fresh = lambda: QAPredictor(source, backend="fp32").model  # noqa: E731 - a model no other variant changed
    timed("traced int8", lambda: traced_logits(fresh(), names, int8=True))
    timed("traced fp32", lambda: traced_logits(fresh(), names, int8=False))
    timed("traced bf16", lambda: traced_logits(fresh().to(torch.bfloat16), names, int8=False))
    timed("onnx int8", lambda: onnx_logits(fp32.model, names, True, threads))
    timed("onnx fp32", lambda: onnx_logits(fp32.model, names, False, threads))
    timed("eager fp32", lambda: ModuleLogits(StartEnd(fresh(), names).eval(), names))
    timed("eager bf16", lambda: ModuleLogits(StartEnd(fresh().to(torch.bfloat16), names).eval(), names))
    return runs, build, fp32


@torch.inference_mode()
def agreement(ours: Forward, theirs: Forward, batches: list[Inputs]) -> tuple[float, float]:
    """Largest absolute logit difference, and the share of start/end argmaxes that agree."""
    diff, agree = 0.0, []
    for inputs in batches:
        for a, b in zip(ours(inputs), theirs(inputs), strict=True):
            a, b = a.float(), b.float()
            diff = max(diff, (a - b).abs().max().item())
            agree.append((a.argmax(-1) == b.argmax(-1)).float().mean().item())
    return diff, float(np.mean(agree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SOURCE")
    parser.add_argument("--dev-json", default=str(DEFAULT_DEV_JSON))
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=50, help="windows per turn (two runtimes: see time_variants)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = load_questions(args.dev_json, args.questions, seed=1)
    rows = []
    for name, source in (spec.split("=", 1) for spec in args.model):
        runs, build, fp32 = candidates(source, args.threads)
        batches = question_batches(fp32, questions)
        seconds = time_variants(runs, batches, args.repeats, args.block)
        for forward, values in seconds.items():
            ms = 1000.0 * np.asarray(values)
            current = f"compiled {forward.split()[-1]}"
            diff, agree = agreement(runs[forward], runs[current], batches)
            rows.append({"cpu": cpu_name(), "model": name, "forward": forward, "median_ms": float(np.median(ms)),
                         "p90_ms": float(np.percentile(ms, 90)), "build_s": build[forward], "vs": current,
                         "max_abs_diff": diff, "argmax_agree": agree, "windows": len(batches),
                         "repeats": args.repeats, "block": args.block, "threads": args.threads})
    table = pd.DataFrame(rows)
    by_name = table.set_index(["model", "forward"])["median_ms"]
    table["time_vs_compiled"] = [row.median_ms / by_name[row.model, row.vs] for row in table.itertuples()]
    csv, md = write_tables(table, RESULTS_DIR / "maintained-backends-bench")
    print(table.to_string(index=False))
    print(f"({csv}, {md})")


if __name__ == "__main__":
    main()
