"""int8 quantisation of an exported graph: integer arithmetic on the full uint8 range where it
is exact, and every linear layer quantised but the QA head."""

from __future__ import annotations

from operator import attrgetter

import pytest
import torch
from torch import nn

from qa_distill.inference.compiled import export_logits
from qa_distill.inference.quantize import quantize_int8
from qa_distill.models import input_names, load_qa_model
from qa_distill.runtime.hardware import int8_products_exact

DEQUANTIZE_WEIGHTS = torch.ops.quantized_decomposed.dequantize_per_channel.default


def _calls(graph: torch.fx.GraphModule, target) -> list[torch.fx.Node]:
    return [node for node in graph.graph.nodes if node.op == "call_function" and node.target == target]


def _integer_reference(graph: torch.fx.GraphModule, layer: nn.Linear, x: torch.Tensor, levels: int) -> torch.Tensor:
    """What a quantised linear layer computes, in float64 integer arithmetic: the input quantised
    to `levels` steps between its min and max (zero included), times the graph's int8 weights,
    one scale per output channel."""
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / levels
    zero_point = round(-low / scale)
    quantised = torch.clamp(torch.round(x / scale) + zero_point, 0, levels).double()
    (dequantize,) = _calls(graph, DEQUANTIZE_WEIGHTS)
    weight, scales = (attrgetter(node.target)(graph) for node in dequantize.args[:2])
    assert weight.dtype == torch.int8 and scales.shape == (layer.out_features,)
    products = (quantised - zero_point) @ weight.double().T
    return (products * scale * scales.double() + layer.bias.double()).float()


@pytest.fixture()
def layer_and_input() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 96)
    x[:, :3] *= 14  # a few outlier channels, as after a BERT LayerNorm
    return nn.Linear(96, 128), x


def _quantised(layer: nn.Linear, x: torch.Tensor, full_range: bool | None) -> torch.fx.GraphModule:
    return quantize_int8(torch.export.export(nn.Sequential(layer), (x,)).module(), (x,), full_range=full_range)


def test_full_range_is_integer_arithmetic_on_256_levels_and_halves_the_error(layer_and_input):
    linear, x = layer_and_input
    full, reduced = _quantised(linear, x, True), _quantised(linear, x, False)
    with torch.no_grad():
        torch.testing.assert_close(full(x), _integer_reference(full, linear, x, 255), rtol=0, atol=1e-4)
        torch.testing.assert_close(reduced(x), _integer_reference(reduced, linear, x, 127), rtol=0, atol=1e-4)
        error_full = (full(x) - linear(x)).abs().mean()
        error_reduced = (reduced(x) - linear(x)).abs().mean()
    assert error_full < 0.6 * error_reduced


def test_full_range_is_the_default_only_where_int8_products_are_exact(layer_and_input):
    linear, x = layer_and_input
    (choose,) = _calls(_quantised(linear, x, None), torch.ops.quantized_decomposed.choose_qparams.tensor)
    assert choose.args[2] == (255 if int8_products_exact() else 127)  # quant_max


def test_int8_quantises_every_linear_layer_but_the_qa_head(tiny_bert):
    model = load_qa_model(tiny_bert).model.eval()
    graph = export_logits(model, input_names(model), model.config.vocab_size, "int8").module()
    # 4 layers: query, key, value, attention output, FFN in and out
    assert len(_calls(graph, DEQUANTIZE_WEIGHTS)) == 4 * 6
    (head,) = [node for node in _calls(graph, torch.ops.aten.linear.default) if node.args[0].target != (
        torch.ops.quantized_decomposed.dequantize_per_tensor.tensor)]
    assert head.args[1].op == "get_attr" and attrgetter(head.args[1].target)(graph).shape == (2, 32)
