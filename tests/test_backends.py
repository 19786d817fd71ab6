"""The backend table: every row runs, each reader takes a backend's runtime, precision and padding
from it, and ONNX Runtime (an optional extra) gives the model's logits or one line on what to install."""

from __future__ import annotations

import sys

import pytest
import torch

from qa_distill import backends
from qa_distill.backends import BACKENDS, DEFAULT_BACKENDS, SPECS, TABLE
from qa_distill.config import SpeedConfig
from qa_distill.data.features import encode_windows
from qa_distill.errors import ConfigError
from qa_distill.inference import compiled, onnx_runtime, predictor
from qa_distill.inference.compiled import ModuleLogits, StartEnd
from qa_distill.inference.onnx_runtime import OnnxLogits
from qa_distill.inference.predictor import RUNTIMES, QAPredictor
from qa_distill.validation import validate_speed

from .conftest import DEV_JSON

# which precisions each runtime builds (its own tolerances name them)
PRECISIONS = {"aotinductor": set(compiled.TOLERANCE), "onnxruntime": set(onnx_runtime.TOLERANCE)}


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    from qa_distill.data.squad import load_questions

    return load_questions(str(DEV_JSON), 6, seed=0)


def _answers(answerer: QAPredictor, questions: list[dict]) -> list[str]:
    return answerer.answer_batch([q["question"] for q in questions], [q["context"] for q in questions])


def test_every_row_names_a_runtime_that_builds_its_precision():
    assert len({spec.name for spec in TABLE}) == len(TABLE) == len(SPECS)
    assert set(BACKENDS) == set(SPECS)
    for spec in TABLE:
        assert spec.runtime in RUNTIMES, spec
        assert spec.precision in PRECISIONS[spec.runtime], spec
        assert spec.padding in ("longest", "max_length"), spec
        assert spec.quantised == (spec.precision == "int8")
        assert bool(spec.extra) == bool(spec.modules), spec  # whoever needs modules says how to get them


def test_the_default_backends_need_nothing_beyond_the_base_install():
    assert DEFAULT_BACKENDS == ("fp32", "fp32-maxpad", "bf16", "int8")
    assert SpeedConfig().backends == DEFAULT_BACKENDS
    assert {"onnx-fp32", "onnx-int8"} <= set(BACKENDS) - set(DEFAULT_BACKENDS)


def test_padding_to_max_length_pads_every_batch_and_keeps_every_answer(tiny_bert, questions):
    longest, fixed = QAPredictor(tiny_bert, backend="fp32"), QAPredictor(tiny_bert, backend="fp32-maxpad")
    enc = encode_windows(longest.tokenizer, [questions[0]["question"]], [questions[0]["context"]],
                         max_length=longest.max_length, stride=longest.doc_stride)
    (_, width, _), = longest.batches(enc)
    (_, fixed_width, inputs), = fixed.batches(enc)
    assert width < fixed_width == fixed.max_length == inputs["input_ids"].shape[1]
    assert _answers(fixed, questions) == _answers(longest, questions)


def _never(*args, **kwargs):
    raise AssertionError("a model loaded before the backend was checked")


def test_an_unknown_backend_is_one_line_before_the_model_loads(monkeypatch):
    monkeypatch.setattr(predictor, "load_qa_model", _never)
    with pytest.raises(ConfigError, match=r"^unknown backend 'fp64': expected one of \['fp32', .*'onnx-int8'\]$"):
        QAPredictor("/no/such/model", backend="fp64")
    assert backends.usable("int8") is SPECS["int8"]


def test_a_missing_onnxruntime_is_one_line_with_the_install_command(tiny_bert, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: find_spec gives None
    monkeypatch.setattr(predictor, "load_qa_model", _never)
    line = r"^backend 'onnx-fp32' needs onnxruntime, not installed: pip install 'qa-distill\[onnx\]'$"
    with pytest.raises(ConfigError, match=line):
        QAPredictor(tiny_bert, backend="onnx-fp32")
    with pytest.raises(ConfigError, match=line):  # the speed test, before any model loads
        validate_speed(SpeedConfig(backends=("fp32", "onnx-fp32")))
    validate_speed(SpeedConfig())  # the default backends do not need it


@torch.inference_mode()
def test_onnx_fp32_gives_the_models_logits_on_real_windows_and_is_exported_once(tiny_bert, questions, monkeypatch):
    onnx = QAPredictor(tiny_bert, backend="onnx-fp32")
    assert isinstance(onnx.forward, OnnxLogits) and onnx.forward.path.is_file()
    reference = ModuleLogits(StartEnd(onnx.model, onnx.input_names).eval(), onnx.input_names)
    enc = encode_windows(onnx.tokenizer, [q["question"] for q in questions], [q["context"] for q in questions],
                         max_length=onnx.max_length, stride=onnx.doc_stride)
    for _, _, inputs in onnx.batches(enc):
        for ours, theirs in zip(onnx.forward(inputs), reference(inputs), strict=True):
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() <= 1e-4

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = QAPredictor(tiny_bert, backend="onnx-fp32")
    assert again.forward.path == onnx.forward.path


def test_onnx_int8_answers_from_a_smaller_graph_made_from_the_cached_float_one(tiny_bert, questions):
    fp32 = QAPredictor(tiny_bert, backend="onnx-fp32")  # exported by the test above or here
    int8 = QAPredictor(tiny_bert, backend="onnx-int8")
    assert int8.spec.quantised and int8.forward.path != fp32.forward.path
    answers = _answers(int8, questions)
    assert all(a and a in q["context"] for a, q in zip(answers, questions, strict=True))
    assert sum(a == b for a, b in zip(answers, _answers(fp32, questions), strict=True)) >= len(questions) / 2
    assert int8.quantised_mb() == int8.forward.path.stat().st_size / 1e6 < fp32.forward.path.stat().st_size / 1e6


def test_a_model_logged_without_the_onnx_extra_requires_none_of_it(monkeypatch):
    from qa_distill.inference import requirements

    with_onnx = requirements.pinned_requirements()
    assert {"onnx", "onnxscript", "onnxruntime"} <= {pin.split("==")[0] for pin in with_onnx}  # installed here
    installed = requirements.packages_distributions()
    without = {module: dists for module, dists in installed.items() if module not in backends.ONNX_MODULES}
    monkeypatch.setattr(requirements, "packages_distributions", lambda: without)
    pins = requirements.pinned_requirements()
    assert pins and not [pin for pin in pins if pin.split("==")[0] in backends.ONNX_MODULES]
    assert set(pins) < set(with_onnx)


def test_the_plot_marks_a_point_by_its_backends_precision_padding_and_runtime():
    from qa_distill.speedtest.tradeoff import marker

    assert [marker(b) for b in ("fp32", "fp32-maxpad", "bf16", "int8", "onnx-fp32", "onnx-int8", "hf-pipeline")] == [
        ("o", True), ("s", True), ("^", True), ("D", True), ("o", False), ("D", False), ("X", True)]
