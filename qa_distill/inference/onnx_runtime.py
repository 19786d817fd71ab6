"""ONNX Runtime as an inference runtime (the `onnx-*` backends; `pip install 'qa-distill[onnx]'`).

The model is exported by `torch.onnx.export` (the dynamo exporter, opset 23, where attention is
one fused `Attention` node), any number of windows of any length up to its positions, and run by
ONNX Runtime's CPU provider on torch's thread count. int8 is ONNX Runtime's dynamic quantisation
with the choices of `quantize.py`: every weight matrix product but the QA head's, one scale per
output channel, inputs on the full uint8 range where the CPU sums int8 products exactly.

An export takes seconds, so each graph is cached on disk (`cache_root("onnx")`) keyed by the
weights, the inputs, the precision and the versions that write it; the int8 graph is made from
the cached float one. A graph is checked against the model on shapes other than the one
exported before it is cached; one that does not agree is refused, as a user who asked for ONNX
Runtime should not get another runtime's figures.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qa_distill.errors import ModelError
from qa_distill.inference.compiled import (
    EXPORTED_ON,
    Logits,
    ModuleLogits,
    StartEnd,
    cache_root,
    check_agrees,
    example_inputs,
    quiet_export,
)
from qa_distill.models import model_fingerprint
from qa_distill.runtime.hardware import int8_products_exact
from qa_distill.runtime.import_notes import WithoutNote
from qa_distill.runtime.processes import atomic_path

FORMAT = 1  # bump when what a cached graph holds changes
OPSET = 23  # the first opset with a standard `Attention` operator
OUTPUTS = ["start_logits", "end_logits"]
# Largest relative error (`compiled.relative_error`) of a graph's logits against the model's, in
# float32. int8: measured up to 0.12 on the windows checked (random tokens, harder than text) for
# the MiniLM models of the cpu recipe, where a wrong graph (a shape baked in, say) is off by about 1.
TOLERANCE = {"fp32": 1e-4, "int8": 0.5}
# what the exporter and the quantiser log for every graph, with nothing for us to do about it
_NOTES = {"torch.onnx._internal.exporter._registration": "torchvision is not installed",
          "root": "Please consider to run pre-processing before quantization"}


@contextmanager
def _quiet() -> Iterator[None]:
    filters = {logging.getLogger(name): WithoutNote(note) for name, note in _NOTES.items()}  # "root": the root
    for log, note_filter in filters.items():
        log.addFilter(note_filter)
    try:
        with quiet_export():
            yield
    finally:
        for log, note_filter in filters.items():
            log.removeFilter(note_filter)


def export_onnx(model: nn.Module, names: Sequence[str], vocab_size: int, path: Path, *,
                lengths: Sequence[int] = EXPORTED_ON) -> Path:
    """`model` (inputs `names`, outputs start and end logits) as one ONNX file, any number of
    windows of any length up to its positions, exported on windows of `lengths`."""
    from torch.export import Dim

    example = example_inputs(names, vocab_size, lengths)
    longest = getattr(model.config, "max_position_embeddings", None)
    axes = {0: Dim("windows"), 1: Dim("length", max=longest) if longest else Dim("length")}
    with _quiet():
        torch.onnx.export(
            StartEnd(model, names).eval(), tuple(example[name] for name in names), str(path),
            input_names=list(names), output_names=OUTPUTS, dynamic_shapes=(tuple(axes for _ in names),),
            dynamo=True, optimize=True, opset_version=OPSET, external_data=False, verbose=False,
        )
    return path


def quantize_onnx_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 of every weight matrix product but the QA head's, one scale per output channel."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}

    def in_head(node: onnx.NodeProto) -> bool:
        return any(p.key == "namespace" and "qa_outputs" in p.value for p in node.metadata_props)

    keep_float = [node.name for node in graph.node
                  if node.op_type == "MatMul" and (node.input[1] not in weights or in_head(node))]
    with _quiet():
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=not int8_products_exact(), weight_type=QuantType.QInt8,
                         nodes_to_exclude=keep_float)
    return target


class OnnxLogits:
    """An ONNX Runtime session of a QA graph, called with the predictor's input dicts."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # errors only: its notes on graph rewrites are not ours
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [arg.name for arg in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Logits:
        start, end = self.session.run(OUTPUTS, {name: np.ascontiguousarray(inputs[name].numpy())
                                                for name in self.names})
        return torch.from_numpy(start), torch.from_numpy(end)


def graph_key(model: nn.Module, names: Sequence[str], precision: str) -> str:
    """What an ONNX graph of `model` at `precision` depends on, hashed."""
    import onnx
    import onnxruntime
    import onnxscript

    parts = [f"format{FORMAT}", f"opset{OPSET}", type(model).__name__, model_fingerprint(model), precision,
             ",".join(names), torch.__version__, onnx.__version__, onnxscript.__version__, onnxruntime.__version__]
    if precision == "int8":
        parts.append(f"full_range={int8_products_exact()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _build(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str, path: Path) -> None:
    """Export (or take the cached float graph and quantise), check against the model, and only
    then cache it (written whole or not at all; what a killed build left is removed)."""
    began = time.perf_counter()
    print(f"exporting {type(model).__name__} ({precision}) to ONNX, once: {path}", file=sys.stderr, flush=True)
    with atomic_path(path) as built:
        if precision == "int8":
            quantize_onnx_int8(graph_path(model, names, vocab_size, "fp32"), built)
        else:
            try:
                export_onnx(model, names, vocab_size, built)
            except Exception as error:  # noqa: BLE001 - whatever the exporter meets, one line
                first = (str(error).strip() or type(error).__name__).splitlines()[0]
                raise ModelError(f"{type(model).__name__} cannot be exported to ONNX: {first}") from error
        try:
            check_agrees(OnnxLogits(built, threads=1), ModuleLogits(StartEnd(model, names).eval(), names), names,
                         vocab_size, TOLERANCE[precision])
        except ValueError as error:
            raise ModelError(f"{type(model).__name__} ({precision}) in ONNX Runtime: {error}") from error
    print(f"exported in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)


def graph_path(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str) -> Path:
    """The cached ONNX graph of `model` at `precision` ("fp32" or "int8"), built where missing."""
    path = cache_root("onnx") / f"{graph_key(model, names, precision)}.onnx"
    if not path.exists():
        with torch.no_grad():
            _build(model, names, vocab_size, precision, path)
    return path


def onnx_logits(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str) -> OnnxLogits:
    """`inputs -> (start_logits, end_logits)` of `model` at `precision`, run by ONNX Runtime on
    torch's thread count (the runtime builder of the `onnxruntime` backends)."""
    return OnnxLogits(graph_path(model, names, vocab_size, precision), torch.get_num_threads())


def quantised_mb(model: nn.Module, names: Sequence[str], vocab_size: int) -> float:
    """Megabytes of the int8 graph ONNX Runtime runs (its weights, some int8, the rest float)."""
    return graph_path(model, names, vocab_size, "int8").stat().st_size / 1e6
