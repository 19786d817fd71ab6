"""Answering questions with a trained model on the CPU, with a choice of inference backend.

The same windows (features) and the same post-processing as training evaluation, so an answer
here is the answer the dev-set metric scored. Backends:

- `fp32`: float32, each batch padded to its longest window;
- `fp32-maxpad`: float32, every window padded to `max_length` (what fixed-shape serving does);
- `bf16`: weights and activations in bfloat16, where the CPU runs it natively. Casting the
  weights once is about 1.4x faster at batch 1 than autocast, which casts them on every call;
- `int8`: dynamic int8 quantisation of the encoder's linear layers (`quantize.py`), float32
  elsewhere.

Every backend runs its model compiled ahead of time by AOTInductor (`compiled.py`): the same
logits without the Python of the model's forward, fused, in a library cached on disk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from qa_distill.config import BACKENDS
from qa_distill.data.features import context_offsets, encode_windows
from qa_distill.data.postprocess import pad_offsets, postprocess
from qa_distill.errors import ModelError
from qa_distill.inference.compiled import compile_logits
from qa_distill.models import input_names, load_qa_model, resolve_source
from qa_distill.saved_model import read_settings


class QAPredictor:
    """Extractive QA with a model from any source, on one inference backend."""

    def __init__(
        self,
        source: str,
        backend: str = "fp32",
        max_length: int | None = None,
        doc_stride: int | None = None,
        batch_size: int = 32,
        n_best: int | None = None,
        max_answer_length: int | None = None,
    ) -> None:
        """Window and answer settings left None are the ones saved with the model (`saved_model`)."""
        if backend not in BACKENDS:
            raise ModelError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
        path = resolve_source(source)
        self.source, self.backend = source, backend
        saved = read_settings(path)
        self.max_length = max_length or saved.max_length
        self.doc_stride = doc_stride or saved.doc_stride
        self.n_best = n_best or saved.n_best
        self.max_answer_length = max_answer_length or saved.max_answer_length
        self.batch_size = batch_size
        loaded = load_qa_model(path)
        model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        self.params = sum(p.numel() for p in model.parameters())
        self.input_names = input_names(model)
        self.pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
        if backend == "bf16":
            model = model.to(torch.bfloat16)
        self.model = model  # uncompiled, not quantised: what `forward` was compiled from
        precision = "fp32" if backend == "fp32-maxpad" else backend
        self.forward = compile_logits(model, self.input_names, model.config.vocab_size, precision)

    def _inputs(self, enc, rows: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        """Windows `rows` right-padded to `width`, as model inputs (NumPy: several times cheaper
        than `tokenizer.pad`, which matters at batch 1)."""
        batch = {}
        for name in self.input_names:
            array = np.full((len(rows), width), self.pad_values[name], dtype=np.int64)
            for j, i in enumerate(rows):
                array[j, : len(enc[name][i])] = enc[name][i]
            batch[name] = torch.from_numpy(array)
        return batch

    def batches(self, enc) -> Iterator[tuple[np.ndarray, int, dict[str, torch.Tensor]]]:
        """(rows, width, model inputs) for every `batch_size` windows of `enc`, shortest first, so
        each batch pads only to its own longest window (to max_length for `fp32-maxpad`)."""
        lengths = [len(x) for x in enc["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            width = self.max_length if self.backend == "fp32-maxpad" else lengths[rows[-1]]
            yield rows, width, self._inputs(enc, rows, width)

    @torch.inference_mode()
    def _logits(self, enc) -> tuple[np.ndarray, np.ndarray]:
        lengths = [len(x) for x in enc["input_ids"]]
        width = self.max_length if self.backend == "fp32-maxpad" else max(lengths)
        start = np.full((len(lengths), width), -1e4, dtype=np.float32)
        end = np.full((len(lengths), width), -1e4, dtype=np.float32)
        for rows, longest, inputs in self.batches(enc):
            start_logits, end_logits = self.forward(inputs)
            start[rows, :longest] = start_logits.float().numpy()
            end[rows, :longest] = end_logits.float().numpy()
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
            n_best=self.n_best, max_answer_length=self.max_answer_length,
        )
        return [answers[i] for i in ids]

    def answer(self, question: str, context: str) -> str:
        return self.answer_batch([question], [context])[0]


def predict(model: str, question: str, context: str, backend: str = "fp32") -> str:
    """One answer from a model of any source (`qa-distill predict`)."""
    return QAPredictor(model, backend).answer(question, context)
