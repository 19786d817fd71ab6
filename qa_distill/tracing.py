"""A QA model's forward pass as traced TorchScript graphs, for CPU inference without Python.

At batch 1 the Python around the tensor work (module calls, mask building, output classes) is
a good part of a small model's latency; the traced graph runs without it, and the graph without
the mask, for batches with no padding, builds no 4-D mask at all (same logits). The gain per
backend is measured side by side by `benchmarks/forward_graphs.py`
(experiments/results/forward-graphs-bench.md, which names its CPU).

torch.jit is deprecated in torch 2.13 in favour of torch.compile and torch.export, but neither
replacement is as fast here: torch.compile breaks the graph at every dynamic-int8 layer and
recompiles as the window length changes, and the eager model without a graph is slower
(`benchmarks/maintained_backends.py`; README, "Inference backends"). So we trace, with
torch pinned below 2.14, check each graph against the eager model on other shapes than the one
traced, and fall back to the eager model, with a warning, if tracing fails or disagrees.
Freezing a graph folds constants ahead of time; the two graphs keep about 60 MB more memory than
the eager model for the cpu recipe's 90 MB teacher (the weights themselves are shared).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

Logits = tuple[torch.Tensor, torch.Tensor]
Forward = Callable[[dict[str, torch.Tensor]], Logits]
MASK = "attention_mask"


class StartEnd(nn.Module):
    """The model with positional tensor inputs and a (start, end) logits output, as tracing needs."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *tensors: torch.Tensor) -> Logits:
        out = self.model(**dict(zip(self.names, tensors, strict=True)))
        return out.start_logits, out.end_logits


@contextmanager
def _quiet_model_attributes() -> Iterator[None]:
    """Tracing reads every attribute of the model, and transformers' `loss_function` property
    then logs that a QA model's config names no loss, a warning about training, not inference."""
    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def example_inputs(names: Sequence[str], vocab_size: int, lengths: Sequence[int], seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Random windows of the given lengths, right-padded to the longest (question, then context)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), width), generator=generator)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    inputs = {"input_ids": ids * mask, "attention_mask": mask,
              "token_type_ids": (torch.arange(width) >= width // 3).long().expand_as(ids) * mask}
    return {name: inputs[name] for name in names}


def _without_mask(names: Sequence[str]) -> list[str]:
    return [name for name in names if name != MASK]


def _tensors(inputs: dict[str, torch.Tensor], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    return tuple(inputs[name] for name in names)


class EagerLogits:
    """The model itself, called like the traced graphs: the fallback, and their reference."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.wrapped, self.names = StartEnd(model, names).eval(), list(names)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Logits:
        return self.wrapped(*_tensors(inputs, self.names))


def _checked_graph(eager: EagerLogits, names: Sequence[str], vocab_size: int,
                   shapes: Sequence[Sequence[int]]) -> torch.jit.ScriptModule:
    """A frozen trace of the model taking `names`, traced on windows of the first of `shapes`,
    checked against the eager model (given every input) on each of the others."""
    traced_on, *checks = shapes
    wrapped = StartEnd(eager.wrapped.model, names).eval()
    example = example_inputs(names, vocab_size, traced_on)
    graph = torch.jit.freeze(torch.jit.trace(wrapped, _tensors(example, names)))
    for seed, lengths in enumerate(checks):
        check = example_inputs(eager.names, vocab_size, lengths, seed=seed + 1)
        for ours, theirs in zip(graph(*_tensors(check, names)), eager(check), strict=True):
            torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-2, atol=1e-2)
    return graph


class TracedLogits:
    """A model's forward pass as two traced graphs: one given the attention mask, for batches
    with padding, and one without it, for batches with none (every batch of a single window)."""

    def __init__(self, padded: torch.jit.ScriptModule, names: Sequence[str],
                 unpadded: torch.jit.ScriptModule | None) -> None:
        self.padded, self.names = padded, list(names)
        self.unpadded, self.unpadded_names = unpadded, _without_mask(names)

    def graph_for(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.jit.ScriptModule, list[str]]:
        """The graph that runs this batch, and the inputs it takes."""
        if self.unpadded is not None and bool(inputs[MASK].all()):
            return self.unpadded, self.unpadded_names
        return self.padded, self.names

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Logits:
        graph, names = self.graph_for(inputs)
        return graph(*_tensors(inputs, names))


def trace_logits(model: nn.Module, names: Sequence[str], vocab_size: int) -> Forward:
    """`inputs -> (start_logits, end_logits)` through traced graphs of `model` (`TracedLogits`),
    or through `model` itself (with a warning) where tracing fails or gives other logits."""
    eager = EagerLogits(model, names)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_model_attributes():
            warnings.simplefilter("ignore")  # TracerWarnings of model code, and the deprecation
            padded = _checked_graph(eager, names, vocab_size, ([16, 10], [9], [24, 7, 20]))
            unpadded = None
            if MASK in names:
                unpadded = _checked_graph(eager, _without_mask(names), vocab_size, ([16, 16], [9], [24] * 3))
    except Exception as error:  # noqa: BLE001 - any failure: the eager model still answers
        warnings.warn(f"{type(model).__name__} runs eager: tracing it failed ({error})", stacklevel=2)
        return eager
    return TracedLogits(padded, names, unpadded)
