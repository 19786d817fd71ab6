"""Post-processing: hand-built logits, and the oracle check on the whole official dev set."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from qa_distill.config import DataConfig
from qa_distill.data.features import build_features
from qa_distill.data.metrics import squad_scores
from qa_distill.data.postprocess import best_spans, postprocess
from qa_distill.data.squad import load_split

from .conftest import DEV_JSON, minilm_path

# one window of 6 tokens: [CLS] q [SEP] "red" "fox" [SEP]; context "red fox"
OFFSETS = np.array([[[-1, -1], [-1, -1], [-1, -1], [0, 3], [4, 7], [-1, -1]]])


def test_best_span_is_the_best_valid_start_end_pair():
    start = np.array([[9.0, 8.0, 0.0, 1.0, 2.0, 7.0]])  # CLS/question/SEP logits must be ignored
    end = np.array([[9.0, 0.0, 0.0, 3.0, 1.0, 9.0]])
    s, e, score = best_spans(start, end, OFFSETS)
    # candidates inside the context: (3,3)=4, (3,4)=2, (4,4)=3, (4,3) ends before it starts
    assert (s[0], e[0], score[0]) == (3, 3, 4.0)
    answers = postprocess({"q": "red fox"}, ["q"], OFFSETS, start, end)
    assert answers == {"q": "red"}


def test_max_answer_length_limits_spans():
    start = np.array([[0.0, 0.0, 0.0, 5.0, 1.0, 0.0]])
    end = np.array([[0.0, 0.0, 0.0, 2.0, 5.0, 0.0]])
    # (3,4) = 10 spans both tokens; of the one-token spans (3,3) = 7 beats (4,4) = 6
    assert postprocess({"q": "red fox"}, ["q"], OFFSETS, start, end)["q"] == "red fox"
    assert postprocess({"q": "red fox"}, ["q"], OFFSETS, start, end, max_answer_length=1)["q"] == "red"
    assert postprocess({"q": "red fox"}, ["q"], OFFSETS, start, end, max_answer_length=2)["q"] == "red fox"


def test_the_best_window_of_a_question_wins_and_unknown_questions_get_empty_answers():
    offsets = np.concatenate([OFFSETS, OFFSETS])
    start = np.array([[0, 0, 0, 1.0, 0, 0], [0, 0, 0, 0, 6.0, 0]])
    end = np.array([[0, 0, 0, 1.0, 0, 0], [0, 0, 0, 0, 6.0, 0]])
    answers = postprocess({"q": "red fox", "other": "x"}, ["q", "q"], offsets, start, end)
    assert answers == {"q": "fox", "other": ""}


@pytest.mark.parametrize("n_best", [1, 2, 20])
def test_n_best_larger_than_the_window_is_fine(n_best):
    start = np.array([[0.0, 0.0, 0.0, 2.0, 1.0, 0.0]])
    assert postprocess({"q": "red fox"}, ["q"], OFFSETS, start, start, n_best=n_best)["q"] == "red"


@pytest.mark.slow
def test_oracle_logits_on_the_official_dev_set_score_above_99_5():
    """Gold answers turned into logits, through the real windows, post-processing and metric."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    split = load_split(DataConfig(data=str(DEV_JSON)), "dev")
    assert len(split.dataset) == 10570
    labelled = build_features(split, tokenizer, max_length=384, doc_stride=128, kind="train")
    windows = build_features(split, tokenizer, max_length=384, doc_stride=128, kind="eval")
    assert len(labelled) == len(windows)
    width = max(windows["length"])
    start = np.zeros((len(windows), width), dtype=np.float32)
    end = np.zeros_like(start)
    rows = np.arange(len(windows))
    s, e = np.asarray(labelled["start_positions"]), np.asarray(labelled["end_positions"])
    has = s > 0  # windows that hold the (first) gold answer
    start[rows[has], s[has]] = 10.0
    end[rows[has], e[has]] = 10.0
    contexts = dict(zip(split.dataset["id"], split.dataset["context"], strict=True))
    answers = postprocess(contexts, windows["example_id"], windows["offset_mapping"], start, end)
    gold = {r["id"]: r["answers"]["text"] for r in split.dataset}
    scores = squad_scores(gold, answers)
    print(f"oracle on dev-v1.1 (384/128): {scores}")
    assert scores["exact_match"] >= 99.5 and scores["f1"] >= 99.5
