"""The pyfunc QA model MLflow logs and serves."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from qa_distill.mlflow_model import ARTIFACT, QAModel


def test_a_used_model_pickles_without_its_predictor_and_answers_the_same_after_loading(tiny_bert):
    # MLflow may pickle the model after running its input example; the predictor's traced graph
    # cannot be pickled, so it is left out and built again by load_context.
    context = SimpleNamespace(artifacts={ARTIFACT: tiny_bert})
    rows = [{"question": "Who won?", "context": "The Broncos won Super Bowl 50 in Santa Clara."}]
    model = QAModel()
    model.load_context(context)
    answers = model.predict(context, rows)
    copy = pickle.loads(pickle.dumps(model))
    assert not hasattr(copy, "predictor")
    copy.load_context(context)
    assert copy.predict(context, rows) == answers and answers[0] in rows[0]["context"]


def test_a_request_of_the_wrong_type_is_a_bad_request_in_one_line(tiny_bert):
    import pytest
    from mlflow.exceptions import MlflowException

    context = SimpleNamespace(artifacts={ARTIFACT: tiny_bert})
    model = QAModel()
    model.load_context(context)
    for rows, message in [([{"question": 3, "context": "Ada wrote it."}], "'question' must be text, got int 3"),
                          ([{"question": "Who?"}], "every row needs a 'context' field"),
                          ({"question": "Who?", "context": "Ada."}, "expected rows of question and context")]:
        with pytest.raises(MlflowException, match=message) as error:
            model.predict(context, rows)
        assert error.value.get_http_status_code() == 400
