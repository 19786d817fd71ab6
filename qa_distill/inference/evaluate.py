"""Scoring a saved model on a SQuAD dev set, outside training (`qa-distill evaluate`).

Uses the predictor (same windows and post-processing as training evaluation), so a model
trained and scored on a dev subset can be scored again on the full dev set.
"""

from __future__ import annotations

from typing import Any

from qa_distill.config import DataConfig
from qa_distill.data.metrics import squad_scores
from qa_distill.data.squad import load_split
from qa_distill.inference.predictor import QAPredictor
from qa_distill.runtime.progress import Progress


def evaluate_model(source: str, data: DataConfig, *, backend: str = "fp32", chunk: int = 256) -> dict[str, Any]:
    """EM/F1 of a model (any source) on the dev split `data` describes, and its answers."""
    dev = load_split(data, "dev").dataset
    predictor = QAPredictor(source, backend=backend)
    answers: dict[str, str] = {}
    with Progress("evaluation", len(dev), unit="questions") as progress:
        for lo in range(0, len(dev), chunk):
            rows = dev[lo : lo + chunk]
            answers |= dict(zip(rows["id"], predictor.answer_batch(rows["question"], rows["context"]), strict=True))
            progress.update(len(rows["id"]))
    gold = {r["id"]: r["answers"]["text"] for r in dev}
    return {**squad_scores(gold, answers), "dev_questions": len(gold), "predictions": answers}
