"""The traced graphs every predictor backend runs: same logits as the eager model, any shape."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qa_distill.models import input_names, load_qa_model
from qa_distill.quantize import quantize_int8
from qa_distill.tracing import TracedLogits, example_inputs, trace_logits

SHAPES = ([1], [33], [40, 12, 25], [8] * 4)  # none is a batch traced on: (16, 10), (16, 16)


@pytest.mark.parametrize("backend", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("kind", ["tiny_bert", "tiny_distilbert"])
def test_traced_logits_equal_the_eager_models_on_other_shapes(kind, backend, request):
    model = load_qa_model(request.getfixturevalue(kind)).model.eval()
    if backend == "bf16":
        model = model.to(torch.bfloat16)
    elif backend == "int8":
        model = quantize_int8(model)
    names = input_names(model)
    forward = trace_logits(model, names, model.config.vocab_size)
    assert isinstance(forward, TracedLogits)
    with torch.no_grad():
        for seed, lengths in enumerate(SHAPES):
            inputs = example_inputs(names, model.config.vocab_size, lengths, seed=seed + 10)
            eager = model(**inputs)
            start, end = forward(inputs)
            assert start.shape == (len(lengths), max(lengths))
            torch.testing.assert_close(start, eager.start_logits, rtol=0, atol=0)
            torch.testing.assert_close(end, eager.end_logits, rtol=0, atol=0)


class WidthBaked(nn.Module):
    """Logits built from a Python int of the input's width: a trace keeps the width it saw."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        width = int(input_ids.shape[1])
        logits = torch.arange(width, dtype=torch.float32).expand(input_ids.shape[0], width)
        return SimpleNamespace(start_logits=logits, end_logits=-logits)


def test_batches_without_padding_run_the_graph_that_takes_no_mask(tiny_bert):
    model = load_qa_model(tiny_bert).model.eval()
    names = input_names(model)
    forward = trace_logits(model, names, model.config.vocab_size)
    for lengths, takes_mask in (([12], False), ([12, 12], False), ([12, 5], True)):
        graph, graph_names = forward.graph_for(example_inputs(names, model.config.vocab_size, lengths))
        graph_inputs = [i.debugName() for i in graph.graph.inputs()][1:]  # after `self`
        assert ("attention_mask" in graph_names) is takes_mask
        assert len(graph_inputs) == len(graph_names) == len(names) - (not takes_mask)


def test_a_model_that_traces_wrong_runs_eager_with_a_warning():
    names = ["input_ids", "attention_mask"]
    with pytest.warns(UserWarning, match="WidthBaked runs eager"):
        forward = trace_logits(WidthBaked(), names, vocab_size=100)
    start, end = forward(example_inputs(names, 100, [5, 3]))
    assert start.tolist() == [[0, 1, 2, 3, 4]] * 2 and end.tolist() == [[0, -1, -2, -3, -4]] * 2


def test_example_inputs_pad_each_window_after_its_length():
    inputs = example_inputs(["input_ids", "attention_mask", "token_type_ids"], 50, [6, 3])
    assert inputs["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert (inputs["input_ids"][1, 3:] == 0).all() and (inputs["input_ids"][0] > 0).all()
    assert inputs["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0]]
