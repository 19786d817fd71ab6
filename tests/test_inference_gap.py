"""experiments/inference_gap.py: its first row is our predictor's answers, and each post-processing
variant it adds does what it says."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qa_distill.config import DataConfig
from qa_distill.inference.evaluate import evaluate_model

ROOT = Path(__file__).resolve().parents[1]


def _gap():
    spec = importlib.util.spec_from_file_location("inference_gap", ROOT / "experiments" / "inference_gap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whole_word_offsets_widen_a_token_to_the_word_it_is_inside():
    context = "The Denver Broncos won."
    # [CLS], Denver, Bro, ##ncos, won, .
    offsets = np.array([[[-1, -1], [4, 10], [11, 14], [14, 18], [19, 22], [22, 23]]])
    wide = _gap().whole_word_offsets(offsets, [context])
    assert [context[a:b] for a, b in wide[0, 1:]] == ["Denver", "Broncos", "Broncos", "won", "."]
    assert (wide[0, 0] == -1).all()


def test_log_probabilities_are_a_distribution_over_each_windows_context():
    offsets = np.array([[[-1, -1], [0, 3], [4, 6], [-1, -1]], [[-1, -1], [0, 2], [-1, -1], [-1, -1]]])
    logits = np.array([[9.0, 1.0, 2.0, 7.0], [5.0, 30.0, 1.0, 1.0]])
    logp = _gap().log_probabilities(logits, offsets)
    assert np.exp(logp[0, 1:3]).sum() == pytest.approx(1.0) and np.exp(logp[1, 1]) == pytest.approx(1.0)
    assert np.isneginf(logp[0, 0]) and np.isneginf(logp[0, 3])  # question and special tokens: no mass


@pytest.mark.slow
def test_its_first_row_is_what_evaluate_scores_and_every_row_is_there(tmp_path, tiny_bert, dev_sample):
    gap = _gap()
    table = gap.main(["--models", f"tiny={tiny_bert}", "--data", str(dev_sample), "--dev-questions", "12",
                      "--output", str(tmp_path / "gap")])
    assert list(table["inference"]) == [row[0] for row in gap.ROWS]
    ours = evaluate_model(tiny_bert, DataConfig(data=str(dev_sample), dev_questions=12))
    first = table.iloc[0]
    assert (first["exact_match"], first["f1"]) == (ours["exact_match"], ours["f1"])
    assert pd.read_csv(tmp_path / "gap.csv").shape == (len(gap.ROWS), 6)
