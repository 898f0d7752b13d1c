"""The distillation loss (Hinton et al. 2015), kept apart from the trainer so it can be tested by hand."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class DistillLoss(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    alpha: float,
    temperature: float,
) -> DistillLoss:
    """`alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`, batch mean.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-target ones when T changes.
    Both terms carry gradient (one seed article detached CE with `.item()`, silently training on KD alone).
    Rows without a gold label (`labels == -100`, e.g. unlabelled text) contribute to the KD term only.

    Args:
        student_logits: (batch, classes).
        teacher_logits: (batch, classes), treated as constants.
        labels: (batch,) class ids, or None for KD only.
        alpha: weight of the CE term, in [0, 1].
        temperature: softmax temperature T > 0.
    """
    t = temperature
    teacher = teacher_logits.detach().to(student_logits.dtype)
    kd = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if labels is None or bool((labels == -100).all()):
        ce = torch.zeros((), dtype=student_logits.dtype, device=student_logits.device)
    else:
        ce = F.cross_entropy(student_logits, labels, ignore_index=-100)
    return DistillLoss(total=alpha * ce + (1.0 - alpha) * kd, ce=ce, kd=kd)
