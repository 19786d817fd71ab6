"""Answering questions with a trained model: inference backends, compiled graphs, the MLflow model."""
