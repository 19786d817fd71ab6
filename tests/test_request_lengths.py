"""Questions and contexts of every length, alone, combined, single and in a batch: an answer, or a
one-line refusal naming the limit; never the tokenizer's truncation error or panic. The served
model gets the same requests in tests/test_serving.py."""

from __future__ import annotations

import pytest

from qa_distill.cli import main
from qa_distill.errors import DataError
from qa_distill.inference.predictor import QAPredictor

from .test_cli import one_error


def words(word: str, n: int) -> str:
    return " ".join([word] * n)  # "why" and "word" are one token each in the BERT vocabulary


def bands(limit: int, max_length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Question and context lengths in words: empty, short, at and past the question limit, past
    the window, and contexts of one window to many."""
    return (0, 1, 12, limit, limit + 1, max_length + 10), (0, 1, 40, max_length, 6 * max_length)


@pytest.fixture(scope="module")
def predictor(tiny_bert) -> QAPredictor:
    # a 96-token window with a 60-token stride: a question near the limit (46 tokens) leaves its
    # context less room than the stride, so those windows take a smaller stride
    return QAPredictor(tiny_bert, max_length=96, doc_stride=60, batch_size=8)


def test_every_length_gets_an_answer_or_a_refusal_naming_the_limit(predictor):
    limit = predictor.max_question_tokens
    assert limit == (96 - 3) // 2
    questions, contexts = bands(limit, 96)
    fitting = []
    for q in questions:
        for c in contexts:
            question, context = words("why", q), words("word", c)
            if q > limit:
                with pytest.raises(DataError) as refused:
                    predictor.answer(question, context)
                assert str(refused.value) == (f"the question has {q} tokens, over the limit of {limit} "
                                              "(half of the model's 96-token window)")
            else:
                answer = predictor.answer(question, context)
                assert answer in context
                fitting.append((question, context, answer))
    batch = predictor.answer_batch([f[0] for f in fitting], [f[1] for f in fitting])
    assert batch == [f[2] for f in fitting]  # in a batch, each row answers as it does alone
    with pytest.raises(DataError, match=f"^question of row 1 has {limit + 1} tokens, over the limit of {limit} "):
        predictor.answer_batch(["why", words("why", limit + 1)], ["word", "word"])


def test_a_question_near_the_limit_takes_a_smaller_stride_for_its_own_windows(predictor):
    short, long = predictor.strides(["why", words("why", predictor.max_question_tokens)])
    assert short == 60
    assert long == (93 - predictor.max_question_tokens) // 2  # half the room its context has


def test_predict_refuses_a_too_long_question_in_one_line(tiny_bert, capsys):
    code = main(argv=["predict", "--model", tiny_bert, "--question", words("why", 400), "--context", "word"])
    assert code == 2
    assert one_error(capsys.readouterr().err, "predict").endswith(
        "the question has 400 tokens, over the limit of 190 (half of the model's 384-token window)")
