"""Timing in rotating turns: the order of the calls, what each answerer accumulates."""

from __future__ import annotations

from qa_distill.speedtest.timing import in_turns, measure

QUESTIONS = [{"id": f"q{i}", "question": f"question {i}?", "context": f"context {i}"} for i in range(8)]


def test_in_turns_starts_one_key_later_each_item():
    assert list(in_turns("abc", [1, 2, 3, 4])) == [
        ("a", 1), ("b", 1), ("c", 1), ("b", 2), ("c", 2), ("a", 2),
        ("c", 3), ("a", 3), ("b", 3), ("a", 4), ("b", 4), ("c", 4),
    ]
    assert [key for key, _ in in_turns("abc", [1], first=4)] == ["b", "c", "a"]
    assert list(in_turns("ab", [])) == []


def test_measure_takes_turns_batch_by_batch(capsys):
    calls = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def answer_batch(self, qs: list[str], contexts: list[str]) -> list[str]:
            calls.append((self.name, len(qs)))
            return [self.name] * len(qs)

    answerers = {("a", "fp32"): Recorder("a"), ("b", "int8"): Recorder("b")}
    timings = measure(answerers, QUESTIONS, warmup=1, batch_size=4)
    assert calls[:2] == [("a", 1), ("b", 1)]  # warm-up
    # 8 questions, blocks of 4. Block 1: a alone on each question, then batched; then b.
    # Block 2 starts with b.
    turns = [("a", 1)] * 4 + [("a", 4)] + [("b", 1)] * 4 + [("b", 4)]
    assert calls[2:] == turns + turns[5:] + turns[:5]
    for (name, _), timing in timings.items():
        assert len(timing.seconds) == len(QUESTIONS) and all(t > 0 for t in timing.seconds)
        assert timing.answers == {q["id"]: name for q in QUESTIONS} and timing.batched_seconds > 0
    assert capsys.readouterr().err.startswith("speed test: 16/16 questions (100%)")  # 2 answerers x 8
