"""The pyfunc QA model MLflow logs and serves."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pandas as pd

from qa_distill.mlflow_model import ARTIFACT, QAModel


def test_a_used_model_pickles_without_its_predictor_and_answers_the_same_after_loading(tiny_bert):
    # MLflow may pickle the model after running its input example; the predictor's traced graph
    # cannot be pickled, so it is left out and built again by load_context.
    context = SimpleNamespace(artifacts={ARTIFACT: tiny_bert})
    rows = [{"question": "Who won?", "context": "The Broncos won Super Bowl 50 in Santa Clara."},
            {"question": "Who wrote it?", "context": "It was written by Ada Lovelace in 1843."}]
    model = QAModel()
    model.load_context(context)
    answers = model.predict(context, rows)
    assert model.predict(context, pd.DataFrame(rows)) == answers  # records or a DataFrame alike
    # one answer per row, a non-empty span of that row's own context
    assert all(answer and answer in row["context"] for answer, row in zip(answers, rows, strict=True))
    copy = pickle.loads(pickle.dumps(model))
    assert not hasattr(copy, "predictor")
    copy.load_context(context)
    assert copy.predict(context, rows) == answers
