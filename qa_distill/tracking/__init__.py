"""MLflow: the tracking store, runs and their logging, the model registry."""
