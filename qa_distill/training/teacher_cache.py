"""The teacher's start/end logits over the training windows, computed once, memory-mapped.

The teacher never changes during distillation, so its logits over the (fixed) training windows
are computed in one inference pass and reused by every epoch, run and search trial. The cache
is keyed by the teacher's weights, the windows (data, subset, tokenizer, max_length, doc_stride)
and the precision; a directory whose metadata does not match its key is an error, never reused.
The key also names the cache's format, so a cache an earlier version wrote in another layout is
not found (and is computed again) rather than refused as damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qa_distill.data.squad import file_sha256
from qa_distill.errors import QaDistillError
from qa_distill.models import input_names
from qa_distill.runtime.processes import atomic_path
from qa_distill.runtime.progress import Progress
from qa_distill.training.batching import WindowTensors

ARRAYS = ("start.npy", "end.npy")
FORMAT = 2  # 2: meta.json carries the arrays' SHA-256 (format 1 had no checksums)


class StaleCacheError(QaDistillError):
    """A cache directory whose contents do not match what its key promises."""


@dataclass
class TeacherLogits:
    """Memory-mapped (windows, max_length) start and end logits, row i for feature_index i."""

    start: np.ndarray
    end: np.ndarray
    key: str
    path: Path

    def batch(self, indices: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = indices.cpu().numpy()
        start = torch.from_numpy(np.ascontiguousarray(self.start[rows, :width]))
        end = torch.from_numpy(np.ascontiguousarray(self.end[rows, :width]))
        return start.to(indices.device), end.to(indices.device)


def cache_key(teacher_fingerprint: str, features: Dataset, max_length: int, precision: str,
              *, layout: int = FORMAT) -> str:
    text = f"{teacher_fingerprint}:{features._fingerprint}:{len(features)}:{max_length}:{precision}"
    if layout > 1:  # format 1's keys named no format
        text += f":format{layout}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def autocast(device: torch.device, precision: str):
    """Autocast for bf16/fp16 inference, a no-op for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


@torch.inference_mode()
def teacher_forward(
    teacher: PreTrainedModel, batch: dict[str, torch.Tensor], precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits for a batch, given the inputs it takes (token_type_ids for BERT)."""
    device = next(teacher.parameters()).device
    inputs = {k: batch[k].to(device, non_blocking=True) for k in input_names(teacher) if k in batch}
    with autocast(device, precision):
        out = teacher(**inputs)
    return out.start_logits.float(), out.end_logits.float()


def _compute(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    features: Dataset,
    max_length: int,
    batch_size: int,
    precision: str,
    target: Path,
    device: torch.device,
    pad_to_multiple_of: int,
) -> None:
    """One pass in length order over the windows held as tensors (a batch is a slice, pinned on
    CUDA so its copy overlaps), under inference_mode, padded to the training's buckets."""
    n = len(features)
    start = np.lib.format.open_memmap(target / "start.npy", "w+", np.float32, (n, max_length))
    end = np.lib.format.open_memmap(target / "end.npy", "w+", np.float32, (n, max_length))
    windows = WindowTensors(features, tokenizer.pad_token_id, multiple=pad_to_multiple_of, max_length=max_length)
    order = torch.argsort(windows.lengths, stable=True)
    teacher.to(device).eval()  # and stays there: on the fly, the trainer runs it on the same device
    progress = Progress("teacher logits", n, unit="windows")
    for lo in range(0, n, batch_size):
        rows = order[lo : lo + batch_size].numpy()
        batch = windows.batch(rows)
        if device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        s, e = teacher_forward(teacher, batch, precision)
        width = s.shape[1]
        start[rows, :width] = s.cpu().numpy()
        end[rows, :width] = e.cpu().numpy()
        progress.update(len(rows))
    progress.close()
    start.flush()
    end.flush()


def load_or_compute(
    cache_root: Path,
    teacher: PreTrainedModel,
    teacher_fingerprint: str,
    tokenizer: PreTrainedTokenizerBase,
    features: Dataset,
    *,
    max_length: int,
    precision: str,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    pad_to_multiple_of: int = 8,
) -> tuple[TeacherLogits, bool]:
    """The cached logits for this teacher and these windows; computed first if absent, on
    `device` (the training device), `batch_size` windows at a time padded to multiples of
    `pad_to_multiple_of` tokens (padding is masked: it changes no real token's logit), under `precision`.

    Returns the logits and whether they were computed now (False: reused from disk).
    """
    key = cache_key(teacher_fingerprint, features, max_length, precision)
    path = cache_root / "teacher_logits" / key
    meta = {
        "key": key,
        "teacher": teacher_fingerprint,
        "features": features._fingerprint,
        "windows": len(features),
        "max_length": max_length,
        "precision": precision,
    }
    computed = not path.exists()
    if computed:  # a reader never sees a half-written cache; of two processes, the first one's stays
        with atomic_path(path) as tmp:
            tmp.mkdir()
            _compute(teacher, tokenizer, features, max_length, batch_size, precision, tmp, torch.device(device),
                     pad_to_multiple_of)
            checksums = _checksums(tmp, check_finite=True)
            (tmp / "meta.json").write_text(json.dumps(meta | {"sha256": checksums}, indent=1))
    return _open(path, meta), computed


def _checksums(path: Path, check_finite: bool = False) -> dict[str, str]:
    """SHA-256 of each array file (about 30 ms per 40 MB); optionally refuse non-finite logits."""
    if check_finite:
        for name in ARRAYS:
            values = np.load(path / name, mmap_mode="r")
            if not np.isfinite(values).all():
                raise StaleCacheError(f"the teacher produced non-finite logits ({name}); check the teacher model")
    return {name: file_sha256(path / name) for name in ARRAYS}


def _open(path: Path, expected: dict) -> TeacherLogits:
    try:
        found = json.loads((path / "meta.json").read_text())
        checksums = found.pop("sha256", None)
        start = np.load(path / "start.npy", mmap_mode="r")
        end = np.load(path / "end.npy", mmap_mode="r")
        if checksums != _checksums(path):
            raise StaleCacheError(
                f"teacher-logits cache {path}: its arrays do not match their checksums (overwritten or "
                "damaged); delete the directory to recompute"
            )
    except (OSError, ValueError) as exc:
        raise StaleCacheError(f"teacher-logits cache {path} is unreadable ({exc}); delete it") from exc
    shape = (expected["windows"], expected["max_length"])
    if found != expected or start.shape != shape or end.shape != shape:
        raise StaleCacheError(
            f"teacher-logits cache {path} does not match its key (found {found}, expected "
            f"{expected}, arrays {start.shape}); delete it to recompute"
        )
    return TeacherLogits(start, end, expected["key"], path)
