"""The CPU description every table carries, and the probes the precision and int8 choices use."""

from __future__ import annotations

from qa_distill.runtime import hardware


def test_amd_names_gain_their_core_generation():
    zen3 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "1", "model name": "AMD EPYC 7B13"}
    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "model name": "AMD EPYC"}
    zen5 = {"vendor_id": "AuthenticAMD", "cpu family": "26", "model": "2", "model name": "AMD EPYC"}
    assert hardware.describe_cpu(zen3) == "AMD EPYC 7B13 (family 25 model 1, Zen 3)"
    assert hardware.describe_cpu(zen4) == "AMD EPYC (family 25 model 17, Zen 4)"
    assert hardware.describe_cpu(zen5) == "AMD EPYC (family 26 model 2, Zen 5)"


def test_intel_names_with_a_model_number_are_kept_as_they_are():
    xeon = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143",
            "model name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"}
    assert hardware.describe_cpu(xeon) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"


def test_a_hypervisors_generic_intel_name_gains_family_model_and_generation():
    generic = {"vendor_id": "GenuineIntel", "cpu family": "6", "model name": "Intel(R) Xeon(R) Processor"}
    emerald, unknown = {**generic, "model": "207"}, {**generic, "model": "106"}
    assert hardware.describe_cpu(emerald) == "Intel(R) Xeon(R) Processor (family 6 model 207, Emerald Rapids)"
    assert hardware.describe_cpu(unknown) == "Intel(R) Xeon(R) Processor (family 6 model 106)"


def test_unknown_amd_family_names_the_family_without_guessing_a_generation():
    fields = {"vendor_id": "AuthenticAMD", "cpu family": "23", "model": "49", "model name": "AMD EPYC 7742"}
    assert hardware.describe_cpu(fields) == "AMD EPYC 7742 (family 23 model 49)"


def test_bf16_follows_the_cpu_flags_and_vendor(monkeypatch):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"vendor_id": "AuthenticAMD"})
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    assert not hardware.cpu_has_bf16()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert hardware.cpu_has_bf16()
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"vendor_id": "GenuineIntel"})
    assert not hardware.cpu_has_bf16()  # an Intel without AMX trains faster in fp32
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert hardware.cpu_has_bf16()
