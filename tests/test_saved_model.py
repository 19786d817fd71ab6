"""The settings saved with a model reach every user of the model, not only training evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from qa_distill.config import DataConfig
from qa_distill.data import load_split
from qa_distill.evaluate import evaluate_model
from qa_distill.mlflow_model import ARTIFACT, QAModel
from qa_distill.models import load_tokenizer
from qa_distill.saved_model import SETTINGS_FILE, SavedSettings, read_settings, save_settings


def _saved_with(model: str, out: Path, settings: SavedSettings) -> str:
    shutil.copytree(model, out)
    save_settings(out, settings)
    return str(out)


def _one_token_texts(tokenizer, context: str) -> set[str]:
    """Every answer a one-token span of `context` can give."""
    offsets = tokenizer(context, return_offsets_mapping=True)["offset_mapping"]
    return {context[a:b] for a, b in offsets if b > a}


def test_a_model_saved_with_max_answer_length_1_answers_with_one_token(tiny_bert, dev_sample, tmp_path):
    settings = SavedSettings(max_length=128, doc_stride=64, n_best=200, max_answer_length=1)
    model = _saved_with(tiny_bert, tmp_path / "short-answers", settings)
    served = QAModel()  # the MLflow model
    served.load_context(SimpleNamespace(artifacts={ARTIFACT: model}))
    predictor = served.predictor
    assert (predictor.max_length, predictor.doc_stride, predictor.n_best, predictor.max_answer_length) == (
        128, 64, 200, 1
    )

    data = DataConfig(data=str(dev_sample))
    dev = load_split(data, "dev").dataset
    tokenizer = load_tokenizer(tiny_bert)
    one_token = {r["id"]: _one_token_texts(tokenizer, r["context"]) for r in dev}
    short = evaluate_model(model, data)["predictions"]
    assert set(short) == set(one_token)
    for qid, answer in short.items():
        assert answer in one_token[qid], (qid, answer)
    # the same model with the default limit gives longer answers: the saved limit made them short
    predictor.max_answer_length = 30
    longer = predictor.answer_batch(list(dev["question"]), list(dev["context"]))
    assert any(answer not in one_token[qid] for qid, answer in zip(dev["id"], longer, strict=True))

def test_settings_round_trip_and_missing_ones_are_the_recipe_defaults(tmp_path):
    assert read_settings(tmp_path) == SavedSettings(384, 128, 20, 30)  # a model saved elsewhere
    save_settings(tmp_path, SavedSettings(96, 32, 10, 5))
    assert read_settings(tmp_path) == SavedSettings(96, 32, 10, 5)
    # a model saved before the answer settings were: its windows, the default answer settings
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"max_length": 256, "doc_stride": 64}))
    assert read_settings(tmp_path) == SavedSettings(256, 64, 20, 30)
