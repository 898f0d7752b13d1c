"""The distillation loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from edgekd.losses import distillation_loss


def softmax(xs: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(x / t) for x in xs]
    return [e / sum(exps) for e in exps]


def hand_loss(s: list[float], te: list[float], y: int, alpha: float, t: float) -> tuple[float, float, float]:
    ce = -math.log(softmax(s)[y])
    ps, pt = softmax(s, t), softmax(te, t)
    kd = sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True)) * t * t
    return alpha * ce + (1 - alpha) * kd, ce, kd


@pytest.mark.parametrize("alpha, t", [(0.5, 2.0), (0.1, 4.0), (1.0, 1.0), (0.0, 3.0)])
def test_matches_hand_computed_values(alpha: float, t: float) -> None:
    s = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]
    te = [[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]]
    y = [1, 2]
    loss = distillation_loss(torch.tensor(s), torch.tensor(te), torch.tensor(y), alpha, t)
    expected = [hand_loss(s[i], te[i], y[i], alpha, t) for i in range(2)]
    mean = [sum(e[k] for e in expected) / 2 for k in range(3)]
    assert loss.total.item() == pytest.approx(mean[0], rel=1e-5)
    assert loss.ce.item() == pytest.approx(mean[1], rel=1e-5)
    assert loss.kd.item() == pytest.approx(mean[2], rel=1e-5)


def test_both_terms_carry_gradient() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    te = torch.tensor([[2.0, 1.0, 0.0]])
    y = torch.tensor([1])
    ce_grad = torch.autograd.grad(distillation_loss(s, te, y, 1.0, 2.0).total, s)[0]
    kd_grad = torch.autograd.grad(distillation_loss(s, te, y, 0.0, 2.0).total, s)[0]
    assert ce_grad.abs().sum() > 0
    assert kd_grad.abs().sum() > 0
    # CE pulls the gold class up; matching the teacher pulls class 0 up.
    assert ce_grad[0, 1] < 0
    assert kd_grad[0, 0] < 0


def test_kd_is_zero_when_student_equals_teacher() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.2]])
    loss = distillation_loss(logits, logits.clone(), torch.tensor([2]), 0.0, 3.0)
    assert loss.kd.item() == pytest.approx(0.0, abs=1e-7)


def test_unlabelled_rows_only_get_the_kd_term() -> None:
    s = torch.tensor([[1.0, 2.0]])
    te = torch.tensor([[2.0, 1.0]])
    loss = distillation_loss(s, te, torch.tensor([-100]), 0.5, 2.0)
    assert loss.ce.item() == 0.0
    assert loss.total.item() == pytest.approx(0.5 * loss.kd.item())
