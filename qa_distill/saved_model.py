"""What a model saved by this project carries besides its HF files, and where to find those.

A training run writes `qa_distill.json` beside the weights: the windows the model was trained on
and the answer settings its dev score was computed with. Whoever answers with the model later
(`evaluate`, `predict`, the MLflow model, the search's full-dev score, the speed test) reads them
here, so it answers as the training evaluation did.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from qa_distill.config import AnswerConfig, DataConfig, RunConfig

SETTINGS_FILE = "qa_distill.json"


@dataclass(frozen=True)
class SavedSettings:
    """How a model cuts text into windows and turns logits into answers (the recipe's defaults
    for a model saved elsewhere)."""

    max_length: int = DataConfig.max_length
    doc_stride: int = DataConfig.doc_stride
    n_best: int = AnswerConfig.n_best
    max_answer_length: int = AnswerConfig.max_answer_length

    @classmethod
    def of(cls, config: RunConfig) -> SavedSettings:
        d, a = config.data, config.answers
        return cls(d.max_length, d.doc_stride, a.n_best, a.max_answer_length)


def save_settings(model_dir: str | Path, settings: SavedSettings) -> None:
    (Path(model_dir) / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings)))


def read_settings(model_dir: str | Path) -> SavedSettings:
    """The settings saved with a model; defaults for any it does not name (a hub model, or one
    saved before answer settings were)."""
    path = Path(model_dir) / SETTINGS_FILE
    if not path.exists():
        return SavedSettings()
    saved = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(SavedSettings)}
    return SavedSettings(**{key: int(value) for key, value in saved.items() if key in names})


def hf_model_dir(downloaded: Path) -> Path | None:
    """Where the HF files are inside a downloaded MLflow model (ours, or any dir with config)."""
    candidates = [downloaded, *sorted((downloaded / "artifacts").glob("*"))]
    return next((c for c in candidates if (c / "config.json").exists()), None)
