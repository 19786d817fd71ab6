"""The task-specific distillation loss of DistilBERT's second step, for start and end logits.

    loss = mean over {start, end} of
           (1 - alpha) * CE(student, gold) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T
changes (Hinton et al., 2015). The hard term is the QA head's own loss (gold positions past the
window are ignored, as HF's QA models do), so alpha = 0 is plain fine-tuning, exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qa_distill.config import check_distillation


def hard_loss(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against gold token positions, as HF QA heads compute it."""
    positions = positions.clamp(0, logits.size(1))
    return F.cross_entropy(logits.float(), positions, ignore_index=logits.size(1))


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
            total = total + (1 - alpha) * hard_loss(student, gold)
        if alpha > 0:
            total = total + alpha * soft_loss(student, teacher.detach(), temperature, mask)
    return total / 2
