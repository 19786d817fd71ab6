"""Honest tables (qa_distill/reporting/budgets.py): one budget per table, committed tables at full budget."""

import mlflow
import pytest

from qa_distill.config import RESULTS_DIR, SpeedConfig, TrackingConfig
from qa_distill.errors import ConfigError
from qa_distill.reporting.budgets import check_comparable, speed_stem
from qa_distill.reporting.report import recipe_runs, run_report


def _run(role: str, train_questions: int = 16000, epochs: float = 1.0, dev_questions: int = 10570,
         data: str = "/work/shared/data/squad") -> str:
    with mlflow.start_run() as run:
        mlflow.set_tags({"recipe": "cpu", "role": role})
        mlflow.log_params({"data.train_questions": train_questions, "training.epochs": epochs,
                           "data.max_length": 256, "data.dev_questions": "", "data.data": data,
                           "run.train_fingerprint": "abc", "run.dev_fingerprint": "def"})
        mlflow.log_metrics({"exact_match": 30.0, "f1": 40.0, "train_seconds": 60.0, "dev_questions": dev_questions,
                            "train_windows_per_second": 10.0})
    return run.info.run_id


@pytest.fixture()
def experiment(tracking_uri) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment("qa-distill").experiment_id


def test_runs_of_different_budgets_are_refused_naming_them(experiment, tmp_path):
    _run("teacher", epochs=2.0)  # a teacher may train longer than its students
    small = _run("student", train_questions=500)
    _run("distill")
    with pytest.raises(ConfigError, match=f"train_questions: .*student run {small} has 500") as error:
        run_report("cpu", TrackingConfig(), output=str(tmp_path / "t"))
    assert "epochs" not in str(error.value)
    assert not (tmp_path / "t.csv").exists()


def test_students_of_different_epochs_are_refused(experiment):
    _run("student", epochs=2.0)
    distilled = _run("distill", epochs=1.0)
    with pytest.raises(ConfigError, match=f"epochs: .*distill run {distilled} has 1"):
        check_comparable(recipe_runs("cpu", experiment))


def test_students_at_their_roles_epochs_in_the_recipe_pass(experiment):
    _run("student", epochs=3.0)
    _run("distill", epochs=8.0)
    check_comparable(recipe_runs("cpu", experiment), recipe="gpu")  # the gpu recipe's lengths: 3 and 8
    with pytest.raises(ConfigError, match="epochs: "):
        check_comparable(recipe_runs("cpu", experiment), recipe="cpu")  # cpu gives both 1


def test_a_test_sized_run_never_overwrites_the_committed_table(experiment):
    committed = (RESULTS_DIR / "cpu.csv").read_text()
    for role in ("teacher", "student", "distill"):
        _run(role, train_questions=16, dev_questions=8, data="/tmp/tiny-squad")
    with pytest.raises(ConfigError, match="not writing over .*cpu.csv.*train_questions 16, the recipe 16000"):
        run_report("cpu", TrackingConfig(), output=None)
    assert (RESULTS_DIR / "cpu.csv").read_text() == committed


def test_only_a_full_speed_test_of_registered_models_writes_the_committed_table():
    ours = ["teacher=models:/qa-distill-cpu-teacher/3", "distilled=models:/qa-distill-cpu-distill/2"]

    def stem(**changes):
        return speed_stem("cpu", SpeedConfig(**{"models": ours, "run_name": "cpu-speed", **changes}))

    assert stem() == RESULTS_DIR / "cpu-speed"
    for change in ({"questions": 50}, {"backends": ("fp32",)}, {"models": ["x=/tmp/model"]}):
        with pytest.raises(ConfigError, match="pass --output"):
            stem(**change)
    assert str(stem(output="/tmp/out/speed", questions=50)) == "/tmp/out/speed"
