"""Answering questions with a trained model on the CPU, on any backend of `qa_distill.backends`.

The same windows (features) and the same post-processing as training evaluation, so an answer
here is the answer the dev-set metric scored. A backend's spec says how: its runtime (`RUNTIMES`)
builds the forward pass at its precision, and its padding sets the width of each batch.

- runtime "aotinductor": the model compiled ahead of time (`compiled.py`), the same logits
  without the Python of the model's forward, fused, in a library cached on disk; int8 quantised
  by `quantize.py`. bf16 casts the weights once, about 1.4x faster at batch 1 than autocast,
  which casts them on every call;
- runtime "onnxruntime": the model exported to ONNX and run by ONNX Runtime (`onnx_runtime.py`,
  the `onnx` extra).

A question may take at most half of the window (`max_question_tokens`); a longer one is refused
in one line (a `DataError`) rather than left to the tokenizer, which fails on it with a
traceback or a panic. Where a question leaves its context less room than the document stride,
that question's windows overlap by half their context share instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qa_distill.backends import usable
from qa_distill.data.features import context_offsets, encode_windows
from qa_distill.data.postprocess import pad_offsets, postprocess
from qa_distill.errors import DataError
from qa_distill.inference import compiled, onnx_runtime
from qa_distill.inference.compiled import Forward
from qa_distill.models import input_names, load_qa_model, resolve_source
from qa_distill.saved_model import read_settings


@dataclass(frozen=True)
class Runtime:
    """What runs a backend: `build(model, input names, vocab size, precision)` gives its forward
    pass, `quantised_mb(model, input names, vocab size)` the megabytes of the int8 weights it runs."""

    build: Callable[[nn.Module, Sequence[str], int, str], Forward]
    quantised_mb: Callable[[nn.Module, Sequence[str], int], float]


# the runtimes `qa_distill.backends.Backend.runtime` names
RUNTIMES = {
    "aotinductor": Runtime(compiled.compile_logits, compiled.quantised_mb),
    "onnxruntime": Runtime(onnx_runtime.onnx_logits, onnx_runtime.quantised_mb),
}


class QAPredictor:
    """Extractive QA with a model from any source, on one inference backend."""

    def __init__(
        self,
        source: str,
        *, backend: str = "fp32",
        max_length: int | None = None,
        doc_stride: int | None = None,
        batch_size: int = 32,
        n_best: int | None = None,
        max_answer_length: int | None = None,
    ) -> None:
        """Window and answer settings left None are the ones saved with the model (`saved_model`)."""
        self.spec = usable(backend)  # before the model loads
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
        if self.spec.precision == "bf16":
            model = model.to(torch.bfloat16)
        self.model = model  # not quantised: what `forward` was built from
        self.runtime = RUNTIMES[self.spec.runtime]
        self.forward = self.runtime.build(model, self.input_names, model.config.vocab_size, self.spec.precision)

    def quantised_mb(self) -> float:
        """Megabytes of the int8 weights `forward` runs with (they exist only in the runtime)."""
        return self.runtime.quantised_mb(self.model, self.input_names, self.model.config.vocab_size)

    def width(self, longest: int) -> int:
        """How wide a batch whose longest window is `longest` is padded, by the backend's policy."""
        return self.max_length if self.spec.padding == "max_length" else longest

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
        each batch pads only to its own longest window (to max_length where the backend says so)."""
        lengths = [len(x) for x in enc["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            width = self.width(lengths[rows[-1]])
            yield rows, width, self._inputs(enc, rows, width)

    @torch.inference_mode()
    def logits(self, enc) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of every window of `enc`, padded with -1e4 to the longest."""
        lengths = [len(x) for x in enc["input_ids"]]
        width = self.width(max(lengths))
        start = np.full((len(lengths), width), -1e4, dtype=np.float32)
        end = np.full((len(lengths), width), -1e4, dtype=np.float32)
        for rows, longest, inputs in self.batches(enc):
            start_logits, end_logits = self.forward(inputs)
            start[rows, :longest] = start_logits.float().numpy()
            end[rows, :longest] = end_logits.float().numpy()
        return start, end

    @property
    def max_question_tokens(self) -> int:
        """The longest question answered: half of the window, the rest is the context's."""
        return (self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True)) // 2

    def strides(self, questions: list[str]) -> list[int]:
        """The document stride of each question's windows; refuses a question over the limit."""
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        counts = [len(ids) for ids in self.tokenizer([q.lstrip() for q in questions], add_special_tokens=False,
                                                     truncation=False)["input_ids"]] if questions else []
        for row, count in enumerate(counts):
            if count > self.max_question_tokens:
                which = "the question" if len(questions) == 1 else f"question of row {row}"
                raise DataError(f"{which} has {count} tokens, over the limit of {self.max_question_tokens} "
                                f"(half of the model's {self.max_length}-token window)")
        # the tokenizer needs a stride below the context's share of the window
        return [self.doc_stride if self.doc_stride < room - n else (room - n) // 2 for n in counts]

    def answer_batch(self, questions: list[str], contexts: list[str]) -> list[str]:
        """One answer per (question, context) pair; all their windows in shared batches (one
        set of batches per stride: a long question shrinks its own windows' stride, not others')."""
        strides = self.strides(questions)
        answers = [""] * len(questions)
        for stride in set(strides):
            rows = [i for i, s in enumerate(strides) if s == stride]
            found = self._answer([questions[i] for i in rows], [contexts[i] for i in rows], stride)
            for i, answer in zip(rows, found, strict=True):
                answers[i] = answer
        return answers

    def _answer(self, questions: list[str], contexts: list[str], stride: int) -> list[str]:
        ids = [str(i) for i in range(len(questions))]
        enc = encode_windows(self.tokenizer, questions, contexts, max_length=self.max_length, stride=stride)
        start, end = self.logits(enc)
        example_ids = [ids[i] for i in enc["overflow_to_sample_mapping"]]
        offsets = pad_offsets(context_offsets(enc), start.shape[1])
        answers = postprocess(
            dict(zip(ids, contexts, strict=True)), example_ids, offsets, start, end,
            n_best=self.n_best, max_answer_length=self.max_answer_length,
        )
        return [answers[i] for i in ids]

    def answer(self, question: str, context: str) -> str:
        return self.answer_batch([question], [context])[0]


def predict(model: str, *, question: str, context: str, backend: str = "fp32") -> str:
    """One answer from a model of any source (`qa-distill predict`)."""
    return QAPredictor(model, backend=backend).answer(question, context)
