"""`qa-distill` in process: each subcommand's output, and bad input as one line and exit code 2."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qa_distill.cli import main
from qa_distill.config import DataConfig
from qa_distill.data.metrics import squad_scores
from qa_distill.data.squad import load_split
from qa_distill.models import load_tokenizer
from qa_distill.saved_model import SavedSettings

from .conftest import one_token_texts, saved_with, write_squad

RECIPE = str(Path(__file__).parent / "recipes" / "layers.yaml")
CONTEXT = "Ada Lovelace wrote the first program in 1843."


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(argv=list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, command: str) -> str:
    """The error of a failed command: one line, the last (after any a library logged)."""
    errors = [line for line in err.splitlines() if line.startswith(f"qa-distill {command}: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    return errors[0]


@pytest.fixture()
def squad(tmp_path) -> Path:
    return write_squad(tmp_path / "dev-ada.json", [(CONTEXT, [
        ("q-who", "Who wrote the first program?", [("Ada Lovelace", 0)]),
        ("q-when", "When?", [("1843", 40), ("in 1843", 37)]),
    ])])


def test_score_prints_the_official_scores(squad, tmp_path, capsys):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"q-who": "Lovelace", "q-when": "in 1843"}))
    code, out, err = run(capsys, "score", str(squad), str(predictions))
    assert (code, err) == (0, "")
    # "Lovelace" against "Ada Lovelace": precision 1, recall 1/2, F1 2/3; "in 1843" is exact
    assert json.loads(out) == pytest.approx({"exact_match": 50.0, "f1": 100 * (2 / 3 + 1) / 2})


@pytest.mark.parametrize(
    ("predictions", "message"),
    [(None, r"missing\.json: no such file \(predictions\)"),
     ("not json", r"predictions\.json: not a JSON file \(predictions"),
     (json.dumps(["Ada"]), r"predictions\.json: expected a JSON object of question id -> answer text"),
     (json.dumps({"q-who": 1843}), "expected a JSON object of question id -> answer text")],
)
def test_score_refuses_bad_predictions_in_one_line(squad, tmp_path, capsys, predictions, message):
    path = tmp_path / ("missing.json" if predictions is None else "predictions.json")
    if predictions is not None:
        path.write_text(predictions)
    code, out, err = run(capsys, "score", str(squad), str(path))
    assert (code, out) == (2, "")
    assert re.search(message, one_error(err, "score"))


def test_score_refuses_a_file_that_is_not_squad(tmp_path, capsys):
    (tmp_path / "p.json").write_text("{}")
    (tmp_path / "d.json").write_text(json.dumps({"version": "1.1"}))
    code, _, err = run(capsys, "score", str(tmp_path / "d.json"), str(tmp_path / "p.json"))
    assert code == 2 and "d.json: not SQuAD JSON" in one_error(err, "score")


def test_evaluate_scores_a_seeded_subset_with_the_models_saved_answer_limit(tiny_bert, dev_sample, tmp_path, capsys):
    model = saved_with(tiny_bert, tmp_path / "one-token", SavedSettings(n_best=100, max_answer_length=1))
    written = tmp_path / "answers.json"
    code, out, err = run(capsys, "evaluate", "--model", model, "--data", str(dev_sample),
                         "--dev-questions", "5", "--predictions", str(written))
    assert code == 0
    result = json.loads(out)
    answers = json.loads(written.read_text())
    subset = load_split(DataConfig(data=str(dev_sample), dev_questions=5), "dev").dataset
    assert set(answers) == set(subset["id"]) and result["dev_questions"] == 5
    tokenizer = load_tokenizer(tiny_bert)
    assert all(answers[row["id"]] in one_token_texts(tokenizer, row["context"]) for row in subset)
    gold = {row["id"]: row["answers"]["text"] for row in subset}
    assert {k: result[k] for k in ("exact_match", "f1")} == squad_scores(gold, answers)


@contextmanager
def shell_logging() -> Iterator[None]:
    """The root logger as a shell leaves it (no handlers), for the duration: `main` sets logging
    up only where nothing has, and pytest has (it puts its own handlers back only after the test)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("verbose", [True, False])
def test_evaluate_with_a_missing_model_fails_in_one_line_and_v_logs_progress(tmp_path, capsys, verbose):
    # the answer starts one character late: loading moves it, and says so at info level
    data = write_squad(tmp_path / "dev-late.json", [("the cat sat; the cat ran", [("q", "Which?", [("the cat", 14)])])])
    argv = ["evaluate", "--model", str(tmp_path / "no-model"), "--data", str(data)]
    with shell_logging():
        code = main(argv=["-v", *argv] if verbose else argv)
    err = capsys.readouterr().err
    assert code == 2
    logged = [line for line in err.splitlines() if " qa_distill.data.squad INFO " in line]
    assert len(logged) == verbose
    if verbose:
        assert "dev-late.json: {'answer_start_realigned': 1}" in logged[0]
    assert "no-model" in one_error(err, "evaluate")


def test_predict_answers_with_a_span_of_the_context(tiny_bert, capsys):
    code, out, err = run(capsys, "predict", "--model", tiny_bert, "--question", "Who wrote it?", "--context", CONTEXT)
    assert code == 0
    (answer,) = json.loads(out).values()
    assert answer and answer in CONTEXT


def test_predict_with_a_missing_model_fails_in_one_line(tmp_path, capsys):
    code, out, err = run(capsys, "predict", "--model", str(tmp_path / "no-model"), "--question", "Who?",
                         "--context", CONTEXT)
    assert (code, out) == (2, "") and "no-model" in one_error(err, "predict")


def test_report_without_runs_fails_in_one_line(tracking_uri, capsys):
    code, out, err = run(capsys, "report", "--recipe", RECIPE, "--output", "unused")
    assert (code, out) == (2, "")
    assert "no finished teacher/student/distill runs of recipe 'layers'" in one_error(err, "report")


def test_set_takes_several_overrides_per_flag_and_repeats(capsys):
    # doc_stride must stay below max_length: the message shows both values as --set gave them
    code, _, err = run(capsys, "teacher", "--recipe", RECIPE, "--set", "data.doc_stride=300 training.epochs=1",
                       "--set", "data.max_length=200")
    assert code == 2
    assert "data.doc_stride (300) must be below data.max_length (200)" in one_error(err, "teacher")


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--set", "training.epochs"], "override 'training.epochs': expected section.key=value"),
     (["--set", "training.epochs=many"], "training.epochs: 'many' is not a valid float"),
     (["--temperature", "hot"], "distillation.temperature: 'hot' is not a valid float")],
)
def test_bad_settings_fail_in_one_line_before_anything_loads(capsys, argv, message):
    code, _, err = run(capsys, "distill", "--recipe", RECIPE, *argv)
    assert code == 2 and message in one_error(err, "distill")


def test_search_needs_an_end_and_speedtest_a_known_recipe(capsys):
    code, _, err = run(capsys, "search", "--recipe", RECIPE)
    assert code == 2 and "give --n-trials or --timeout" in one_error(err, "search")
    code, _, err = run(capsys, "speedtest", "--recipe", "no-such-recipe")
    assert code == 2 and "unknown recipe 'no-such-recipe'" in one_error(err, "speedtest")


def test_an_unknown_backend_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv=["predict", "--model", "m", "--question", "q", "--context", "c", "--backend", "fp64"])
    assert exit_.value.code == 2 and "invalid choice: 'fp64'" in capsys.readouterr().err
