"""The teacher-logits cache equals a fresh teacher forward pass, and is never used when stale."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import DataCollatorWithPadding

from qa_distill.config import DataConfig
from qa_distill.data.features import build_features
from qa_distill.data.squad import load_split
from qa_distill.models import load_qa_model, model_fingerprint
from qa_distill.runtime.processes import atomic_path
from qa_distill.training.teacher_cache import StaleCacheError, cache_key, load_or_compute, teacher_forward

WINDOWS = {"max_length": 96, "precision": "fp32"}  # the tiny windows and precision of every cache here


@pytest.fixture()
def setup(dev_sample, tiny_bert, tmp_path):
    teacher = load_qa_model(tiny_bert)
    split = load_split(DataConfig(data=str(dev_sample)), "train")
    feats = build_features(split, teacher.tokenizer, max_length=96, doc_stride=32, kind="train", cache=str(tmp_path))
    return teacher, feats


def test_cached_logits_equal_a_fresh_forward_pass(setup, tmp_path):
    teacher, feats = setup
    fp = model_fingerprint(teacher.model)
    logits, computed = load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS, batch_size=16)
    assert computed
    rows = [0, 5, len(feats) - 1, 17]
    batch = DataCollatorWithPadding(teacher.tokenizer)(
        feats.select(rows).select_columns(["input_ids", "attention_mask", "token_type_ids"]).to_list()
    )
    fresh_start, fresh_end = teacher_forward(teacher.model, batch, "fp32")
    start, end = logits.batch(torch.tensor(rows), fresh_start.shape[1])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(start[mask], fresh_start[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(end[mask], fresh_end[mask], rtol=1e-4, atol=1e-4)
    again, computed = load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)
    assert not computed and again.key == logits.key
    assert isinstance(again.start, np.memmap)


def test_another_teacher_or_other_windows_get_another_key(setup, tmp_path, tiny_bert):
    teacher, feats = setup
    fp = model_fingerprint(teacher.model)
    a, _ = load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)
    with torch.no_grad():
        teacher.model.qa_outputs.bias.add_(1.0)
    fp2 = model_fingerprint(teacher.model)
    assert fp2 != fp
    b, computed = load_or_compute(tmp_path, teacher.model, fp2, teacher.tokenizer, feats, **WINDOWS)
    assert computed and b.key != a.key
    c, computed = load_or_compute(tmp_path, teacher.model, fp2, teacher.tokenizer, feats.select(range(10)), **WINDOWS)
    assert computed and c.key not in (a.key, b.key)


def test_a_tampered_cache_is_an_error_not_silently_reused(setup, tmp_path):
    teacher, feats = setup
    fp = model_fingerprint(teacher.model)
    logits, _ = load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)
    meta = json.loads((logits.path / "meta.json").read_text())
    meta["windows"] = 3
    (logits.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StaleCacheError, match="does not match"):
        load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)


def test_a_cache_overwritten_with_garbage_of_the_same_size_is_refused(setup, tmp_path):
    teacher, feats = setup
    fp = model_fingerprint(teacher.model)
    logits, _ = load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)
    array = logits.path / "end.npy"
    size = array.stat().st_size
    with open(array, "r+b") as f:  # keep the .npy header, so the file still loads with its shape
        f.seek(size - 4096)
        f.write(np.random.default_rng(0).bytes(4096))
    assert array.stat().st_size == size
    with pytest.raises(StaleCacheError, match="checksums"):
        load_or_compute(tmp_path, teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)


def test_a_killed_computation_leaves_no_temporary_directory_behind(setup, tmp_path):
    import subprocess
    import sys

    teacher, feats = setup
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = tmp_path / "teacher_logits"
    stale = root / f"abc.tmp-{int(dead.stdout)}"
    stale.mkdir(parents=True)
    (stale / "start.npy").write_bytes(b"half")
    live = root / f"def.tmp-{__import__('os').getpid()}"  # this process: still computing
    live.mkdir()
    load_or_compute(tmp_path, teacher.model, model_fingerprint(teacher.model), teacher.tokenizer, feats, **WINDOWS)
    assert not stale.exists() and live.exists()


def test_a_failed_build_leaves_nothing_and_a_finished_one_is_not_overwritten(tmp_path):
    final = tmp_path / "teacher_logits" / "abc"
    with pytest.raises(RuntimeError, match="teacher failed"), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "start.npy").write_bytes(b"half")
        raise RuntimeError("teacher failed")
    assert list(final.parent.iterdir()) == []
    for text in ("first", "second"):  # two processes computing one cache: the first to finish stays
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "start.npy").write_text(text)
    assert (final / "start.npy").read_text() == "first" and list(final.parent.iterdir()) == [final]


def test_a_cache_an_earlier_version_wrote_without_checksums_is_computed_again(setup, tmp_path):
    # A format-1 cache of the same teacher and windows (no sha256 in meta.json, as written before
    # checksums) is another key, computed again, not refused as damaged after training started.
    teacher, feats = setup
    fp = model_fingerprint(teacher.model)
    fresh, _ = load_or_compute(tmp_path / "fresh", teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)
    old = tmp_path / "cache" / "teacher_logits" / cache_key(fp, feats, layout=1, **WINDOWS)
    shutil.copytree(fresh.path, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["sha256"]
    (old / "meta.json").write_text(json.dumps(meta | {"key": old.name}))
    logits, computed = load_or_compute(tmp_path / "cache", teacher.model, fp, teacher.tokenizer, feats, **WINDOWS)
    assert computed and logits.path != old and old.exists()  # not opened, not deleted
    np.testing.assert_array_equal(logits.start, fresh.start)
