"""Several training processes (`torchrun`, `accelerate launch`): who logs, who computes, who waits.

The HF Trainer already runs DDP when a launcher starts one process per device: it shards the
training and evaluation batches and gathers the evaluation logits back in order. What is left to
us is the work done once for all processes: the MLflow run and model registration (main process
only), and the shared on-disk caches (main process first, the others then read its files).
In a single process every helper here is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import PartialState


def _state() -> PartialState:
    # The same device choice as trainer.training_arguments (use_cpu without CUDA), so the state
    # set up here agrees with the one the Trainer sets up; launched on CPU, it joins over gloo.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in the process that owns the MLflow run (global rank 0; also any single process)."""
    return _state().is_main_process


def world_size() -> int:
    return _state().num_processes


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (it writes a cache); the others run it after."""
    with _state().main_process_first():
        yield
