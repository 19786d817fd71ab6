"""Timing several answerers fairly on one shared machine: side by side, taking turns.

Timed one after the other, a slow spell of the machine (another process, a thermal limit) lands
on whichever row was being timed and makes one backend look slower than it is. Timed in short
turns whose order rotates, the same spell falls on every row alike.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from qa_distill.runtime.progress import Progress

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Answerer(Protocol):
    """What the speed test times: `QAPredictor` and `HFPipelineBaseline` both are one."""

    model: torch.nn.Module
    params: int

    def answer_batch(self, questions: list[str], contexts: list[str]) -> list[str]: ...


def in_turns(keys: Sequence[K], items: Iterable[T], *, first: int = 0) -> Iterator[tuple[K, T]]:
    """(key, item) for every item and every key, item by item, the keys taking turns: on the
    i-th item the order starts `first + i` keys along, so no key is always first or last."""
    keys = list(keys)
    for i, item in enumerate(items):
        shift = (first + i) % len(keys)
        for key in keys[shift:] + keys[:shift]:
            yield key, item


@dataclass
class Timing:
    """What one answerer accumulates while timed: latencies, answers, batched seconds."""

    seconds: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    batched_seconds: float = 0.0


def measure(
    answerers: dict[K, Answerer],
    questions: list[dict[str, Any]],
    *,
    warmup: int,
    batch_size: int,
) -> dict[K, Timing]:
    """Warm every answerer up, then time them all, one batch of questions at a time, in turns.

    The questions are cut into blocks of `batch_size`; on each block every answerer answers each
    question alone (latency), then the whole block in one call (throughput), before the next one
    takes its turn, starting one answerer later each block (`in_turns`). The blocks are short so
    that the turns are too: a turn over many questions is long enough for a slow spell to fall on
    one row only.
    """
    for answerer in answerers.values():
        for q in questions[:warmup]:
            answerer.answer_batch([q["question"]], [q["context"]])
    timings = {key: Timing() for key in answerers}
    blocks = [questions[lo : lo + batch_size] for lo in range(0, len(questions), batch_size)]
    progress = Progress("speed test", len(answerers) * len(questions), unit="questions")
    for key, block in in_turns(list(answerers), blocks):
        answerer, timing = answerers[key], timings[key]
        for q in block:
            began = time.perf_counter()
            timing.answers[q["id"]] = answerer.answer_batch([q["question"]], [q["context"]])[0]
            timing.seconds.append(time.perf_counter() - began)
        began = time.perf_counter()
        answerer.answer_batch([q["question"] for q in block], [q["context"] for q in block])
        timing.batched_seconds += time.perf_counter() - began
        progress.update(len(block))
    progress.close()
    return timings
