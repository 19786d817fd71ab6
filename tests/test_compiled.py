"""The compiled forward pass every predictor backend runs: same logits as the model it was
compiled from, any shape, cached by what it depends on, and the model itself where compiling fails."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qa_distill.data.squad import file_sha256
from qa_distill.errors import ConfigError
from qa_distill.inference import compiled, library_cache
from qa_distill.inference.compiled import CompiledLogits, ModuleLogits, compile_logits, example_inputs
from qa_distill.models import input_names, load_qa_model

pytestmark = pytest.mark.usefixtures("compiled_models")
SHAPES = ([2], [40, 12, 25], [8] * 4, [130])  # none is a shape compiled on (16, 10) or checked on


def _model(source: str, precision: str) -> nn.Module:
    model = load_qa_model(source).model.eval()
    return model.to(torch.bfloat16) if precision == "bf16" else model


# not slow: int8, the longest path (export, quantise, compile); test_speed compiles all three
@pytest.mark.parametrize("kind, precision", [
    pytest.param(kind, precision, marks=[] if (kind, precision) == ("tiny_distilbert", "int8") else pytest.mark.slow)
    for kind in ("tiny_bert", "tiny_distilbert") for precision in ("fp32", "bf16", "int8")
])
def test_compiled_logits_equal_the_uncompiled_graphs_on_other_shapes(kind, precision, request):
    model = _model(request.getfixturevalue(kind), precision)
    names, vocab = input_names(model), model.config.vocab_size
    forward = compile_logits(model, names, vocab, precision)
    assert isinstance(forward, CompiledLogits) and forward.path.is_file()
    # the reference: the model itself; for int8, its quantised graph run op by op (fake quantisation in float32)
    reference = compiled.uncompiled_logits(model, names, vocab, precision)
    with torch.no_grad():
        for seed, lengths in enumerate(SHAPES):
            inputs = example_inputs(names, vocab, lengths, seed=seed + 10)
            start, end = forward(inputs)
            assert start.shape == end.shape == (len(lengths), max(lengths))
            for ours, theirs in zip((start, end), reference(inputs), strict=True):
                assert compiled.relative_error(ours, theirs) <= compiled.TOLERANCE[precision]


def test_a_second_load_takes_the_cached_library_keyed_by_weights_and_precision_not_threads(tiny_distilbert,
                                                                                           monkeypatch):
    model = _model(tiny_distilbert, "int8")
    names = input_names(model)
    first = compile_logits(model, names, model.config.vocab_size, "int8")

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiling)
    again = compile_logits(model, names, model.config.vocab_size, "int8")
    assert isinstance(again, CompiledLogits) and again.path == first.path
    inputs = example_inputs(names, model.config.vocab_size, [7, 3])
    torch.testing.assert_close(again(inputs), first(inputs), rtol=0, atol=0)
    keys = {compiled.library_key(model, names, "fp32")}
    keys.add(compiled.library_key(model, names, "int8"))
    with torch.no_grad():
        model.qa_outputs.bias += 1  # other weights
    keys.add(compiled.library_key(model, names, "fp32"))
    assert len(keys) == 3
    # the loops take the running process's threads: a 1-thread build serves a 2-thread server
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    assert compiled.library_key(model, names, "fp32") in keys


def test_a_failed_compile_runs_the_model_uncompiled_and_caches_nothing(tiny_distilbert, monkeypatch, tmp_path):
    monkeypatch.setenv("QA_DISTILL_CACHE", str(tmp_path))
    model = _model(tiny_distilbert, "fp32")
    names = input_names(model)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Failed to find a working C++ compiler")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    with pytest.warns(UserWarning, match=r"DistilBertForQuestionAnswering \(fp32\) runs uncompiled: .*C\+\+ compiler"):
        forward = compile_logits(model, names, model.config.vocab_size, "fp32")
    assert not isinstance(forward, CompiledLogits)
    inputs = example_inputs(names, model.config.vocab_size, [9, 4])
    with torch.no_grad():
        torch.testing.assert_close(forward(inputs)[0], model(**inputs).start_logits, rtol=0, atol=0)
    assert list((tmp_path / "compiled").iterdir()) == []


class WidthBaked(nn.Module):
    """Logits built from a Python int of the input's width: export cannot leave the width free."""

    config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        width = int(input_ids.shape[1])
        logits = torch.arange(width, dtype=torch.float32).expand(input_ids.shape[0], width)
        if width == 16:  # what export saw
            logits = logits * 0
        return SimpleNamespace(start_logits=logits, end_logits=-logits)


def test_a_model_that_cannot_be_compiled_for_any_width_runs_uncompiled_with_a_warning():
    names = ["input_ids", "attention_mask"]
    with pytest.warns(UserWarning, match="WidthBaked \\(fp32\\) runs uncompiled"):
        forward = compile_logits(WidthBaked(), names, vocab_size=100, precision="fp32")
    start, end = forward(example_inputs(names, 100, [5, 3]))
    assert start.tolist() == [[0, 1, 2, 3, 4]] * 2 and end.tolist() == [[0, -1, -2, -3, -4]] * 2


def test_example_inputs_pad_each_window_after_its_length():
    inputs = example_inputs(["input_ids", "attention_mask", "token_type_ids"], 50, [6, 3])
    assert inputs["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert (inputs["input_ids"][1, 3:] == 0).all() and (inputs["input_ids"][0] > 0).all()
    assert inputs["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0]]


def test_compiling_turned_off_runs_the_model_as_it_is(tiny_distilbert, monkeypatch):
    monkeypatch.setenv("QA_DISTILL_COMPILE", "0")
    model = _model(tiny_distilbert, "int8")
    names = input_names(model)
    forward = compile_logits(model, names, model.config.vocab_size, "int8")
    assert isinstance(forward, ModuleLogits) and not isinstance(forward, CompiledLogits)
    quantised = [node for node in forward.module.graph.nodes if "dequantize_per_channel" in str(node.target)]
    assert len(quantised) == 2 * 6  # still int8: 2 layers of 6 linear layers


def test_what_a_killed_build_left_is_removed_by_the_next_build(tiny_distilbert, monkeypatch, tmp_path):
    monkeypatch.setenv("QA_DISTILL_CACHE", str(tmp_path))
    left = tmp_path / "compiled" / "abc.pt2.tmp-999999999"  # no such process
    left.mkdir(parents=True)
    (left / "abc.pt2").write_bytes(b"half a library")

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    model = _model(tiny_distilbert, "fp32")
    with pytest.warns(UserWarning, match="runs uncompiled"):
        compile_logits(model, input_names(model), model.config.vocab_size, "fp32")
    assert list((tmp_path / "compiled").iterdir()) == []


@pytest.fixture(scope="module")
def good_library(tiny_distilbert) -> Path:
    """A library of the tiny DistilBERT at int8, built (or found) in the session's cache."""
    model = _model(tiny_distilbert, "int8")
    forward = compile_logits(model, input_names(model), model.config.vocab_size, "int8")
    assert isinstance(forward, CompiledLogits) and library_cache.damage(forward.path) is None
    return forward.path


def _copy_into(library: Path, cache: Path, key: str) -> Path:
    """`library` and a build record of its own in `cache` under `key`, as a build writes them."""
    target = cache / "compiled" / f"{key}.pt2"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(library, target)
    record = json.loads(library.with_suffix(".json").read_text()) | {"key": key}
    target.with_suffix(".json").write_text(json.dumps(record))
    return target


def _building_from(library: Path, monkeypatch) -> list[str]:
    """Builds that copy `library` (what compiling this model makes) instead of taking a minute, and
    a list of the SHA-256 of every file loaded, filled as they load."""
    loaded: list[str] = []
    load = torch._inductor.aoti_load_package
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda program, package_path, **kwargs: shutil.copyfile(library, package_path))
    monkeypatch.setattr(torch._inductor, "aoti_load_package",
                        lambda path: (loaded.append(file_sha256(Path(path))), load(path))[1])
    return loaded


@pytest.mark.parametrize("damage, why", [
    (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "SHA-256 differs"),
    (lambda path: (path.write_bytes(os.urandom(4096)), path.with_suffix(".json").unlink()), "no build record"),
], ids=["truncated", "random-bytes-no-record"])
def test_a_damaged_library_is_removed_and_rebuilt_never_loaded(damage, why, good_library, tiny_distilbert,
                                                               tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QA_DISTILL_CACHE", str(tmp_path))
    path = _copy_into(good_library, tmp_path, good_library.stem)
    damage(path)
    bad = file_sha256(path)
    loaded = _building_from(good_library, monkeypatch)
    model = _model(tiny_distilbert, "int8")
    forward = compile_logits(model, input_names(model), model.config.vocab_size, "int8")
    assert isinstance(forward, CompiledLogits) and forward.path == path
    assert bad not in loaded and loaded == [file_sha256(good_library)]
    assert library_cache.damage(path) is None  # rebuilt with a fresh record
    (line,) = [x for x in capfd.readouterr().err.splitlines() if "was not loaded" in x]
    assert why in line and "removed, compiling it again" in line


def test_a_build_past_the_cap_evicts_the_least_recently_used_libraries(good_library, tiny_distilbert, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("QA_DISTILL_CACHE", str(tmp_path))
    size = good_library.stat().st_size
    old, used, newer = (_copy_into(good_library, tmp_path, name) for name in ("old", "used", "newer"))
    for age, library in ((300, old), (200, used), (100, newer)):
        os.utime(library.with_suffix(".json"), (0, library.stat().st_mtime - age))
    model = _model(tiny_distilbert, "int8")
    names, vocab = input_names(model), model.config.vocab_size
    monkeypatch.setattr(compiled, "library_key", lambda *args: "used")
    compile_logits(model, names, vocab, "int8")  # loading marks "used" as just used
    monkeypatch.setattr(compiled, "library_key", lambda *args: good_library.stem)
    monkeypatch.setenv("QA_DISTILL_CACHE_GB", str(2.5 * size / 1e9))
    _building_from(good_library, monkeypatch)
    compile_logits(model, names, vocab, "int8")  # a fourth library: over the cap of two and a half
    left = sorted(p.stem for p in (tmp_path / "compiled").glob("*.pt2"))
    assert left == sorted([good_library.stem, "used"])
    assert sum(p.stat().st_size for p in (tmp_path / "compiled").iterdir()) <= 2.5 * size


def test_a_cache_cap_that_is_not_a_size_is_refused(monkeypatch):
    for text in ("0", "-1", "lots"):
        monkeypatch.setenv("QA_DISTILL_CACHE_GB", text)
        with pytest.raises(ConfigError, match="QA_DISTILL_CACHE_GB must be a number of gigabytes > 0"):
            library_cache.cache_cap_bytes()
