"""The pyfunc QA model MLflow logs and serves."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from qa_distill.inference import compiled
from qa_distill.inference.mlflow_model import ARTIFACT, MAX_CONTEXT_WORDS, QAModel, log_qa_model


def test_the_model_answers_a_span_of_each_row_given_records_or_a_data_frame(tiny_bert):
    context = SimpleNamespace(artifacts={ARTIFACT: tiny_bert}, model_config={})
    rows = [{"question": "Who won?", "context": "The Broncos won Super Bowl 50 in Santa Clara."},
            {"question": "Who wrote it?", "context": "It was written by Ada Lovelace in 1843."}]
    model = QAModel()
    model.load_context(context)
    answers = model.predict(context, rows)
    assert model.predict(context, pd.DataFrame(rows)) == answers
    assert all(answer and answer in row["context"] for answer, row in zip(answers, rows, strict=True))


@pytest.fixture(scope="module")
def logged(tiny_bert, tmp_path_factory) -> dict:
    """The tiny model logged, with compiling on, in a store of its own: its URI, its files, and
    what each check of whether to compile answered while it was logged (none compiles here)."""
    root = tmp_path_factory.mktemp("store")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("log", artifact_location=(root / "artifacts").as_uri())
    checks: list[bool] = []
    real = compiled.compiling
    with pytest.MonkeyPatch.context() as patch, mlflow.start_run(experiment_id=experiment):
        patch.setenv("QA_DISTILL_COMPILE", "1")
        patch.setattr(compiled, "compiling", lambda: checks.append(real()) or False)
        uri = log_qa_model(tiny_bert, None)
        compiling_after = real()
    return {"compiling_after": compiling_after, "uri": uri, "checks": checks,
            "files": Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(root / "model")))}


def test_logging_validates_the_example_on_an_uncompiled_model(logged):
    assert (logged["files"] / "serving_input_example.json").exists()
    assert logged["checks"] and not any(logged["checks"])  # a predictor was built, and not compiled
    assert logged["compiling_after"]  # and compiling is on again after


def test_the_logged_model_is_code_and_loads_with_no_unpickling(logged, monkeypatch):
    files = logged["files"]
    assert not [p for p in files.rglob("*") if p.suffix in (".pkl", ".pickle") or p.name.startswith("python_model")]
    flavor = yaml.safe_load((files / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert (files / Path(flavor["model_code_path"]).name).exists() and (files / "code" / "qa_distill").is_dir()
    assert flavor["config"] == {"max_context_words": MAX_CONTEXT_WORDS}
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow refuses to unpickle a model
    model = mlflow.pyfunc.load_model(logged["uri"])
    rows = [{"question": "Who won?", "context": "The Broncos won Super Bowl 50."}]
    (answer,) = model.predict(pd.DataFrame(rows))
    assert answer and answer in rows[0]["context"]


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
