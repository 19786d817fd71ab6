"""What a long stage tells its console while it works: where it runs, and how far it is.

Training, tokenising, the teacher-logits pass, evaluation and the speed test can each take from
minutes to hours on a CPU. `Progress` reports step/total, rate and ETA: a tqdm bar on a
terminal, else (a log file, `mlflow run`'s captured output) one plain line at most every
`every` seconds, so a log shows a line a minute even when a step takes many seconds, without a
bar's carriage returns. `ProgressCallback` feeds it from the HF Trainer (training steps and
evaluation batches). Everything goes to stderr, which the stage logs capture.

A stage given the seconds planned for it (`main`'s budget passes a training step's in the
environment, `PLANNED_TRAIN_SECONDS`) says once, early, when it is on course to overrun them, and
what to change.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from qa_distill.runtime.hardware import cpu_name

EVERY_SECONDS = 30.0  # a plain line at most this often (default of TrainingConfig.progress_seconds)
PLANNED_TRAIN_SECONDS = "QA_DISTILL_PLANNED_TRAIN_SECONDS"  # set by `main` for each step it runs
OVERRUN = 1.2  # a stage on course for more than this share of its planned time says so
EARLY = 0.05  # ... once this share of it is done (the rate is known by then)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Progress of `total` units of work (`done` of them already done, e.g. when resuming)."""

    def __init__(
        self, what: str, total: int, *, unit: str = "steps", every: float = EVERY_SECONDS,
        done: int = 0, stream: IO[str] | None = None, planned: float | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.every, self.planned = what, total, unit, every, planned
        self.warned = False
        self.stream = stream or sys.stderr
        self.done = self.first = done
        self.began = self.printed = time.monotonic()
        self.printed_done: int | None = None
        interactive = getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, initial=done, desc=what, unit=unit, file=self.stream) if interactive else None

    def line(self) -> str:
        """`training: 120/2000 steps (6%), 0.42 steps/s, elapsed 0:04:46, ETA 1:14:32`."""
        elapsed = time.monotonic() - self.began
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "unknown"
        return (f"{self.what}: {self.done}/{self.total} {self.unit}{share}, {rate:.3g} {self.unit}/s, "
                f"elapsed {_clock(elapsed)}, ETA {eta}")

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.printed, self.printed_done = time.monotonic(), self.done

    def advance_to(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        if self.bar is None and time.monotonic() - self.printed >= self.every:
            self._print()
        if self.planned and not self.warned and self.done - self.first >= max(1, EARLY * self.total):
            self._check_overrun()

    def _check_overrun(self) -> None:
        elapsed = time.monotonic() - self.began
        expected = elapsed * (self.total - self.first) / (self.done - self.first)
        if expected > OVERRUN * self.planned:
            self.warned = True
            print(f"{self.what}: on course for {expected / 60:.1f} min, over the {self.planned / 60:.1f} min main's "
                  "budget planned for it (this machine is slower now than when measured): give main a larger "
                  "budget_minutes, or fewer data.train_questions; it goes on", file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.advance_to(self.done + n)

    def close(self) -> None:
        """The last line (or the bar's end): the total time and rate of the stage."""
        if self.bar is not None:
            self.bar.close()
        elif self.printed_done != self.done:
            self._print()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressCallback(TrainerCallback):
    """Training steps and evaluation batches of an HF Trainer, through `Progress`."""

    def __init__(self, *, every: float = EVERY_SECONDS, stream: IO[str] | None = None,
                 planned: float | None = None) -> None:
        self.every, self.stream = every, stream
        self.planned = planned if planned is not None else float(os.environ.get(PLANNED_TRAIN_SECONDS) or 0)
        self.training: Progress | None = None
        self.evaluating: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs: Any):
        self.training = Progress("training", state.max_steps, unit="steps", every=self.every, done=state.global_step,
                                 stream=self.stream, planned=self.planned or None)

    def on_step_end(self, args, state, control, **kwargs: Any):
        if self.training is not None:
            self.training.advance_to(state.global_step)

    def on_train_end(self, args, state, control, **kwargs: Any):
        if self.training is not None:
            self.training.close()
            self.training = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs: Any):
        if self.evaluating is None:
            total = len(eval_dataloader) if eval_dataloader is not None else 0
            self.evaluating = Progress("evaluation", total, unit="batches", every=self.every, stream=self.stream)
        self.evaluating.update(1)

    def on_evaluate(self, args, state, control, **kwargs: Any):
        if self.evaluating is not None:
            self.evaluating.close()
            self.evaluating = None


def counted(fn: Callable[..., dict], progress: Progress) -> Callable[..., dict]:
    """A batched `Dataset.map` function that also advances `progress` by each batch's size."""

    def run(batch: dict[str, list], **kwargs: Any) -> dict:
        out = fn(batch, **kwargs)
        progress.update(len(next(iter(batch.values()))))
        return out

    return run


@contextmanager
def datasets_bars_off() -> Iterator[None]:
    """`datasets` without its own bars, while a `Progress` reports the same work."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def announce(what: str, device: str, *, precision: str, threads: int, stream: IO[str] | None = None) -> str:
    """One line when a stage starts: where it runs, in which precision, on how many threads."""
    where = f"{device} ({cpu_name()})" if device == "cpu" else device
    line = f"{what}: device {where}, precision {precision}, {threads} threads"
    print(line, file=stream or sys.stderr, flush=True)
    return line
