"""SQuAD v1.1 Exact Match and F1, computed as the official v1.1 evaluation script does.

Answers are normalised (lower case, punctuation removed, the articles a/an/the removed,
whitespace collapsed); each prediction takes its best score over the gold answers; a question
without a prediction scores 0; results are means over all questions of the dataset, x 100.
Written here because the `evaluate` package fetches its metric from the hub at run time.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    gold_answers: Mapping[str, Iterable[str]], predictions: Mapping[str, str]
) -> dict[str, float]:
    """`{"exact_match", "f1"}` over every question of `gold_answers` (id -> gold texts)."""
    total = em = f = 0.0
    for qid, golds in gold_answers.items():
        total += 1
        if qid not in predictions:
            continue
        golds = list(golds)
        em += max(exact_match(predictions[qid], g) for g in golds)
        f += max(f1(predictions[qid], g) for g in golds)
    if total == 0:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f / total}


def gold_from_squad_json(dataset: dict) -> dict[str, list[str]]:
    """id -> gold answer texts, from a parsed SQuAD v1.1 JSON object."""
    return {
        qa["id"]: [a["text"] for a in qa["answers"]]
        for article in dataset["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }
