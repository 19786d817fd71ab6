"""A `main` stopped by a signal (qa_distill/workflow/steps.py): its step and its parent end KILLED, not
FAILED, the stop is one line with the signal's exit code, and the rerun continues the same parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException
from mlflow.projects import _maybe_set_run_terminated, _wait_for
from mlflow.projects.submitted_run import LocalSubmittedRun

from qa_distill.cli import _report_error
from qa_distill.config import WorkflowConfig
from qa_distill.errors import Interrupted
from qa_distill.runtime.budget import BudgetPlan
from qa_distill.tracking import launched_run
from qa_distill.tracking.launched_run import keep_status, restore_status
from qa_distill.tracking.runs import STOPPED_BY
from qa_distill.workflow import plan as chain_plan
from qa_distill.workflow import steps
from qa_distill.workflow.steps import PLAN_TAG, KeyInputs, Step, earlier_plan, main_key, parent_run, run_step

from .conftest import child_env

INPUTS = KeyInputs("recipe-sha", "data-fingerprint", "commit")
TINY = Path(__file__).resolve().parent / "recipes" / "tiny.yaml"


@pytest.fixture
def experiment_id(tracking_uri) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment("qa-distill").experiment_id


# A step's process, given its run id: ends the run as the named outcome, or as a training stopped by
# SIGTERM once it gets one (after saying it is ready), and exits as the CLI does (which keeps a
# KILLED against MLflow's overwrite).
STEP_SCRIPT = """
import signal, sys, time
from pathlib import Path
from mlflow import MlflowClient
from qa_distill.tracking.launched_run import keep_status

outcome, run_id, ready = sys.argv[1:]
client = MlflowClient()

def stop(signum, frame):
    client.set_tag(run_id, "qa_distill.stopped_by", signal.Signals(signum).name)
    client.set_terminated(run_id, "KILLED")
    keep_status(run_id)
    sys.exit(128 + signum)

if outcome == "waits for SIGTERM":
    signal.signal(signal.SIGTERM, stop)
    Path(ready).touch()
    time.sleep(60)
    sys.exit(3)  # never stopped
if outcome in ("SIGINT", "SIGTERM"):
    stop(signal.Signals[outcome], None)
sys.exit(1)  # a crash or a SIGKILL: the run left RUNNING
"""


@pytest.fixture
def step_process(tracking_uri, monkeypatch, tmp_path):
    """`mlflow.projects.run(..., synchronous=True)` whose step is STEP_SCRIPT with `outcome`, waited
    for by MLflow's own code; returns the file the step touches once it waits for SIGTERM."""
    ready = tmp_path / "ready"

    def use(outcome: str) -> Path:
        def run(uri, entry_point, *, run_id, synchronous, **kwargs):
            proc = subprocess.Popen([sys.executable, "-c", STEP_SCRIPT, outcome, run_id, str(ready)],
                                    env=child_env(MLFLOW_TRACKING_URI=tracking_uri))
            _wait_for(LocalSubmittedRun(run_id, proc))
        monkeypatch.setattr(steps.mlflow.projects, "run", run)
        return ready
    return use


def _ended(run_id: str, status: str) -> Run:
    """The run once it has `status` (a watcher may still be putting it back), or as it is after 15 s."""
    deadline = time.monotonic() + 15
    while (run := MlflowClient().get_run(run_id)).info.status != status and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


@pytest.mark.parametrize("by, signum", [("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM)])
def test_a_step_a_signal_stopped_stops_the_chain_as_that_signal(experiment_id, step_process, by, signum):
    step_process(by)
    parent = MlflowClient().create_run(experiment_id)
    with pytest.raises(Interrupted) as stopped:
        run_step(Step("teacher", {"recipe": "cpu"}), INPUTS, parent, "cpu-teacher")
    assert stopped.value.signum == signum
    (step,) = [r for r in MlflowClient().search_runs([experiment_id]) if r.info.run_id != parent.info.run_id]
    step = _ended(step.info.run_id, "KILLED")
    assert step.info.status == "KILLED" and step.data.tags[STOPPED_BY] == by


def test_a_step_that_crashed_ends_failed_and_fails_the_chain(experiment_id, step_process):
    step_process("crash")
    parent = MlflowClient().create_run(experiment_id)
    with pytest.raises(ExecutionException):
        run_step(Step("teacher", {"recipe": "cpu"}), INPUTS, parent, "cpu-teacher")
    (step,) = [r for r in MlflowClient().search_runs([experiment_id]) if r.info.run_id != parent.info.run_id]
    assert step.info.status == "FAILED"


def test_sigterm_to_main_alone_is_passed_to_its_step_and_both_end_killed(experiment_id, step_process):
    ready = step_process("waits for SIGTERM")

    def terminate_main_once_the_step_waits():
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    threading.Thread(target=terminate_main_once_the_step_waits, daemon=True).start()
    with pytest.raises(Interrupted) as stopped, parent_run(experiment_id, "chain", run_name="cpu-main") as parent:
        run_step(Step("teacher", {"recipe": "cpu"}), INPUTS, parent, "cpu-teacher")
    assert stopped.value.signum == signal.SIGTERM
    runs = {r.info.run_id: r for r in MlflowClient().search_runs([experiment_id])}
    (step,) = [r for run_id, r in runs.items() if run_id != parent.info.run_id]
    assert runs[parent.info.run_id].info.status == "KILLED"
    step = _ended(step.info.run_id, "KILLED")
    assert step.info.status == "KILLED" and step.data.tags[STOPPED_BY] == "SIGTERM"
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers  # main's own, put back


def test_a_stopped_chain_ends_killed_and_its_rerun_continues_the_same_parent(experiment_id, capsys):
    client = MlflowClient()
    with pytest.raises(Interrupted), parent_run(experiment_id, "chain-a", run_name="cpu-main") as first:
        raise Interrupted(signal.SIGINT)
    assert client.get_run(first.info.run_id).info.status == "KILLED"
    assert _report_error(SimpleNamespace(command="main", verbose=False), Interrupted(signal.SIGINT)) == 130
    assert capsys.readouterr().err.startswith("qa-distill main: stopped by SIGINT; rerun the same command to resume")

    with parent_run(experiment_id, "chain-a", run_name="cpu-main") as again:
        assert again.info.run_id == first.info.run_id
    with parent_run(experiment_id, "chain-b", run_name="cpu-main") as other:
        assert other.info.run_id != first.info.run_id  # another chain: a parent of its own
    with parent_run(experiment_id, "chain-a", run_name="cpu-main") as after:
        assert after.info.run_id != first.info.run_id  # the first finished: a rerun reuses its steps
    statuses = {r.info.run_id: r.info.status for r in client.search_runs([experiment_id])}
    assert statuses == {first.info.run_id: "FINISHED", other.info.run_id: "FINISHED", after.info.run_id: "FINISHED"}


def test_under_mlflow_run_the_launched_run_points_to_the_continued_parent(experiment_id, monkeypatch):
    client = MlflowClient()
    with pytest.raises(KeyboardInterrupt), parent_run(experiment_id, "chain-a", run_name="cpu-main") as stopped:
        raise KeyboardInterrupt
    launched = client.create_run(experiment_id).info.run_id  # what `mlflow run` creates for the rerun
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    with parent_run(experiment_id, "chain-a", run_name="cpu-main") as continued:
        assert continued.info.run_id == stopped.info.run_id
    pointer = client.get_run(launched)
    assert pointer.info.status == "FINISHED"
    assert stopped.info.run_id in pointer.data.tags["mlflow.note.content"]


def test_a_rerun_under_a_budget_keeps_the_plan_of_its_chain_instead_of_measuring_anew(
        experiment_id, monkeypatch, tmp_path, tiny_bert, dev_sample):
    """A probe measures slightly different rates each time; a rerun that followed them would train
    other sizes, so neither reuse the finished steps nor continue the stopped one."""
    wf = WorkflowConfig(recipe=str(TINY), data=str(dev_sample), overrides=f"model.name={tiny_bert}",
                        output_dir=str(tmp_path / "out"), budget_minutes=1)
    key = main_key(wf, INPUTS, machine="this CPU")
    assert key != main_key(wf, INPUTS, machine="another CPU") != main_key(wf, INPUTS)
    assert earlier_plan(experiment_id, key) is None
    planned = BudgetPlan(60.0, 5, 4, {"teacher": {"train": 20.0, "other": 5.0}}, True, True, 4, 12, 8, 2)
    with pytest.raises(Interrupted), parent_run(experiment_id, key, run_name="tiny-main") as stopped:
        mlflow.set_tag(PLAN_TAG, planned.to_json())
        raise Interrupted(signal.SIGINT)
    assert earlier_plan(experiment_id, "another-chain") is None
    assert earlier_plan(experiment_id, key) == (stopped.info.run_id, planned)

    def no_probe(configs):
        raise AssertionError("a rerun of a planned chain measured the machine again")
    monkeypatch.setattr(chain_plan.probe, "measure", no_probe)
    sized_wf, plan, sized = chain_plan.fit_budget(wf, chain_plan.dry_run(wf), earlier=earlier_plan(experiment_id, key))
    assert sized == planned
    assert sized_wf.overrides.split()[-3:] == [
        "data.train_questions=5", "data.dev_questions=4", "training.batch_size=2"]
    assert sized_wf.speed_questions == 4 and plan.configs["teacher"].data.train_questions == 5
    assert plan.configs["distill"].training.batch_size == 2
    assert any(f"the plan of this chain's run {stopped.info.run_id}" in note for note in plan.notes)


def test_a_killed_launched_run_outlives_the_failed_that_mlflow_run_writes_over_it(experiment_id):
    """`mlflow run` ends its run FAILED after a non-zero exit even where the command ended it KILLED
    (MLflow 3.17's `_maybe_set_run_terminated`, called here as `mlflow run` calls it); the status
    and end time the command gave come back."""
    client = MlflowClient()
    launched = client.create_run(experiment_id)
    client.set_terminated(launched.info.run_id, "KILLED")
    ended = client.get_run(launched.info.run_id).info.end_time
    keep_status(launched.info.run_id)
    time.sleep(0.01)
    _maybe_set_run_terminated(launched, "FAILED")
    deadline = time.monotonic() + 20
    while client.get_run(launched.info.run_id).info.status != "KILLED" and time.monotonic() < deadline:
        time.sleep(0.1)
    run = client.get_run(launched.info.run_id)
    assert (run.info.status, run.info.end_time) == ("KILLED", ended)


def test_a_run_continued_before_the_overwrite_is_left_alone(experiment_id, monkeypatch):
    client = MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id  # RUNNING again: a rerun continues it
    assert not restore_status(run_id, status="KILLED", end_time=1, client=client)
    assert client.get_run(run_id).info.status == "RUNNING"
    client.set_terminated(run_id, "KILLED")
    monkeypatch.setattr(launched_run, "OVERWRITE_WAIT_SECONDS", 0.2)
    assert not restore_status(run_id, status="KILLED", end_time=1, client=client)  # nothing overwrote it
