"""The distillation losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from edgekd.stages.distill.losses import attention_kl, distillation_loss, hidden_state_mse, uniform_layer_map


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


# ----------------------------------------------------------------------------------------------------------
# Intermediate-layer losses


def test_uniform_layer_map_spreads_student_layers_over_the_teacher() -> None:
    assert uniform_layer_map(3, 6) == [1, 3, 5]
    assert uniform_layer_map(4, 12) == [2, 5, 8, 11]
    assert uniform_layer_map(2, 5) == [2, 4]  # 2.5 rounds half up
    assert uniform_layer_map(1, 2) == [1]
    assert uniform_layer_map(6, 6) == [0, 1, 2, 3, 4, 5]


def test_hidden_state_mse_matches_hand_computed_value_and_skips_padding() -> None:
    student = torch.tensor([[[1.0, 2.0], [0.0, 1.0], [9.0, 9.0]]])  # (1, 3, 2); token 2 is padding
    teacher = torch.tensor([[[0.0, 2.0], [1.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # squared errors of the real tokens: (1, 0) and (1, 4) -> mean over 2 tokens x 2 features = 6 / 4
    assert hidden_state_mse(student, teacher, mask).item() == pytest.approx(1.5)


def test_hidden_state_mse_through_a_projection_trains_the_projection() -> None:
    projection = torch.nn.Linear(2, 3)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        projection.bias.zero_()
    student = torch.tensor([[[1.0, 2.0]]])
    teacher = torch.tensor([[[1.0, 2.0, 0.0]]])  # third feature: projected 3 vs 0 -> squared error 9
    loss = hidden_state_mse(projection(student), teacher, torch.tensor([[1]]))
    assert loss.item() == pytest.approx(9 / 3)
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_attention_kl_matches_hand_computed_value_per_head() -> None:
    # batch 1, 2 heads, 2 tokens (both real)
    t = [[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.6, 0.4]]]
    s = [[[0.7, 0.3], [0.5, 0.5]], [[0.2, 0.8], [0.3, 0.7]]]
    expected = sum(kl(t[h][q], s[h][q]) for h in range(2) for q in range(2)) / 4
    loss = attention_kl(torch.tensor([s]), torch.tensor([t]), torch.tensor([[1, 1]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_attention_kl_averages_heads_when_head_counts_differ_and_skips_padded_queries() -> None:
    # teacher 2 heads, student 1 head, 3 tokens of which the last is padding (no mass on it either)
    t = [
        [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]],
        [[0.1, 0.9, 0.0], [0.6, 0.4, 0.0], [0.3, 0.3, 0.4]],
    ]
    s = [[[0.4, 0.6, 0.0], [0.5, 0.5, 0.0], [0.9, 0.05, 0.05]]]
    t_mean = [[(t[0][q][k] + t[1][q][k]) / 2 for k in range(3)] for q in range(3)]
    expected = (kl(t_mean[0], s[0][0]) + kl(t_mean[1], s[0][1])) / 2  # query 2 is padding
    loss = attention_kl(torch.tensor([s]), torch.tensor([t]), torch.tensor([[1, 1, 0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_attention_kl_is_zero_for_identical_distributions() -> None:
    probs = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
    assert attention_kl(probs, probs.clone(), torch.ones(2, 5)).item() == pytest.approx(0.0, abs=1e-6)
