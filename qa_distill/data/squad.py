"""SQuAD v1.1 from the hub or from local JSON, validated, with seeded subsets.

Two samplers, for two uses: `load_split` gives training and evaluation a validated `Dataset`;
`load_questions` gives the speed test and benchmarks plain dev questions with their gold
texts, the same ones for a seed, so question sets timed at different times stay comparable.

Every record has the hub's `squad` schema: id, title, context, question,
answers = {text: [...], answer_start: [...]}. Validation happens on load, so a bad file fails in
seconds with the file and question id, not hours into training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from qa_distill.config import DataConfig
from qa_distill.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split: its records, where they came from, and a content fingerprint for caches."""

    dataset: Dataset
    source: str
    fingerprint: str
    skipped: Counter = field(default_factory=Counter)


def _check_answer(context: str, text: str, start: int) -> int | None:
    """The answer's start in context: as given, else the nearest occurrence, else None."""
    if context[start : start + len(text)] == text:
        return start
    hits, pos = [], context.find(text)
    while pos != -1:
        hits.append(pos)
        pos = context.find(text, pos + 1)
    return min(hits, key=lambda h: abs(h - start)) if hits else None


def validate_records(
    records: list[dict[str, Any]], source: str, skip_invalid: bool
) -> tuple[list[dict[str, Any]], Counter]:
    """Check each question; fix misplaced answer_start; drop or reject the invalid ones."""
    kept, counts, shift = [], Counter(), 0
    for rec in records:
        qid = rec.get("id", "?")
        if not isinstance(rec.get("context"), str) or not rec["context"].strip():
            raise DataError(f"{source}: question {qid!r} has an empty context")
        if not isinstance(rec.get("question"), str) or not rec["question"].strip():
            raise DataError(f"{source}: question {qid!r} has an empty question text")
        answers = rec["answers"]
        problem = None
        if not answers["text"]:
            problem = "no_answer"
        else:
            starts = []
            for text, start in zip(answers["text"], answers["answer_start"], strict=True):
                fixed = _check_answer(rec["context"], text, int(start))
                if fixed is None:
                    problem = "answer_not_in_context"
                    break
                if fixed != int(start):
                    counts["answer_start_realigned"] += 1
                    shift = max(shift, abs(fixed - int(start)))
                starts.append(fixed)
            answers = {"text": list(answers["text"]), "answer_start": starts}
        if problem:
            if not skip_invalid:
                what = "has no answer" if problem == "no_answer" else "has an answer not found in its context"
                raise DataError(
                    f"{source}: question {qid!r} {what} "
                    "(set data.skip_invalid=true to skip such questions)"
                )
            counts[f"skipped_{problem}"] += 1
            continue
        kept.append({**rec, "answers": answers})
    if counts["answer_start_realigned"]:
        log.warning(
            "%s: moved %d answer_start values to where their answer text is (largest shift %d characters)",
            source, counts["answer_start_realigned"], shift,
        )
    return kept, counts


def _offset(value: Any, path: Path, qid: Any) -> int:
    """An answer_start: a whole number of characters, else an error naming the question."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        value = repr(value)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and number >= 0):
        raise DataError(f"{path}: question {qid!r} has answer_start {value!r}, not a character offset")
    return int(number)


def read_squad_json(path: str | Path) -> list[dict[str, Any]]:
    """Flatten the official nested data/paragraphs/qas layout into one record per question."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a 'data' list of articles)")
    records, qid = [], "?"
    try:
        for article in raw["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    qid = qa.get("id", "?")
                    records.append(
                        {
                            "id": str(qa["id"]),
                            "title": article.get("title", ""),
                            "context": paragraph["context"],
                            "question": qa["question"],
                            "answers": {
                                "text": [a["text"] for a in qa.get("answers", [])],
                                "answer_start": [_offset(a["answer_start"], path, qid) for a in qa.get("answers", [])],
                            },
                        }
                    )
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not SQuAD JSON near question {qid!r} (missing {exc})") from None
    if not records:
        raise DataError(f"{path}: contains no questions")
    duplicates = [q for q, n in Counter(r["id"] for r in records).items() if n > 1]
    if duplicates:
        raise DataError(f"{path}: duplicate question ids, e.g. {duplicates[0]!r}")
    return records


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_files(config: DataConfig) -> tuple[Path | None, Path | None]:
    """Resolve train/dev files from explicit files or from `data` (a directory or one file)."""
    train = Path(config.train_file) if config.train_file else None
    dev = Path(config.dev_file) if config.dev_file else None
    root = Path(config.data)
    if root.is_file():
        return train or root, dev or root
    if root.is_dir():
        def pick(prefix: str) -> Path | None:
            found = sorted(root.glob(f"{prefix}*.json"))
            if len(found) > 1:
                raise DataError(f"{root}: several {prefix}*.json files {[p.name for p in found]}; "
                                f"name one with data.{prefix}_file")
            return found[0] if found else None
        train, dev = train or pick("train"), dev or pick("dev")
    return train, dev


def is_local(config: DataConfig) -> bool:
    return bool(config.train_file or config.dev_file) or Path(config.data).exists() or (
        config.data.endswith(".json") or "/" in config.data
    )


def data_fingerprint(config: DataConfig) -> str:
    """What the data is, without loading it: the content hashes of the local train and dev files,
    or the hub dataset's name."""
    if not is_local(config):
        return config.data
    return ",".join(file_sha256(path)[:16] if path else "-" for path in local_files(config))


def _subset(split: Split, n: int | None, seed: int) -> Split:
    if n is None or n >= len(split.dataset):
        return split
    ds = split.dataset.shuffle(seed=seed).select(range(n))
    tag = hashlib.sha256(f"{split.fingerprint}:{n}:{seed}".encode()).hexdigest()[:16]
    return Split(ds, split.source, tag, split.skipped)


def _local_split(path: Path | None, name: str, config: DataConfig) -> Split:
    if path is None:
        raise DataError(f"{config.data}: no {name} file found (expected {name}*.json, or data.{name}_file)")
    records, counts = validate_records(read_squad_json(path), str(path), config.skip_invalid)
    if counts:
        log.info("%s: %s", path, dict(counts))
    ds = Dataset.from_list(records)
    return Split(ds, str(path), file_sha256(path)[:16] + f"-skip{int(config.skip_invalid)}", counts)


def _hub_split(name: str, split: str, config: DataConfig) -> Split:
    from datasets import load_dataset

    try:
        ds = load_dataset(config.data, split=split)
    except Exception as exc:  # the hub raises many types; the user needs the name and the cause
        raise DataError(f"cannot load dataset {config.data!r} split {split!r} from the hub: {exc}") from exc
    source = f"{config.data}[{split}]"
    records, counts = validate_records(ds.to_list(), source, config.skip_invalid)
    if counts.get("skipped_no_answer") or counts.get("skipped_answer_not_in_context"):
        ds = Dataset.from_list(records)
    return Split(ds, source, ds._fingerprint, counts)


def load_split(config: DataConfig, name: str) -> Split:
    """Load `train` or `dev`, validated and subset as configured."""
    if name not in ("train", "dev"):
        raise ValueError(name)
    n = config.train_questions if name == "train" else config.dev_questions
    if is_local(config):
        train, dev = local_files(config)
        split = _local_split(train if name == "train" else dev, name, config)
    else:
        split = _hub_split(config.data, "train" if name == "train" else "validation", config)
    return _subset(split, n, config.subset_seed)


def load_questions(dev_json: str | Path, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded sample of `n` answerable questions (all of them if fewer): id, question, context,
    answers (gold texts). Questions without a gold answer cannot be scored, so they are left out.
    """
    if n <= 0:
        raise ConfigError(f"questions must be >= 1, got {n}")
    records = [r for r in read_squad_json(dev_json) if r["answers"]["text"]]
    if not records:
        raise DataError(f"{dev_json}: no question has a gold answer")
    chosen = random.Random(seed).sample(records, min(n, len(records)))
    return [
        {"id": r["id"], "question": r["question"], "context": r["context"],
         "answers": list(r["answers"]["text"])}
        for r in chosen
    ]
