"""How windows reach the model: padded to a few lengths (buckets), cut from tensors in memory.

A batch is padded to the smallest bucket that holds its longest window: a multiple of
`training.pad_to_multiple_of` tokens, at most `data.max_length`. With 64 at 384 tokens there are
six shapes, so a compiled step (torch.compile, `dynamic=False`) is reused instead of recompiled
for every batch's own length; with 8 a batch pads to little more than its longest window, and
tensor cores still get aligned widths. Padding is masked everywhere (attention, the losses and
post-processing), so the bucketing changes no answer.

`WindowTensors` holds the training windows as padded tensors in memory and hands the DataLoader
a whole batch for a list of indices (`__getitems__`): one slice per column instead of a Python
loop over each window's lists, which on a GPU is the host work the model waits on.

`EpochSeededSampler` orders the windows in length groups, each epoch's order a function of the
seed and the epoch only, so a resumed run trains the batches the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers.trainer_pt_utils import LengthGroupedSampler

log = logging.getLogger(__name__)

# what each padded column is filled with; input_ids take the tokenizer's pad id
PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0}
SEQUENCE_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
INDEX_COLUMNS = ("start_positions", "end_positions", "feature_index")


def bucket_width(longest: int, *, multiple: int, max_length: int) -> int:
    """The padded length of a batch whose longest window has `longest` tokens."""
    return min(math.ceil(longest / multiple) * multiple, max(max_length, longest))


def bucket_count(*, multiple: int, max_length: int) -> int:
    """How many shapes batches can have: what a compiled step meets at most."""
    return math.ceil(max_length / multiple)


class BucketCollator:
    """Pads a list of windows (token lists) to their batch's bucket: the collator of the
    `datasets` path (evaluation, and training with `training.tensor_windows` false); a batch
    `WindowTensors` collated comes through as it is."""

    def __init__(self, pad_token_id: int, *, multiple: int, max_length: int) -> None:
        self.pad_token_id, self.multiple, self.max_length = pad_token_id, multiple, max_length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 1 and torch.is_tensor(features[0]["input_ids"]) and features[0]["input_ids"].dim() == 2:
            return features[0]  # a whole batch from `WindowTensors`, collated already
        longest = max(len(f["input_ids"]) for f in features)
        width = bucket_width(longest, multiple=self.multiple, max_length=self.max_length)
        batch: dict[str, torch.Tensor] = {}
        for key in features[0]:
            if key in SEQUENCE_COLUMNS:
                pad = self.pad_token_id if key == "input_ids" else PAD_VALUES[key]
                rows = torch.full((len(features), width), pad, dtype=torch.long)
                for i, f in enumerate(features):
                    rows[i, : len(f[key])] = torch.as_tensor(f[key])
                batch[key] = rows
            else:
                batch[key] = torch.as_tensor([f[key] for f in features])
        return batch


class WindowTensors(torch.utils.data.Dataset):
    """Windows as padded tensors in memory; `__getitems__` returns a whole batch, already cut to
    its bucket, as a one-item list (the Trainer's column filter and `BucketCollator` pass it on).

    Token ids are int32 and token types int8 (88,492 windows at 384: 170 MB); the attention mask
    is rebuilt from the lengths, so a batch is a few vectorised slices.
    """

    def __init__(self, features: Dataset, pad_token_id: int, *, multiple: int, max_length: int) -> None:
        self.multiple, self.max_length = multiple, max_length
        table = features.select_columns(
            [c for c in (*SEQUENCE_COLUMNS, *INDEX_COLUMNS) if c in features.column_names]
        ).with_format("arrow")[:]  # the rows in the dataset's order (a sorted or selected one too)
        ids = table.column("input_ids").combine_chunks()
        offsets = ids.offsets.to_numpy()
        self.lengths = torch.from_numpy(np.diff(offsets).astype(np.int64))
        # each token's row and position in the padded array: one scatter per column, no loop over windows
        row = np.repeat(np.arange(len(self.lengths)), self.lengths.numpy())
        position = np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], self.lengths.numpy())
        # as wide as the bucket of the longest window, which may be wider than the window itself
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        width = bucket_width(longest, multiple=multiple, max_length=max_length) if longest else 0
        self.columns: dict[str, torch.Tensor] = {}
        for key, dtype, pad in (("input_ids", np.int32, pad_token_id), ("token_type_ids", np.int8, 0)):
            if key in table.column_names:
                rows = np.full((len(self.lengths), width), pad, dtype=dtype)
                rows[row, position] = table.column(key).combine_chunks().flatten().to_numpy()
                self.columns[key] = torch.from_numpy(rows)
        for key in INDEX_COLUMNS:
            if key in table.column_names:
                self.columns[key] = torch.from_numpy(table.column(key).to_numpy().astype(np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The windows at `indices`, padded to their bucket, as the model takes them."""
        rows = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[rows]
        width = bucket_width(int(lengths.max()), multiple=self.multiple, max_length=self.max_length)
        out = {"attention_mask": (torch.arange(width) < lengths[:, None]).long()}
        for key, values in self.columns.items():
            out[key] = values[rows, :width].long() if values.dim() == 2 else values[rows]
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch([index]).items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        return [self.batch(indices)]


def compile_for_shapes(shapes: int) -> None:
    """Few shapes: a static graph per bucket (`dynamic=False`, through accelerate's own setting),
    and room for all of them, in training and in evaluation, before dynamo gives up and runs eager."""
    if shapes <= 16:
        os.environ["ACCELERATE_DYNAMO_USE_DYNAMIC"] = "false"
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, 4 * (shapes + 1))


def resolve_compile(requested: bool, *, cuda: bool) -> bool:
    """torch.compile on CUDA with a working Triton; elsewhere off, said in one line."""
    if not requested:
        return False
    if not cuda:
        log.warning("training.torch_compile: off on the CPU (compiling the training step costs minutes there "
                    "and was not measured faster); it compiles on CUDA")
        return False
    from torch.utils._triton import has_triton

    if not has_triton():
        log.warning("training.torch_compile: off (Triton, which torch.compile's GPU code needs, is not usable "
                    "here); training runs eager")
        return False
    return True


class EpochSeededSampler(LengthGroupedSampler):
    """Length-grouped shuffling whose order depends only on the seed and the epoch.

    The Trainer's own sampler draws each epoch's order from the global RNG, whose state at an
    epoch's start is only known to the run that trained the epochs before it: a run resumed in
    the middle of epoch 2 drew epoch 1's order again and skipped the wrong batches.
    """

    def __init__(self, batch_size: int, lengths: list[int], *, seed: int) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it (through accelerate) before each epoch
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()
