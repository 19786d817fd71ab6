"""int8 linear layers: exact integer arithmetic, and inputs quantised to the full uint8 range."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from qa_distill.hardware import int8_products_exact
from qa_distill.quantize import FullRangeDynamicLinear, quantize_int8


def _integer_reference(layer: nnqd.Linear, x: torch.Tensor, levels: int) -> torch.Tensor:
    """What the layer computes, in float64 integer arithmetic: the input quantised to `levels`
    steps between its min and max (zero included), times the per-channel int8 weights."""
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / levels
    zero_point = round(-low / scale)
    quantised = torch.clamp(torch.round(x / scale) + zero_point, 0, levels).double()
    weight = layer.weight()
    products = (quantised - zero_point) @ weight.int_repr().double().T
    return (products * scale * weight.q_per_channel_scales().double() + layer.bias().double()).float()


@pytest.fixture()
def layer_and_input() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 96)
    x[:, :3] *= 14  # a few outlier channels, as after a BERT LayerNorm
    return nn.Linear(96, 128), x


@pytest.mark.skipif(not int8_products_exact(), reason="the CPU has no VNNI: full range may saturate")
def test_full_range_is_exact_integer_arithmetic_and_halves_the_error(layer_and_input):
    linear, x = layer_and_input
    full = quantize_int8(nn.Sequential(linear), full_range=True)[0]
    reduced = quantize_int8(nn.Sequential(linear), full_range=False)[0]
    assert type(full) is FullRangeDynamicLinear and type(reduced) is nnqd.Linear
    with torch.no_grad():
        torch.testing.assert_close(full(x), _integer_reference(full, x, 255), rtol=0, atol=1e-5)
        torch.testing.assert_close(reduced(x), _integer_reference(reduced, x, 127), rtol=0, atol=1e-5)
        error_full = (full(x) - linear(x)).abs().mean()
        error_reduced = (reduced(x) - linear(x)).abs().mean()
    assert error_full < 0.6 * error_reduced


def test_full_range_is_the_default_only_where_int8_products_are_exact(layer_and_input):
    linear, _ = layer_and_input
    chosen = type(quantize_int8(nn.Sequential(linear))[0])
    assert chosen is (FullRangeDynamicLinear if int8_products_exact() else nnqd.Linear)
