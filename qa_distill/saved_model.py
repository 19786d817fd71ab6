"""What a model saved by this project carries besides its HF files, and where to find those.

A training run writes `qa_distill.json` beside the weights: the windows the model was trained on
and the answer settings its dev score was computed with. Whoever answers with the model later
(`evaluate`, `predict`, the MLflow model, the search's full-dev score, the speed test) reads them
here, so it answers as the training evaluation did. A model card (`README.md`) says to a reader
of the directory what the model is, how it scored, and how to answer with it: with transformers
alone (version 5 has no QA pipeline, so the card carries a short span decoding) or with MLflow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa_distill.config import AnswerConfig, DataConfig, RunConfig

SETTINGS_FILE = "qa_distill.json"
CARD_FILE = "README.md"
# what training leaves beside the weights and a served model does without (a pickle among them)
TRAINING_LEFTOVERS = ("training_args.bin", "predictions.json", "metrics.json")


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


@dataclass(frozen=True)
class CardFacts:
    """What a model card states about one trained model."""

    name: str  # the registered name, else the directory's
    recipe: str
    role: str  # teacher, student or distill
    base_model: str
    exact_match: float
    f1: float
    dev_questions: int
    distillation: str = ""  # "T=2, alpha=0.5, teacher ..." for a distilled model
    latency: str = ""  # p50 per backend, where measured

    @classmethod
    def of_run(cls, config: RunConfig, metrics: dict[str, Any]) -> CardFacts:
        """What the saved directory's model card says of a run's model."""
        k = config.distillation
        distilled = f"T={k.temperature:g}, alpha={k.alpha:g}, teacher {k.teacher}" if config.role == "distill" else ""
        name = config.registered_name if config.tracking.register_model else Path(config.output_dir).name
        return cls(name, config.recipe, config.role, config.model.name, metrics["exact_match"], metrics["f1"],
                   int(metrics["dev_questions"]), distillation=distilled)


_ROLES = {"teacher": "the teacher, fine-tuned on gold answers",
          "student": "the student fine-tuned alone on gold answers (the baseline of distillation)",
          "distill": "the student fine-tuned with the teacher's soft start/end targets (distilled)"}


def model_card(facts: CardFacts, settings: SavedSettings) -> str:
    """The README.md of a saved model directory."""
    f, s = facts, settings
    lines = [
        "---", "library_name: transformers", "pipeline_tag: question-answering", "datasets: [squad]",
        "tags: [qa-distill, knowledge-distillation, extractive-qa]", "---", "",
        f"# {f.name}", "",
        f"An extractive question-answering model for SQuAD v1.1 made by qa-distill: {_ROLES.get(f.role, f.role)}, "
        f"recipe `{f.recipe}`, from `{f.base_model}`.", "",
        f"- Dev score: EM {f.exact_match:.2f}, F1 {f.f1:.2f} on {f.dev_questions} questions "
        f"(windows of {s.max_length} tokens, stride {s.doc_stride}; answers of at most {s.max_answer_length} tokens).",
    ]
    if f.distillation:
        lines.append(f"- Distillation: {f.distillation}.")
    unmeasured = "not measured yet (`qa-distill speedtest` writes it onto the registered version)"
    lines.append(f"- CPU latency: {f.latency or unmeasured}.")
    uri = f"models:/{f.name}@champion" if f.role == "distill" else f"models:/{f.name}/latest"
    lines += ["", "## With transformers", "",
              "Answers are spans of the context: the best start and end token, decoded here for a context that "
              "fits one window (qa-distill's predictor also slides windows over longer ones).", "",
              "```python", _DECODING.format(max_length=s.max_length, max_answer_length=s.max_answer_length).strip(),
              "```", "", "## With MLflow", "",
              "```python", "import mlflow", "",
              f'model = mlflow.pyfunc.load_model("{uri}")  # or models:/{f.name}/<version>',
              'rows = [{"question": "Who won?", "context": "The Broncos won."}]',
              'print(model.predict(rows, params={"backend": "int8"}))',
              "```", "",
              f"or serve it: `mlflow models serve -m models:/{f.name}/<version> --env-manager local -p 5000`.", ""]
    return "\n".join(lines)


_DECODING = """
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

model_dir = "."  # this directory
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
question, context = "Who won Super Bowl 50?", "The Denver Broncos defeated the Carolina Panthers to win Super Bowl 50."
inputs = tokenizer(question, context, truncation="only_second", max_length={max_length},
                   return_offsets_mapping=True, return_tensors="pt")
offsets = inputs.pop("offset_mapping")[0]
in_context = torch.tensor([i == 1 for i in inputs.sequence_ids(0)])
with torch.no_grad():
    out = model(**inputs)
scores = out.start_logits[0][:, None] + out.end_logits[0][None, :]  # start x end
span = torch.ones_like(scores, dtype=torch.bool).triu().tril({max_answer_length} - 1)  # start <= end, not too long
allowed = in_context[:, None] & in_context[None, :] & span
start, end = divmod(int(scores.masked_fill(~allowed, float("-inf")).argmax()), scores.shape[1])
print(context[offsets[start][0] : offsets[end][1]])
"""


def write_model_card(model_dir: str | Path, facts: CardFacts) -> Path:
    """Write the directory's README.md from `facts` and the settings saved with it."""
    path = Path(model_dir) / CARD_FILE
    path.write_text(model_card(facts, read_settings(model_dir)))
    return path
