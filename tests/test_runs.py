"""End to end on tiny models: fine-tune and distill runs, MLflow records, bad input, resume."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from transformers import TrainerCallback

from qa_distill.cli import main
from qa_distill.config import DataConfig
from qa_distill.data.squad import load_split
from qa_distill.errors import ConfigError
from qa_distill.inference.evaluate import evaluate_model
from qa_distill.recipes import load_config
from qa_distill.runtime import hardware
from qa_distill.runtime.processes import PROCESS_TAG, close_dead_runs, process_tag
from qa_distill.saved_model import SavedSettings, read_settings
from qa_distill.training.runs import run_distill, run_finetune

from .conftest import write_squad

RECIPE = str(Path(__file__).parent / "recipes" / "runs.yaml")


def _config(role, model, data, tmp_path, *extra, teacher=None):
    overrides = [f"model.name={model}", f"data.cache_dir={tmp_path / 'cache'}", *extra]
    return load_config(RECIPE, role, overrides=overrides, explicit={"data.data": str(data),
                                                                    "distillation.teacher": teacher},
                       output_dir=str(tmp_path / role))


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def _run(run_id):
    return mlflow.MlflowClient().get_run(run_id)


@pytest.mark.slow
def test_teacher_run_logs_metrics_predictions_and_a_model_that_answers(tmp_path, tracking_uri, dev_sample, tiny_bert):
    answer_settings = ["answers.n_best=10", "answers.max_answer_length=5"]  # not the defaults
    result = run_finetune(_config("teacher", tiny_bert, dev_sample, tmp_path, *answer_settings))
    run = _run(result["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("exact_match", "f1", "train_seconds", "train_loss", "train_windows_per_second"):
        assert key in run.data.metrics
    assert run.data.params["run.role"] == "teacher" and run.data.params["training.epochs"] == "2.0"
    assert not [key for key in run.data.params if key.startswith("distillation.")]  # a teacher uses none
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval_f1")
    assert len(history) == 2  # one evaluation per epoch
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "predictions.json" in artifacts
    predictions = json.loads((tmp_path / "teacher" / "predictions.json").read_text())
    assert len(predictions) == run.data.metrics["dev_questions"]
    assert read_settings(tmp_path / "teacher") == SavedSettings(96, 32, 10, 5)
    # the registered MLflow model answers dev questions as the training evaluation did
    model = mlflow.pyfunc.load_model("models:/qa-distill-runs-teacher/latest")
    dev = load_split(DataConfig(data=str(dev_sample)), "dev").dataset.select(range(6))
    answers = model.predict([{"question": r["question"], "context": r["context"]} for r in dev])
    assert answers == [predictions[r["id"]] for r in dev] and all(answers)
    # the served model is weights, tokenizer, settings and the model card; no training leftovers
    served = Path(mlflow.artifacts.download_artifacts("models:/qa-distill-runs-teacher/latest")) / "artifacts"
    files = {p.name for p in (served / "hf_model").iterdir()}
    assert {"config.json", "model.safetensors", "qa_distill.json", "README.md"} <= files
    assert not files & {"training_args.bin", "predictions.json", "metrics.json"}
    card = (tmp_path / "teacher" / "README.md").read_text()
    assert f"F1 {run.data.metrics['f1']:.2f}" in card and "recipe `runs`" in card
    version = mlflow.MlflowClient().get_model_version("qa-distill-runs-teacher", "1")
    assert version.description.startswith(f"EM {run.data.metrics['exact_match']:.2f} / F1 ")
    assert not list((tmp_path / "teacher").glob("checkpoint-*"))  # only the final model stays
    # scoring the saved model again outside training gives the same answers and scores (with the
    # run's n_best and max_answer_length, saved with the model)
    again = evaluate_model(str(tmp_path / "teacher"), DataConfig(data=str(dev_sample)))
    assert again["predictions"] == predictions
    assert again["f1"] == pytest.approx(run.data.metrics["f1"])


@pytest.mark.slow
def test_distill_pairs_a_bert_teacher_with_a_distilbert_student(
    tmp_path, tracking_uri, dev_sample, tiny_bert, tiny_distilbert
):
    config = _config("distill", tiny_distilbert, dev_sample, tmp_path, teacher=tiny_bert)
    first = run_distill(config)
    assert _run(first["run_id"]).info.status == "FINISHED"
    assert first["teacher_cache_computed"] is True
    tags = _run(first["run_id"]).data.tags
    assert tags["teacher_uri"] == tiny_bert and tags["teacher_cache_key"] == first["teacher_cache_key"]
    second = run_distill(_config("distill", tiny_distilbert, dev_sample, tmp_path, teacher=tiny_bert))
    assert second["teacher_cache_computed"] is False
    assert second["teacher_cache_key"] == first["teacher_cache_key"]
    # cached and on-the-fly teachers train the same student identically (fp32, same seed)
    fly = run_distill(_config("distill", tiny_distilbert, dev_sample, tmp_path,
                              "distillation.teacher_cache=false", teacher=tiny_bert))
    assert fly["train_loss"] == pytest.approx(first["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_teacher_from_an_mlflow_uri(tmp_path, tracking_uri, dev_sample, tiny_bert):
    teacher = run_finetune(_config("teacher", tiny_bert, dev_sample, tmp_path, "training.epochs=1"))
    config = _config("distill", tiny_bert, dev_sample, tmp_path, "model.layer_stride=2",
                     "training.epochs=1", teacher=f"runs:/{teacher['run_id']}/model")
    result = run_distill(config)
    assert _run(result["run_id"]).data.tags["teacher_uri"].startswith("runs:/")
    champion = mlflow.MlflowClient().get_model_version_by_alias("qa-distill-runs-distill", "champion")
    assert champion.run_id == result["run_id"]  # the only distilled version is the best one
    assert _run(result["run_id"]).data.params["distillation.teacher"].startswith("runs:/")


def _runs_in_store() -> int:
    return sum(len(mlflow.search_runs([e.experiment_id])) for e in mlflow.search_experiments())


def test_bad_data_fails_before_any_run_and_writes_nothing(tmp_path, tracking_uri, tiny_bert, capsys):
    bad = write_squad(tmp_path / "train-bad.json", [("Some context.", [("q-7", "What?", [])])])
    out = tmp_path / "never"
    code = main(argv=["teacher", "--recipe", RECIPE, "--data", str(bad), "--output-dir", str(out),
                 "--set", f"model.name={tiny_bert} data.cache_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train-bad.json" in err and "'q-7'" in err and "skip_invalid" in err
    assert not out.exists()
    mlflow.set_tracking_uri(tracking_uri)
    assert _runs_in_store() == 0


@pytest.mark.slow
def test_a_cased_teacher_is_refused_before_training(tmp_path, tracking_uri, dev_sample, tiny_bert, capsys):
    from transformers import AutoModelForQuestionAnswering, BertTokenizerFast

    cased = tmp_path / "cased-teacher"
    AutoModelForQuestionAnswering.from_pretrained(tiny_bert).save_pretrained(cased)
    vocab = str(next(iter(Path(tiny_bert).glob("tokenizer.json"))))
    tok = BertTokenizerFast(tokenizer_file=vocab, do_lower_case=False)
    tok.backend_tokenizer.normalizer = __import__("tokenizers").normalizers.BertNormalizer(lowercase=False)
    tok.save_pretrained(cased)
    code = main(argv=["distill", "--recipe", RECIPE, "--data", str(dev_sample), "--teacher", str(cased),
                 "--output-dir", str(tmp_path / "d"), "--set", f"model.name={tiny_bert}"])
    assert code == 2
    assert "lower-casing" in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking_uri)
    assert _runs_in_store() == 0


class _KillAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("killed")


@pytest.mark.slow
def test_an_interrupted_run_is_killed_and_the_rerun_resumes_the_same_run(
    tmp_path, tracking_uri, dev_sample, tiny_bert, monkeypatch
):
    auto = "training.precision=auto"  # fp32 on this machine: the CPU has no fast bf16
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    config = _config("teacher", tiny_bert, dev_sample, tmp_path, auto)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(config, callbacks=[_KillAfterFirstSave()])
    killed = mlflow.search_runs(search_all_experiments=True)
    assert list(killed["status"]) == ["KILLED"]  # not left RUNNING
    assert list((tmp_path / "teacher").glob("checkpoint-*"))
    # a SIGKILL leaves no chance to end the run: as if so, RUNNING with its process gone
    run_id = killed["run_id"][0]
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")
    mlflow.MlflowClient().set_tag(run_id, PROCESS_TAG, f"{socket.gethostname()}:{_dead_pid()}:0")
    # another configuration into the same directory is refused, naming what differs
    with pytest.raises(ConfigError, match=r"holds checkpoint-\d+ of another configuration \(training.learning_rate"):
        run_finetune(_config("teacher", tiny_bert, dev_sample, tmp_path, auto, "training.learning_rate=0.001"))
    # so is the same configuration where `auto` resolves to another precision (a machine with bf16)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    with pytest.raises(ConfigError, match=r"training.precision_resolved: fp32 there, bf16 now"):
        run_finetune(_config("teacher", tiny_bert, dev_sample, tmp_path, auto))
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    # a save cut short by the kill is removed; the last sealed checkpoint is resumed
    half = tmp_path / "teacher" / "checkpoint-999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half-written")
    result = run_finetune(_config("teacher", tiny_bert, dev_sample, tmp_path, auto))
    assert result["run_id"] == run_id and not half.exists()
    run = _run(run_id)
    assert run.info.status == "FINISHED" and "checkpoint-" in run.data.tags["resumed_from"]
    # the first epoch's evaluation was logged by the first part, the second by the resumed one
    assert len(mlflow.MlflowClient().get_metric_history(run_id, "eval_f1")) == 2
    assert len(mlflow.search_runs(search_all_experiments=True)) == 1


@pytest.mark.slow
def test_an_error_during_training_marks_the_run_failed(tmp_path, tracking_uri, dev_sample, tiny_bert):
    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_finetune(_config("teacher", tiny_bert, dev_sample, tmp_path), callbacks=[Boom()])
    assert list(mlflow.search_runs(search_all_experiments=True)["status"]) == ["FAILED"]


def test_running_runs_whose_process_is_gone_are_closed_and_live_ones_kept(tracking_uri):
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("lifecycle")
    tags = {"dead": f"{socket.gethostname()}:{_dead_pid()}:0", "live": process_tag(), "elsewhere": "other-host:1:0"}
    runs = {name: client.create_run(experiment, tags={PROCESS_TAG: tag, "optuna_study": "s", "role": "search"})
            for name, tag in tags.items()}
    closed, alive = close_dead_runs("tags.optuna_study = 's' and tags.role = 'search'")
    assert closed == [runs["dead"].info.run_id]
    assert sorted(alive) == sorted([runs["live"].info.run_id, runs["elsewhere"].info.run_id])
    assert client.get_run(runs["dead"].info.run_id).info.status == "KILLED"
    assert client.get_run(runs["live"].info.run_id).info.status == "RUNNING"
