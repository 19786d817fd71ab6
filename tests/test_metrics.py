"""The SQuAD v1.1 metric on hand-worked cases, and `qa-distill score` on files."""

import json
import subprocess
import sys

import pytest

from qa_distill.data.metrics import exact_match, f1, normalize_answer, squad_scores
from qa_distill.data.scoring import score_files

from .conftest import write_squad


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    # articles are removed only as whole words
    assert normalize_answer("Theatre anathema") == "theatre anathema"


def test_exact_match_after_normalisation():
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("Denver Broncos.", "denver broncos") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0


def test_f1_worked_by_hand():
    # prediction "denver broncos won" vs gold "denver broncos": 2 common tokens,
    # precision 2/3, recall 2/2 -> F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    assert f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    # repeated tokens count once per occurrence: pred "a b b" -> "b b", gold "b c": common 1,
    # precision 1/2, recall 1/2 -> 0.5
    assert f1("a b b", "b c") == pytest.approx(0.5)
    assert f1("Carolina", "Denver") == 0.0
    assert f1("", "Denver") == 0.0


def test_scores_take_the_best_gold_and_count_missing_predictions_as_zero():
    gold = {
        "q1": ["Denver Broncos", "The Denver Broncos", "Broncos"],
        "q2": ["Santa Clara, California", "Levi's Stadium"],
        "q3": ["gold"],
        "q4": ["Saint Bernadette Soubirous"],
    }
    predictions = {
        "q1": "broncos",  # EM 1 against the third gold
        "q2": "Levi's Stadium in Santa Clara",  # best F1 vs "levis stadium": P 2/5 R 2/2 -> 4/7
        "q3": "Gold!",  # EM 1 after normalisation
        # q4 missing: counts as 0 but stays in the denominator
    }
    scores = squad_scores(gold, predictions)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 4 / 7 + 1 + 0) / 4)


def test_score_command_prints_one_json_line(tmp_path):
    dataset = write_squad(
        tmp_path / "gold.json",
        [
            ("Denver Broncos won the game in Santa Clara.", [
                ("a", "Who won?", [("Denver Broncos", 0), ("The Denver Broncos", 0)]),
                ("b", "Where?", [("Santa Clara", 31)]),
            ]),
        ],
    )
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({"a": "the denver broncos", "b": "in Santa Clara"}))
    out = subprocess.run(
        [sys.executable, "-m", "qa_distill.cli", "score", str(dataset), str(predictions)],
        capture_output=True, text=True, check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    # b: pred "in santa clara" vs "santa clara": P 2/3 R 1 -> F1 0.8
    assert json.loads(lines[0]) == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 0.8) / 2})


def test_score_rejects_a_predictions_file_that_is_not_an_object(tmp_path):
    dataset = write_squad(tmp_path / "gold.json", [("Some text.", [("a", "What?", [("text", 5)])])])
    bad = tmp_path / "pred.json"
    bad.write_text(json.dumps(["text"]))
    from qa_distill.errors import DataError

    with pytest.raises(DataError, match="pred.json"):
        score_files(str(dataset), str(bad))


def test_score_with_predictions_for_other_questions(tmp_path, caplog):
    from qa_distill.errors import DataError

    dataset = write_squad(tmp_path / "gold.json", [("Some text.", [("a", "What?", [("text", 5)])])])
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({"x": "text", "y": "text"}))
    with pytest.raises(DataError, match="none of its 2 question ids is in"):
        score_files(str(dataset), str(predictions))
    predictions.write_text(json.dumps({"a": "text", "y": "text"}))
    with caplog.at_level("WARNING"):
        assert score_files(str(dataset), str(predictions))["exact_match"] == 100.0
    assert "1 of 2 question ids are not in" in caplog.text
