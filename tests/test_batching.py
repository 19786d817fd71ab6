"""Buckets and windows in memory: the same batches and the same answers as per-batch padding, and
torch.compile only where it can pay."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import set_seed

from qa_distill.config import TrainingConfig
from qa_distill.errors import ConfigError
from qa_distill.recipes import load_config
from qa_distill.training import batching
from qa_distill.training.batching import BucketCollator, WindowTensors, bucket_width
from qa_distill.training.runs import _trainer_kwargs, prepare, train_windows
from qa_distill.training.trainer import QATrainer, training_arguments

TINY = str(Path(__file__).resolve().parent / "recipes" / "tiny.yaml")


def _config(tmp_path, dev_sample, model, *overrides):
    return load_config(TINY, "teacher", overrides=[f"model.name={model}", f"data.cache_dir={tmp_path / 'cache'}",
                                                   "training.eval_each_epoch=false", *overrides],
                       output_dir=str(tmp_path / "out"), explicit={"data.data": str(dev_sample)})


def test_a_batch_pads_to_the_smallest_bucket_that_holds_it_never_past_max_length():
    assert [bucket_width(n, multiple=64, max_length=384) for n in (1, 64, 65, 300, 384)] == [64, 64, 128, 320, 384]
    assert bucket_width(100, multiple=64, max_length=120) == 120  # not 128: the model's windows end at 120
    assert bucket_width(37, multiple=1, max_length=384) == 37  # per-batch padding
    assert batching.bucket_count(multiple=64, max_length=384) == 6


def test_windows_in_memory_cut_the_same_batches_as_the_collator(tmp_path, dev_sample, tiny_bert):
    p = prepare(_config(tmp_path, dev_sample, tiny_bert, "training.pad_to_multiple_of=32"))
    pad = p.student.tokenizer.pad_token_id
    collate = BucketCollator(pad, multiple=32, max_length=128)
    for features in (p.train_features, p.dev_features):  # the dev windows are a sorted view of theirs
        windows = WindowTensors(features, pad, multiple=32, max_length=128)
        assert windows.lengths.tolist() == features["length"]
        columns = [c for c in windows.columns if c in features.column_names]
        for rows in ([0, 1, 2], [len(features) - 1, 3], list(range(len(features)))):
            ours = windows.batch(rows)
            theirs = collate(features.select(rows).select_columns([*columns, "attention_mask"]).to_list())
            assert ours.keys() == theirs.keys()
            for key in ours:
                assert torch.equal(ours[key], theirs[key]), key
            assert ours["input_ids"].shape[1] % 32 == 0 or ours["input_ids"].shape[1] == 128
        # the DataLoader's batched fetch hands the collator the batch as it is
        assert collate(windows.__getitems__([4, 2])) is not None
        assert torch.equal(collate(windows.__getitems__([4, 2]))["input_ids"], windows.batch([4, 2])["input_ids"])



def test_a_bucket_wider_than_the_longest_window_pads_every_column_to_it(tmp_path, dev_sample, tiny_bert):
    p = prepare(_config(tmp_path, dev_sample, tiny_bert))
    pad = p.student.tokenizer.pad_token_id
    windows = WindowTensors(p.train_features, pad, multiple=100, max_length=1000)  # the longest: 128 tokens
    batch = windows.batch(list(range(len(windows))))
    assert {key: value.shape[1] for key, value in batch.items() if value.dim() == 2} == {
        "input_ids": 200, "token_type_ids": 200, "attention_mask": 200}
    assert torch.equal(batch["input_ids"][:, 128:], torch.full((len(windows), 72), pad))
    assert torch.equal(batch["attention_mask"].sum(1), windows.lengths)


def _trained(config):
    set_seed(config.training.seed)
    p = prepare(config)
    trainer = QATrainer(**_trainer_kwargs(p, []))
    trainer.train()
    metrics = trainer.evaluate()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, metrics, losses


def test_buckets_and_windows_in_memory_give_the_answers_of_per_batch_padding(tmp_path, dev_sample, tiny_bert):
    """Padding is masked in attention, loss and post-processing: training on 64-token buckets cut
    from tensors gives the predictions, scores and losses of batches padded to their longest window.
    Dropout is off: its random masks are drawn over the padded shape, so with it the two runs are
    two draws of the same training rather than one."""
    runs = []
    for name, overrides in (("per-batch", ["training.pad_to_multiple_of=1", "training.tensor_windows=false"]),
                            ("buckets", ["training.pad_to_multiple_of=64", "training.tensor_windows=true"])):
        runs.append(_trained(_config(tmp_path / name, dev_sample, tiny_bert, "training.epochs=2",
                                     "training.learning_rate=1e-3", "model.hidden_dropout=0",
                                     "model.attention_dropout=0", *overrides)))
    (plain, plain_metrics, plain_losses), (bucketed, bucketed_metrics, bucketed_losses) = runs
    assert isinstance(bucketed.train_dataset, WindowTensors) and not isinstance(plain.train_dataset, WindowTensors)
    assert len(plain_losses) == len(bucketed_losses) >= 4
    np.testing.assert_allclose(bucketed_losses, plain_losses, rtol=1e-4)
    assert bucketed.predictions == plain.predictions
    assert bucketed_metrics["eval_f1"] == plain_metrics["eval_f1"]
    assert plain_losses[0] != plain_losses[-1]  # it trained: the comparison is not of untouched models


def test_windows_in_memory_follow_the_setting(tmp_path, dev_sample, tiny_bert):
    on = prepare(_config(tmp_path / "on", dev_sample, tiny_bert))
    off = prepare(_config(tmp_path / "off", dev_sample, tiny_bert, "training.tensor_windows=false"))
    assert isinstance(train_windows(on), WindowTensors) and len(train_windows(on)) == len(on.train_features)
    assert train_windows(off) is off.train_features


def test_a_bucket_width_below_one_is_refused_in_one_line(tmp_path, dev_sample, tiny_bert):
    with pytest.raises(ConfigError, match="training.pad_to_multiple_of must be >= 1, got 0"):
        _config(tmp_path, dev_sample, tiny_bert, "training.pad_to_multiple_of=0")


def test_compile_is_off_on_the_cpu_said_in_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=batching.__name__):
        args = training_arguments(TrainingConfig(torch_compile=True), str(tmp_path), precision="fp32", max_length=384)
    assert args.torch_compile is False
    assert len(caplog.records) == 1 and "off on the CPU" in caplog.records[0].getMessage()
    assert not batching.resolve_compile(False, cuda=True)  # not asked: nothing said, nothing compiled


def test_compile_without_triton_falls_back_to_eager_in_one_line(monkeypatch, caplog):
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    with caplog.at_level(logging.WARNING, logger=batching.__name__):
        assert batching.resolve_compile(True, cuda=True) is False
    assert len(caplog.records) == 1 and "Triton" in caplog.records[0].getMessage()
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    assert batching.resolve_compile(True, cuda=True) is True


def test_few_buckets_compile_static_with_room_for_every_shape(monkeypatch):
    import torch._dynamo.config as dynamo

    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_DYNAMIC", "")  # restored after the test, whatever it was
    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_DYNAMIC")
    monkeypatch.setattr(dynamo, "recompile_limit", 8)
    batching.compile_for_shapes(6)
    assert dynamo.recompile_limit == 28  # (6 buckets + a short last batch) x (train, eval) x 2
    from accelerate.utils import TorchDynamoPlugin

    assert TorchDynamoPlugin(backend="inductor").dynamic is False  # what the Trainer builds reads it
    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_DYNAMIC")
    batching.compile_for_shapes(48)  # padding to multiples of 8: many shapes, left dynamic
    assert TorchDynamoPlugin(backend="inductor").dynamic is None


def test_the_host_keeps_ahead_of_the_gpu_only_where_there_is_one(tmp_path, monkeypatch):
    config = TrainingConfig(dataloader_workers=2)
    cpu = training_arguments(config, str(tmp_path), precision="fp32")
    assert (cpu.dataloader_pin_memory, cpu.accelerator_config.non_blocking) == (False, False)
    assert cpu.dataloader_prefetch_factor == 4
    assert not cpu.dataloader_persistent_workers  # kept workers would break exact resume (trainer.py)
    assert cpu.optim == "adamw_torch_fused"
    none = training_arguments(TrainingConfig(), str(tmp_path), precision="fp32")
    assert none.dataloader_prefetch_factor is None
