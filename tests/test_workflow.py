"""`main` (qa_distill/workflow/steps.py): the chain as child runs, reused when done, continued when not;
and runs that `mlflow run` launches land in the configured experiment (qa_distill/tracking/launched_run.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from qa_distill.cli import main as cli_main
from qa_distill.config import DEFAULT_BACKENDS, PROJECT_ROOT, RESULTS_DIR, TrackingConfig, WorkflowConfig
from qa_distill.tracking import runs as tracking
from qa_distill.tracking.launched_run import MOVED_TO
from qa_distill.training.lifecycle import SEAL
from qa_distill.workflow.plan import dry_run
from qa_distill.workflow.steps import KeyInputs, Step, StepResult, run_step

from .conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "recipes" / "tiny.yaml"
TRAINING = ("teacher", "student", "distill")


def _mlflow_run(uri: str, tmp_path: Path, *args: str) -> dict:
    """`mlflow run <project> ...` as a user types it (this checkout's code first on the path)."""
    env = child_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        ["mlflow", "run", str(ROOT), "--env-manager", "local", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def _training_runs(client: MlflowClient, experiment_id: str) -> list:
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'")
    return [run for run in runs if run.data.tags.get("role") in TRAINING]


@pytest.mark.slow
def test_an_unfinished_step_run_is_continued_as_the_same_run(tracking_uri, tmp_path, monkeypatch):
    from tests.test_report import _log

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the step's process runs this checkout's code
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment("qa-distill").experiment_id
    trained = [_log("tiny", role, f1) for role, f1 in zip(TRAINING, (70.0, 50.0, 60.0), strict=True)]
    client = MlflowClient()
    step = Step("report", {"recipe": str(TINY), "output": str(tmp_path / "tiny"), "experiment": "qa-distill"},
                reads=tuple(trained))
    inputs = KeyInputs("recipe-sha", "data-fingerprint", "commit")
    first_parent, second_parent = (client.create_run(experiment_id) for _ in range(2))

    ran = run_step(step, inputs, first_parent, "tiny-report")
    assert ran.action == "ran" and client.get_run(ran.run_id).info.status == "FINISHED"
    assert run_step(step, inputs, second_parent, "tiny-report") == StepResult(ran.run_id, "reused")
    assert run_step(Step("report", step.parameters), inputs, second_parent, "tiny-report").action == "ran"

    client.update_run(ran.run_id, status="RUNNING")  # as a SIGKILL leaves it
    (tmp_path / "tiny.csv").unlink()
    resumed = run_step(step, inputs, second_parent, "tiny-report")
    assert resumed == StepResult(ran.run_id, "resumed")
    run = client.get_run(ran.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == second_parent.info.run_id
    assert (tmp_path / "tiny.csv").exists()


def _launched_run(experiment_id: str) -> str:
    run = MlflowClient().create_run(experiment_id, tags={"mlflow.project.entryPoint": "report"})
    MlflowClient().log_param(run.info.run_id, "recipe", "cpu")
    return run.info.run_id


def test_a_run_mlflow_run_put_in_default_moves_to_the_configured_experiment(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    launched = _launched_run("0")
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    experiment_id = tracking.setup(TrackingConfig(experiment="mine"))
    assert mlflow.get_experiment(experiment_id).name == "mine"
    with mlflow.start_run() as run:  # what every entry point does under `mlflow run`
        pass
    assert run.info.run_id != launched and run.info.experiment_id == experiment_id
    moved = MlflowClient().get_run(run.info.run_id)
    assert moved.data.params == {"recipe": "cpu"} and moved.data.tags["mlflow.project.entryPoint"] == "report"
    assert MlflowClient().get_run(launched).data.tags[MOVED_TO] == run.info.run_id


def test_a_run_in_an_experiment_the_user_named_stays_there(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    named = mlflow.create_experiment("named-by-user")
    launched = _launched_run(named)
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    assert tracking.setup(TrackingConfig(experiment="qa-distill")) == named
    with mlflow.start_run() as run:
        pass
    assert run.info.run_id == launched


def test_main_rejects_bad_input_before_any_run(tracking_uri, tmp_path, capsys):
    assert cli_main(argv=["main", "--recipe", str(TINY), "--set", "training.epochs=0"]) == 2
    assert "training.epochs" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # no store opened, no run started


@pytest.mark.slow
def test_mlflow_run_of_one_entry_point_lands_in_the_project_experiment(tracking_uri, tmp_path, dev_sample):
    dev = dev_sample / "dev-sample.json"
    ids = [q["id"] for article in json.loads(dev.read_text())["data"] for p in article["paragraphs"] for q in p["qas"]]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(dict.fromkeys(ids, "Denver Broncos")))
    result = _mlflow_run(
        tracking_uri, tmp_path, "-e", "score", "-P", f"dataset={dev}", "-P", f"predictions={predictions}"
    )
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("qa-distill").experiment_id])
    assert run.data.tags["role"] == "score" and run.data.metrics["f1"] == result["f1"]
    (stub,) = client.search_runs(["0"])
    assert stub.data.tags[MOVED_TO] == run.info.run_id


def _hides_torchao(monkeypatch):
    """An environment without torchao (the int8 backend's): no distribution provides the module the model imports."""
    from qa_distill.inference import requirements

    providers = requirements.packages_distributions()
    monkeypatch.setattr(requirements, "packages_distributions",
                        lambda: {k: v for k, v in providers.items() if k != "torchao"})


@pytest.mark.parametrize("argv, setup, line", [
    (["--backends", "int4"], None, "speedtest step: unknown backend(s) ['int4']"),
    (["--results-dir", "{blocker}/results"], None,
     "speedtest step: output directory {blocker}/results: {blocker} is a file"),
    (["--data", "squad"], "offline", "teacher step: data.data 'squad' is a hub dataset that is neither in the local"),
    (["--set", "model.name=/no/such/model"], None, "teacher step: model.name '/no/such/model': no such model"),
    ([], "no torchao", "teacher step: the model it logs would not install: no installed distribution provides "
                       "the module(s) ['torchao']"),
], ids=["backend", "results-dir", "data-source", "model-source", "requirement"])
def test_main_refuses_a_bad_setting_of_any_step_in_one_line_before_any_run(
        argv, setup, line, tracking_uri, tmp_path, tiny_bert, dev_sample, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if setup == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    elif setup == "no torchao":
        _hides_torchao(monkeypatch)
    began = time.perf_counter()
    code = cli_main(argv=["main", "--recipe", str(TINY), "--data", str(dev_sample), "--output-dir",
                          str(tmp_path / "out"), "--set", f"model.name={tiny_bert}",
                          *[arg.format(blocker=blocker) for arg in argv]])
    assert time.perf_counter() - began < 10
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (printed,) = err.strip().splitlines()
    assert printed.startswith("qa-distill main: error: ") and line.format(blocker=blocker) in printed
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()  # no run, no step


def test_a_test_sized_chain_writes_its_tables_beside_its_outputs_and_times_in_proportion(
        tracking_uri, tmp_path, tiny_bert, dev_sample):
    plan = dry_run(WorkflowConfig(recipe=str(TINY), data=str(dev_sample), overrides=f"model.name={tiny_bert}",
                                  output_dir=str(tmp_path / "out")))
    assert plan.results_stem == tmp_path / "out" / "results" / "tiny"
    assert str(tmp_path / "out" / "results") in plan.notes[0]
    assert plan.speed.questions == 8 and plan.speed.backends == ("fp32",)  # the recipe's 8 dev questions
    assert plan.speed.output == str(tmp_path / "out" / "results" / "tiny-speed")
    asked = dry_run(WorkflowConfig(recipe=str(TINY), data=str(dev_sample), overrides=f"model.name={tiny_bert}",
                                   output_dir=str(tmp_path / "out"), speed_questions=3, backends="fp32 bf16"))
    assert asked.speed.questions == 3 and asked.speed.backends == ("fp32", "bf16")


def test_a_committed_recipe_at_its_budget_keeps_the_committed_tables_and_full_speed_test(tracking_uri):
    plan = dry_run(WorkflowConfig(recipe="cpu"))
    assert plan.results_stem is None and plan.results_dir == RESULTS_DIR and not plan.notes
    assert plan.speed.questions == 1000 and plan.speed.backends == DEFAULT_BACKENDS
    assert plan.output_root == PROJECT_ROOT / "outputs" / "cpu"


def _interruptible() -> None:
    """A terminal's foreground job takes SIGINT; a test run in the background (nohup, `&`) would
    pass its children SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _check_what_the_ui_shows(client: MlflowClient, parent, steps: dict, *, recipe: str) -> None:
    """A finished chain as the MLflow UI shows it: the outcome on the parent, role, recipe, creator
    and data on every step run, the exact model versions the chain registered (never `latest`)."""
    for step, info in steps.items():
        run = client.get_run(info["run_id"])
        assert run.info.experiment_id == parent.info.experiment_id and run.info.status == "FINISHED"
        assert (run.data.tags["role"], run.data.tags["recipe"]) == (step, recipe), step
        assert run.data.tags["mlflow.user"] == parent.info.user_id
        if step != "report":
            assert run.inputs.dataset_inputs, step
    models = {role: f"models:/qa-distill-{recipe}-{role}/1" for role in TRAINING}
    assert client.get_run(steps["distill"]["run_id"]).data.params["teacher"] == models["teacher"]
    assert client.get_run(steps["speedtest"]["run_id"]).data.params["models"] == (
        f"teacher={models['teacher']} student={models['student']} distilled={models['distill']}")
    report = client.get_run(steps["report"]["run_id"])
    assert parent.data.metrics["distilled.f1"] == report.data.metrics["distilled.f1"] >= 0
    assert {"teacher.f1", "student.exact_match", "distilled.fp32_p50_ms"} <= set(parent.data.metrics)
    assert f"{recipe}.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert not [k for k in client.get_run(steps["student"]["run_id"]).data.params if k.startswith("distillation.")]
    champion = client.get_model_version_by_alias(f"qa-distill-{recipe}-distill", "champion")
    assert "p50 at batch 1:" in champion.description  # the speed test's figures, after EM/F1


@pytest.mark.slow
def test_mlflow_run_of_a_tiny_recipe_stopped_by_ctrl_c_and_run_again_is_one_parent_run_to_the_end(
        tracking_uri, tmp_path, tiny_bert, dev_sample):
    """`mlflow run . -P recipe=<tiny recipe>`, no other parameter, as a new user types it; Ctrl-C in
    its first training, then the same command again: one parent with one run per step, none FAILED,
    what the UI shows on each, and the tables where the first line said they go. A third time, every
    step is reused and nothing trains."""
    recipe = tmp_path / "tiny-first-hour.yaml"
    spec = TINY.read_text().replace("data:\n", f"data:\n  data: {dev_sample}\n  cache_dir: {tmp_path / 'cache'}\n", 1)
    spec = spec.replace("teacher: {}\n", "teacher:\n  training: {epochs: 6, batch_size: 2, save_steps: 2}\n")
    recipe.write_text(spec + f"model:\n  name: {tiny_bert}\n")
    outputs = PROJECT_ROOT / "outputs" / recipe.stem
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "qa-distill",
               "-P", f"recipe={recipe}"]  # README's main command, on the tiny recipe
    env = child_env(MLFLOW_TRACKING_URI=tracking_uri, PYTHONPATH=str(ROOT))
    client = MlflowClient(tracking_uri)
    try:
        with open(tmp_path / "first.log", "w") as log:  # a terminal's Ctrl-C: SIGINT to the foreground group
            first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_interruptible)
        end = time.monotonic() + 300
        while not list((outputs / "teacher").glob(f"checkpoint-*/{SEAL}")):
            assert first.poll() is None and time.monotonic() < end, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=120) != 0
        printed = (tmp_path / "first.log").read_text()
        assert "stopped by SIG" in printed and "Traceback" not in printed, printed[-3000:]
        def statuses() -> dict[str, str]:
            return {r.data.tags.get("role"): r.info.status for r in client.search_runs(
                [e.experiment_id for e in client.search_experiments()])}
        end = time.monotonic() + 15  # `mlflow run` writes FAILED as it exits; main's watcher puts KILLED back
        while statuses() != {"main": "KILLED", "teacher": "KILLED"} and time.monotonic() < end:
            time.sleep(0.1)
        assert statuses() == {"main": "KILLED", "teacher": "KILLED"}

        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
        assert result["experiment"] == "qa-distill"
        steps = result["steps"]
        assert list(steps) == ["teacher", "student", "distill", "speedtest", "report"]
        assert [s["action"] for s in steps.values()] == ["resumed", "ran", "ran", "ran", "ran"]
        everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert {r.info.status for r in everything} == {"FINISHED"}
        (parent,) = [r for r in everything if r.data.tags.get("role") == "main"]
        assert parent.info.run_id == result["run_id"]
        children = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["qa_distill.step"] for r in children) == sorted(steps)
        assert {r.info.run_id for r in children} == {s["run_id"] for s in steps.values()}
        in_chain = {parent.info.run_id, *(c.info.run_id for c in children)}
        (pointer,) = [r for r in everything if r.info.run_id not in in_chain]
        assert parent.info.run_id in pointer.data.tags["mlflow.note.content"]  # the rerun's own launched run
        _check_what_the_ui_shows(client, parent, steps, recipe=recipe.stem)

        assert result["results"] == str(outputs / "results")
        assert f"its tables go to {outputs / 'results'}" in done.stderr
        assert (outputs / "results" / "tiny-first-hour.csv").exists()
        speed = (outputs / "results" / "tiny-first-hour-speed.csv").read_text()
        assert "fp32" in speed and "bf16" not in speed  # in proportion: fp32 (and the baseline) only
        assert not (RESULTS_DIR / "tiny-first-hour.csv").exists()

        again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        third = json.loads([line for line in again.stdout.splitlines() if line.startswith("{")][-1])
        assert third["run_id"] != parent.info.run_id
        assert {name: s["run_id"] for name, s in third["steps"].items()} == {n: s["run_id"] for n, s in steps.items()}
        assert {s["action"] for s in third["steps"].values()} == {"reused"}
        assert client.get_run(third["run_id"]).data.tags["step.teacher.action"] == "reused"
        def outcome(run):  # the results' figures, not the steps' own timings
            return {k: v for k, v in run.data.metrics.items() if not k.startswith("step.")}
        assert outcome(client.get_run(third["run_id"])) == outcome(parent) != {}  # a reused chain's outcome too
        assert len(_training_runs(client, parent.info.experiment_id)) == 3  # nothing trained again
    finally:
        shutil.rmtree(outputs, ignore_errors=True)


@pytest.mark.slow
def test_main_keeps_a_binding_budget_within_a_fifth(tracking_uri, tmp_path, dev_sample):
    """MiniLM on the local train file at 4,000 questions takes far longer than 5 minutes here: the
    plan (from rates measured now, on a machine others load too) sizes it to fit, within 20%."""
    from .conftest import SHARED_SQUAD, minilm_path

    minutes = 5
    overrides = (f"model.name={minilm_path()} data.data={SHARED_SQUAD} data.train_questions=4000 "
                 f"data.dev_questions=400 data.cache_dir={tmp_path / 'cache'}")
    began = time.monotonic()
    result = _mlflow_run(
        tracking_uri, tmp_path, "-P", f"recipe={TINY}", "-P", f"overrides={overrides}",
        "-P", f"budget_minutes={minutes}", "-P", f"output_dir={tmp_path / 'out'}",
        "-P", f"results_dir={tmp_path / 'results'}",
        "-P", "speed_questions=4", "-P", "backends=fp32", "-P", f"dev_json={dev_sample / 'dev-sample.json'}",
    )
    seconds = time.monotonic() - began
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result["run_id"])
    assert parent.data.tags["budget_minutes"] == str(minutes) and parent.data.params["budget.sized"] == "True"
    teacher = client.get_run(result["steps"]["teacher"]["run_id"])
    assert int(teacher.data.params["data.train_questions"]) < 4000  # the budget bound
    assert teacher.data.tags["budget_minutes"] == str(minutes) and teacher.data.params["run.cpu"]
    assert seconds <= 1.2 * minutes * 60, f"{seconds:.0f} s for a {minutes} min budget"
