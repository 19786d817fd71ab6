"""The Optuna search end to end on a tiny random BERT and a 12-question SQuAD file.

Each test runs a real study (real training, MLflow runs, Optuna storage); the PostgreSQL case
runs only when QA_DISTILL_TEST_POSTGRES_URL names a database it may create studies in.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import pytest
import sqlalchemy
from optuna.trial import TrialState

from qa_distill.config import RunConfig, SearchConfig
from qa_distill.recipes import load_config
from qa_distill.runtime import processes
from qa_distill.search import storage as study_storage
from qa_distill.search import study as search
from qa_distill.search import summary as search_report

TESTS_DIR = Path(__file__).resolve().parent
PARAGRAPHS = [
    ("Ada Lovelace wrote the first published algorithm in 1843 for the Analytical Engine, "
     "a machine designed by Charles Babbage in London.",
     [("Who wrote the first published algorithm?", "Ada Lovelace"),
      ("When was the algorithm published?", "1843"),
      ("Who designed the Analytical Engine?", "Charles Babbage")]),
    ("The river Thames flows through Oxford and London before it reaches the North Sea. "
     "It is about 346 kilometres long.",
     [("Which sea does the Thames reach?", "the North Sea"),
      ("How long is the Thames?", "about 346 kilometres"),
      ("Which city does the Thames flow through before London?", "Oxford")]),
    ("Marie Curie won the Nobel Prize in Physics in 1903 and the Nobel Prize in Chemistry in "
     "1911. She was born in Warsaw.",
     [("Where was Marie Curie born?", "Warsaw"),
      ("When did she win the prize in Chemistry?", "1911"),
      ("Which prize did she win in 1903?", "the Nobel Prize in Physics")]),
    ("Mount Everest, on the border of Nepal and China, is 8849 metres high. Tenzing Norgay and "
     "Edmund Hillary first climbed it in 1953.",
     [("How high is Mount Everest?", "8849 metres"),
      ("When was Everest first climbed?", "1953"),
      ("Who climbed Everest with Tenzing Norgay?", "Edmund Hillary")]),
]


def squad_json(path: Path) -> Path:
    paragraphs = [
        {"context": context, "qas": [
            {"id": f"q{i}-{j}", "question": question,
             "answers": [{"text": answer, "answer_start": context.index(answer)}]}
            for j, (question, answer) in enumerate(qas)
        ]}
        for i, (context, qas) in enumerate(PARAGRAPHS)
    ]
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(squad))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from .conftest import save_tiny  # here: worker processes import this file outside the package

    root = tmp_path_factory.mktemp("assets")
    return {
        "data": str(squad_json(root / "tiny-squad.json")),
        "teacher": save_tiny("bert", root / "teacher", seed=1, layers=2),
        "student": save_tiny("bert", root / "student", seed=2, layers=2),
    }


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating one costs seconds), an experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def setup(assets: dict[str, str], tracking_uri: str, tmp_path: Path, request) -> dict[str, Any]:
    """What a test's configuration is made of (JSON, for worker processes too)."""
    experiment = f"search-{request.node.name}"
    mlflow.set_tracking_uri(tracking_uri)
    # artifacts in tmp_path, not in the project's mlruns/ where `tracking.setup` would put them
    mlflow.create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    return {"assets": assets, "root": str(tmp_path), "tracking_uri": tracking_uri,
            "experiment": experiment}


def make_config(setup: dict[str, Any]) -> RunConfig:
    """The test recipe's distill run, on 2-layer models and 64-token windows."""
    root, assets = setup["root"], setup["assets"]
    overrides = [
        f"model.name={assets['student']}", "model.layer_stride=1", "training.batch_size=4",
        "training.threads=1", "data.max_length=64", f"data.cache_dir={root}/cache",
        f"tracking.tracking_uri={setup['tracking_uri']}",
        f"tracking.experiment={setup['experiment']}", "tracking.register_model=false",
    ]
    return load_config(str(TESTS_DIR / "recipes" / "runs.yaml"), "distill", overrides=overrides,
                       output_dir=f"{root}/search",
                       explicit={"data.data": assets["data"], "distillation.teacher": assets["teacher"]})


@pytest.fixture
def config(setup: dict[str, Any]) -> RunConfig:
    return make_config(setup)


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """One `search` process of the multi-process tests (run via `python -c`)."""
    config = make_config(args["setup"])
    config.search = SearchConfig(n_trials=args["n_trials"], study_name=args["study"], storage=args["storage"],
                                 register=False)
    # no pruning: which trial the median pruner stops depends on how the workers' trials interleave
    return search.run_search(config, pruner=optuna.pruners.NopPruner())


def run(config: RunConfig, study: str, n_trials: int = 3, pruner: optuna.pruners.BasePruner | None = None,
        **settings: Any) -> dict[str, Any]:
    """One study of `config` in this process; `settings` are those of its `search` section."""
    config.search = SearchConfig(n_trials=n_trials, study_name=study, **settings)
    return search.run_search(config, pruner=pruner)


def load(config: RunConfig, study: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=storage or study_storage.default_storage(config))


def mlflow_runs(config: RunConfig) -> tuple[list[mlflow.entities.Run], list[mlflow.entities.Run]]:
    """(parent runs, nested trial runs) of the test experiment."""
    mlflow.set_tracking_uri(config.tracking.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[config.tracking.experiment], output_format="list")
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return [r for r in runs if r not in nested], nested


def by_trial(runs: list[mlflow.entities.Run]) -> dict[int, mlflow.entities.Run]:
    return {int(r.data.tags["optuna_trial_number"]): r for r in runs}


@pytest.mark.slow
def test_study_logs_one_parent_and_a_nested_run_per_trial(config: RunConfig, tmp_path: Path):
    from .conftest import assert_offline_html  # not at the top: workers import this file as a script

    stem = tmp_path / "results" / "s1"
    result = run(config, "s1", results_stem=str(stem), register=True)

    study = load(config, "s1")
    trials = study.trials
    assert study.metric_names == ["f1"]  # what optuna-dashboard labels the objective
    k = config.distillation
    assert trials[0].params == {"temperature": k.temperature, "alpha": k.alpha}  # the baseline
    assert trials[1].params != trials[0].params
    parents, nested = mlflow_runs(config)
    assert len(parents) == 1 and len(nested) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {parents[0].info.run_id}
    for number, r in by_trial(nested).items():
        assert float(r.data.params["temperature"]) == trials[number].params["temperature"]
        assert float(r.data.params["alpha"]) == trials[number].params["alpha"]
        assert r.data.metrics["f1"] == trials[number].value
        assert (r.info.status, r.data.tags["state"]) == ("FINISHED", "COMPLETE")
        epochs = mlflow.MlflowClient().get_metric_history(r.info.run_id, "eval_f1")
        assert len(epochs) == 2

    best = max(trials, key=lambda t: t.value)
    assert result["best_trial"] == best.number and result["best_f1"] == best.value
    assert result["best_temperature"] == best.params["temperature"]
    assert (result["n_trials"], result["n_pruned"], result["n_failed"]) == (3, 0, 0)
    assert float(parents[0].data.params["best_alpha"]) == best.params["alpha"]
    assert parents[0].data.metrics["best_exact_match"] == result["best_exact_match"]

    frame = pd.read_csv(tmp_path / "results" / "s1.csv")
    assert list(frame.columns[:6]) == search_report.REPORT_COLUMNS and len(frame) == 3
    for plot in ("history", "importances", "contour", "intermediate"):
        assert (tmp_path / "results" / f"s1-{plot}.png").stat().st_size > 0
        assert_offline_html(tmp_path / "results" / f"s1-{plot}.html")
    report = mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "report")
    assert "report/s1.csv" in {a.path for a in report}

    kept = sorted(p.name for p in Path(config.output_dir).glob("trial-*"))
    assert kept == [f"trial-{best.number}"]  # the others' models are deleted once scored
    assert result["model_uri"]
    versions = mlflow.MlflowClient().search_model_versions("name='qa-distill-runs-search-best'")
    assert len(versions) == 1


@pytest.mark.slow
def test_rerun_resumes_the_study(config: RunConfig):
    first = run(config, "resume", n_trials=3, register=False)
    second = run(config, "resume", n_trials=2, register=False)

    assert first["trials_run"] == [0, 1, 2] and second["trials_run"] == [3, 4]
    assert [t.number for t in load(config, "resume").trials] == [0, 1, 2, 3, 4]
    assert second["n_trials"] == 5
    parents, nested = mlflow_runs(config)
    assert len(parents) == 2 and sorted(by_trial(nested)) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_failing_trial_is_failed_and_the_study_goes_on(config: RunConfig, monkeypatch):
    real = search.train_distill

    def fail_trial_1(p, *args, **kwargs):
        if p.config.output_dir.endswith("trial-1"):
            raise RuntimeError("boom")
        return real(p, *args, **kwargs)

    monkeypatch.setattr(search, "train_distill", fail_trial_1)
    result = run(config, "fails", register=False)

    states = [t.state for t in load(config, "fails").trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert result["n_failed"] == 1 and result["best_trial"] in (0, 2)
    runs = by_trial(mlflow_runs(config)[1])
    assert (runs[1].info.status, runs[1].data.tags["state"]) == ("FAILED", "FAIL")
    assert {runs[n].info.status for n in (0, 2)} == {"FINISHED"}


@pytest.mark.slow
def test_the_last_evaluation_never_prunes(config: RunConfig):
    config.training.epochs = 1  # one evaluation, after the last step: nothing left to save
    always = optuna.pruners.ThresholdPruner(lower=1000.0)
    result = run(config, "last-epoch", n_trials=2, pruner=always, register=False)

    trials = load(config, "last-epoch").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 1 for t in trials)
    assert result["n_pruned"] == 0 and result["best_trial"] in (0, 1)


@pytest.mark.slow
def test_pruned_trial_is_pruned_in_optuna_and_killed_in_mlflow(config: RunConfig, tmp_path: Path):
    always = optuna.pruners.ThresholdPruner(lower=1000.0)
    result = run(config, "prunes", n_trials=2, pruner=always, results_stem=str(tmp_path / "r" / "p"))

    trials = load(config, "prunes").trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(t.intermediate_values and t.user_attrs["pruned_at_epoch"] == 1.0 for t in trials)
    for r in mlflow_runs(config)[1]:
        assert (r.info.status, r.data.tags["state"]) == ("KILLED", "PRUNED")
    assert (result["n_pruned"], result["best_trial"], result["model_uri"]) == (2, None, None)
    frame = pd.read_csv(tmp_path / "r" / "p.csv")
    assert list(frame["pruned_at_epoch"]) == [1.0, 1.0] and frame["exact_match"].isna().all()
    assert list(frame["f1"]) == [t.intermediate_values[t.last_step] for t in trials]
    assert not (tmp_path / "r" / "p-importances.png").exists()  # needs 2 complete trials
    assert not list(Path(config.output_dir).glob("trial-*"))


def test_stale_trial_ends_its_mlflow_run_and_is_retried(config: RunConfig):
    study = study_storage.open_study("stale", study_storage.default_storage(config), sampler_seed=0)
    trial = study.ask()
    trial.suggest_float("alpha", 0.0, 1.0)
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        run_id = mlflow.active_run().info.run_id
    trial.set_user_attr("mlflow_run_id", run_id)

    study_storage.retry_stale_trial(study, study.trials[0])

    r = mlflow.get_run(run_id)
    assert (r.info.status, r.data.tags["state"]) == ("FAILED", "FAIL")
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == trial.params


def _dead_worker() -> str:
    """The `worker` tag of a process on this host that has ended."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return f"{socket.gethostname()}:{gone.pid}:"


def _running_trial(study: optuna.Study, experiment_id: str, worker: str | None) -> tuple[int, str]:
    trial = study.ask()
    trial.suggest_float("alpha", 0.0, 1.0)
    run_id = mlflow.MlflowClient().create_run(experiment_id).info.run_id  # RUNNING, as a worker leaves it
    trial.set_user_attr("mlflow_run_id", run_id)
    if worker is not None:
        trial.set_user_attr(study_storage.WORKER_ATTR, worker)
    return trial.number, run_id


def test_a_starting_worker_fails_at_once_the_trials_whose_worker_is_gone(config: RunConfig, caplog):
    url = study_storage.default_storage(config)
    study = study_storage.open_study("orphans", url, sampler_seed=0)
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment).experiment_id
    dead, dead_run = _running_trial(study, experiment, _dead_worker())
    live, live_run = _running_trial(study, experiment, processes.process_tag())  # this process
    unnamed, _ = _running_trial(study, experiment, None)  # started, its worker not yet recorded
    silent, silent_run = _running_trial(study, experiment, "another-host:1:")
    beating, _ = _running_trial(study, experiment, "another-host:2:")
    engine = sqlalchemy.create_engine(url)
    for number, age in ((silent, study_storage.GRACE_SECONDS + 10), (beating, study_storage.GRACE_SECONDS - 10)):
        study._storage.record_heartbeat(study.trials[number]._trial_id)
        with engine.begin() as db:  # as if the worker's last beat were `age` seconds ago
            db.execute(sqlalchemy.text(f"UPDATE trial_heartbeats SET heartbeat = datetime('now', '-{age} seconds') "
                                       "WHERE trial_id = :id"), {"id": study.trials[number]._trial_id})

    with caplog.at_level("WARNING"):
        assert study_storage.fail_orphaned_trials(study) == [dead]

    states = {t.number: t.state for t in study.trials}
    assert [n for n, s in states.items() if s == TrialState.FAIL] == [dead, silent]
    assert {states[n] for n in (live, unnamed, beating)} == {TrialState.RUNNING}
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.params["alpha"] for t in retries) == sorted(study.trials[n].params["alpha"] for n in (dead, silent))
    client = mlflow.MlflowClient()
    assert [client.get_run(r).info.status for r in (dead_run, silent_run, live_run)] == ["FAILED", "FAILED", "RUNNING"]
    warned = [r.getMessage() for r in caplog.records if "its worker is gone" in r.getMessage()]
    assert warned == [f"trial {dead}: its worker is gone; MLflow run {dead_run} ended FAILED, the trial retried "
                      "as a new one",
                      f"trial {silent}: its worker is gone; MLflow run {silent_run} ended FAILED, the trial retried "
                      "as a new one"]
    assert study_storage.fail_orphaned_trials(study) == []  # once only


@pytest.mark.slow
def test_the_best_model_of_a_worker_that_died_before_logging_it_is_logged_by_the_next(config: RunConfig, monkeypatch,
                                                                                      caplog):
    with monkeypatch.context() as died:  # the first worker: its trial completes, then it dies unlogged
        died.setattr(search.processes, "process_tag", _dead_worker)
        died.setattr(search, "log_best_model", lambda *args: None)
        first = run(config, "adopt", n_trials=1, register=False)
    assert first["best_trial"] == 0 and first["model_uri"] is None
    assert (Path(config.output_dir) / "trial-0" / "config.json").is_file()

    def fail(p, *args, **kwargs):
        raise RuntimeError("boom")  # the next worker's own trial fails: trial 0 stays the best

    monkeypatch.setattr(search, "train_distill", fail)
    with caplog.at_level("WARNING"):
        second = run(config, "adopt", n_trials=1, register=False)
    assert second["best_trial"] == 0 and second["model_logged_for_dead_worker"]
    assert second["model_uri"] and mlflow.pyfunc.load_model(second["model_uri"]).predict(
        pd.DataFrame({"question": ["Who wrote it?"], "context": ["Ada wrote it."]}))
    assert "trial 0's worker died before logging the study's best model: logging it from" in caplog.text
    third = run(config, "adopt", n_trials=1, register=False)  # logged once: a later worker reports it
    assert third["model_uri"] == second["model_uri"] and "model_logged_for_dead_worker" not in third


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared-optuna.db"
        return
    url = os.environ.get("QA_DISTILL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("QA_DISTILL_TEST_POSTGRES_URL is not set")
    yield url


@pytest.mark.slow
def test_two_workers_share_one_study(setup: dict[str, Any], storage: str):
    study = f"shared-{uuid.uuid4().hex[:8]}"
    args = {"setup": setup, "n_trials": 2, "study": study, "storage": storage}
    code = (f"import json, sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import test_search; "
            "print('RESULT', json.dumps(test_search.worker(json.loads(sys.argv[1]))))")
    workers = [subprocess.Popen([sys.executable, "-c", code, json.dumps(args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=240) for w in workers]
    try:
        assert [w.returncode for w in workers] == [0, 0], [err[-3000:] for _, err in outputs]
        results = [json.loads(out.rsplit("RESULT ", 1)[1]) for out, _ in outputs]
        numbers = [n for r in results for n in r["trials_run"]]
        trials = optuna.load_study(study_name=study, storage=storage).trials
        assert sorted(numbers) == [t.number for t in trials] == [0, 1, 2, 3]
        assert len({(t.params["temperature"], t.params["alpha"]) for t in trials}) == 4
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        parents, nested = mlflow_runs(make_config(setup))
        assert len(parents) == 2 and sorted(by_trial(nested)) == [0, 1, 2, 3]
    finally:
        optuna.delete_study(study_name=study, storage=storage)


@pytest.mark.slow
def test_the_layer_weights_join_t_and_alpha_where_asked(config: RunConfig, tmp_path: Path):
    stem = tmp_path / "results" / "w"
    result = run(config, "weights", n_trials=2, results_stem=str(stem), search_hidden_weight=True,
                 search_attention_weight=True, attention_weight_range=(0.5, 2.0))
    trials = load(config, "weights").trials
    assert set(trials[1].params) == {"temperature", "alpha", "hidden_weight", "attention_weight"}
    assert 0.5 <= trials[1].params["attention_weight"] <= 2.0
    # the recipe's attention_weight 0 is outside the range: no baseline trial, all sampled
    assert trials[0].params["attention_weight"] >= 0.5
    for number, r in by_trial(mlflow_runs(config)[1]).items():
        for name in ("hidden_weight", "attention_weight"):
            assert float(r.data.params[name]) == trials[number].params[name]
            assert float(r.data.params[f"distillation.{name}"]) == trials[number].params[name]
    frame = pd.read_csv(stem.with_suffix(".csv"))
    assert list(frame["hidden_weight"]) == [t.params["hidden_weight"] for t in trials]
    assert search_report.searched(load(config, "weights")) == ["temperature", "alpha", "hidden_weight",
                                                               "attention_weight"]
    assert (tmp_path / "results" / "w-contour.png").stat().st_size > 0
    best = max(trials, key=lambda t: t.value)
    assert result["best_hidden_weight"] == best.params["hidden_weight"]


def test_the_baseline_trial_takes_the_recipes_searched_weights():
    from qa_distill.config import DistillConfig
    from qa_distill.search.space import SearchSpace

    space = SearchSpace.of(SearchConfig(search_hidden_weight=True))
    own = DistillConfig(temperature=2.0, alpha=0.5, hidden_weight=1.5, attention_weight=3.0)
    assert space.baseline(own) == {"temperature": 2.0, "alpha": 0.5, "hidden_weight": 1.5}
    assert SearchSpace.of(SearchConfig()).baseline(own) == {"temperature": 2.0, "alpha": 0.5}
    assert space.baseline(DistillConfig(hidden_weight=9.0)) is None
