"""The HF Trainer for extractive QA, and its distillation variant.

`QATrainer.evaluate` runs the model over the dev windows, turns logits into answers
(postprocess) and scores them (metrics), so each epoch's evaluation reports EM/F1.
`DistillationTrainer` only changes the loss: the teacher's logits come from the cache (or from
the teacher on the fly) and join the gold labels through `losses.distillation_loss`; with layer
terms (`layers.LayerTerms`) the teacher runs on the fly for its layers, its logits come with them,
and `losses.total_loss` adds the terms.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from qa_distill.config import AnswerConfig, TrainingConfig
from qa_distill.data.metrics import squad_scores
from qa_distill.data.postprocess import pad_offsets, postprocess
from qa_distill.models import accepts
from qa_distill.runtime import hardware
from qa_distill.training.batching import (
    EpochSeededSampler,
    WindowTensors,
    bucket_count,
    compile_for_shapes,
    resolve_compile,
)
from qa_distill.training.layers import LayerTerms, forward_layers, teacher_layers
from qa_distill.training.losses import attention_loss, distillation_loss, hard_loss, hidden_state_loss, total_loss
from qa_distill.training.teacher_cache import TeacherLogits, teacher_forward


def resolve_precision(precision: str, *, cpu_has_bf16: bool | None = None) -> str:
    """`auto`: bf16 where the hardware runs it natively, else fp32 (fp16 only when asked).

    `cpu_has_bf16` None asks the CPU's flags (on AVX2-only CPUs bf16 runs many times slower).
    """
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if cpu_has_bf16 is None:
        cpu_has_bf16 = hardware.cpu_has_bf16()
    return "bf16" if torch.backends.mkldnn.is_available() and cpu_has_bf16 else "fp32"


def training_arguments(
    config: TrainingConfig, output_dir: str, *, precision: str, max_length: int | None = None
) -> TrainingArguments:
    """The Trainer's arguments; on CUDA, the host keeps ahead of the GPU: pinned batches copied
    without a sync, workers with batches prefetched, fused AdamW, and the model
    compiled where asked (on CUDA; static per bucket when `max_length` says the buckets are few)."""
    each_epoch = "epoch" if config.eval_each_epoch else "no"
    cuda = torch.cuda.is_available()
    compiled = resolve_compile(config.torch_compile, cuda=cuda)
    if compiled and max_length:
        compile_for_shapes(bucket_count(multiple=config.pad_to_multiple_of, max_length=max_length))
    workers = config.dataloader_workers
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        weight_decay=config.weight_decay,
        warmup_steps=float(config.warmup_ratio),  # a float below 1 is a ratio of all steps
        seed=config.seed,
        use_cpu=not cuda,  # the Trainer refuses bf16 on CPU without it
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy=each_epoch,
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        save_total_limit=None,  # lifecycle.seal removes older checkpoints once a newer one is complete
        logging_steps=config.logging_steps,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=workers,
        # workers start anew each epoch: each start draws their seed from the global RNG, so a run
        # resumed mid-epoch draws as the uninterrupted one did; kept workers draw once, and a resumed
        # run's dropout then differed after the resume (tests/test_exact_resume.py, 1 worker)
        dataloader_persistent_workers=False,
        dataloader_prefetch_factor=4 if workers else None,
        dataloader_pin_memory=cuda,
        accelerator_config={"non_blocking": cuda},
        optim="adamw_torch_fused",  # one kernel for all weights (the Trainer's default since torch 2.8, pinned)
        torch_compile=compiled,
        ddp_find_unused_parameters=False,  # QA models use every weight: spare DDP its search each step
    )


LOSS_STATE = "qa_distill_loss.json"  # in each checkpoint: the running loss sums a resume carries on


class QATrainer(Trainer):
    """A Trainer whose evaluation is SQuAD EM/F1 over post-processed answers.

    Its training resumes exactly: each epoch's order is a function of the seed and the epoch
    (`EpochSeededSampler`), and a checkpoint carries the loss sums of the steps before it, so
    the resumed run logs the same losses and its `train_loss` is the mean over every step.
    """

    def __init__(
        self,
        *args: Any,
        eval_examples: Dataset | None = None,
        answers: AnswerConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples
        self.answers = answers or AnswerConfig()
        self.predictions: dict[str, str] = {}
        self.eval_history: list[dict[str, float]] = []
        self._loss_before = 0.0  # loss summed over the logged steps of the runs this one resumes

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler:
        # the windows' lengths: windows in memory bring theirs; a `datasets` table has them in a
        # column (`train_dataset` comes without its unused columns, the length among them)
        dataset = self.train_dataset
        lengths = (dataset.lengths.tolist() if isinstance(dataset, WindowTensors)
                   else list(dataset[self.args.length_column_name]))
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededSampler(batch, lengths, seed=seed)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            state = {"logged": self._loss_before + self._total_loss_scalar, "pending": self._tr_loss.item(),
                     "last_logged_step": self._globalstep_last_logged}
            (folder / LOSS_STATE).write_text(json.dumps(state))

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        # `train` has just zeroed its loss sums: the resumed epoch starts from the checkpoint's
        checkpoint = kwargs["resume_from_checkpoint"]
        if checkpoint is not None and kwargs["epoch"] == kwargs["epochs_trained"]:
            path = Path(checkpoint) / LOSS_STATE
            if path.is_file():
                state = json.loads(path.read_text())
                self._loss_before = state["logged"]
                self._tr_loss += state["pending"]
                self._globalstep_last_logged = state["last_logged_step"]
        super()._run_epoch(*args, **kwargs)

    def whole_run_loss(self) -> float:
        """Mean training loss over every step of the run, those before a resume included."""
        return (self._loss_before + self._total_loss_scalar) / max(self.state.global_step, 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs:  # the Trainer's own covers the steps since the resume only
            logs = {**logs, "train_loss": self.whole_run_loss()}
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The QA loss over real tokens only (`losses.hard_loss`): the padding, whose amount
        depends on the batch's bucket, gets no probability."""
        labels = ("start_positions", "end_positions")
        outputs = model(**{k: v for k, v in inputs.items() if k not in labels})
        mask = inputs["attention_mask"]
        loss = (hard_loss(outputs.start_logits, inputs["start_positions"], mask=mask)
                + hard_loss(outputs.end_logits, inputs["end_positions"], mask=mask)) / 2
        return (loss, outputs) if return_outputs else loss

    def _get_eval_sampler(self, eval_dataset: Dataset) -> torch.utils.data.Sampler:
        # In order, always: logits are matched to windows by position, and the windows are
        # already sorted by length (the Trainer would shuffle them in length groups). Under DDP
        # the Trainer's accelerator deals these batches out to the processes in turn and
        # `gather_for_metrics` puts the logits back in this order, without the padding repeats.
        return torch.utils.data.SequentialSampler(eval_dataset)

    def predict_answers(self, features: Dataset) -> dict[str, str]:
        """Answer text per question for eval windows (with offset_mapping and example_id)."""
        loader = self.get_eval_dataloader(features)
        output = self.evaluation_loop(loader, "Evaluation", prediction_loss_only=False)
        start, end = (np.asarray(x, dtype=np.float32) for x in output.predictions[:2])
        contexts = dict(zip(self.eval_examples["id"], self.eval_examples["context"], strict=True))
        offsets = pad_offsets(features["offset_mapping"], start.shape[1])
        return postprocess(contexts, features["example_id"], offsets, start, end, **dataclasses.asdict(self.answers))

    def evaluate(
        self,
        eval_dataset: Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        features = eval_dataset if eval_dataset is not None else self.eval_dataset
        began = time.perf_counter()
        self.predictions = self.predict_answers(features)
        gold = dict(zip(self.eval_examples["id"], (a["text"] for a in self.eval_examples["answers"]), strict=True))
        scores = squad_scores(gold, self.predictions)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        metrics[f"{metric_key_prefix}_seconds"] = time.perf_counter() - began
        metrics[f"{metric_key_prefix}_questions"] = len(gold)
        self.eval_history.append({**metrics, "epoch": self.state.epoch or 0.0})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class DistillationTrainer(QATrainer):
    """QA fine-tuning whose loss mixes gold labels with the teacher's soft start/end targets."""

    def __init__(
        self,
        *args: Any,
        temperature: float,
        alpha: float,
        teacher_logits: TeacherLogits | None = None,
        teacher: PreTrainedModel | None = None,
        precision: str = "fp32",
        layers: LayerTerms | None = None,
        **kwargs: Any,
    ) -> None:
        if (teacher_logits is None) == (teacher is None):
            raise ValueError("give exactly one of teacher_logits (cached) or teacher (on the fly)")
        if layers is not None and teacher is None:
            raise ValueError("layer terms need the teacher on the fly")
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.alpha = alpha
        self.teacher_logits = teacher_logits
        self.teacher = teacher.to(self.args.device).eval() if teacher is not None else None
        self.teacher_precision = precision
        self.layers = layers

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer keeps only the columns the student's forward names; the loss also needs
        # the window index (cache rows) and, for a BERT teacher, token_type_ids.
        super()._set_signature_columns_if_needed()
        for extra in ("feature_index", "token_type_ids"):
            if extra not in self._signature_columns:
                self._signature_columns.append(extra)

    def _student_inputs(self, model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        drop = {"feature_index", "start_positions", "end_positions"}
        if not accepts(self.accelerator.unwrap_model(model), "token_type_ids"):
            drop.add("token_type_ids")
        return {k: v for k, v in inputs.items() if k not in drop}

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        terms = self.layers
        student = forward_layers(model, self._student_inputs(model, inputs), outputs=terms and terms.outputs("student"),
                                 tap=terms and terms.student_tap)
        outputs = student.output
        width = outputs.start_logits.shape[1]
        if terms is not None:
            teacher = teacher_layers(self.teacher, inputs, self.teacher_precision, terms=terms)
            t_start, t_end = teacher.output.start_logits.float(), teacher.output.end_logits.float()
        elif self.teacher_logits is not None:
            t_start, t_end = self.teacher_logits.batch(inputs["feature_index"], width)
        else:
            t_start, t_end = teacher_forward(self.teacher, inputs, self.teacher_precision)
        loss = distillation_loss(
            outputs.start_logits,
            outputs.end_logits,
            t_start.to(outputs.start_logits.device),
            t_end.to(outputs.start_logits.device),
            inputs["start_positions"],
            inputs["end_positions"],
            self.temperature,
            self.alpha,
            mask=inputs["attention_mask"],
        )
        if terms is not None:
            mask = inputs["attention_mask"]
            loss = total_loss(
                loss,
                hidden=hidden_state_loss(student.hidden, teacher.hidden, mask) if student.hidden else None,
                attention=attention_loss(student.attention, teacher.attention, mask) if student.attention else None,
                hidden_weight=terms.hidden_weight,
                attention_weight=terms.attention_weight,
            )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return super().prediction_step(model, self._student_inputs(model, inputs), prediction_loss_only, ignore_keys)
