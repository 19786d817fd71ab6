"""How fast this machine trains and runs the chain's models: a few timed steps before `main`'s chain.

For each distinct model of the chain (the teacher, and the student that `student` and `distill`
share): training steps on real train windows of the recipe's length and of about their median
length (training groups windows by length, so its batches pad little), one forward pass at the
evaluation batch size and a few at batch 1, each after an untimed first step. Also the windows per
question of a seeded sample of each split and the seconds to tokenise them. The probe costs
seconds on a fast machine and about a minute on a slow one (`Measured.seconds`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from transformers import DataCollatorWithPadding

from qa_distill.config import RunConfig
from qa_distill.data.features import build_features
from qa_distill.data.squad import Split, load_split
from qa_distill.models import accepts, load_tokenizer
from qa_distill.runtime.budget import MIN_BATCH_SIZE, ModelRates
from qa_distill.training.runs import load_student
from qa_distill.training.trainer import resolve_precision

SAMPLE_QUESTIONS = 48  # per split: enough windows for a few batches
PROBE_BATCH = MIN_BATCH_SIZE  # windows per timed training step: the batch a sized chain may train at
TIMED_STEPS = 2
EVAL_WINDOWS = 32  # windows of the timed forward pass (the model is warm from training by then)


@dataclass(frozen=True)
class Measured:
    rates: dict[str, ModelRates]  # role -> its model's rates
    train_questions: int  # the recipe's, as its train split holds them
    dev_questions: int
    train_windows_per_question: float
    dev_windows_per_question: float
    tokenize_seconds_per_question: float
    seconds: float  # what the probe itself took


def _sample(split: Split, n: int, seed: int) -> Split:
    ds = split.dataset.shuffle(seed=seed).select(range(min(n, len(split.dataset))))
    return Split(ds, split.source, f"{split.fingerprint}-probe{n}", split.skipped)


def _timed(fn, repeats: int, *, warm: bool = True) -> float:
    """Seconds per call of `fn`, after an untimed first call (allocation, one-off kernels) if `warm`."""
    if warm:
        fn()
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def typical_rows(lengths: Sequence[int], n: int) -> list[int]:
    """`n` windows of about the median length: a training batch as length grouping forms them,
    padded to little more than its own windows. (A batch of windows drawn at random pads to its
    longest: on SQuAD at 256 tokens that timed a 2-core Zen 3 at 5 windows/s, which trained at 8.)"""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    first = max(0, min(len(order) - n, len(order) // 2 - n // 2))
    return order[first : first + n]


def _model_rates(config: RunConfig, windows, *, device: torch.device, precision: str) -> ModelRates:
    loaded = load_student(config)
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    def batch(indices: Sequence[int], *, labels: bool) -> dict[str, torch.Tensor]:
        rows = [{k: v for k, v in windows[i].items() if accepts(model, k) and (labels or "positions" not in k)}
                for i in indices]
        return {k: v.to(device) for k, v in collate(rows).items()}

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.training.learning_rate)
    lengths = [len(ids) for ids in windows["input_ids"]]
    train_batch = batch(typical_rows(lengths, min(PROBE_BATCH, config.training.batch_size)), labels=True)

    def train_step() -> None:
        with autocast:
            loss = model(**train_batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model.train()
    train = len(train_batch["input_ids"]) / _timed(train_step, TIMED_STEPS)
    model.eval()
    eval_batch = batch(range(min(EVAL_WINDOWS, config.training.eval_batch_size, len(windows))), labels=False)
    single = {k: v[:1] for k, v in batch([0], labels=False).items()}
    with torch.no_grad(), autocast:
        infer = len(eval_batch["input_ids"]) / _timed(lambda: model(**eval_batch), 1, warm=False)
        latency = _timed(lambda: model(**single), 3)
    return ModelRates(train=train, infer=infer, latency=latency)


def _model_key(config: RunConfig) -> tuple:
    """What makes two roles' models run at the same speed: the student and distill share one."""
    m = config.model
    return m.name, m.layer_stride, str(m.layers), m.attention_dropout, m.hidden_dropout, config.training.precision


def measure(configs: dict[str, RunConfig]) -> Measured:
    """Rates of each role's model and the splits' sizes, from `configs` as the steps will load them."""
    began = time.perf_counter()
    first = next(iter(configs.values()))
    d = first.data
    if first.training.threads:
        torch.set_num_threads(first.training.threads)
    whole = replace(d, train_questions=None, dev_questions=None)
    train, dev = load_split(whole, "train"), load_split(whole, "dev")
    tokenizer = load_tokenizer(first.model.name)  # a student's is its base model's
    windows = {}
    with tempfile.TemporaryDirectory() as cache:
        tokenizing = time.perf_counter()
        for name, split, kind in (("train", train, "train"), ("dev", dev, "eval")):
            sample = _sample(split, SAMPLE_QUESTIONS, d.subset_seed)
            features = build_features(sample, tokenizer, max_length=d.max_length, doc_stride=d.doc_stride,
                                      kind=kind, cache=cache)
            windows[name] = (features, len(sample.dataset))
        tokenize = (time.perf_counter() - tokenizing) / sum(n for _, n in windows.values())
        train_windows = windows["train"][0].with_format(None)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        rates: dict[tuple, ModelRates] = {}
        for config in configs.values():
            if _model_key(config) not in rates:
                rates[_model_key(config)] = _model_rates(config, train_windows, device=device,
                                                         precision=resolve_precision(config.training.precision))
    return Measured(
        rates={role: rates[_model_key(config)] for role, config in configs.items()},
        train_questions=min(d.train_questions or len(train.dataset), len(train.dataset)),
        dev_questions=min(d.dev_questions or len(dev.dataset), len(dev.dataset)),
        train_windows_per_question=len(windows["train"][0]) / windows["train"][1],
        dev_windows_per_question=len(windows["dev"][0]) / windows["dev"][1],
        tokenize_seconds_per_question=tokenize,
        seconds=time.perf_counter() - began,
    )
