"""What the layer terms of the loss (losses.hidden_state_loss, losses.attention_loss) read from
the models: which teacher output each student output is matched to, and the attention scores of
the mapped layers.

Attention scores are rebuilt from the queries and keys of the mapped layers only, captured by
forward hooks on their query and key projections: every layer keeps its fused attention kernel
(SDPA), where `output_attentions=True` would switch the whole model to eager attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from qa_distill.config import DistillConfig
from qa_distill.errors import ConfigError
from qa_distill.models import input_names, layer_list
from qa_distill.training.teacher_cache import autocast

# the query and key projections of a self-attention block, per architecture (BERT, DistilBERT)
_PROJECTIONS = (("query", "key"), ("q_lin", "k_lin"))
_HEADS = ("num_attention_heads", "n_heads")
_WIDTH = ("hidden_size", "dim")


def _config_value(model: PreTrainedModel, names: tuple[str, ...]) -> int:
    return next(getattr(model.config, n) for n in names if hasattr(model.config, n))


def default_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student output k (0: the embeddings) against teacher output k * T // S, TinyBERT's uniform
    map: the last student layer learns from the last teacher layer whichever layers it was cut
    from, and a student cut as one layer in two (layers 0, 2, 4 of 6) ends where its teacher's
    layers 2, 4, 6 end."""
    return [k * teacher_layers // student_layers for k in range(student_layers + 1)]


def layer_map(given: list[int] | None, student: PreTrainedModel, teacher: PreTrainedModel, *,
              attention: bool) -> list[int]:
    """The map the recipe gave (`distillation.layer_map`), else the default, checked against the
    two models: one entry per student output, within the teacher's outputs, same width (no
    projection) and, for the attention term, the same number of heads."""
    s_layers, t_layers = len(layer_list(student)), len(layer_list(teacher))
    found = given if given is not None else default_layer_map(s_layers, t_layers)
    if len(found) != s_layers + 1 or found[-1] > t_layers:
        raise ConfigError(f"distillation.layer_map {found}: the student has {s_layers + 1} outputs (embeddings "
                          f"and {s_layers} layers) and the teacher {t_layers + 1}; give one teacher output in "
                          f"0..{t_layers} per student output")
    s_width, t_width = _config_value(student, _WIDTH), _config_value(teacher, _WIDTH)
    if s_width != t_width:
        raise ConfigError(f"the layer terms need one width: the student's hidden size is {s_width}, the "
                          f"teacher's {t_width}")
    s_heads, t_heads = _config_value(student, _HEADS), _config_value(teacher, _HEADS)
    if attention and s_heads != t_heads:
        raise ConfigError(f"distillation.attention_weight needs one head count: the student has {s_heads} "
                          f"attention heads, the teacher {t_heads}")
    return found


def _projections(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    for query, key in _PROJECTIONS:
        for module in layer.modules():
            found = getattr(module, query, None), getattr(module, key, None)
            if all(isinstance(projection, nn.Linear) for projection in found):
                return found
    raise ConfigError(f"distillation.attention_weight: no query/key projections found in {type(layer).__name__}")


@dataclass
class AttentionTap:
    """Forward hooks on the query and key projections of some layers of a model; after a forward,
    `scores()` gives those layers' attention scores."""

    model: PreTrainedModel
    layers: list[int]  # indices into the model's transformer layers (0: the first)

    def __post_init__(self) -> None:
        every = layer_list(self.model)
        self._projections = [_projections(every[i]) for i in self.layers]
        self._heads = _config_value(self.model, _HEADS)
        self._captured: dict[tuple[int, str], torch.Tensor] = {}

    @contextlib.contextmanager
    def hooked(self) -> Iterator[AttentionTap]:
        """Capture the projections' outputs during the forwards inside the block."""
        self._captured.clear()
        handles = []
        for n, modules in enumerate(self._projections):
            for name, module in zip(("q", "k"), modules, strict=True):
                def keep(_module, _inputs, output, slot=(n, name)):
                    self._captured[slot] = output
                handles.append(module.register_forward_hook(keep))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def scores(self) -> list[torch.Tensor]:
        """`(batch, heads, seq, seq)` float32 scores q.k / sqrt(d_head) of each tapped layer, in order."""
        out = []
        for n in range(len(self._projections)):
            q, k = (self._captured[(n, name)].float() for name in ("q", "k"))
            batch, seq, width = q.shape
            head = width // self._heads
            q, k = (x.view(batch, seq, self._heads, head).transpose(1, 2) for x in (q, k))
            out.append(q @ k.transpose(-1, -2) / head**0.5)
        return out


@dataclass
class LayerTerms:
    """The layer terms of a distillation run: their weights, the layer map and the attention taps."""

    hidden_weight: float
    attention_weight: float
    layer_map: list[int]  # teacher output per student output, 0 the embeddings
    student_tap: AttentionTap | None
    teacher_tap: AttentionTap | None

    @classmethod
    def of(cls, settings: DistillConfig, student: PreTrainedModel, teacher: PreTrainedModel, *,
           cut_from: list[int] | None = None) -> LayerTerms | None:
        """The terms a run's settings ask for, checked against its models; None when both weights are 0.

        The attention term pairs each student layer with the teacher layer that writes its mapped
        output, except where no map is given and the student was cut from layers the teacher has
        (`cut_from`, the student's `kept_layers`): then with the layer it was copied from, whose
        attention it starts with, where the map by depth would pull it towards the next layer's.
        """
        if not settings.layer_terms:
            return None
        attention = settings.attention_weight > 0
        found = layer_map(settings.layer_map, student, teacher, attention=attention)
        # student layer k - 1 writes output k; the teacher layer that writes output found[k] is found[k] - 1
        tapped = [t - 1 for t in found[1:]]
        if settings.layer_map is None and cut_from and max(cut_from) < len(layer_list(teacher)):
            tapped = list(cut_from)
        taps = ((AttentionTap(student, list(range(len(found) - 1))), AttentionTap(teacher, tapped))
                if attention else (None, None))
        return cls(settings.hidden_weight, settings.attention_weight, found, *taps)

    def outputs(self, role: str) -> list[int] | None:
        """The hidden states the loss reads from the student or the teacher (None: none)."""
        if not self.hidden_weight > 0:
            return None
        return list(range(len(self.layer_map))) if role == "student" else self.layer_map


@dataclass
class LayerOutputs:
    """What the loss reads from one forward: the model's output (its logits), the mapped hidden
    states and attention scores."""

    output: Any
    hidden: list[torch.Tensor]
    attention: list[torch.Tensor]


def forward_layers(model: nn.Module, inputs: dict[str, torch.Tensor], *, outputs: list[int] | None = None,
                   tap: AttentionTap | None = None) -> LayerOutputs:
    """One forward of `model` on `inputs`, with the hidden states numbered `outputs` (0: the
    embeddings; None: none, and the forward is the model's plain one) and `tap`'s attention scores."""
    with tap.hooked() if tap else contextlib.nullcontext():
        out = model(**inputs, output_hidden_states=True) if outputs is not None else model(**inputs)
        attention = tap.scores() if tap else []
    hidden = [out.hidden_states[i] for i in outputs] if outputs is not None else []
    return LayerOutputs(out, hidden, attention)


@torch.no_grad()
def teacher_layers(teacher: PreTrainedModel, batch: dict[str, torch.Tensor], precision: str, *,
                   terms: LayerTerms) -> LayerOutputs:
    """The teacher's logits and mapped layers for a training batch, on the teacher's device, on
    the inputs it takes. `no_grad`, not `inference_mode`: the loss keeps these for its backward."""
    device = next(teacher.parameters()).device
    inputs = {k: batch[k].to(device) for k in input_names(teacher) if k in batch}
    with autocast(device, precision):
        return forward_layers(teacher, inputs, outputs=terms.outputs("teacher"), tap=terms.teacher_tap)
