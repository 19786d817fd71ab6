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
        frame = pd.DataFrame(model_input)
        return self.predictor.answer_batch(list(frame["question"]), list(frame["context"]))


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

