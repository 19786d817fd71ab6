"""Optuna searches over the distillation settings, each trial a nested MLflow run."""
