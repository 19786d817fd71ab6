"""The logged model as a user serves it: its requirements, its signature, and `mlflow models serve`
answering good and bad requests over HTTP (a random-weight tiny BERT: any answer will do)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import packages_distributions, version
from pathlib import Path

import mlflow
import pytest
import yaml

import qa_distill
from qa_distill.config import BACKENDS
from qa_distill.inference.mlflow_model import MAX_CONTEXT_WORDS, log_qa_model
from qa_distill.inference.predictor import QAPredictor
from qa_distill.inference.requirements import CPU_TORCH_INDEX, imported_modules

from .conftest import DEV_JSON, child_env

pytestmark = pytest.mark.slow  # logging the model runs it once; the server takes a minute to start
ROOT = Path(__file__).resolve().parents[1]
REGISTERED = "tiny-qa"


@pytest.fixture(scope="module")
def logged(tiny_bert, tmp_path_factory) -> dict:
    """The tiny model logged and registered in a store of its own; its URI, files and store."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        log_qa_model(tiny_bert, REGISTERED)
    model_uri = f"models:/{REGISTERED}/1"
    return {"uri": model_uri, "tracking_uri": uri, "root": root,
            "files": Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(root / "model")))}


def test_requirements_pin_what_serving_imports_and_no_training_package(logged):
    lines = (logged["files"] / "requirements.txt").read_text().split("\n")
    pins = dict(line.split("==") for line in lines if "==" in line)
    assert all("==" in line or line.startswith("--extra-index-url") for line in lines if line), lines
    code = logged["files"] / "code" / "qa_distill"
    package = Path(qa_distill.__file__).parent
    # the whole package is bundled, each sub-package's modules with it
    assert {p.relative_to(code) for p in code.rglob("*.py")} == {p.relative_to(package) for p in package.rglob("*.py")}
    providers = packages_distributions()
    for module in imported_modules(package_dir=code):  # the closure of the bundled serving code
        for distribution in providers[module]:
            assert pins.get(distribution) == version(distribution).split("+")[0], (module, distribution)
    assert not {"optuna", "plotly", "matplotlib"} & set(pins)
    env = yaml.safe_load((logged["files"] / "python_env.yaml").read_text())
    assert env["dependencies"] == ["-r requirements.txt"]
    assert (CPU_TORCH_INDEX in lines) == version("torch").endswith("+cpu")


def test_signature_types_the_inputs_the_output_and_the_backend(logged):
    signature = mlflow.models.get_model_info(logged["uri"]).signature
    assert [(c.name, c.type.name) for c in signature.inputs.inputs] == [("question", "string"), ("context", "string")]
    assert [c.type.name for c in signature.outputs.inputs] == ["string"]
    (param,) = signature.params.params
    assert (param.name, param.dtype.name, param.default) == ("backend", "string", "fp32")
    config = yaml.safe_load((logged["files"] / "MLmodel").read_text())["flavors"]["python_function"]["config"]
    assert config == {"max_context_words": MAX_CONTEXT_WORDS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(logged):
    """`mlflow models serve --env-manager local` on the registered version; its URL and log."""
    port, log = _free_port(), logged["root"] / "serve.log"
    bin_dir = Path(sys.executable).parent  # mlflow's CLI, and the uvicorn it runs, in this environment
    env = child_env(MLFLOW_TRACKING_URI=logged["tracking_uri"], PYTHONPATH=str(ROOT),
                    PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))
    mlflow_cli = bin_dir / "mlflow"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(mlflow_cli), "models", "serve", "-m", logged["uri"], "--env-manager", "local", "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"the server exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"the server did not answer /ping in 4 minutes: {log.read_text()[-2000:]}")
        yield {"url": url, "log": log}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
            process.wait(timeout=30)


def _post(server: dict, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{server['url']}/invocations", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    from qa_distill.data.squad import load_questions

    return [{"question": q["question"], "context": q["context"]} for q in load_questions(DEV_JSON, 3)]


def test_good_requests_get_an_answer_per_row(server, rows, tiny_bert):
    status, body = _post(server, {"dataframe_records": rows})
    assert status == 200
    answers = json.loads(body)["predictions"]
    expected = QAPredictor(tiny_bert).answer_batch([r["question"] for r in rows], [r["context"] for r in rows])
    assert answers == expected and all(a in r["context"] for a, r in zip(answers, rows, strict=True))
    columns = {"question": [r["question"] for r in rows], "context": [r["context"] for r in rows]}
    assert _post(server, {"inputs": columns}) == (200, body)


def test_backend_param_picks_the_int8_predictor(server, rows, tiny_bert):
    assert "int8 predictor ready" not in server["log"].read_text()  # built on first use only
    status, body = _post(server, {"dataframe_records": rows, "params": {"backend": "int8"}})
    assert status == 200
    int8 = QAPredictor(tiny_bert, backend="int8").answer_batch([r["question"] for r in rows],
                                                               [r["context"] for r in rows])
    assert json.loads(body)["predictions"] == int8
    # the tiny model answers alike on every backend, so the server's log shows which one it used
    assert "qa-distill model: int8 predictor ready" in server["log"].read_text()


def _refused(server: dict, payload: dict) -> str:
    """A 400 whose JSON body is one line with no traceback; returns the message's last line
    (MLflow's server puts the request's rows before the model's own one-line reason)."""
    status, body = _post(server, payload)
    assert status == 400, body
    assert "\n" not in body.strip() and "Traceback" not in body and 'File "' not in body
    error = json.loads(body)
    assert set(error) <= {"error_code", "message", "sqlstate", "error_class"}  # no stack_trace
    return error["message"].splitlines()[-1]


def test_bad_requests_get_a_400_with_the_reason(server, rows):
    row = rows[0]
    assert _refused(server, {"dataframe_records": [{**row, "question": 3}]}) == (
        "Error: question of row(s) [0] is not a string")
    assert "missing inputs ['context']" in _refused(server, {"dataframe_records": [{"question": "Who?"}]})
    assert _refused(server, {"dataframe_records": [row], "params": {"backend": "int9"}}).endswith(
        f"unknown backend 'int9': expected one of {list(BACKENDS)}")
    too_long = {**row, "context": "word " * (MAX_CONTEXT_WORDS + 1)}
    assert _refused(server, {"dataframe_records": [row, too_long]}).endswith(
        f"context of row 1 has {MAX_CONTEXT_WORDS + 1} words, over the limit of {MAX_CONTEXT_WORDS} "
        "(model config max_context_words)")


def test_every_length_band_gets_an_answer_or_a_one_line_400(server, tiny_bert):
    from .test_request_lengths import bands, words

    limit = QAPredictor(tiny_bert).max_question_tokens  # of the saved 384-token window
    questions, contexts = bands(limit, 384)
    contexts += (MAX_CONTEXT_WORDS + 1,)
    fitting = []
    for q in questions:
        for c in contexts:
            row = {"question": words("why", q), "context": words("word", c)}
            if c > MAX_CONTEXT_WORDS:  # checked first
                assert _refused(server, {"dataframe_records": [row]}).endswith("(model config max_context_words)")
            elif q > limit:
                assert _refused(server, {"dataframe_records": [row]}).endswith(
                    f"the question has {q} tokens, over the limit of {limit} (half of the model's 384-token window)")
            else:
                status, body = _post(server, {"dataframe_records": [row]})
                assert status == 200, body
                (answer,) = json.loads(body)["predictions"]
                assert answer in row["context"]
                fitting.append((row, answer))
    status, body = _post(server, {"dataframe_records": [row for row, _ in fitting]})
    assert status == 200 and json.loads(body)["predictions"] == [answer for _, answer in fitting]
    too_long = {"question": words("why", limit + 1), "context": "word"}
    assert _refused(server, {"dataframe_records": [fitting[0][0], too_long]}).endswith(
        f"question of row 1 has {limit + 1} tokens, over the limit of {limit} (half of the model's 384-token window)")
