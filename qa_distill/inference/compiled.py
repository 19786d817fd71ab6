"""A QA model's forward pass compiled ahead of time, for CPU inference without Python.

At batch 1 the Python around the tensor work (module calls, mask building, output classes) is
a good part of a small model's latency. `torch.export` captures the forward pass once, with the
number of windows and their length left free, and AOTInductor compiles that graph into a C++
library with the weights folded in ("freezing", which also packs them for oneDNN) and the
elementwise work fused between the matrix products. int8 is quantised on the exported graph
(`quantize.py`) and compiled the same way. Both are maintained PyTorch paths; the traced
TorchScript graphs and torch.ao modules they replace were deprecated in torch 2.13
(`benchmarks/maintained_backends.py` times both side by side: compiled fp32 and bf16 are
faster, int8 about as fast).

Compiling takes seconds to tens of seconds, so each library is cached on disk (`cache_root("compiled")`),
keyed by everything its code depends on: the weights, the precision, the inputs, the torch and
torchao versions and the CPU's instruction sets (the generated code uses them). Its parallel
loops take the thread count of the process that runs them (Inductor's `cpp.dynamic_threads`),
so one library serves a 1-thread evaluation, the speed test's threads and a server's alike.
A library is checked against the model it was compiled from on shapes other than the one
exported; a model that fails to export, compile (no C++ compiler, say) or agree runs
uncompiled, with a warning. `QA_DISTILL_COMPILE=0` runs every model uncompiled: no wait before
the first answer (a one-off `predict`), slower answers after.

A library is native code that this process loads and runs, so only what this project built is
loaded: one whose build record (`library_cache.py`: key and SHA-256, written at build time) is
missing or disagrees (truncated, overwritten, copied in from elsewhere) is removed and built
again, with one line saying so. The cache is capped (`QA_DISTILL_CACHE_GB`, default 4 GB): after
each build the least recently used libraries go until it fits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path

import torch
from torch import nn

from qa_distill.inference import library_cache
from qa_distill.inference.library_cache import write_record
from qa_distill.inference.quantize import quantize_int8
from qa_distill.models import model_fingerprint
from qa_distill.runtime.hardware import cpu_flags, cpu_name
from qa_distill.runtime.processes import atomic_path

Logits = tuple[torch.Tensor, torch.Tensor]
Forward = Callable[[dict[str, torch.Tensor]], Logits]
FORMAT = 2  # bump when what a cached library holds changes
EXPORTED_ON = [16, 10]  # two windows of different lengths: neither axis is fixed at 1 or at equal lengths
CHECKED_ON = ([1], [33], [24, 7, 20])
# Largest relative error (`relative_error`) of a library's logits against the graph it was compiled
# from, run uncompiled. Fused kernels sum in another order (fp32) and round less often (bf16); int8
# kernels quantise each input their own way: measured up to 0.04 on the cpu recipe's teacher,
# where a wrong library (a shape baked in, say) is off by about 1.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.03, "int8": 0.15}


def compiling() -> bool:
    """Whether models are compiled (unless `QA_DISTILL_COMPILE=0`)."""
    return os.environ.get("QA_DISTILL_COMPILE", "1") != "0"


def cache_root(kind: str) -> Path:
    """Where built models of a kind are kept: `$QA_DISTILL_CACHE/<kind>`, by default under ~/.cache."""
    return Path(os.environ.get("QA_DISTILL_CACHE", Path.home() / ".cache" / "qa-distill")) / kind


class StartEnd(nn.Module):
    """The model with positional tensor inputs and a (start, end) logits output, as export needs."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *tensors: torch.Tensor) -> Logits:
        out = self.model(**dict(zip(self.names, tensors, strict=True)))
        return out.start_logits, out.end_logits


def example_inputs(names: Sequence[str], vocab_size: int, lengths: Sequence[int], *, seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Random windows of the given lengths, right-padded to the longest (question, then context)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), width), generator=generator)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    inputs = {"input_ids": ids * mask, "attention_mask": mask,
              "token_type_ids": (torch.arange(width) >= width // 3).long().expand_as(ids) * mask}
    return {name: inputs[name] for name in names}


def _tensors(inputs: dict[str, torch.Tensor], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    return tuple(inputs[name] for name in names)


class ModuleLogits:
    """A module taking the inputs positionally, called with the predictor's input dicts: the
    uncompiled fallback, and the reference a library is checked against."""

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        self.module, self.names = module, list(names)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Logits:
        start, end = self.module(*_tensors(inputs, self.names))
        return start, end


class CompiledLogits(ModuleLogits):
    """An AOTInductor library of the forward pass, and the file it was loaded from."""

    def __init__(self, library: Callable, names: Sequence[str], path: Path) -> None:
        super().__init__(library, names)
        self.path = path


@contextmanager
def quiet_export() -> Iterator[None]:
    """Export reads every attribute of the model (transformers then logs that a QA model's config
    names no loss, a note about training) and warns of its own internals; neither is ours to act on."""
    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _axes(model: nn.Module, names: Sequence[str]) -> tuple[dict[int, object], ...]:
    """Every input's free axes: windows, and length up to the model's positions."""
    from torch.export import Dim

    longest = getattr(model.config, "max_position_embeddings", None)
    axes = {0: Dim("windows"), 1: Dim("length", max=longest) if longest else Dim("length")}
    return tuple(axes for _ in names)


def export_logits(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str
                  ) -> torch.export.ExportedProgram:
    """`model`'s forward as a graph of any number of windows of any length up to its positions,
    quantised for int8."""
    example = _tensors(example_inputs(names, vocab_size, EXPORTED_ON), names)
    with quiet_export():
        program = torch.export.export(StartEnd(model, names).eval(), example, dynamic_shapes=(_axes(model, names),))
        if precision == "int8":
            program = torch.export.export(quantize_int8(program.module(), example), example,
                                          dynamic_shapes=_axes(model, names))
    return program


def library_key(model: nn.Module, names: Sequence[str], precision: str) -> str:
    """What a compiled library of `model` at `precision` depends on, hashed."""
    import torchao

    parts = [f"format{FORMAT}", type(model).__name__, model_fingerprint(model), precision, ",".join(names),
             torch.__version__, torchao.__version__, cpu_name(), " ".join(sorted(cpu_flags()))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """||ours - theirs|| / ||theirs||, in float32."""
    ours, theirs = ours.float(), theirs.float()
    return ((ours - theirs).norm() / theirs.norm().clamp_min(1e-12)).item()


def check_agrees(forward: Forward, reference: Forward, names: Sequence[str], vocab_size: int,
                 tolerance: float) -> None:
    """Raise unless `forward` gives `reference`'s logits within `tolerance` (`relative_error`) on
    windows of other shapes than the exported ones."""
    for seed, lengths in enumerate(CHECKED_ON):
        inputs = example_inputs(names, vocab_size, lengths, seed=seed + 1)
        for ours, theirs in zip(forward(inputs), reference(inputs), strict=True):
            if ours.shape != theirs.shape or not relative_error(ours, theirs) <= tolerance:
                raise ValueError(f"the compiled logits differ from the model's on windows of lengths {lengths}: "
                                 f"relative error {relative_error(ours, theirs):.3g} (at most {tolerance} allowed)")


def _build(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str, path: Path, *, cap: int
           ) -> CompiledLogits:
    """Compile the model's graph, check the library against the graph run uncompiled, and only
    then put it in the cache with its build record (written whole or not at all; what a killed
    build left is removed)."""
    began = time.perf_counter()
    print(f"compiling {type(model).__name__} ({precision}) for this CPU, once: {path}", file=sys.stderr, flush=True)
    program = export_logits(model, names, vocab_size, precision)
    with atomic_path(path) as built:
        with quiet_export():
            torch._inductor.aoti_compile_and_package(program, package_path=str(built),
                                                     inductor_configs={"freezing": True, "cpp.dynamic_threads": True})
        compiled = CompiledLogits(torch._inductor.aoti_load_package(str(built)), names, path)
        check_agrees(compiled, ModuleLogits(program.module(), names), names, vocab_size, TOLERANCE[precision])
        seconds = time.perf_counter() - began
    write_record(path, seconds)  # once the library is in place: a record never names a missing file
    print(f"compiled in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    library_cache.evict(cap, keep=path)
    return compiled


def _load(path: Path, names: Sequence[str]) -> CompiledLogits | None:
    """The cached library at `path` if it passes its digest check (and marked used); a damaged
    one is removed with one line, and None returned so that it is built again."""
    if not path.exists():
        return None
    problem = library_cache.damage(path)
    if problem is not None:
        library_cache.remove_library(path)
        print(f"compiled library {path} was not loaded: {problem}; removed, compiling it again",
              file=sys.stderr, flush=True)
        return None
    library_cache.mark_used(path)
    return CompiledLogits(torch._inductor.aoti_load_package(str(path)), names, path)


def uncompiled_logits(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str) -> ModuleLogits:
    """The model run op by op by PyTorch; for int8, its quantised graph, whose integer arithmetic
    is simulated in float32 (slower than float32, the same answers as compiled int8)."""
    if precision == "int8":
        return ModuleLogits(export_logits(model, names, vocab_size, precision).module(), names)
    return ModuleLogits(StartEnd(model, names).eval(), names)


def quantised_mb(model: nn.Module, names: Sequence[str], vocab_size: int) -> float:
    """Megabytes of the tensors the int8 graph computes with (it also holds the float weights it
    was made from, which no node uses): what a compiled int8 library folds in."""
    graph = export_logits(model, names, vocab_size, "int8").module()
    tensors = {id(t): t for t in (attrgetter(node.target)(graph) for node in graph.graph.nodes
                                  if node.op == "get_attr" and node.users) if isinstance(t, torch.Tensor)}
    return sum(t.nbytes for t in tensors.values()) / 1e6


def compile_logits(model: nn.Module, names: Sequence[str], vocab_size: int, precision: str) -> Forward:
    """`inputs -> (start_logits, end_logits)` of `model` (already cast for "bf16") compiled at
    `precision`, from the cache where it was compiled before; uncompiled where compiling is
    turned off (`compiling()`), and, with a warning, where it fails or gives other logits."""
    if compiling():
        cap = library_cache.cache_cap_bytes()  # a bad setting is an error, not a reason to run uncompiled
        try:
            with torch.no_grad():
                path = cache_root("compiled") / f"{library_key(model, names, precision)}.pt2"
                return _load(path, names) or _build(model, names, vocab_size, precision, path, cap=cap)
        except Exception as error:  # noqa: BLE001 - any failure: the model still answers, uncompiled
            warnings.warn(f"{type(model).__name__} ({precision}) runs uncompiled: compiling it failed ({error})",
                          stacklevel=2)
    return uncompiled_logits(model, names, vocab_size, precision)
