"""The search's best model is scored on the whole dev set only when asked: a tiny search stays tiny."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow

from qa_distill.config import RunConfig
from qa_distill.search import study


def _objective(full_dev_score: bool) -> SimpleNamespace:
    config = RunConfig()
    config.data.dev_questions = 50  # the trials' subset
    config.search.full_dev_score = full_dev_score
    return SimpleNamespace(prepared=SimpleNamespace(config=config), best_here=3, holds=lambda best: best == 3,
                           trial_dir=lambda number: f"trials/{number}")


def test_the_best_model_is_scored_on_the_whole_dev_set_only_with_the_setting(monkeypatch, tracking_uri):
    calls = []

    def evaluate(model, data, *, backend):
        calls.append((model, data.dev_questions, backend))
        return {"f1": 61.0, "exact_match": 50.0, "dev_questions": 10570}

    monkeypatch.setattr(study, "evaluate_model", evaluate)
    monkeypatch.setattr(study, "orphaned_model", lambda objective, optuna_study, number: None)  # workers alive
    assert study.score_on_full_dev(_objective(False), None, {"best_trial": 3}) == {}
    assert calls == []  # the default: no evaluation after the study
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("final-score")  # not the experiment an earlier test made active in another store
    with mlflow.start_run() as run:
        assert study.score_on_full_dev(_objective(True), None, {"best_trial": 7}) == {}  # another worker's best
        scores = study.score_on_full_dev(_objective(True), None, {"best_trial": 3})
    assert calls == [("trials/3", None, "fp32")]
    assert scores["best_full_dev_f1"] == 61.0
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.metrics["full_dev_questions"] == 10570
