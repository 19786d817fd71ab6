"""Runs record their train and dev data as MLflow dataset inputs: name, source, fingerprint."""

from __future__ import annotations

import json

import mlflow

from qa_distill.config import DataConfig
from qa_distill.data.squad import load_split
from qa_distill.tracking.runs import log_dataset


def test_local_and_hub_splits_are_logged_as_inputs_without_their_rows(tracking_uri, dev_sample):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("dataset-inputs")  # not the experiment an earlier test left active
    split = load_split(DataConfig(data=str(dev_sample), train_questions=20), "train")
    with mlflow.start_run() as run:
        log_dataset(split.dataset, split.source, fingerprint=split.fingerprint, context="training")
        log_dataset(split.dataset.select(range(5)), "squad[validation]", fingerprint="0123456789abcdef",
                    context="evaluation")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    local, hub = by_context["training"], by_context["evaluation"]
    assert (local.name, local.digest, local.source_type) == ("train-sample.json", split.fingerprint, "local")
    assert json.loads(local.source)["uri"] == str(dev_sample / "train-sample.json")
    assert json.loads(local.profile)["num_rows"] == 20  # the subset the run trained on
    assert {c["name"] for c in json.loads(local.schema)["mlflow_colspec"]} >= {"id", "question", "context"}
    assert (hub.name, hub.digest, hub.source_type) == ("squad[validation]", "0123456789abcdef", "hugging_face")
    assert json.loads(hub.source)["path"] == "squad" and json.loads(hub.source)["split"] == "validation"
    assert "Super Bowl" not in local.profile + local.schema  # a description, not the rows
