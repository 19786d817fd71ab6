"""The MLflow model of a trained QA model: a pyfunc that answers questions.

transformers 5 has no question-answering pipeline, so the `transformers` flavour cannot log one;
this pyfunc wraps the HF model directory with our own predictor (same windows and
post-processing as evaluation). Input: a DataFrame (or records) with `question` and `context`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

ARTIFACT = "hf_model"  # the HF model directory inside the MLflow model


class QAModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from qa_distill.predictor import QAPredictor

        self.predictor = QAPredictor(context.artifacts[ARTIFACT])

    def __getstate__(self) -> dict:
        """Pickled without the predictor, which `load_context` builds again from the artifacts:
        MLflow may pickle the model after using it, and a traced graph cannot be pickled."""
        return {key: value for key, value in self.__dict__.items() if key != "predictor"}

    def predict(self, context, model_input, params=None) -> list[str]:
        frame = _requests(model_input)
        return self.predictor.answer_batch(list(frame["question"]), list(frame["context"]))


def _requests(model_input) -> pd.DataFrame:
    """The request as rows of text, or a bad-request error in one line (served: HTTP 400, not 500)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    try:
        frame = pd.DataFrame(model_input)
    except (ValueError, TypeError) as exc:
        raise MlflowException(f"expected rows of question and context: {exc}", INVALID_PARAMETER_VALUE) from None
    for column in ("question", "context"):
        if column not in frame.columns:
            raise MlflowException(f"every row needs a {column!r} field", INVALID_PARAMETER_VALUE)
        values = frame[column].tolist()
        row = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if row is not None:
            value = values[row]
            raise MlflowException(f"{column!r} must be text, got {type(value).__name__} {value!r} in row {row}",
                                  INVALID_PARAMETER_VALUE)
    return frame


def log_qa_model(model_dir: str | Path, registered_name: str | None = None) -> str:
    """Log a saved HF QA model directory as an MLflow pyfunc; returns its model URI."""
    example = pd.DataFrame({"question": ["Who wrote it?"], "context": ["It was written by Ada."]})
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=QAModel(),
        artifacts={ARTIFACT: str(model_dir)},
        code_paths=[str(Path(__file__).parent)],
        input_example=example,
        registered_model_name=registered_name,
        pip_requirements=["torch", "transformers", "pandas", "numpy"],
    )
    return info.model_uri


def hf_model_dir(downloaded: Path) -> Path | None:
    """Where the HF files are inside a downloaded MLflow model (ours, or any dir with config)."""
    candidates = [downloaded, *sorted((downloaded / "artifacts").glob("*"))]
    return next((c for c in candidates if (c / "config.json").exists()), None)
