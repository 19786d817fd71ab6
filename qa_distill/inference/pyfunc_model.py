"""The code MLflow saves with the QA model and runs to load it ("models from code").

Run in a fresh process with the model's bundled code first on `sys.path`, it builds the pyfunc
from that code; no pickled object, and so no frozen module path, is kept in the artifacts.
"""

import mlflow

from qa_distill.inference.mlflow_model import QAModel

mlflow.models.set_model(QAModel())
