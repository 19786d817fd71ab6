"""The speed test's reference point: transformers 4.x `pipeline("question-answering")`, redone.

Every speed-up in the tables is over this baseline, so it lives apart from the code it judges.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Encoding

from qa_distill.models import input_names, load_qa_model


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

    def __init__(self, source: str, *, max_answer_len: int = 15, align_to_words: bool = True) -> None:
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

    def _chars(self, encoding: Encoding, start: int, end: int) -> tuple[int, int]:
        """Character span of tokens start..end in the context, widened to whole words."""
        if self.align_to_words:
            first, last = encoding.token_to_word(start), encoding.token_to_word(end)
            if first is not None and last is not None:
                return encoding.word_to_chars(first, 1)[0], encoding.word_to_chars(last, 1)[1]
        return encoding.offsets[start][0], encoding.offsets[end][1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()
