"""`qa-distill report`: a recipe's newest finished runs per role, as CSV and Markdown."""

import mlflow
import pandas as pd
import pytest

from qa_distill.config import TrackingConfig
from qa_distill.errors import ConfigError
from qa_distill.reporting.report import run_report
from qa_distill.tracking.runs import copy_outcome


def _log(recipe, role, f1, status="FINISHED"):
    with mlflow.start_run() as run:
        mlflow.set_tags({"recipe": recipe, "role": role})
        mlflow.log_params({"model.name": "m", "distillation.temperature": 2.0, "distillation.alpha": 0.5,
                           "distillation.hidden_weight": 1.0, "distillation.attention_weight": 0.0,
                           "training.epochs": 1, "data.train_questions": 100, "model.layer_stride": 2})
        mlflow.log_metrics({"exact_match": f1 - 10, "f1": f1, "train_seconds": 120.0, "dev_questions": 50,
                            "train_windows_per_second": 10.0})
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_one_row_per_model_from_the_newest_finished_run(tracking_uri, tmp_path):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("t")
    _log("cpu", "teacher", 70.0)
    _log("cpu", "student", 50.0)
    newest_student = _log("cpu", "student", 55.0)
    _log("cpu", "distill", 60.0)
    _log("cpu", "distill", 99.0, status="FAILED")  # never reported
    _log("paper", "teacher", 88.0)  # another recipe
    mlflow.set_experiment("another")
    _log("cpu", "teacher", 99.0)  # another experiment
    table = run_report("cpu", TrackingConfig(tracking_uri=tracking_uri, experiment="t"), output=str(tmp_path / "cpu"))
    assert list(table["model"]) == ["teacher", "student", "distilled"]
    assert list(table["f1"]) == [70.0, 55.0, 60.0]
    assert table.loc[1, "run_id"] == newest_student
    assert pd.isna(table.loc[0, "temperature"]) and table.loc[2, "temperature"] == "2.0"
    assert pd.isna(table.loc[1, "hidden_weight"]) and table.loc[2, "hidden_weight"] == "1.0"
    assert table.loc[2, "attention_weight"] == "0.0"
    assert set(table.columns) >= {"model", "exact_match", "f1", "train_seconds", "dev_questions"}
    written = pd.read_csv(tmp_path / "cpu.csv")
    assert list(written["f1"]) == [70.0, 55.0, 60.0]
    assert "| distilled" in (tmp_path / "cpu.md").read_text()
    reports = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'report'")
    assert len(reports) == 1
    # the figures as metrics of the report run, and copied with the table onto a workflow's parent
    client = mlflow.MlflowClient()
    report = client.get_run(reports["run_id"][0])
    assert report.data.metrics["distilled.f1"] == 60.0 and report.data.metrics["teacher.exact_match"] == 60.0
    assert report.data.metrics["student.train_minutes"] == 2.0
    with mlflow.start_run(run_name="main") as parent:
        pass
    copy_outcome(report.info.run_id, parent.info.run_id)
    assert client.get_run(parent.info.run_id).data.metrics == report.data.metrics
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"cpu.csv", "cpu.md"}


def test_no_runs_is_a_clear_error(tracking_uri, tmp_path):
    with pytest.raises(ConfigError, match="no finished teacher/student/distill runs of recipe 'cpu' in experiment "
                       "'qa-distill'"):
        run_report("cpu", TrackingConfig(tracking_uri=tracking_uri), output=str(tmp_path / "x"))
