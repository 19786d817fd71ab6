"""Question/context windows: train labels, eval offsets, cached on disk by content.

A context longer than `max_length` is cut into overlapping windows (`doc_stride` tokens of
overlap). Train windows get token start/end labels (the CLS token when the answer is not inside
the window); eval windows keep character offsets of context tokens (-1 elsewhere) and the id of
their question, for post-processing. Nothing is padded here: batches are padded to their longest
window by the collator.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from qa_distill.data.squad import Split
from qa_distill.errors import ModelError
from qa_distill.runtime.progress import Progress, counted, datasets_bars_off

FEATURES_VERSION = "1"  # bump when the feature layout changes, to invalidate caches


def require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    """Offsets and overflowing windows need a Rust ("fast") tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{type(tokenizer).__name__} is a slow tokenizer: qa-distill needs a fast tokenizer "
            "(offset mapping and overflowing windows); use a model that ships tokenizer.json"
        )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Content hash of the tokenizer: same hash, same ids for the same text."""
    require_fast(tokenizer)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for state in ("truncation", "padding"):  # set by the last call, not part of the vocabulary
        spec.pop(state, None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def encode_windows(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    contexts: list[str],
    *,
    max_length: int,
    stride: int,
):
    """Question + context windows, unpadded, with offsets and the question each belongs to."""
    return tokenizer(
        [q.lstrip() for q in questions],
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        padding=False,
    )


def context_offsets(enc) -> list[list[list[int]]]:
    """Character offsets of each window's context tokens; [-1, -1] for every other token."""
    return [
        [list(o) if s == 1 else [-1, -1] for o, s in zip(offsets, enc.sequence_ids(i), strict=True)]
        for i, offsets in enumerate(enc["offset_mapping"])
    ]


def _context_span(sequence_ids: list[int | None]) -> tuple[int, int]:
    """First and last token index of the context (sequence 1) in a window."""
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last


def _train_batch(batch: dict[str, list], tokenizer, max_length: int, stride: int) -> dict[str, Any]:
    enc = encode_windows(tokenizer, batch["question"], batch["context"], max_length=max_length, stride=stride)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        answers = batch["answers"][enc["overflow_to_sample_mapping"][i]]
        char_start = answers["answer_start"][0]
        char_end = char_start + len(answers["text"][0])
        first, last = _context_span(enc.sequence_ids(i))
        if offsets[first][0] > char_start or offsets[last][1] < char_end:
            starts.append(cls)
            ends.append(cls)
            continue
        ctx = offsets[first : last + 1]
        starts.append(first + bisect_right([o[0] for o in ctx], char_start) - 1)
        ends.append(first + bisect_left([o[1] for o in ctx], char_end))
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc["token_type_ids"],
        "start_positions": starts,
        "end_positions": ends,
        "length": [len(x) for x in enc["input_ids"]],
    }


def _eval_batch(batch: dict[str, list], tokenizer, max_length: int, stride: int) -> dict[str, Any]:
    enc = encode_windows(tokenizer, batch["question"], batch["context"], max_length=max_length, stride=stride)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc["token_type_ids"],
        "offset_mapping": context_offsets(enc),
        "example_id": [batch["id"][i] for i in enc["overflow_to_sample_mapping"]],
        "length": [len(x) for x in enc["input_ids"]],
    }


def cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "qa_distill"


def build_features(
    split: Split,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    doc_stride: int,
    kind: str,
    cache: str | None = None,
) -> Dataset:
    """Tokenise a split into `kind` ("train" or "eval") windows, reusing the on-disk cache."""
    key = hashlib.sha256(
        f"{FEATURES_VERSION}:{kind}:{split.fingerprint}:{tokenizer_fingerprint(tokenizer)}:"
        f"{max_length}:{doc_stride}".encode()
    ).hexdigest()[:24]
    path = cache_dir(cache) / f"features-{kind}-{key}.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    fn = _train_batch if kind == "train" else _eval_batch
    # reported only when tokenised now: a cached file is just opened
    progress = None if path.exists() else Progress(f"tokenising {kind} windows", len(split.dataset), unit="questions")
    with datasets_bars_off():
        features = split.dataset.map(
            counted(fn, progress) if progress else fn,
            batched=True,
            remove_columns=split.dataset.column_names,
            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "stride": doc_stride},
            cache_file_name=str(path),
            load_from_cache_file=True,
            new_fingerprint=key,
        )
    if progress:
        progress.close()
    if kind == "train":
        return features.add_column("feature_index", list(range(len(features))))
    return features


def group_by_length(features: Dataset) -> Dataset:
    """Evaluation order by window length, so each batch pads little."""
    return features.sort("length")
