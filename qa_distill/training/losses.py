"""The task-specific distillation loss of DistilBERT's second step, for start and end logits,
and the terms on the layers inside (TinyBERT, MiniLM), joined in `total_loss`.

    loss = mean over {start, end} of
           (1 - alpha) * CE(student, gold) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
           + hidden_weight * hidden_state_loss + attention_weight * attention_loss

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T
changes (Hinton et al., 2015). The hard term is the QA head's loss over the real tokens (gold positions
past the window are ignored, as HF's QA models do; padding is masked), the loss `QATrainer` fine-tunes
with, so alpha = 0 is plain fine-tuning, exactly. A layer
term whose weight is 0 is not computed at all, so weights of 0 give the logit loss bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qa_distill.validation import check_distillation


def hard_loss(logits: torch.Tensor, positions: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against gold token positions, as HF QA heads compute it, except that positions
    where `mask` is 0 (padding) get no probability: the loss does not depend on how far a batch is
    padded (training.pad_to_multiple_of)."""
    logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)
    positions = positions.clamp(0, logits.size(1))
    return F.cross_entropy(logits, positions, ignore_index=logits.size(1))


def soft_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch-mean.

    Positions where `mask` is 0 (padding) get no probability in either distribution, so both
    are normalised over the same positions.
    """
    student, teacher = student.float() / temperature, teacher.float() / temperature
    if mask is not None:
        keep = mask.bool()
        student = student.masked_fill(~keep, torch.finfo(student.dtype).min)
        teacher = teacher.masked_fill(~keep, torch.finfo(teacher.dtype).min)
    kl = F.kl_div(
        F.log_softmax(student, dim=-1),
        F.log_softmax(teacher, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return kl * temperature**2


def distillation_loss(
    student_start: torch.Tensor,
    student_end: torch.Tensor,
    teacher_start: torch.Tensor,
    teacher_end: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    temperature: float,
    alpha: float,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar loss for logits `(batch, seq)` and gold positions `(batch,)`; mask `(batch, seq)`."""
    check_distillation(temperature, alpha)
    total = student_start.new_zeros((), dtype=torch.float32)
    for student, teacher, gold in (
        (student_start, teacher_start, start_positions),
        (student_end, teacher_end, end_positions),
    ):
        if alpha < 1:
            total = total + (1 - alpha) * hard_loss(student, gold, mask=mask)
        if alpha > 0:
            total = total + alpha * soft_loss(student, teacher.detach(), temperature, mask)
    return total / 2


def _real(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of `(batch, seq, ...)` values at real (mask 1) positions, as `(rows, ...)`."""
    return values.flatten(0, 1) if mask is None else values[mask.bool()]


def hidden_state_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None
) -> torch.Tensor:
    """Hidden-state MSE over mapped pairs of `(batch, seq, hidden)` outputs (TinyBERT's term):

        (1 / L) * sum over pairs l of  (1 / (N * H)) * sum over real positions i, dims d of (s_lid - t_lid)^2

    with N the real (mask 1) positions of the batch and H the width; padding counts nowhere.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student and {len(teacher)} teacher hidden states: give mapped pairs")
    pairs = [F.mse_loss(_real(s.float(), mask), _real(t.float(), mask)) for s, t in zip(student, teacher, strict=True)]
    return torch.stack(pairs).mean()


def attention_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention-distribution KL over mapped pairs of `(batch, heads, seq, seq)` attention scores
    (q.k / sqrt(d_head), before the softmax), as MiniLM distils its last layer:

        (1 / L) * sum over pairs l of  (1 / (N * A)) * sum over real queries i, heads a of
                  KL(softmax_j(t_laij) || softmax_j(s_laij))

    the softmax taken over the real keys j only, N the real query positions and A the heads. KL,
    not TinyBERT's MSE: each row is a distribution, and KL weighs it the same whatever the window
    length, where an MSE of probabilities shrinks with the keys they are spread over.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student and {len(teacher)} teacher attention maps: give mapped pairs")
    pairs = []
    for s, t in zip(student, teacher, strict=True):
        s, t = s.float(), t.float()
        if mask is not None:  # padded keys get no probability in either distribution
            padded = ~mask.bool()[:, None, None, :]
            s, t = s.masked_fill(padded, torch.finfo(s.dtype).min), t.masked_fill(padded, torch.finfo(t.dtype).min)
        rows = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="none", log_target=True).sum(-1)
        real = torch.ones_like(rows[:, 0]) if mask is None else mask.to(rows.dtype)  # (batch, queries)
        pairs.append((rows * real[:, None, :]).sum() / (real.sum() * rows.size(1)))
    return torch.stack(pairs).mean()


def total_loss(
    logit_loss: torch.Tensor,
    *, hidden: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    hidden_weight: float = 0.0,
    attention_weight: float = 0.0,
) -> torch.Tensor:
    """`logit_loss + hidden_weight * hidden + attention_weight * attention`, the one place the
    terms meet; a term of weight 0 is left out (not added as 0 * term), so the sum is the logit
    loss exactly."""
    total = logit_loss
    for weight, term, name in ((hidden_weight, hidden, "hidden"), (attention_weight, attention, "attention")):
        if weight > 0:
            if term is None:
                raise ValueError(f"{name}_weight is {weight} but no {name} term was computed")
            total = total + weight * term
    return total
