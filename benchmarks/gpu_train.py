"""Teacher training throughput on a GPU: windows/s and model-FLOPs utilisation (MFU) per setting.

Trains the recipe's teacher (gpu: MiniLM-L6) for `--warmup` untimed and `--steps` timed optimizer
steps through the project's Trainer (QATrainer, `trainer.training_arguments` with the row's settings),
on real SQuAD train windows at the recipe's 384/128 (the project's data and features code: a seeded
subset of `--questions` train questions; the Trainer starts another pass when the steps need more
windows). All rows run side by side in one process, a fresh model each. A row's settings: batch
size, buckets (`pad_to`: batches padded to multiples of it, 64: six shapes at 384), windows as
tensors in memory (`tensors`) or collated window by window, DataLoader workers, AdamW kernel,
attention kernel, torch.compile (`compiled` says whether it ran compiled: on CUDA only), and the
loop: the Trainer, or a bare loop (forward, backward, clip, AdamW step) over the same Trainer's
batches, which prices the Trainer's own per-step work. `host_ms_per_batch` is the DataLoader
alone (fetch, collate, pin, copy one batch; no model): the host's part of a step. The last row,
`teacher-logits`, is the distillation's teacher-logits pass (`teacher_cache.load_or_compute`,
inference at `--teacher-batch` windows) over the same windows, its FLOPs a third of training's.

Model FLOPs of one window of s real tokens (padding is not the model's work, so it does not count),
forward and backward (3x forward):

    6 * P * s + 12 * L * h * s^2

P: weights in matrix multiplications (every linear layer: L * (4h^2 + 2h*i) + 2h for BERT; the
embeddings are lookups), L layers, h hidden size; the second term is attention's QK^T and AV
(2 * s^2 * h FLOPs each per layer forward). MFU = model FLOPs per second over the device's bf16
peak, measured in the same run by a large bf16 matmul.

    python benchmarks/gpu_train.py [--steps 50] [--warmup 10] [--settings today,batch-256,...]
    python benchmarks/gpu_train.py --device cpu --steps 2 --warmup 1 --settings today,tensors-buckets \
        --model <tiny model> --questions 40  # code-path smoke test

On a GPU it writes experiments/results/gpu-train-bench.{csv,md}; without CUDA it exits with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import DataCollatorWithPadding, PreTrainedModel, TrainerCallback, set_seed

from qa_distill.config import RESULTS_DIR
from qa_distill.data.features import build_features
from qa_distill.data.squad import load_split
from qa_distill.models import load_qa_model, load_tokenizer
from qa_distill.recipes import load_config
from qa_distill.reporting.tables import write_tables
from qa_distill.training.batching import BucketCollator, WindowTensors
from qa_distill.training.teacher_cache import load_or_compute
from qa_distill.training.trainer import QATrainer, resolve_precision, training_arguments


@dataclass(frozen=True)
class Setting:
    """One row: what changes from the project's settings before this benchmark (`today`)."""

    batch_size: int = 32
    length_grouped: bool = True
    workers: int = 0
    optim: str = "adamw_torch_fused"  # the HF Trainer's default with torch >= 2.8
    attention: str = "sdpa"  # transformers' default for BERT
    compile: bool = False
    pad_to: int = 8
    tensors: bool = False
    loop: str = "trainer"


# compiled rows use buckets unless named otherwise: per-batch lengths recompile almost every step
BEST = Setting(batch_size=256, compile=True, pad_to=64, tensors=True)
SETTINGS = {
    "today": Setting(),  # the project before issue 25: batch 32, collated window by window, padded to 8
    "batch-128": Setting(batch_size=128),
    "batch-256": Setting(batch_size=256),
    "batch-256-unsorted": Setting(batch_size=256, length_grouped=False),
    "batch-256-workers": Setting(batch_size=256, workers=4),
    "batch-256-unfused-adamw": Setting(batch_size=256, optim="adamw_torch"),
    "batch-256-eager-attention": Setting(batch_size=256, attention="eager"),
    "batch-256-compile": Setting(batch_size=256, compile=True),
    "batch-256-workers-compile": Setting(batch_size=256, workers=4, compile=True),
    "batch-512-workers-compile": Setting(batch_size=512, workers=4, compile=True),
    "batch-256-buckets": Setting(batch_size=256, pad_to=64),
    "batch-256-buckets-compile": Setting(batch_size=256, pad_to=64, compile=True),
    "batch-256-tensors": Setting(batch_size=256, tensors=True),
    "tensors-buckets": Setting(tensors=True, pad_to=64),  # batch 32: the smoke test's row
    "tensors-buckets-bare": Setting(tensors=True, pad_to=64, loop="bare"),  # its Trainer's overhead per step
    "batch-256-tensors-buckets-compile": BEST,
    "batch-256-tensors-buckets-compile-workers": dataclasses.replace(BEST, workers=4),
    "batch-256-tensors-buckets-compile-bare": dataclasses.replace(BEST, loop="bare"),
    "batch-512-tensors-buckets-compile": dataclasses.replace(BEST, batch_size=512),
    "batch-128-tensors-buckets-compile": dataclasses.replace(BEST, batch_size=128),
}


def matmul_params(model: torch.nn.Module) -> int:
    """P of the FLOPs formula: the weights of every linear layer."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def window_flops(lengths: torch.Tensor, params: int, layers: int, hidden: int) -> float:
    """Model FLOPs (forward + backward) of windows of these real lengths (see the module docstring)."""
    s = lengths.double()
    return float((6 * params * s + 12 * layers * hidden * s**2).sum())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, size: int, repeats: int = 100) -> float:
    """The device's bf16 matmul FLOP/s, measured: the denominator of MFU."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(10):  # clocks up, kernels chosen
        a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - began)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


class CountingTrainer(QATrainer):
    """Keeps each step's real and padded window lengths (on the device, no sync) for the FLOPs count."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step_lengths: list[torch.Tensor] = []
        self.step_widths: list[int] = []

    def count(self, inputs: dict[str, torch.Tensor]) -> None:
        self.step_lengths.append(inputs["attention_mask"].sum(1))
        self.step_widths.append(inputs["attention_mask"].shape[1])

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.count(inputs)
        return super().training_step(model, inputs, num_items_in_batch)


class StepClock(TrainerCallback):
    """Wall time from the end of the last warm-up step to the end of the last timed step."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, warmup + steps, device
        self.began = self.ended = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.tick(state.global_step)

    def tick(self, step: int) -> None:
        if step in (self.warmup, self.last):
            synchronize(self.device)
            now = time.perf_counter()
            if step == self.warmup:
                self.began = now
            else:
                self.ended = now


def host_ms_per_batch(trainer: QATrainer, batches: int) -> float:
    """The DataLoader alone over up to `batches` batches of one pass, its first (workers starting)
    untimed where there are others: the host's part of a step."""
    loader = trainer.get_train_dataloader()
    fetched = iter(loader)
    if len(loader) > 1:
        next(fetched)
    began = time.perf_counter()
    count = sum(1 for _ in itertools.islice(fetched, batches))
    return 1000 * (time.perf_counter() - began) / count


def bare_loop(trainer: CountingTrainer, clock: StepClock, steps: int) -> None:
    """Forward, backward, clip, AdamW step over the Trainer's own batches, nothing else: what the
    Trainer's machinery (callbacks, logging, its step bookkeeping) adds per step is the difference."""
    args = trainer.args
    model = trainer.model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=args.optim == "adamw_torch_fused")
    step_model = torch.compile(model, dynamic=False) if args.torch_compile else model
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    batches = iter(trainer.get_train_dataloader())
    for step in range(1, steps + 1):
        try:
            inputs = next(batches)
        except StopIteration:
            batches = iter(trainer.get_train_dataloader())
            inputs = next(batches)
        trainer.count(inputs)
        with torch.autocast(args.device.type, dtype=dtype, enabled=dtype is not None):
            loss = trainer.compute_loss(step_model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(step)


def training_row(
    name: str, setting: Setting, source: str, features, config, precision: str, device: torch.device,
    warmup: int, steps: int, out: Path,
) -> dict:
    """Train one fresh teacher under one setting; returns its row (without MFU)."""
    set_seed(config.training.seed)
    loaded = load_qa_model(source, layer_stride=1, attention_dropout=config.model.attention_dropout,
                           hidden_dropout=config.model.hidden_dropout)
    model: PreTrainedModel = loaded.model
    model.set_attn_implementation(setting.attention)
    d, pad_id = config.data, loaded.tokenizer.pad_token_id
    training = dataclasses.replace(config.training, torch_compile=setting.compile, pad_to_multiple_of=setting.pad_to,
                                   dataloader_workers=setting.workers)
    args = dataclasses.replace(
        training_arguments(training, str(out / name), precision=precision, max_length=d.max_length),
        per_device_train_batch_size=setting.batch_size,
        train_sampling_strategy="group_by_length" if setting.length_grouped else "random",
        optim=setting.optim,
        max_steps=warmup + steps,
        warmup_steps=0,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=device.type == "cpu",
    )
    clock = StepClock(warmup, steps, device)
    windows = WindowTensors(features, pad_id, multiple=setting.pad_to, max_length=d.max_length)
    collator = (BucketCollator(pad_id, multiple=setting.pad_to, max_length=d.max_length) if setting.pad_to != 8
                or setting.tensors else DataCollatorWithPadding(loaded.tokenizer, pad_to_multiple_of=8))  # today's
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=windows if setting.tensors else features,
        processing_class=loaded.tokenizer, data_collator=collator, callbacks=[clock],
    )
    host_ms = host_ms_per_batch(trainer, min(steps, 20))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if setting.loop == "bare":
        bare_loop(trainer, clock, warmup + steps)
    else:
        trainer.train()
    lengths = torch.cat(trainer.step_lengths[warmup:]).cpu()
    padded = setting.batch_size * sum(trainer.step_widths[warmup:])
    seconds = clock.ended - clock.began
    c = model.config
    row = {
        "setting": name,
        **dataclasses.asdict(setting),
        "compiled": args.torch_compile,
        "windows": len(lengths),
        "windows_per_s": len(lengths) / seconds,
        "tokens_per_s": float(lengths.sum()) / seconds,
        "model_tflops_per_s": window_flops(lengths, matmul_params(model), c.num_hidden_layers, c.hidden_size)
        / seconds / 1e12,
        "mean_tokens": float(lengths.double().mean()),
        "padding_pct": 100 * (1 - float(lengths.sum()) / padded),
        "host_ms_per_batch": host_ms,
        "step_ms": 1000 * seconds / steps,
        "steps": steps,
        "seconds": seconds,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
    }
    del trainer, model, loaded
    release(device)
    return row


def release(device: torch.device) -> None:
    """Free the last row's model and compiled graphs before the next row."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def teacher_logits_row(source: str, features, config, precision: str, device: torch.device, batch_size: int,
                       out: Path) -> dict:
    """The distillation's teacher-logits pass over the same windows, as `qa-distill distill` runs it."""
    loaded = load_qa_model(source, layer_stride=1)
    d = config.data
    began = time.perf_counter()
    load_or_compute(out / "teacher-logits", loaded.model, "benchmark", loaded.tokenizer, features,
                    max_length=d.max_length, precision=precision, batch_size=batch_size, device=device,
                    pad_to_multiple_of=config.training.pad_to_multiple_of)
    synchronize(device)
    seconds = time.perf_counter() - began
    lengths = torch.as_tensor(features["length"])
    c = loaded.model.config
    flops = window_flops(lengths, matmul_params(loaded.model), c.num_hidden_layers, c.hidden_size) / 3
    row = {"setting": "teacher-logits", "batch_size": batch_size, "pad_to": config.training.pad_to_multiple_of,
           "tensors": True, "loop": "inference", "windows_per_s": len(lengths) / seconds,
           "tokens_per_s": float(lengths.sum()) / seconds, "model_tflops_per_s": flops / seconds / 1e12,
           "mean_tokens": float(lengths.double().mean()), "seconds": seconds}
    del loaded
    release(device)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="gpu")
    parser.add_argument("--model", default="", help="default: the recipe's teacher model")
    parser.add_argument("--data", default="", help="default: the recipe's data")
    parser.add_argument("--questions", type=int, default=20000, help="train questions the windows come from")
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps per setting")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {list(SETTINGS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override, e.g. data.cache_dir=/tmp/features (repeatable)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke test of the code")
    parser.add_argument("--peak-size", type=int, default=8192, help="side of the square matmuls for the peak")
    parser.add_argument("--teacher-batch", type=int, default=512, help="windows per teacher-logits pass batch "
                        "(0: no teacher-logits row)")
    parser.add_argument("--output", default="", help="table path stem (default, on a GPU: "
                        "experiments/results/gpu-train-bench; on CPU: none)")
    args = parser.parse_args(argv)
    names = [n for n in args.settings.split(",") if n]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        print(f"gpu_train.py: unknown settings {unknown}; known: {list(SETTINGS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_train.py: no CUDA device here (torch.cuda.is_available() is False); it measures GPU "
              "training, and `--device cpu --steps 2 --warmup 1` only smoke-tests its code", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    overrides = [f"data.train_questions={args.questions}", *args.overrides]
    config = load_config(args.recipe, "teacher", overrides=overrides, explicit={"data.data": args.data})
    source = args.model or config.model.name
    precision = resolve_precision(config.training.precision)
    split = load_split(config.data, "train")
    tokenizer = load_tokenizer(source)
    d = config.data
    features = build_features(split, tokenizer, max_length=d.max_length, doc_stride=d.doc_stride, kind="train",
                              cache=d.cache_dir)
    peak = peak_flops(device, args.peak_size)
    with tempfile.TemporaryDirectory() as out:  # the Trainer's output_dir; nothing is saved
        rows = [training_row(n, SETTINGS[n], source, features, config, precision, device, args.warmup, args.steps,
                             Path(out)) for n in names]
        if args.teacher_batch:
            rows.append(teacher_logits_row(source, features, config, precision, device, args.teacher_batch,
                                           Path(out)))
    table = pd.DataFrame(rows)
    table["mfu_pct"] = 100 * table["model_tflops_per_s"] * 1e12 / peak
    table["speedup_vs_first"] = table["windows_per_s"] / table["windows_per_s"].iloc[0]
    table["peak_bf16_tflops"] = peak / 1e12
    table["device"] = device_name(device)
    table["precision"] = precision
    table["max_length"] = d.max_length
    table["model"] = source
    table["torch"] = torch.__version__
    print(table.to_string(index=False))
    stem = args.output or (str(RESULTS_DIR / "gpu-train-bench") if device.type == "cuda" else "")
    if stem:
        csv, md = write_tables(table, Path(stem))
        print(f"wrote {csv} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
