"""CPU speed test: per-question latency, batched throughput, size and accuracy per backend.

Each model is timed on every inference backend of `QAPredictor` and, as the reference point, on
`HFPipelineBaseline` (`hf_baseline.py`), side by side (`timing.py`). Latency is measured one
question at a time (what a user waiting for one answer sees); throughput with `batch_size`
questions per call (what offline scoring sees). EM/F1 are scored on exactly the answers produced
while timing, so a fast backend cannot hide a loss of accuracy.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import transformers

from qa_distill.backends import SPECS
from qa_distill.config import (
    DEFAULT_DEV_JSON,
    RESULTS_DIR,
    SpeedConfig,
    TrackingConfig,
    launched_by_mlflow_run,
    tracking_uri,
)
from qa_distill.data.metrics import squad_scores
from qa_distill.data.squad import load_questions
from qa_distill.errors import ConfigError, ModelError
from qa_distill.inference import compiled, library_cache
from qa_distill.inference.predictor import QAPredictor
from qa_distill.models import load_config, load_tokenizer, resolve_source
from qa_distill.reporting.tables import write_tables
from qa_distill.runtime.hardware import cpu_name
from qa_distill.runtime.progress import announce
from qa_distill.speedtest.hf_baseline import HFPipelineBaseline
from qa_distill.speedtest.timing import Answerer, Timing, measure
from qa_distill.speedtest.tradeoff import log_to_run_and_parent, tradeoff_stem, write_tradeoff
from qa_distill.tracking.registry import LATENCY_FIGURES, pin_versions, tag_versions
from qa_distill.tracking.runs import log_questions
from qa_distill.tracking.runs import setup as setup_tracking
from qa_distill.validation import validate_speed

log = logging.getLogger(__name__)

BASELINE = "hf-pipeline"
_NAME = re.compile(r"[\w.-]+")  # a display name in `name=source`
_METRIC_UNSAFE = re.compile(r"[^\w\-. /]")  # MLflow metric names allow letters, digits, _-./ space
# Markdown number formats per column (the CSV keeps full precision).
_FORMATS = {
    "p50_ms": ".2f", "p90_ms": ".2f", "p99_ms": ".2f", "questions_per_s": ".1f",
    "exact_match": ".2f", "f1": ".2f", "size_mb": ".1f",
    "speedup_vs_hf": ".2f", "speedup_vs_teacher_hf": ".2f",
}


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


def model_size_mb(model_dir: str, answerer: Answerer) -> float:
    """Megabytes (10^6 bytes) of weights: the files on disk; for a quantised backend, the
    weights its runtime runs, which exist only there; for a hub name, whose files are elsewhere,
    the saved state_dict."""
    if isinstance(answerer, QAPredictor) and answerer.spec.quantised:
        return answerer.quantised_mb()
    files = _weight_files(Path(model_dir))
    if files:
        return sum(f.stat().st_size for f in files) / 1e6
    return _serialised_mb(answerer.model)


def _result(
    name: str, backend: str, timing: Timing, answerer: Answerer, *, size_mb: float,
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


def check_models(models: dict[str, str]) -> dict[str, str]:
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


def _graphs(backends: Sequence[str]) -> set[tuple[str, str]]:
    """The graphs a model is built into: one per (runtime, precision), padding aside."""
    return {(SPECS[b].runtime, SPECS[b].precision) for b in backends
            if SPECS[b].runtime != "aotinductor" or compiled.compiling()}


def compile_seconds(models: int, backends: Sequence[str]) -> float:
    """About how long building every graph takes on this CPU where none is cached."""
    return models * len(_graphs(backends)) * library_cache.build_seconds(compiled.cache_root("compiled"))


def compile_plan(models: int, backends: list[str]) -> str:
    """What the speed test builds before timing: one graph per model and (runtime, precision),
    shared by the backends that differ only in padding (fp32 and fp32-maxpad), and about how long
    that takes on this CPU where none is cached (`library_cache.build_seconds`)."""
    graphs = _graphs(backends)
    builds = models * len(graphs)
    if not builds:
        return f"speed test: {models} models x {len(backends)} backends, nothing to compile (QA_DISTILL_COMPILE=0)"
    minutes = compile_seconds(models, backends) / 60
    return (f"speed test: {models} models x {len(backends)} backends = {builds} compiled graphs "
            f"({len(graphs)} per model: {', '.join('/'.join(g) for g in sorted(graphs))}), about "
            f"{minutes:.0f} min on {cpu_name()} for those not yet cached "
            f"({compiled.cache_root('compiled')}); QA_DISTILL_COMPILE=0 skips compiling, answers slower")


def time_models(paths: dict[str, str], questions: list[dict[str, Any]], speed: SpeedConfig) -> list[SpeedResult]:
    """Load every (model, backend) first (`paths` from `check_models`), then time them side by
    side (`measure`).

    `speed.batch_size` is both the questions per call of the throughput pass and the predictor's
    windows per forward pass. Sets torch's global thread count to `speed.threads`.
    """
    backends, threads, batch_size = list(speed.backends), speed.threads, speed.batch_size
    torch.set_num_threads(threads)
    print(compile_plan(len(paths), backends), file=sys.stderr, flush=True)
    answerers: dict[tuple[str, str], Answerer] = {}
    for name, path in paths.items():
        if speed.hf_baseline:
            answerers[name, BASELINE] = HFPipelineBaseline(path)
        for backend in backends:
            answerers[name, backend] = QAPredictor(path, backend=backend, batch_size=batch_size)
    timings = measure(answerers, questions, warmup=speed.warmup, batch_size=batch_size)
    results = [
        _result(name, backend, timings[name, backend], answerer, size_mb=model_size_mb(paths[name], answerer),
                questions=questions, batch_size=batch_size, threads=threads)
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


def run_speedtest(speed: SpeedConfig, *, tracking: TrackingConfig | None = None, recipe: str = "") -> pd.DataFrame:
    """The `speedtest` entry point: check everything, time in one MLflow run, log, write tables.

    A registry source (`models:/<name>/latest`, a stage or an alias) is pinned to the version it
    names before anything is timed; that version (`name/number`) is the table's `version` column
    and gets the figures as tags (`registry.py`). Tables go to `<output>.csv/.md` (default
    `experiments/results/<run_name>`), answers to `<output>-answers.json`, the F1-vs-p50 plot to
    `<output minus "-speed">-tradeoff.png/.html`; all are logged as artifacts (the plot also to
    the parent run of a workflow), the tagged figures as metrics `<model>.<backend>.<figure>`.
    """
    validate_speed(speed)
    tracking = tracking or TrackingConfig()
    mlflow.set_tracking_uri(tracking_uri(tracking))  # where models:/ resolve
    named, versions = pin_versions(parse_models(speed.models))
    dev_json = speed.dev_json or str(DEFAULT_DEV_JSON)
    sample = load_questions(dev_json, speed.questions)
    paths = check_models(named)
    run_name = speed.run_name or "speedtest"
    stem = Path(speed.output) if speed.output else RESULTS_DIR / run_name

    setup_tracking(tracking)
    run = mlflow.start_run() if launched_by_mlflow_run() else mlflow.start_run(run_name=run_name)
    with run:
        cpu = cpu_name()
        # "speed." keeps clear of the parameters `mlflow run` logs itself, as given
        settings = {
            **{f"model.{name}": source for name, source in named.items()},
            "dev_json": dev_json, "questions": len(sample), "backends": ",".join(speed.backends),
            "threads": speed.threads, "batch_size": speed.batch_size, "warmup": speed.warmup,
            "hf_baseline": speed.hf_baseline, "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
        mlflow.log_params({f"speed.{key}": value for key, value in settings.items()})
        mlflow.set_tags({"role": "speedtest", **({"recipe": recipe} if recipe else {})})
        log_questions(sample, dev_json)
        announce(run_name, "cpu", precision="/".join(speed.backends), threads=speed.threads)
        results = time_models(paths, sample, speed)
        df = results_table(results)
        df.insert(1, "version", [versions[name].label if name in versions else "" for name in df["model"]])
        df.insert(0, "cpu", cpu)
        mlflow.log_metrics({
            _metric_name(row["model"], row["backend"], figure): float(row[figure])
            for row in df.to_dict("records")
            for figure in LATENCY_FIGURES
        })
        tag_versions(versions, df, run.info.run_id, cpu=cpu, threads=speed.threads)
        tables = write_tables(df, stem, formats=_FORMATS)
        answers = stem.with_name(stem.name + "-answers.json")
        answers.write_text(json.dumps({f"{r.model}.{r.backend}": r.answers for r in results}))
        for path in (*tables, answers):
            mlflow.log_artifact(str(path))
        log_to_run_and_parent(write_tradeoff(df, tradeoff_stem(stem)))
    return df

