"""`qa-distill score`: the official v1.1 evaluation script's interface, on our metric."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from qa_distill.data.metrics import gold_from_squad_json, squad_scores
from qa_distill.errors import DataError

log = logging.getLogger(__name__)


def _read_json(path: str, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({what}: {exc})") from None


def score_files(dataset_json: str, predictions_json: str) -> dict[str, float]:
    """EM/F1 of an id -> answer JSON against a SQuAD v1.1 dataset JSON."""
    dataset = _read_json(dataset_json, "SQuAD dataset")
    predictions = _read_json(predictions_json, "predictions")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise DataError(f"{dataset_json}: not SQuAD JSON (expected an object with a 'data' list)")
    if not isinstance(predictions, dict) or not all(isinstance(v, str) for v in predictions.values()):
        raise DataError(f"{predictions_json}: expected a JSON object of question id -> answer text")
    try:
        gold = gold_from_squad_json(dataset)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{dataset_json}: not SQuAD v1.1 JSON (missing {exc})") from None
    unknown = [qid for qid in predictions if qid not in gold]
    if predictions and len(unknown) == len(predictions):
        raise DataError(f"{predictions_json}: none of its {len(unknown)} question ids is in {dataset_json}, "
                        f"e.g. {unknown[0]!r}: predictions for another dataset?")
    if unknown:
        log.warning("%s: %d of %d question ids are not in %s (e.g. %r) and are ignored",
                    predictions_json, len(unknown), len(predictions), dataset_json, unknown[0])
    return squad_scores(gold, predictions)
