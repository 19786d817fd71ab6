"""The MLflow model of a trained QA model: a pyfunc that answers questions, ready to serve.

transformers 5 has no question-answering pipeline, so the `transformers` flavour cannot log one;
this pyfunc wraps the HF model directory with our own predictor (same windows and
post-processing as evaluation). Input: a DataFrame (or records) with string columns `question`
and `context`; output: one answer per row; param `backend` (a name of `qa_distill/backends.py`'s table), one
predictor per backend, built on first use. A bad request raises an `MlflowException` with a
one-line message, which `mlflow models serve` answers with HTTP 400 (any other exception would
come back with its traceback). A context longer than `max_context_words` (model config, saved
with the model; `mlflow.pyfunc.load_model(uri, model_config=...)` overrides it) is refused:
its windows would keep a server busy for seconds; so is a question over half the model's
window (the predictor's `max_question_tokens`).

The model is logged from code, not pickled: MLflow runs `pyfunc_model.py` (saved with the model)
to build it from the bundled `qa_distill` package, so loading runs no unpickling and no module
path is frozen in the artifacts. The HF directory is logged without what training left in it
(`training_args.bin`, a pickle; predictions; metrics): the served model is weights, tokenizer,
settings and model card. Logging validates the input example on uncompiled predictors:
compiling (tens of seconds) is for the machine that serves the model, on a backend's first use.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from qa_distill.config import BACKENDS
from qa_distill.errors import QaDistillError
from qa_distill.inference.requirements import PACKAGE_DIR, pinned_requirements
from qa_distill.saved_model import TRAINING_LEFTOVERS

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # what MLflow runs to build the model
ARTIFACT = "hf_model"  # the HF model directory inside the MLflow model
COLUMNS = ("question", "context")
MAX_CONTEXT_WORDS = 5000  # SQuAD contexts have at most ~700 words
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", name) for name in COLUMNS]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("backend", "string", "fp32")]),
)


def bad_request(message: str) -> MlflowException:
    """The error a server turns into HTTP 400 with this message and no traceback."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def check_request(frame: pd.DataFrame, backend: str, max_context_words: int) -> None:
    """Refuse, in one line, what the predictor cannot answer well: a missing column, a value
    that is not a string, an unknown backend, a context over the limit."""
    if backend not in BACKENDS:
        raise bad_request(f"unknown backend {backend!r}: expected one of {list(BACKENDS)}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise bad_request(f"missing field(s) {missing}: each row needs a question and a context")
    for column in COLUMNS:
        wrong = [i for i, value in enumerate(frame[column]) if not isinstance(value, str)]
        if wrong:
            raise bad_request(f"{column} of row(s) {wrong[:5]} is not a string")
    words = frame["context"].str.split().str.len()
    too_long = [(i, int(n)) for i, n in enumerate(words) if n > max_context_words]
    if too_long:
        row, count = too_long[0]
        raise bad_request(f"context of row {row} has {count} words, over the limit of {max_context_words} "
                          f"(model config max_context_words)")


class QAModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model_dir = context.artifacts[ARTIFACT]
        self.max_context_words = int((context.model_config or {}).get("max_context_words", MAX_CONTEXT_WORDS))
        self.predictors: dict[str, Any] = {}
        self.predictor("fp32")  # the default, ready before the first request

    def predictor(self, backend: str):
        """The predictor of one backend, built on its first request (every backend compiles the
        model, or loads it compiled from the cache: seconds that only a used backend should cost)."""
        if backend not in self.predictors:
            from qa_distill.inference.predictor import QAPredictor

            began = time.perf_counter()
            self.predictors[backend] = QAPredictor(self.model_dir, backend=backend)
            # stderr is the server's log: which backends a server has built, and what it cost
            print(f"qa-distill model: {backend} predictor ready in {time.perf_counter() - began:.1f} s",
                  file=sys.stderr, flush=True)
        return self.predictors[backend]

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        try:
            frame = pd.DataFrame(model_input)
        except (ValueError, TypeError) as exc:  # e.g. one row of scalars instead of a list of rows
            raise bad_request(f"expected rows of question and context: {exc}") from None
        backend = (params or {}).get("backend") or "fp32"
        check_request(frame, backend, self.max_context_words)
        try:
            return self.predictor(backend).answer_batch(list(frame["question"]), list(frame["context"]))
        except QaDistillError as exc:  # a question over the limit: the predictor names it
            raise bad_request(str(exc)) from None


@contextmanager
def _uncompiled() -> Iterator[None]:
    """Models built inside run uncompiled (`QA_DISTILL_COMPILE=0`); the setting is restored after."""
    before = os.environ.get("QA_DISTILL_COMPILE")
    os.environ["QA_DISTILL_COMPILE"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["QA_DISTILL_COMPILE"]
        else:
            os.environ["QA_DISTILL_COMPILE"] = before


def _without_leftovers(model_dir: Path, view: Path) -> Path:
    """`view`: what serving needs of the saved directory (the weights, tokenizer, settings and
    model card; not the training arguments' pickle, predictions, metrics or checkpoints), as
    hard links where the file system allows (MLflow refuses symbolic links out of a model)."""
    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    def leftovers(_: str, names: list[str]) -> list[str]:
        return [n for n in names if n in TRAINING_LEFTOVERS or n.startswith("checkpoint-")]

    shutil.copytree(model_dir, view, copy_function=link, ignore=leftovers)
    return view


def log_qa_model(model_dir: str | Path, registered_name: str | None, *,
                 max_context_words: int = MAX_CONTEXT_WORDS) -> str:
    """Log a saved HF QA model directory as an MLflow pyfunc (registered under `registered_name`
    unless None); returns its model URI."""
    example = pd.DataFrame({"question": ["Who wrote it?"], "context": ["It was written by Ada."]})
    # MLflow loads the model and answers the example to validate it
    with _uncompiled(), tempfile.TemporaryDirectory() as served:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={ARTIFACT: str(_without_leftovers(Path(model_dir), Path(served) / ARTIFACT))},
            code_paths=[str(PACKAGE_DIR)],
            input_example=example,
            signature=SIGNATURE,
            model_config={"max_context_words": max_context_words},
            registered_model_name=registered_name,
            pip_requirements=pinned_requirements(),
        )
    return info.model_uri
