"""The pyfunc QA model MLflow logs and serves."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from qa_distill.inference.mlflow_model import ARTIFACT, QAModel


def test_a_used_model_pickles_without_its_predictor_and_answers_the_same_after_loading(tiny_bert):
    # MLflow may pickle the model after running its input example; the predictor's traced graph
    # cannot be pickled, so it is left out and built again by load_context.
    context = SimpleNamespace(artifacts={ARTIFACT: tiny_bert}, model_config={})
    rows = [{"question": "Who won?", "context": "The Broncos won Super Bowl 50 in Santa Clara."},
            {"question": "Who wrote it?", "context": "It was written by Ada Lovelace in 1843."}]
    model = QAModel()
    model.load_context(context)
    answers = model.predict(context, rows)
    assert model.predict(context, pd.DataFrame(rows)) == answers  # records or a DataFrame alike
    # one answer per row, a non-empty span of that row's own context
    assert all(answer and answer in row["context"] for answer, row in zip(answers, rows, strict=True))
    copy = pickle.loads(pickle.dumps(model))
    assert not hasattr(copy, "predictors")
    copy.load_context(context)
    assert copy.predict(context, rows) == answers


@pytest.fixture(scope="module")
def short_contexts_model(tiny_bert) -> tuple[QAModel, SimpleNamespace]:
    """A loaded model whose config allows contexts of up to 8 words."""
    context = SimpleNamespace(artifacts={ARTIFACT: tiny_bert}, model_config={"max_context_words": 8})
    model = QAModel()
    model.load_context(context)
    return model, context


ROW = {"question": "Who won?", "context": "The Broncos won Super Bowl 50."}


def test_each_backend_gets_its_own_predictor_on_first_use(short_contexts_model):
    model, context = short_contexts_model
    assert set(model.predictors) == {"fp32"}  # built when loaded
    model.predict(context, [ROW], params={"backend": "int8"})
    assert model.predictors["int8"].backend == "int8" and set(model.predictors) == {"fp32", "int8"}
    int8 = model.predictors["int8"]
    model.predict(context, [ROW], params={"backend": "int8"})
    assert model.predictors["int8"] is int8


@pytest.mark.parametrize(
    ("rows", "params", "message"),
    [
        ([{"question": 3, "context": "x"}], None, "question of row(s) [0] is not a string"),
        ([{"question": "Who?"}], None, "missing field(s) ['context']: each row needs a question and a context"),
        ({"question": "Who?", "context": "Ada."}, None, "expected rows of question and context"),
        ([ROW], {"backend": "fp64"}, "unknown backend 'fp64'"),
        ([ROW, {**ROW, "context": "one two three four five six seven eight nine"}], None,
         "context of row 1 has 9 words, over the limit of 8 (model config max_context_words)"),
    ],
)
def test_bad_requests_raise_what_a_server_answers_with_400(short_contexts_model, rows, params, message):
    model, context = short_contexts_model
    with pytest.raises(MlflowException) as raised:
        model.predict(context, rows, params=params)
    assert raised.value.get_http_status_code() == 400
    assert raised.value.message.startswith(message) and "\n" not in raised.value.message
