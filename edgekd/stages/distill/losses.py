"""Distillation losses, kept apart from the trainer so they can be tested by hand.

* `distillation_loss`: logit KD + CE (Hinton et al. 2015).
* `hidden_state_mse` and `attention_kl`: intermediate-layer transfer (TinyBERT / MiniLM style), with
  `uniform_layer_map` for which teacher layer each student layer learns from.
"""

from __future__ import annotations

import math
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


# ----------------------------------------------------------------------------------------------------------
# Intermediate-layer losses (hidden states, attention distributions)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i learns from teacher layer round((i + 1) * T / S) - 1 (rounded half up).

    The last student layer always maps to the last teacher layer and the others spread evenly below it,
    e.g. 3 student layers over 6 teacher layers: [1, 3, 5]; 4 over 12: [2, 5, 8, 11].
    """
    return [math.floor((i + 1) * teacher_layers / student_layers + 0.5) - 1 for i in range(student_layers)]


def masked_token_mean(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (batch, seq, ...) over the real tokens only: padding must not pull the loss around."""
    mask = attention_mask.to(values.dtype)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def hidden_state_mse(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between two (batch, seq, width) hidden states, over real tokens and features.

    The student's states must already be projected to the teacher's width (see `HiddenProjection`).
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: {tuple(student_hidden.shape)} vs {tuple(teacher_hidden.shape)}"
        )
    squared = (student_hidden - teacher_hidden.detach().to(student_hidden.dtype)) ** 2
    return masked_token_mean(squared, attention_mask)


def attention_kl(
    student_attention: torch.Tensor, teacher_attention: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, mean over heads and real query tokens.

    Args:
        student_attention: (batch, heads_s, seq, seq) attention probabilities (rows sum to 1).
        teacher_attention: (batch, heads_t, seq, seq), treated as constants.
        attention_mask: (batch, seq), 1 for real tokens; padded query rows are left out.

    When the head counts differ there is no head-to-head correspondence, so both sides are first averaged over
    their heads and the head-averaged distributions are compared.
    """
    teacher = teacher_attention.detach().to(student_attention.dtype)
    student = student_attention
    if student.shape[1] != teacher.shape[1]:
        student = student.mean(dim=1, keepdim=True)
        teacher = teacher.mean(dim=1, keepdim=True)
    # xlogy gives 0 * log 0 = 0 for the padded keys, where the teacher puts exactly zero mass.
    log_student = torch.log(student.clamp_min(1e-12))
    per_row = (torch.xlogy(teacher, teacher) - teacher * log_student).sum(dim=-1)  # (batch, heads, seq)
    return masked_token_mean(per_row.transpose(1, 2), attention_mask)  # (batch, seq, heads): mask by query
