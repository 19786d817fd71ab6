"""Dynamic int8 quantisation of an exported QA model's graph, for CPU inference.

Dynamic int8 stores each linear layer's weights in int8 and quantises its input on the fly, one
scale per call. It is done on the `torch.export` graph by torchao's PT2E flow with the x86
quantiser, whose int8 linear layers AOTInductor compiles to oneDNN kernels (`compiled.py`).
Three choices, each of which cost or saved F1 points on the cpu recipe's distilled student
(CHANGELOG.md has the figures):

- weights get one scale per output channel, not one per tensor;
- the QA head (a 2 x hidden layer whose outputs are the answer scores) stays float32; it costs
  nothing at run time;
- inputs use all 256 levels of uint8 where the CPU has VNNI. Without VNNI the int8 products are
  summed in int16, which can saturate, so there inputs keep to 128 levels ("reduce_range");
  VNNI sums in int32, so the full range is exact there.

On the whole dev set int8 then scores within a few tenths of a point of float32
(experiments/results/cpu-backend-accuracy.md). What error there is comes from the inputs: a few
channels after LayerNorm and GELU run several times larger than the median channel, and one
scale per call leaves the others few levels.
"""

from __future__ import annotations

import warnings

import torch

from qa_distill.runtime.hardware import int8_products_exact

HEAD = "model.qa_outputs"  # the QA head inside `compiled.StartEnd`


def quantize_int8(graph: torch.fx.GraphModule, example: tuple[torch.Tensor, ...],
                  *, full_range: bool | None = None) -> torch.fx.GraphModule:
    """Dynamic int8, per output channel, of every linear layer of an exported graph
    (`ExportedProgram.module()`) but the QA head.

    `example` is run once through the prepared graph, as PT2E requires; dynamic quantisation
    takes nothing from it. `full_range` (default: where `int8_products_exact()`) quantises
    inputs to all 256 levels.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with warnings.catch_warnings():
        # the quantiser imports torch's compiler, which imports torch.utils.mkldnn, which uses
        # torch's own deprecated `torch.jit.script_method`: torch's warning about torch's code
        warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    if full_range is None:
        full_range = int8_products_exact()
    config = x86.get_default_x86_inductor_quantization_config(is_dynamic=True, reduce_range=not full_range)
    quantizer = x86.X86InductorQuantizer().set_global(config).set_module_name_qconfig(HEAD, None)
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example)
    return convert_pt2e(prepared)
