"""experiments/ablation.py end to end on the tiny recipe: four `qa-distill distill` runs, one table."""

import argparse
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from qa_distill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "recipes" / "tiny.yaml")


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "experiments" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_four_rows_from_the_projects_distill_command(tmp_path, tracking_uri, dev_sample, tiny_bert):
    recipe = tmp_path / "tiny.yaml"  # a copy, edited at the end
    shutil.copy(TINY, recipe)
    args = ["--recipe", str(recipe), "--teacher", tiny_bert, "--hidden-weight", "0.5", "--attention-weight", "2.0",
            "--set", f"model.name={tiny_bert}", "--set", f"data.data={dev_sample}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--output-dir", str(tmp_path / "rows"), "--results", str(tmp_path / "tiny-ablation")]
    # two rows first, in the order asked (a slow machine runs the row that matters first) ...
    first = _ablation().main([*args, "--rows", "+ hidden, logits only"])
    assert list(first["row"]) == ["+ hidden", "logits only"]
    assert len(mlflow.search_runs(experiment_names=["tiny-ablation"])) == 2
    # ... then all four: the two finished rows are read, not trained again
    table = _ablation().main(args)
    written = pd.read_csv(tmp_path / "tiny-ablation.csv")
    assert list(written["row"]) == ["logits only", "+ hidden", "+ attention", "+ both"]
    assert list(written["hidden_weight"]) == [0.0, 0.5, 0.0, 0.5]
    assert list(written["attention_weight"]) == [0.0, 0.0, 2.0, 2.0]
    assert (written["train_minutes"] > 0).all() and (written["windows_per_second"] > 0).all()
    assert written["cpu"].str.len().gt(0).all() and "| + both" in (tmp_path / "tiny-ablation.md").read_text()
    runs = mlflow.search_runs(experiment_names=["tiny-ablation"])
    assert sorted(runs["params.distillation.hidden_weight"]) == ["0.0", "0.0", "0.5", "0.5"]
    assert list(table["f1"][:2]) == list(first["f1"][::-1])
    assert written["teacher_f1"].isna().all()  # a teacher given as a path has no run to read it from
    assert len(mlflow.search_runs(experiment_names=["tiny-ablation"])) == 4
    # the recipe's alpha edited since: the row is trained again, not the old one relabelled
    recipe.write_text(recipe.read_text().replace("alpha: 0.5", "alpha: 0.7"))
    assert list(_ablation().main([*args, "--rows", "logits only"])["alpha"]) == [0.7]
    assert len(mlflow.search_runs(experiment_names=["tiny-ablation"])) == 5
    # a student cut from other layers: its own row, output directory and column
    cut = _ablation().main([*args, "--rows", "logits only", "--students", "1,3"])
    assert list(cut["row"]) == ["logits only, layers 1 3"] and list(cut["student_layers"]) == ["1 3"]
    assert (tmp_path / "rows" / "logits-only-layers-1-3" / "metrics.json").exists()
    runs = mlflow.search_runs(experiment_names=["tiny-ablation"])
    assert len(runs) == 6 and (runs["params.model.layers"] == "[1, 3]").sum() == 1


def test_a_test_sized_ablation_never_writes_into_experiments_results(tiny_bert):
    with pytest.raises(ConfigError, match="pass --results"):
        _ablation().main(["--recipe", "cpu", "--set", "data.train_questions=16"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--rows", "+ hidden"], "pass --results"),
    (["--rows", "+ hidden", "--students", "1,3,5"], "pass --results"),
    (["--rows", "+ hidden,+ hiden", "--results", "x"], "--rows: no row '+ hiden'"),
    (["--rows", "+ hidden,+ hidden", "--results", "x"], "--rows names a row twice"),
    (["--students", "1,x", "--results", "x"], "--students: '1,x' is not layer lists"),
    (["--students", "3,1", "--results", "x"], "model.layers must list layers >= 0 in increasing order"),
])
def test_a_partial_or_misspelt_row_list_is_refused_before_any_row_trains(tmp_path, argv, message):
    argv = [str(tmp_path / item) if item == "x" else item for item in argv]
    with pytest.raises(ConfigError, match=re.escape(message)):
        _ablation().main(["--recipe", "cpu", *argv, "--output-dir", str(tmp_path / "rows")])
    assert not (tmp_path / "rows").exists()


def test_bad_weights_are_refused_before_any_row_trains(tmp_path):
    with pytest.raises(ConfigError, match="distillation.attention_weight must be a finite number >= 0"):
        _ablation().main(["--recipe", "cpu", "--attention-weight", "-1", "--results", str(tmp_path / "x"),
                          "--output-dir", str(tmp_path / "rows")])
    assert not (tmp_path / "rows").exists()


def test_a_registered_teacher_gives_its_runs_f1_to_every_row(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)  # as main's connect() does
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("t")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "f1", 69.4)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("qa-distill-cpu-teacher")
    client.create_model_version("qa-distill-cpu-teacher", "file:///nowhere", run_id=run.info.run_id)
    ablation = _ablation()
    ref = ablation.exact_version("models:/qa-distill-cpu-teacher/latest")  # what the rows are pinned to
    assert ref.uri == "models:/qa-distill-cpu-teacher/1" and ablation.teacher_f1(ref) == 69.4
    assert ablation.exact_version("/a/saved/teacher") is None and math.isnan(ablation.teacher_f1(None))


def test_a_finished_row_is_reused_for_its_teacher_version_only(tmp_path, monkeypatch):
    ablation = _ablation()
    trained = []

    def distill(command, **kwargs):  # stands in for `qa-distill distill`: records the teacher, writes metrics
        trained.append(command[command.index("--teacher") + 1])
        out = Path(command[command.index("--output-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"f1": len(trained)}))

    monkeypatch.setattr(ablation.subprocess, "run", distill)
    config = ablation.load_config("cpu", "distill")
    args = argparse.Namespace(recipe="cpu", output_dir=str(tmp_path), teacher="models:/qa-distill-cpu-teacher/1")
    assert ablation.run_row(args, "+ hidden", [], config)["f1"] == 1
    assert ablation.run_row(args, "+ hidden", [], config)["f1"] == 1  # read back, not trained again
    args.teacher = "models:/qa-distill-cpu-teacher/2"  # `latest` moved on
    assert ablation.run_row(args, "+ hidden", [], config)["f1"] == 2
    assert trained == ["models:/qa-distill-cpu-teacher/1", "models:/qa-distill-cpu-teacher/2"]
