"""Which precision a run trains in: `auto` follows the hardware, an explicit value is kept."""

from __future__ import annotations

import pytest
import torch

from qa_distill.config import TrainingConfig
from qa_distill.training.trainer import resolve_precision, training_arguments


@pytest.fixture()
def cpu_only(monkeypatch):
    """A machine without CUDA whose torch has oneDNN (mkldnn), as every x86 CPU build does."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)


def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(cpu_only):
    assert resolve_precision("auto", cpu_has_bf16=True) == "bf16"
    assert resolve_precision("auto", cpu_has_bf16=False) == "fp32"


def test_auto_without_onednn_is_fp32_even_with_bf16_flags(cpu_only, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert resolve_precision("auto", cpu_has_bf16=True) == "fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_an_explicit_precision_passes_through(cpu_only, precision, cpu_has_bf16):
    assert resolve_precision(precision, cpu_has_bf16=cpu_has_bf16) == precision


@pytest.mark.parametrize(("precision", "bf16", "fp16"), [("bf16", True, False), ("fp32", False, False)])
def test_the_resolved_precision_reaches_the_trainer_arguments(tmp_path, precision, bf16, fp16):
    args = training_arguments(TrainingConfig(), str(tmp_path), precision=precision)
    assert (args.bf16, args.fp16) == (bf16, fp16)
