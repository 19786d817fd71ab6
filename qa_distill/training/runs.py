"""One function per training entry point: fine-tune (teacher, student) and distill.

Everything that can fail on bad input (data, models, tokenizers, teacher compatibility) is
loaded and checked before the MLflow run starts and before any training step; then one run
trains, evaluates each epoch, saves, and logs metrics, the model and the predictions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from datasets import Dataset
from transformers import PreTrainedModel, TrainerCallback, set_seed

from qa_distill.config import RunConfig
from qa_distill.data.features import build_features, cache_dir, group_by_length
from qa_distill.data.squad import load_split
from qa_distill.inference.mlflow_model import log_qa_model
from qa_distill.models import LoadedModel, check_compatible, load_qa_model, model_fingerprint
from qa_distill.runtime.distributed import is_main_process, main_process_first, world_size
from qa_distill.runtime.hardware import cpu_name
from qa_distill.runtime.progress import ProgressCallback, announce
from qa_distill.saved_model import CardFacts, SavedSettings, save_settings, write_model_card
from qa_distill.tracking import runs as tracking
from qa_distill.tracking.registry import describe_registered
from qa_distill.training import lifecycle, preflight
from qa_distill.training.batching import BucketCollator, WindowTensors
from qa_distill.training.layers import LayerTerms, layer_map
from qa_distill.training.teacher_cache import TeacherLogits, load_or_compute
from qa_distill.training.trainer import DistillationTrainer, QATrainer, resolve_precision, training_arguments

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Data, windows and the model of one run, all loaded and checked."""

    config: RunConfig
    student: LoadedModel
    train_examples: Dataset
    dev_examples: Dataset
    train_features: Dataset
    dev_features: Dataset
    precision: str
    data_notes: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)  # what a checkpoint of this run was trained on


def prepare(config: RunConfig) -> Prepared:
    """Load and validate everything a run needs; raises a QaDistillError on bad input."""
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    d = config.data
    train, dev = load_split(d, "train"), load_split(d, "dev")
    student = load_student(config)
    preflight.check_output_dir(config.output_dir, sum(t.nbytes for t in student.model.state_dict().values()))
    precision = resolve_precision(config.training.precision)
    identity = lifecycle.run_identity(  # with the precision `auto` became: a bf16 checkpoint goes on in bf16
        config, train=train.fingerprint, dev=dev.fingerprint, student=model_fingerprint(student.model)
    ) | {"training.precision_resolved": precision}
    with main_process_first():  # one process tokenises, the others read its cache files
        train_features = build_features(train, student.tokenizer, max_length=d.max_length, doc_stride=d.doc_stride,
                                        kind="train", cache=d.cache_dir)
        dev_features = group_by_length(
            build_features(dev, student.tokenizer, max_length=d.max_length, doc_stride=d.doc_stride, kind="eval",
                           cache=d.cache_dir)
        )
    notes = {
        "cpu": cpu_name(),  # the machine a budget's windows were sized for (and the training time's)
        "train_source": train.source,
        "dev_source": dev.source,
        "train_questions": len(train.dataset),
        "dev_questions": len(dev.dataset),
        "train_windows": len(train_features),
        "dev_windows": len(dev_features),
        "train_fingerprint": train.fingerprint,  # what report compares (qa_distill/reporting/budgets.py)
        "dev_fingerprint": dev.fingerprint,
        **{f"train_{k}": v for k, v in train.skipped.items()},
        **{f"dev_{k}": v for k, v in dev.skipped.items()},
    }
    return Prepared(config, student, train.dataset, dev.dataset, train_features, dev_features, precision, notes,
                    identity)


def load_student(config: RunConfig) -> LoadedModel:
    """A new student with a seeded QA head: one per run, and one per search trial."""
    set_seed(config.training.seed)  # the new QA head's initial weights
    m = config.model
    return load_qa_model(m.name, layer_stride=m.layer_stride, layers=m.layers,
                         attention_dropout=m.attention_dropout, hidden_dropout=m.hidden_dropout)


def train_windows(p: Prepared) -> Dataset | WindowTensors:
    """The training windows as the Trainer gets them: tensors in memory, or the `datasets` rows."""
    t, d = p.config.training, p.config.data
    if not t.tensor_windows:
        return p.train_features
    return WindowTensors(p.train_features, p.student.tokenizer.pad_token_id, multiple=t.pad_to_multiple_of,
                         max_length=d.max_length)


def _trainer_kwargs(p: Prepared, callbacks: list[TrainerCallback]) -> dict[str, Any]:
    t, d = p.config.training, p.config.data
    return {
        "model": p.student.model,
        "args": training_arguments(t, p.config.output_dir, precision=p.precision, max_length=d.max_length),
        "train_dataset": train_windows(p),
        "eval_dataset": p.dev_features,
        "eval_examples": p.dev_examples,
        "processing_class": p.student.tokenizer,
        "data_collator": BucketCollator(p.student.tokenizer.pad_token_id, multiple=t.pad_to_multiple_of,
                                        max_length=d.max_length),
        "callbacks": [tracking.MlflowMetrics(), ProgressCallback(every=t.progress_seconds), *callbacks],
        "answers": p.config.answers,
    }


def make_finetune_trainer(p: Prepared, *, callbacks: list[TrainerCallback] | None = None) -> QATrainer:
    """A trainer on gold answers alone: the teacher's and the student's (and a benchmark's)."""
    return QATrainer(**_trainer_kwargs(p, callbacks or []))


def _train_and_log(
    p: Prepared,
    trainer: QATrainer,
    extra_metrics: dict[str, float],
    log_model: bool = True,
    life: lifecycle.Life | None = None,
) -> dict[str, Any]:
    """Train (resuming from `life`'s checkpoint, if any), evaluate, save and log; returns the final metrics.

    `log_model=False` keeps the saved model out of MLflow (search trials: only the best is logged).
    Launched as several processes, all train and evaluate; only the main one saves and logs.
    """
    out = Path(p.config.output_dir)
    main = is_main_process()
    checkpoint = str(life.resume.path) if life and life.resume else None
    if main:
        notes = p.data_notes | {"precision": p.precision, "processes": world_size()}
        tracking.log_new_params({f"run.{k}": v for k, v in notes.items()})
        for split, examples, context in (("train", p.train_examples, "training"),
                                         ("dev", p.dev_examples, "evaluation")):
            tracking.log_dataset(examples, notes[f"{split}_source"], fingerprint=notes[f"{split}_fingerprint"],
                                 context=context)
    announce(f"{p.config.recipe}-{p.config.role}", str(trainer.args.device), precision=p.precision,
             threads=torch.get_num_threads())
    began = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = life.checkpointing.train_seconds() if life else time.perf_counter() - began
    last = trainer.eval_history[-1] if trainer.eval_history else None
    if last is None or last["epoch"] < trainer.state.epoch:
        last = trainer.evaluate()
    metrics = {
        "exact_match": last["eval_exact_match"],
        "f1": last["eval_f1"],
        "dev_questions": last["eval_questions"],
        "train_seconds": train_seconds,
        "train_windows_per_second": result.metrics.get("train_samples_per_second", 0.0),
        "train_loss": trainer.whole_run_loss(),  # every step, those before a resume included
        **extra_metrics,
    }
    trainer.save_model(str(out))  # every process calls it; the Trainer writes from the main one
    if not main:
        return metrics
    mlflow.log_metrics(metrics)
    save_settings(out, SavedSettings.of(p.config))
    write_model_card(out, CardFacts.of_run(p.config, metrics))
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    (out / "predictions.json").write_text(json.dumps(trainer.predictions))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    mlflow.log_artifact(str(out / "predictions.json"))
    if log_model:
        registered = p.config.registered_name if p.config.tracking.register_model else None
        metrics["model_uri"] = log_qa_model(out, registered)
        mlflow.set_tag("model_uri", metrics["model_uri"])
        if registered:
            describe_registered(mlflow.active_run().info.run_id, champion=p.config.role == "distill")
    return metrics


def run_finetune(config: RunConfig, *, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any] | None:
    """The `teacher` and `student` entry points: plain fine-tuning on gold answers.

    Launched as several processes, the main one returns the results; the others None.
    """
    preflight.connect(config.tracking)
    p = prepare(config)
    with lifecycle.training_run(config, p.identity) as life:
        trainer = make_finetune_trainer(p, callbacks=[*life.callbacks, *(callbacks or [])])
        metrics = _train_and_log(p, trainer, {}, life=life)
        return {**metrics, "run_id": life.run_id} if life.run_id else None


@dataclass
class Teacher:
    model: PreTrainedModel
    fingerprint: str
    source: str


def load_teacher(config: RunConfig, student: LoadedModel) -> Teacher:
    """The fine-tuned teacher, checked to tokenize exactly as the student does and, where the
    run (or its search) uses layer terms, to match the student's layers."""
    loaded = load_qa_model(config.distillation.teacher)
    embeddings = loaded.model.get_input_embeddings().num_embeddings
    check_compatible(loaded.tokenizer, student.tokenizer, teacher_embeddings=embeddings)
    k, s = config.distillation, config.search
    attention = k.attention_weight > 0 or s.search_attention_weight
    if attention or k.hidden_weight > 0 or s.search_hidden_weight:
        layer_map(k.layer_map, student.model, loaded.model, attention=attention)
    return Teacher(loaded.model, model_fingerprint(loaded.model), config.distillation.teacher)


def teacher_logits(
    p: Prepared, teacher: Teacher, *, device: torch.device | None = None
) -> tuple[TeacherLogits, bool]:
    """The teacher's cached logits over this run's training windows, computed if absent on
    `device` (default: the one the Trainer trains on); launched as several processes, the main one
    computes them while the others wait."""
    d, k = p.config.data, p.config.distillation
    device = device or training_arguments(p.config.training, p.config.output_dir, precision=p.precision).device
    with main_process_first():
        return load_or_compute(
            cache_dir(d.cache_dir), teacher.model, teacher.fingerprint, p.student.tokenizer,
            p.train_features, max_length=d.max_length, precision=p.precision,
            batch_size=k.teacher_batch_size or p.config.training.eval_batch_size, device=device,
            pad_to_multiple_of=p.config.training.pad_to_multiple_of,
        )


def make_distill_trainer(
    p: Prepared, teacher: Teacher, *, callbacks: list[TrainerCallback] | None = None
) -> tuple[DistillationTrainer, dict[str, Any]]:
    """A distillation trainer on the shared teacher-logits cache, or the teacher on the fly: asked
    for, or for layer terms, whose teacher forward gives the logits too (the cache would only
    spare the QA head's one linear layer, at the price of a pass over every window)."""
    k = p.config.distillation
    info: dict[str, Any] = {}
    kwargs = _trainer_kwargs(p, callbacks or [])
    terms = LayerTerms.of(k, p.student.model, teacher.model, cut_from=p.student.kept_layers)
    if terms is not None and k.teacher_cache:
        log.info("layer terms: the teacher runs on the fly beside the student; the logits cache is not used")
    if not k.teacher_on_the_fly:
        began = time.perf_counter()
        logits, computed = teacher_logits(p, teacher, device=kwargs["args"].device)  # the training device
        info = {"teacher_cache_key": logits.key, "teacher_cache_computed": computed,
                "teacher_cache_seconds": time.perf_counter() - began}
        kwargs["teacher_logits"] = logits
    else:
        kwargs["teacher"] = teacher.model
    trainer = DistillationTrainer(temperature=k.temperature, alpha=k.alpha, precision=p.precision, layers=terms,
                                  **kwargs)
    return trainer, info


def run_distill(config: RunConfig, *, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any] | None:
    """The `distill` entry point: fine-tuning with the teacher's soft targets in the loss.

    Launched as several processes, the main one returns the results; the others None.
    """
    preflight.connect(config.tracking)
    p = prepare(config)
    teacher = load_teacher(config, p.student)
    identity = p.identity | {"fingerprint.teacher": teacher.fingerprint}
    with lifecycle.training_run(config, identity) as life:
        metrics = train_distill(p, teacher, callbacks=[*life.callbacks, *(callbacks or [])], life=life)
        return {**metrics, "run_id": life.run_id} if life.run_id else None


def train_distill(
    p: Prepared,
    teacher: Teacher,
    *, callbacks: list[TrainerCallback] | None = None,
    log_model: bool = True,
    life: lifecycle.Life | None = None,
) -> dict[str, Any]:
    """Distil into the active MLflow run: a search trial brings its own run, data and teacher."""
    main = is_main_process()
    if main:
        mlflow.set_tags({"teacher_uri": teacher.source, "teacher_fingerprint": teacher.fingerprint})
    trainer, info = make_distill_trainer(p, teacher, callbacks=callbacks)
    if "teacher_cache_key" in info and main:
        mlflow.set_tag("teacher_cache_key", info["teacher_cache_key"])
    seconds = {"teacher_cache_seconds": info["teacher_cache_seconds"]} if info else {}
    metrics = _train_and_log(p, trainer, seconds, log_model, life)
    return {**metrics, **info}
