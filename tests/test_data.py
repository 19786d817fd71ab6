"""Loading and validating SQuAD JSON: clear errors that name the file and the question."""

import json

import pytest

from qa_distill.config import DataConfig
from qa_distill.data.squad import load_questions, load_split, read_squad_json
from qa_distill.errors import ConfigError, DataError

from .conftest import DEV_JSON, write_squad

CONTEXT = "Ada Lovelace wrote the first program in 1843."


def _one(tmp_path, qas, context=CONTEXT):
    return write_squad(tmp_path / "train-x.json", [(context, qas)])


def test_official_dev_set_loads_whole():
    records = read_squad_json(DEV_JSON)
    assert len(records) == 10570
    assert sum(len(r["answers"]["text"]) for r in records) == 34726


def test_a_question_without_answer_names_file_and_id(tmp_path):
    path = _one(tmp_path, [("q-ok", "Who?", [("Ada Lovelace", 0)]), ("q-empty", "When?", [])])
    with pytest.raises(DataError, match=r"train-x\.json.*'q-empty'.*no answer"):
        load_split(DataConfig(data=str(path)), "train")


def test_an_answer_not_in_context_names_file_and_id(tmp_path):
    path = _one(tmp_path, [("q-bad", "Who?", [("Charles Babbage", 0)])])
    with pytest.raises(DataError, match=r"'q-bad'.*not found in its context"):
        load_split(DataConfig(data=str(path)), "train")


def test_skipping_invalid_questions_is_opt_in_and_counted(tmp_path):
    path = _one(tmp_path, [
        ("q-ok", "Who?", [("Ada Lovelace", 0)]),
        ("q-empty", "When?", []),
        ("q-bad", "What?", [("a loom", 3)]),
    ])
    split = load_split(DataConfig(data=str(path), skip_invalid=True), "train")
    assert split.dataset["id"] == ["q-ok"]
    assert split.skipped["skipped_no_answer"] == 1
    assert split.skipped["skipped_answer_not_in_context"] == 1


def test_an_empty_context_is_always_an_error(tmp_path):
    path = _one(tmp_path, [("q-1", "Who?", [("x", 0)])], context="   ")
    with pytest.raises(DataError, match="'q-1' has an empty context"):
        load_split(DataConfig(data=str(path), skip_invalid=True), "train")


def test_misplaced_answer_start_is_moved_to_the_nearest_occurrence(tmp_path):
    context = "the cat sat; the cat ran"
    path = _one(tmp_path, [("q", "Which?", [("the cat", 14)])], context=context)
    split = load_split(DataConfig(data=str(path)), "train")
    assert split.dataset[0]["answers"]["answer_start"] == [13]
    assert split.skipped["answer_start_realigned"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json {", "not a JSON file"), (json.dumps([1, 2]), "not SQuAD JSON"),
     (json.dumps({"data": [{"title": "t"}]}), "not SQuAD JSON")],
)
def test_files_that_are_not_squad_json(tmp_path, content, message):
    path = tmp_path / "dev-broken.json"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"dev-broken\.json.*{message}"):
        load_split(DataConfig(data=str(path)), "dev")


def test_directory_layout_and_seeded_subsets(dev_sample):
    config = DataConfig(data=str(dev_sample), train_questions=10, subset_seed=3)
    a, b = load_split(config, "train"), load_split(config, "train")
    assert len(a.dataset) == 10 and a.dataset["id"] == b.dataset["id"]
    other = load_split(DataConfig(data=str(dev_sample), train_questions=10, subset_seed=4), "train")
    assert other.dataset["id"] != a.dataset["id"]
    assert a.source.endswith("train-sample.json")
    assert load_split(config, "dev").source.endswith("dev-sample.json")


def test_a_directory_without_dev_file(tmp_path):
    _one(tmp_path, [("q", "Who?", [("Ada Lovelace", 0)])])
    with pytest.raises(DataError, match="no dev file"):
        load_split(DataConfig(data=str(tmp_path)), "dev")


def test_a_corrected_answer_start_is_reported_with_count_and_shift(tmp_path, caplog):
    context = "Some words first. The answer is here."
    path = _one(tmp_path, [("q", "Which?", [("The answer", 25)])], context=context)  # 7 characters off
    with caplog.at_level("WARNING"):
        load_split(DataConfig(data=str(path)), "train")
    assert "moved 1 answer_start values" in caplog.text and "largest shift 7 characters" in caplog.text


@pytest.mark.parametrize("start", ["abc", None, 3.5, -1, [1]])
def test_an_answer_start_that_is_not_an_offset_names_the_question(tmp_path, start):
    path = _one(tmp_path, [("q-9", "Which?", [("Ada", start)])], context="Ada wrote it.")
    with pytest.raises(DataError, match=r"question 'q-9' has answer_start .*not a character offset"):
        load_split(DataConfig(data=str(path)), "train")


def test_load_questions_is_a_seeded_sample_of_answerable_questions(tmp_path):
    questions = load_questions(DEV_JSON, 8, seed=0)
    assert len(questions) == 8 and len({q["id"] for q in questions}) == 8
    # The same questions as every earlier speed test with this seed: timed sets stay comparable.
    assert [q["id"] for q in questions[:3]] == ["5727404b708984140094db5c", "5728f50baf94a219006a9e57",
                                              "56bec6ac3aeaaa14008c93fd"]
    assert questions == load_questions(DEV_JSON, 8, seed=0)
    assert questions != load_questions(DEV_JSON, 8, seed=1)
    for q in questions:
        assert set(q) == {"id", "question", "context", "answers"}
        assert q["answers"] and all(a in q["context"] for a in q["answers"])
    path = _one(tmp_path, [("q-ok", "Who?", [("Ada Lovelace", 0)]), ("q-empty", "When?", [])])
    assert [q["id"] for q in load_questions(path, 5)] == ["q-ok"]  # all there are, answerable only
    with pytest.raises(ConfigError, match="questions must be >= 1, got 0"):
        load_questions(path, 0)
    with pytest.raises(DataError, match="no question has a gold answer"):
        load_questions(_one(tmp_path, [("q-empty", "When?", [])]), 1)
