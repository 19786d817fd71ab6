"""Dynamic int8 quantisation of a QA model's encoder for CPU inference.

Dynamic int8 stores each linear layer's weights in int8 and quantises its input on the fly, one
scale per call. Three choices, each of which cost or saved F1 points on the cpu recipe's
distilled student (CHANGELOG.md has the figures):

- weights get one scale per output channel, not one per tensor;
- the QA head (a 2 x hidden layer whose outputs are the answer scores) stays float32; it costs
  nothing at run time;
- inputs use all 256 levels of uint8 where the CPU has VNNI. PyTorch keeps them to 128 levels by
  default ("reduce_range"), because without VNNI the int8 products are summed in int16, which
  can saturate; VNNI sums in int32, so the full range is exact there.

On the whole dev set int8 then scores within a few tenths of a point of float32
(experiments/results/cpu-backend-accuracy.md). What error there is comes from the inputs: a few
channels after LayerNorm and GELU run several times larger than the median channel, and one
scale per call leaves the others few levels.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from transformers import PreTrainedModel

from qa_distill.hardware import int8_products_exact


class FullRangeDynamicLinear(nnqd.Linear):
    """Dynamic int8 linear layer that quantises its input to 256 levels instead of 128."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)


def quantize_int8(model: PreTrainedModel, full_range: bool | None = None) -> nn.Module:
    """Dynamic int8 quantisation, per output channel, of every linear layer but the QA head.

    `full_range` (default: where `int8_products_exact()`) quantises inputs to all 256 levels.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if full_range is None:
        full_range = int8_products_exact()
    head = getattr(model, "qa_outputs", None)
    layers = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }
    linear = FullRangeDynamicLinear if full_range else nnqd.Linear
    with warnings.catch_warnings():
        # torch.ao and its quantized tensors are deprecated in torch 2.13, and still the fastest int8
        # path measured (README, "Inference backends"): pyproject pins torch < 2.14 until a maintained
        # one matches it
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
        return quantize_dynamic(model, layers, mapping={nn.Linear: linear})
