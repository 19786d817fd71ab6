"""The settings saved with a model reach every user of the model, not only training evaluation."""

from __future__ import annotations

import contextlib
import io
import json
import re
from types import SimpleNamespace

from qa_distill.config import DataConfig
from qa_distill.data.squad import load_split
from qa_distill.inference.mlflow_model import ARTIFACT, QAModel
from qa_distill.inference.predictor import QAPredictor
from qa_distill.models import load_tokenizer
from qa_distill.saved_model import (
    SETTINGS_FILE,
    CardFacts,
    SavedSettings,
    read_settings,
    save_settings,
    write_model_card,
)

from .conftest import one_token_texts, saved_with


def test_the_mlflow_model_answers_with_the_saved_settings(tiny_bert, dev_sample, tmp_path):
    settings = SavedSettings(max_length=128, doc_stride=64, n_best=200, max_answer_length=1)
    model = saved_with(tiny_bert, tmp_path / "short-answers", settings)
    served = QAModel()
    served.load_context(SimpleNamespace(artifacts={ARTIFACT: model}, model_config={}))
    predictor = served.predictor("fp32")
    assert (predictor.max_length, predictor.doc_stride, predictor.n_best, predictor.max_answer_length) == (
        128, 64, 200, 1
    )
    dev = load_split(DataConfig(data=str(dev_sample)), "dev").dataset
    rows = [{"question": r["question"], "context": r["context"]} for r in dev]
    tokenizer = load_tokenizer(tiny_bert)
    one_token = [one_token_texts(tokenizer, r["context"]) for r in dev]
    short = served.predict(None, rows)
    assert all(answer in texts for answer, texts in zip(short, one_token, strict=True))
    # the same model with the default limit gives longer answers: the saved limit made them short
    predictor.max_answer_length = 30
    longer = served.predict(None, rows)
    assert any(answer not in texts for answer, texts in zip(longer, one_token, strict=True))


def test_settings_round_trip_and_missing_ones_are_the_recipe_defaults(tmp_path):
    assert read_settings(tmp_path) == SavedSettings(384, 128, 20, 30)  # a model saved elsewhere
    save_settings(tmp_path, SavedSettings(96, 32, 10, 5))
    assert read_settings(tmp_path) == SavedSettings(96, 32, 10, 5)
    # a model saved before the answer settings were: its windows, the default answer settings
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"max_length": 256, "doc_stride": 64}))
    assert read_settings(tmp_path) == SavedSettings(256, 64, 20, 30)


def test_the_model_card_says_what_the_model_is_and_its_snippet_answers_as_the_predictor(tiny_bert, tmp_path):
    model = saved_with(tiny_bert, tmp_path / "card", SavedSettings(max_length=128, doc_stride=64, n_best=20,
                                                                    max_answer_length=4))
    facts = CardFacts("qa-distill-x-distill", "x", "distill", "tiny-bert", 38.244, 52.1419, 10570,
                      distillation="T=2, alpha=0.5, teacher models:/qa-distill-x-teacher/1")
    card = write_model_card(model, facts).read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: question-answering")
    for said in ("# qa-distill-x-distill", "recipe `x`", "EM 38.24, F1 52.14 on 10570 questions",
                 "T=2, alpha=0.5", "not measured yet", 'load_model("models:/qa-distill-x-distill@champion")'):
        assert said in card, said
    snippet = re.search(r"## With transformers.*?```python\n(.*?)```", card, re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace('model_dir = "."', f"model_dir = {model!r}"), {})
    context = "The Denver Broncos defeated the Carolina Panthers to win Super Bowl 50."
    answer = printed.getvalue().strip()
    assert answer and answer in context and len(answer.split()) <= 4
    assert answer == QAPredictor(model, backend="fp32").answer_batch(["Who won Super Bowl 50?"], [context])[0]
