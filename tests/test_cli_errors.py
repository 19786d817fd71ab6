"""Every error a user can cause is one line from the CLI, found before compute (every entry point:
a bad setting is refused before any model loads, in seconds); -v adds the traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qa_distill.cli import main
from qa_distill.config import TrackingConfig
from qa_distill.errors import ConfigError
from qa_distill.training import preflight

from .conftest import child_env

WORKTREE = Path(__file__).resolve().parents[1]
DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("qa-distill")]
    return line


def test_a_config_error_comes_before_the_training_stack_is_imported():
    code = ("import sys; from qa_distill.cli import main; "
            "code = main(argv=['distill', '--set', 'distillation.temperature=inf']); "
            "print(code, 'torch' in sys.modules, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=child_env(PYTHONPATH=str(WORKTREE)))
    assert out.stdout.split() == ["2", "False", "False"]
    assert "distillation.temperature must be a finite number > 0, got inf" in out.stderr


def test_a_dead_tracking_server_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, dev_sample):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD_SERVER)
    code = main(argv=["teacher", "--data", str(dev_sample), "--output-dir", str(tmp_path / "out"),
                 "--set", "model.name=no-such-model"])
    assert code == 2
    assert f"tracking URI {DEAD_SERVER} is not reachable" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_output_directory_under_a_file_or_without_room():
    blocker = Path(__file__)
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        preflight.check_output_dir(str(blocker / "out"), 1000)
    with pytest.raises(ConfigError, match="GB free; the model and its checkpoints need .* GB missing"):
        preflight.check_output_dir("/tmp/qa-distill-never-made", 10**18)
    preflight.check_output_dir("/tmp/qa-distill-never-made/deeper", 1000)
    assert not Path("/tmp/qa-distill-never-made").exists()  # checking creates nothing


def test_a_resume_counts_the_room_of_the_checkpoints_it_replaces(tmp_path, monkeypatch):
    gb = preflight.GB
    out = tmp_path / "out"
    for name, size in (("checkpoint-4/optimizer.pt", 3 * gb), ("checkpoint-2/model.safetensors", gb)):
        (out / name).parent.mkdir(parents=True)
        with open(out / name, "wb") as f:
            f.truncate(size)  # sparse: the size without the disk
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, int(3.5 * gb)))
    preflight.check_output_dir(str(out), gb)  # needs 7 GB: 3.5 free + 4 in checkpoints it replaces
    with pytest.raises(ConfigError, match=r"3.50 GB free and 4.00 GB of checkpoints .* 8.40 GB, 0.90 GB missing"):
        preflight.check_output_dir(str(out), int(1.2 * gb))
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"0.50 GB missing"):
        preflight.check_output_dir(str(out), gb)


def test_an_output_dir_under_a_file_stops_the_run_before_tokenising(tmp_path, tracking_uri, dev_sample, tiny_bert,
                                                                      capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(argv=["teacher", "--data", str(dev_sample), "--output-dir", str(blocker / "out"),
                 "--set", f"model.name={tiny_bert} data.cache_dir={tmp_path / 'cache'}"])
    assert code == 2 and "is a file, not a directory" in _error_line(capsys)
    assert not (tmp_path / "cache").exists()


def test_sqlite_store_in_a_missing_folder_is_refused():
    with pytest.raises(ConfigError, match="does not exist or is not writable"):
        preflight.connect(TrackingConfig(tracking_uri="sqlite:////no/such/folder/mlflow.db"))


def test_dev_questions_must_be_positive(capsys):
    for value in ("0", "-5"):
        with pytest.raises(SystemExit) as stop:
            main(argv=["evaluate", "--model", "m", "--dev-questions", value])
        assert stop.value.code == 2
        assert "--dev-questions: must be > 0" in capsys.readouterr().err


def test_a_run_name_cannot_leave_the_results_folder(capsys):
    assert main(argv=["speedtest", "--run-name", "../../../../x", "--model", "a=b"]) == 2
    assert "--run-name '../../../../x' must be a plain name" in _error_line(capsys)


def test_an_os_error_is_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({"a": "b"}))
    assert main(argv=["score", str(tmp_path), str(predictions)]) == 1  # a directory, not a file
    assert "Is a directory" in _error_line(capsys)
    assert main(argv=["-v", "score", str(tmp_path), str(predictions)]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow
def test_models_uri_resolves_in_the_project_store_from_any_folder(tmp_path, tiny_bert):
    """Outside the project folder, `models:/` is looked up in the configured store (no stray mlflow.db)."""
    import mlflow

    from qa_distill.inference.mlflow_model import log_qa_model
    from qa_distill.tracking.runs import setup

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    setup(TrackingConfig(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    with mlflow.start_run():
        log_qa_model(tiny_bert, "tiny-qa")
    # a process with no MLFLOW_* settings, in another folder, whose project root is `project`
    script = (f"import sys, pathlib, qa_distill.config as c; c.PROJECT_ROOT = pathlib.Path({str(project)!r}); "
              "from qa_distill.cli import main; "
              "sys.exit(main(argv=['predict', '--model', 'models:/tiny-qa/1', "
              "'--question', 'Who?', '--context', 'Ada.']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONPATH": str(WORKTREE)}
    out = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "answer" in json.loads(out.stdout.strip().splitlines()[-1])
    assert not (elsewhere / "mlflow.db").exists()


TINY = str(WORKTREE / "tests" / "recipes" / "tiny.yaml")


@pytest.mark.parametrize("argv, message", [
    (["main", "--recipe", TINY, "--backends", "int4"], "speedtest step: unknown backend(s) ['int4']"),
    (["teacher", "--set", "data.doc_stride=500"], "data.doc_stride (500) must be below data.max_length"),
    (["student", "--set", "model.layer_stride=0"], "model.layer_stride must be >= 1, got 0"),
    (["student", "--set", "search.alpha_range=[0.9,"], "'[0.9,' is not a YAML value"),
    (["distill", "--alpha", "2"], "distillation.alpha must be in [0, 1], got 2"),
    (["search", "--set", "search.alpha_range=[0.9,0.1]"], "search ranges need low <= high"),
    (["speedtest", "--backends", "int4"], "unknown backend(s) ['int4']"),
    (["predict", "--model", "m", "--question", "q", "--context", "c", "--backend", "int4"], "invalid choice: 'int4'"),
    (["evaluate", "--model", "m", "--dev-questions", "0"], "--dev-questions: must be > 0"),
    (["report", "--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["score", "/no/such/dev.json", "/no/such/predictions.json"], "/no/such/dev.json: no such file"),
], ids=lambda value: value[0] if isinstance(value, list) else "")
def test_every_entry_point_refuses_a_bad_setting_before_any_model_loads(argv, message, tracking_uri, monkeypatch,
                                                                       capsys):
    import time

    from transformers import PreTrainedModel

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad setting was refused")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(loaded))
    began = time.perf_counter()
    try:
        code = main(argv=argv)
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    assert time.perf_counter() - began < 10
    assert code in (1, 2)  # 2: bad input; 1 (score): a missing file
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
