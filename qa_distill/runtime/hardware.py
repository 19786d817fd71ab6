"""What the CPU can do, read once: its model name and the instruction sets our paths depend on.

Three choices hang on the CPU: `precision: auto` trains in bf16 only where the CPU has native
bf16 (on AVX2-only chips bf16 matmuls run tens of times slower than fp32), int8 quantises inputs
to the full uint8 range only where int8 products are summed in int32 (VNNI), and every latency
table names the CPU that produced it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# AMD's model names ("AMD EPYC") do not say the core generation; the family and model do.
_AMD_GENERATIONS = {
    (25, range(0x00, 0x10)): "Zen 3", (25, range(0x20, 0x30)): "Zen 3", (25, range(0x40, 0x60)): "Zen 3",
    (25, range(0x10, 0x20)): "Zen 4", (25, range(0x60, 0x80)): "Zen 4", (25, range(0xA0, 0xB0)): "Zen 4",
    (26, range(0x00, 0x100)): "Zen 5",
}


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def describe_cpu(fields: dict[str, str]) -> str:
    """`model name`, with the core generation added where the name alone does not tell it."""
    name = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family", "").isdigit():
        family, model = int(fields["cpu family"]), int(fields.get("model", "0"))
        generation = next((g for (f, models), g in _AMD_GENERATIONS.items() if f == family and model in models), None)
        detail = f"family {family} model {model}" + (f", {generation}" if generation else "")
        if detail not in name:
            name = f"{name} ({detail})"
    return name


def cpu_name() -> str:
    """This machine's CPU, as every latency and training-time table names it."""
    return describe_cpu(_cpuinfo())


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX): where bf16 training is faster than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def int8_products_exact() -> bool:
    """Whether the CPU sums int8 products in int32 (VNNI), so inputs may use the full uint8 range."""
    import torch

    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
