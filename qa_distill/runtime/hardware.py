"""What the CPU can do, read once: its model name and the instruction sets our paths depend on.

Three choices hang on the CPU: `precision: auto` trains in bf16 only where the CPU runs it faster
than fp32 (on AVX2-only chips bf16 matmuls run tens of times slower), int8 quantises inputs
to the full uint8 range only where int8 products are summed in int32 (VNNI), and every latency
table names the CPU that produced it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Model names that do not say the core generation ("AMD EPYC", a hypervisor's "Intel(R) Xeon(R)
# Processor") gain it from the family and model.
_GENERATIONS = {
    ("AuthenticAMD", 25, range(0x00, 0x10)): "Zen 3", ("AuthenticAMD", 25, range(0x20, 0x30)): "Zen 3",
    ("AuthenticAMD", 25, range(0x40, 0x60)): "Zen 3", ("AuthenticAMD", 25, range(0x10, 0x20)): "Zen 4",
    ("AuthenticAMD", 25, range(0x60, 0x80)): "Zen 4", ("AuthenticAMD", 25, range(0xA0, 0xB0)): "Zen 4",
    ("AuthenticAMD", 26, range(0x00, 0x100)): "Zen 5",
    ("GenuineIntel", 6, range(0x8F, 0x90)): "Sapphire Rapids", ("GenuineIntel", 6, range(0xCF, 0xD0)): "Emerald Rapids",
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
    vendor, family, model = fields.get("vendor_id"), fields.get("cpu family", ""), fields.get("model", "0")
    generic = vendor == "AuthenticAMD" or not any(ch.isdigit() for ch in name)
    if generic and family.isdigit() and model.isdigit():
        generation = next((g for (v, f, models), g in _GENERATIONS.items()
                           if v == vendor and f == int(family) and int(model) in models), None)
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
    """Whether bf16 trains faster than fp32 here: with AMX, or AVX512-BF16 on an AMD (Zen 4, Zen 5).

    AVX512-BF16 alone is not enough on an Intel: an Emerald Rapids whose hypervisor hides AMX ran a
    training step of the cpu recipe's teacher at 7.3 windows/s under bf16 autocast, 10.4 in fp32.
    """
    flags = cpu_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and _cpuinfo().get("vendor_id") == "AuthenticAMD")


def int8_products_exact() -> bool:
    """Whether the CPU sums int8 products in int32 (VNNI), so inputs may use the full uint8 range."""
    import torch

    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
