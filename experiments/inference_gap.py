"""Where a QA pipeline's extra F1 over our predictor comes from: one set of dev answers per way of
windowing and post-processing, from the same models.

Issue 28 measured transformers 4's question-answering pipeline 1.0-1.7 F1 above our predictor with
the same weights. The pipeline differs from us in four ways, added here one row at a time:
384-token windows (our recipes infer at their training length: the cpu recipe's 256); spans ranked
by per-window probabilities (a softmax of start and of end logits over the window's context) rather
than by the sum of raw logits, which the windows of one question do not share a scale for; spans
widened to whole words (its `align_to_words`, where a span starting or ending inside a word would
cut it); and answers of at most 15 tokens (its `max_answer_len`; ours is the model's saved
`answers.max_answer_length`: 30 by default, 15 in the cpu recipe since this table). The second
row takes the last of these alone, at our windows.

    python experiments/inference_gap.py --models teacher=<source> student=<source> --output <stem>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from qa_distill.config import DEFAULT_DEV_JSON, DataConfig
from qa_distill.data.features import context_offsets, encode_windows
from qa_distill.data.metrics import squad_scores
from qa_distill.data.postprocess import pad_offsets, postprocess
from qa_distill.data.squad import load_split
from qa_distill.inference.predictor import QAPredictor
from qa_distill.reporting.tables import write_tables
from qa_distill.runtime.hardware import cpu_name

# row: (window length or None for the model's own, per-window probabilities, whole words, longest answer or None)
ROWS = (
    ("ours (the model's windows)", None, False, False, None),
    ("ours, answers of at most 15 tokens", None, False, False, 15),
    ("384-token windows", 384, False, False, None),
    ("+ per-window probabilities", 384, True, False, None),
    ("+ whole words", 384, True, True, None),
    ("+ answers of at most 15 tokens", 384, True, True, 15),
)


def log_probabilities(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each window's logits as log-softmax over its context tokens: comparable across windows."""
    width = min(logits.shape[1], offsets.shape[1])
    masked = np.where(offsets[:, :width, 0] >= 0, logits[:, :width].astype(np.float64), -np.inf)
    top = masked.max(axis=1, keepdims=True)
    return masked - (top + np.log(np.exp(masked - top).sum(axis=1, keepdims=True)))


def whole_word_offsets(offsets: np.ndarray, contexts: list[str]) -> np.ndarray:
    """Offsets widened over the letters and digits a token's own edge letters run on into: a span
    then covers whole words (punctuation stays its own)."""
    wide = offsets.copy()
    for window, text in enumerate(contexts):
        for token in np.flatnonzero(wide[window, :, 0] >= 0):
            a, b = wide[window, token]
            while 0 < a < b and text[a].isalnum() and text[a - 1].isalnum():  # a word goes on to the left
                a -= 1
            while a < b < len(text) and text[b - 1].isalnum() and text[b].isalnum():
                b += 1
            wide[window, token] = a, b
    return wide


def answers_by_row(source: str, questions: list[str], contexts: list[str]) -> dict[str, list[str]]:
    """Every row's answers from model `source`; its logits computed once per window length."""
    ids = [str(i) for i in range(len(questions))]
    by_id = dict(zip(ids, contexts, strict=True))
    windows = {}  # window length -> (its predictor, the windows' owners, offsets, start and end logits)
    found: dict[str, list[str]] = {}
    for name, length, probabilities, whole_words, longest in ROWS:
        if length not in windows:
            predictor = QAPredictor(source, max_length=length)
            enc = encode_windows(predictor.tokenizer, questions, contexts, max_length=predictor.max_length,
                                 stride=predictor.doc_stride)
            start, end = predictor.logits(enc)
            owner = [ids[i] for i in enc["overflow_to_sample_mapping"]]
            windows[length] = predictor, owner, pad_offsets(context_offsets(enc), start.shape[1]), start, end
        predictor, owner, offsets, start, end = windows[length]
        if probabilities:
            start, end = log_probabilities(start, offsets), log_probabilities(end, offsets)
        if whole_words:
            offsets = whole_word_offsets(offsets, [by_id[i] for i in owner])
        answers = postprocess(by_id, owner, offsets, start, end, n_best=predictor.n_best,
                              max_answer_length=longest or predictor.max_answer_length)
        found[name] = [answers[i] for i in ids]
    return found


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="name=source (a directory or an MLflow URI)")
    parser.add_argument("--data", default=str(DEFAULT_DEV_JSON.parent), help="hub name, directory or dev JSON")
    parser.add_argument("--dev-questions", type=int, default=1000, help="seeded subset of the dev set")
    parser.add_argument("--output", required=True, help="table stem: <output>.csv and .md")
    args = parser.parse_args(argv)
    dev = load_split(DataConfig(data=args.data, dev_questions=args.dev_questions), "dev").dataset
    gold = {r["id"]: r["answers"]["text"] for r in dev}
    rows = []
    for spec in args.models:
        name, source = spec.split("=", 1)
        for row, answers in answers_by_row(source, list(dev["question"]), list(dev["context"])).items():
            scores = squad_scores(gold, dict(zip(dev["id"], answers, strict=True)))
            rows.append({"model": name, "inference": row, "exact_match": scores["exact_match"], "f1": scores["f1"]})
    table = pd.DataFrame(rows).assign(dev_questions=len(gold), cpu=cpu_name())
    csv, md = write_tables(table, Path(args.output))
    print(f"{csv}\n{md}")
    return table


if __name__ == "__main__":
    main()
