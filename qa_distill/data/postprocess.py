"""From start/end logits of every window to one answer text per question (vectorised).

For each window, the `n_best` highest start and end logits among context tokens form an
n_best x n_best grid of candidate spans; spans that end before they start or run longer than
`max_answer_length` tokens are ruled out; the best start+end score over all windows of a
question wins. All windows are scored at once with NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qa_distill.config import AnswerConfig


def pad_offsets(offsets: Sequence[Sequence[Sequence[int]]], width: int) -> np.ndarray:
    """Ragged per-window offsets -> (windows, width, 2) int array, -1 outside the context."""
    out = np.full((len(offsets), width, 2), -1, dtype=np.int64)
    for i, window in enumerate(offsets):
        arr = np.asarray(window, dtype=np.int64).reshape(-1, 2)[:width]
        out[i, : len(arr)] = arr
    return out


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    *, n_best: int = AnswerConfig.n_best,
    max_answer_length: int = AnswerConfig.max_answer_length,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best (start, end) token pair and its score for each window; score -inf if none is valid."""
    width = min(start_logits.shape[1], offsets.shape[1])
    in_context = offsets[:, :width, 0] >= 0
    start = np.where(in_context, start_logits[:, :width].astype(np.float64), -np.inf)
    end = np.where(in_context, end_logits[:, :width].astype(np.float64), -np.inf)
    k = min(n_best, width)
    s_idx = np.argpartition(-start, k - 1, axis=1)[:, :k]
    e_idx = np.argpartition(-end, k - 1, axis=1)[:, :k]
    s_score = np.take_along_axis(start, s_idx, axis=1)
    e_score = np.take_along_axis(end, e_idx, axis=1)
    length = e_idx[:, None, :] - s_idx[:, :, None] + 1
    scores = s_score[:, :, None] + e_score[:, None, :]
    scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
    flat = scores.reshape(len(scores), k * k).argmax(axis=1)
    rows = np.arange(len(scores))
    best_s = s_idx[rows, flat // k]
    best_e = e_idx[rows, flat % k]
    return best_s, best_e, scores.reshape(len(scores), k * k)[rows, flat]


def postprocess(
    contexts: dict[str, str],
    example_ids: Sequence[str],
    offsets: Sequence[Sequence[Sequence[int]]] | np.ndarray,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int = AnswerConfig.n_best,
    max_answer_length: int = AnswerConfig.max_answer_length,
) -> dict[str, str]:
    """Answer text per question id; "" for a question whose windows hold no valid span.

    `n_best` and `max_answer_length` are the fields of `AnswerConfig`."""
    if not isinstance(offsets, np.ndarray):
        offsets = pad_offsets(offsets, start_logits.shape[1])
    s, e, score = best_spans(start_logits, end_logits, offsets, n_best=n_best, max_answer_length=max_answer_length)
    best: dict[str, tuple[float, int]] = {}
    for i, qid in enumerate(example_ids):
        if qid not in best or score[i] > best[qid][0]:
            best[qid] = (score[i], i)
    answers = {qid: "" for qid in contexts}
    for qid, (value, i) in best.items():
        if np.isfinite(value):
            answers[qid] = contexts[qid][offsets[i, s[i], 0] : offsets[i, e[i], 1]]
    return answers
