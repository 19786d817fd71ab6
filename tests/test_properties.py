"""Property tests on generated contexts and answers: loading, windows and post-processing.

Contexts mix ASCII, accented and CJK letters, punctuation, runs of whitespace and characters the
tokenizer drops (zero-width space, soft hyphen); lengths go from one character to several windows.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qa_distill.data.features import build_features, encode_windows
from qa_distill.data.postprocess import pad_offsets, postprocess
from qa_distill.data.squad import Split, read_squad_json, validate_records
from qa_distill.errors import DataError
from qa_distill.models import load_tokenizer

from .conftest import minilm_path, write_squad

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éüßÅçñ東京語"
OTHERS = " \t\n.,;:!?'\"()-\u00a0\u200b\u00ad"
TEXT = st.text(alphabet=LETTERS + OTHERS, min_size=1, max_size=600)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_LENGTH, STRIDE = 48, 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_path())


@st.composite
def question(draw):
    """(context, answer text, true start, given start): the answer starts and ends on a letter."""
    context = draw(TEXT)
    letters = [i for i, c in enumerate(context) if c in LETTERS]
    assume(letters)
    first = draw(st.sampled_from(letters))
    last = draw(st.sampled_from([i for i in letters if first <= i < first + 40]))
    shift = draw(st.integers(-10, 10))
    return context, context[first : last + 1], first, max(0, first + shift)


def _record(qid: str, context: str, answer: str, start: int) -> dict:
    return {"id": qid, "title": "t", "context": context, "question": "What is it?",
            "answers": {"text": [answer], "answer_start": [start]}}


@SETTINGS
@given(question())
def test_loaded_answer_offsets_always_point_at_the_answer_text(case):
    context, answer, _, given_start = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_squad(Path(tmp) / "train.json", [(context, [("q", "What?", [(answer, given_start)])])])
        records = read_squad_json(path)
    kept, _ = validate_records(records, "generated", skip_invalid=False)
    (start,) = kept[0]["answers"]["answer_start"]
    assert context[start : start + len(answer)] == answer


@SETTINGS
@given(st.text(alphabet=" \t\n\u00a0\u3000", max_size=20))
def test_empty_or_whitespace_only_contexts_are_one_clear_error(context):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.json"
        path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
            {"context": context, "qas": [{"id": "q-1", "question": "What?", "answers": [{"text": "x",
                                                                                         "answer_start": 0}]}]}]}]}))
        with pytest.raises(DataError, match="'q-1' has an empty context"):
            validate_records(read_squad_json(path), str(path), skip_invalid=False)


def _features(tokenizer, records: list[dict], kind: str):
    fingerprint = hashlib.sha256(json.dumps(records).encode()).hexdigest()[:16]
    with tempfile.TemporaryDirectory() as tmp:
        split = Split(Dataset.from_list(records), "generated", fingerprint)
        return build_features(split, tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE, kind=kind,
                              cache=tmp).to_list()


@SETTINGS
@given(question())
def test_train_window_labels_map_back_to_the_answer_characters(tokenizer, case):
    context, answer, start, _ = case
    end = start + len(answer)
    windows = _features(tokenizer, [_record("q", context, answer, start)], "train")
    enc = encode_windows(tokenizer, ["What is it?"], [context], max_length=MAX_LENGTH, stride=STRIDE)
    assert len(windows) == len(enc["input_ids"])
    labelled = 0
    for i, w in enumerate(windows):
        s, e = w["start_positions"], w["end_positions"]
        assert w["input_ids"] == enc["input_ids"][i]
        if s == e == 0:
            continue  # the answer is not wholly inside this window: labelled CLS
        labelled += 1
        offsets = enc["offset_mapping"][i]
        assert enc.sequence_ids(i)[s] == enc.sequence_ids(i)[e] == 1 and s <= e
        # the first token holds the answer's first character, the last token its last one
        assert offsets[s][0] <= start < offsets[s][1] and offsets[e][0] < end <= offsets[e][1]
    if len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= STRIDE:
        assert labelled, "an answer shorter than the overlap lies wholly inside some window"


@SETTINGS
@given(st.lists(TEXT, min_size=1, max_size=3), st.integers(0, 2**32 - 1))
def test_post_processed_answers_are_spans_of_their_context(tokenizer, contexts, seed):
    records = [_record(f"q{i}", c, "", 0) for i, c in enumerate(contexts)]
    windows = _features(tokenizer, records, "eval")
    width = max(len(w["input_ids"]) for w in windows)
    for w in windows:
        for a, b in w["offset_mapping"]:
            assert (a, b) == (-1, -1) or 0 <= a <= b <= len(contexts[int(w["example_id"][1:])])
    rng = np.random.default_rng(seed)
    start, end = (rng.normal(size=(len(windows), width)).astype(np.float32) for _ in range(2))
    offsets = pad_offsets([w["offset_mapping"] for w in windows], width)
    by_id = {r["id"]: r["context"] for r in records}
    answers = postprocess(by_id, [w["example_id"] for w in windows], offsets, start, end, n_best=5)
    assert set(answers) == set(by_id)
    for qid, text in answers.items():
        assert text in by_id[qid]


def test_post_processing_with_no_windows_answers_empty():
    empty = np.zeros((0, 8), dtype=np.float32)
    assert postprocess({"q": "Some context."}, [], np.full((0, 8, 2), -1), empty, empty) == {"q": ""}
