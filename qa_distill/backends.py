"""The inference backends, as one table: what runs the model, at what precision, padded how.

Every reader takes a backend from here (the predictor, the speed test and its size column, the
command line's choices, the served model's `backend` param), so a new backend is a new row and,
for a new runtime, the module that implements it in `qa_distill.inference`. Pure data: no torch,
so the command line lists and checks backends before anything heavy loads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from qa_distill.errors import ConfigError

ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's exporter needs onnxscript


@dataclass(frozen=True)
class Backend:
    """One way of running a model.

    `runtime`: "aotinductor" (torch.export + AOTInductor, `inference/compiled.py`) or
    "onnxruntime" (`inference/onnx_runtime.py`). `precision`: "fp32", "bf16" or "int8" (dynamic
    int8 of the encoder's linear layers). `padding`: "longest" pads each batch to its longest
    window, "max_length" every window to the model's max_length (what fixed-shape serving does).
    `extra`: the pip extra that installs `modules`, where the base install lacks them.
    """

    name: str
    runtime: str
    precision: str
    padding: str = "longest"
    extra: str = ""
    modules: tuple[str, ...] = ()

    @property
    def quantised(self) -> bool:
        """Whether its weights are not the saved ones (their size is the quantised graph's)."""
        return self.precision == "int8"

    def missing(self) -> list[str]:
        """The modules it needs that are not installed."""
        return [name for name in self.modules if importlib.util.find_spec(name) is None]


TABLE = (
    Backend("fp32", "aotinductor", "fp32"),
    Backend("fp32-maxpad", "aotinductor", "fp32", padding="max_length"),
    Backend("bf16", "aotinductor", "bf16"),
    Backend("int8", "aotinductor", "int8"),
    Backend("onnx-fp32", "onnxruntime", "fp32", extra="onnx", modules=ONNX_MODULES),
    Backend("onnx-int8", "onnxruntime", "int8", extra="onnx", modules=ONNX_MODULES),
)
SPECS = {spec.name: spec for spec in TABLE}
BACKENDS = tuple(SPECS)  # every name
DEFAULT_BACKENDS = tuple(spec.name for spec in TABLE if not spec.extra)  # what the base install runs


def usable(name: str) -> Backend:
    """The spec of backend `name`, after checking that it exists and its modules are installed:
    one line naming the problem (and the install command) instead of a failure mid-compute."""
    if name not in SPECS:
        raise ConfigError(f"unknown backend {name!r}: expected one of {list(BACKENDS)}")
    spec = SPECS[name]
    missing = spec.missing()
    if missing:
        raise ConfigError(f"backend {name!r} needs {', '.join(missing)}, not installed: "
                          f"pip install 'qa-distill[{spec.extra}]'")
    return spec
