"""A `main` stopped by a signal (qa_distill/workflow/steps.py): its step and its parent end KILLED, not
FAILED, the stop is one line with the signal's exit code, and the rerun continues the same parent."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import ExecutionException

from qa_distill.cli import _report_error
from qa_distill.config import WorkflowConfig
from qa_distill.errors import Interrupted
from qa_distill.runtime.budget import BudgetPlan
from qa_distill.tracking.runs import STOPPED_BY
from qa_distill.workflow import plan as chain_plan
from qa_distill.workflow import steps
from qa_distill.workflow.steps import PLAN_TAG, KeyInputs, Step, earlier_plan, main_key, parent_run, run_step

INPUTS = KeyInputs("recipe-sha", "data-fingerprint", "commit")
TINY = Path(__file__).resolve().parent / "recipes" / "tiny.yaml"


@pytest.fixture
def experiment_id(tracking_uri) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment("qa-distill").experiment_id


def _stopped_step(by: str | None):
    """`mlflow.projects.run` as it ends when the step's process exits non-zero: the step's own run
    already ended (KILLED with the signal's name by a stopped training, else left to MLflow)."""
    def run(uri, entry_point, *, run_id, **kwargs):
        if by is not None:
            MlflowClient().set_tag(run_id, STOPPED_BY, by)
            MlflowClient().set_terminated(run_id, "KILLED")
        else:
            MlflowClient().set_terminated(run_id, "FAILED")
        raise ExecutionException(f"Run (ID '{run_id}') failed")
    return run


@pytest.mark.parametrize("by, signum", [("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM)])
def test_a_step_a_signal_stopped_stops_the_chain_as_that_signal(experiment_id, monkeypatch, by, signum):
    monkeypatch.setattr(steps.mlflow.projects, "run", _stopped_step(by))
    parent = MlflowClient().create_run(experiment_id)
    with pytest.raises(Interrupted) as stopped:
        run_step(Step("teacher", {"recipe": "cpu"}), INPUTS, parent, "cpu-teacher")
    assert stopped.value.signum == signum


def test_a_step_that_failed_still_fails_the_chain(experiment_id, monkeypatch):
    monkeypatch.setattr(steps.mlflow.projects, "run", _stopped_step(None))
    parent = MlflowClient().create_run(experiment_id)
    with pytest.raises(ExecutionException):
        run_step(Step("teacher", {"recipe": "cpu"}), INPUTS, parent, "cpu-teacher")


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
