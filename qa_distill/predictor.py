"""Answering questions with a trained model on the CPU, with a choice of inference backend.

The same windows (features) and the same post-processing as training evaluation, so an answer
here is the answer the dev-set metric scored. Backends:

- `fp32`: float32, each batch padded to its longest window;
- `fp32-maxpad`: float32, every window padded to `max_length` (what fixed-shape serving does);
- `bf16`: bfloat16 autocast, where the CPU runs it natively;
- `int8`: dynamic int8 quantisation of the linear layers (weights int8, activations quantised
  on the fly), float32 elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, PreTrainedModel

from qa_distill.errors import ModelError
from qa_distill.features import context_offsets, encode_windows
from qa_distill.models import accepts, load_tokenizer, resolve_source
from qa_distill.postprocess import pad_offsets, postprocess
from qa_distill.teacher_cache import autocast

BACKENDS = ("fp32", "fp32-maxpad", "bf16", "int8")
WINDOW_SETTINGS = "qa_distill.json"  # saved beside a model: the windows it was trained on


def quantize_int8(model: PreTrainedModel) -> torch.nn.Module:
    """Dynamic int8 quantisation of every nn.Linear (the bulk of a transformer's compute)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def window_settings(model_dir: str | Path, default: tuple[int, int] = (384, 128)) -> tuple[int, int]:
    """The (max_length, doc_stride) a model was trained with, if it says; else the default."""
    path = Path(model_dir) / WINDOW_SETTINGS
    if path.exists():
        saved = json.loads(path.read_text())
        return int(saved["max_length"]), int(saved["doc_stride"])
    return default


class QAPredictor:
    """Extractive QA with a model from any source, on one inference backend."""

    def __init__(
        self,
        source: str,
        backend: str = "fp32",
        max_length: int | None = None,
        doc_stride: int | None = None,
        batch_size: int = 32,
        n_best: int = 20,
        max_answer_length: int = 30,
    ) -> None:
        if backend not in BACKENDS:
            raise ModelError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
        path = resolve_source(source)
        self.source, self.backend = source, backend
        saved_length, saved_stride = window_settings(path)
        self.max_length = max_length or saved_length
        self.doc_stride = doc_stride or saved_stride
        self.batch_size, self.n_best, self.max_answer_length = batch_size, n_best, max_answer_length
        self.tokenizer = load_tokenizer(path)
        model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
        self.params = sum(p.numel() for p in model.parameters())
        self.takes_token_types = accepts(model, "token_type_ids")
        self.model = quantize_int8(model) if backend == "int8" else model
        self.precision = "bf16" if backend == "bf16" else "fp32"

    @torch.inference_mode()
    def _logits(self, enc) -> tuple[np.ndarray, np.ndarray]:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.takes_token_types else [])
        n = len(enc["input_ids"])
        width = self.max_length if self.backend == "fp32-maxpad" else max(len(x) for x in enc["input_ids"])
        start = np.full((n, width), -1e4, dtype=np.float32)
        end = np.full((n, width), -1e4, dtype=np.float32)
        order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
        for lo in range(0, n, self.batch_size):
            rows = order[lo : lo + self.batch_size]
            batch = self.tokenizer.pad(
                {k: [enc[k][i] for i in rows] for k in names},
                padding="max_length" if self.backend == "fp32-maxpad" else "longest",
                max_length=self.max_length,
                return_tensors="pt",
            )
            with autocast(torch.device("cpu"), self.precision):
                out = self.model(**batch)
            w = out.start_logits.shape[1]
            start[rows, :w] = out.start_logits.float().numpy()
            end[rows, :w] = out.end_logits.float().numpy()
        return start, end

    def answer_batch(self, questions: list[str], contexts: list[str]) -> list[str]:
        """One answer per (question, context) pair; all their windows in shared batches."""
        ids = [str(i) for i in range(len(questions))]
        enc = encode_windows(self.tokenizer, questions, contexts, self.max_length, self.doc_stride)
        start, end = self._logits(enc)
        example_ids = [ids[i] for i in enc["overflow_to_sample_mapping"]]
        offsets = pad_offsets(context_offsets(enc), start.shape[1])
        answers = postprocess(
            dict(zip(ids, contexts, strict=True)), example_ids, offsets, start, end,
            self.n_best, self.max_answer_length,
        )
        return [answers[i] for i in ids]

    def answer(self, question: str, context: str) -> str:
        return self.answer_batch([question], [context])[0]
