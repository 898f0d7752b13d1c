"""Structured pruning of a BERT-family student: fewer feed-forward neurons and attention heads per layer.

A BERT layer's feed-forward block (hidden x intermediate x 2) holds about two thirds of its multiply-adds, so
keeping its most important third makes three layers cost about what 1.6 cost. The pruned model is an ordinary
(smaller) dense model: it saves, reloads, exports and quantizes like any other, with no sparse kernels.

Importance is first-order Taylor (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", for heads;
the same gate trick for neurons, Molchanov et al. 2019): every head and every intermediate neuron gets a gate
fixed at 1 that multiplies its output, and its score is |dL/d gate| = |sum over tokens of activation x gradient|,
accumulated over a few batches of the training set. In the distill stage L is the recipe's distillation loss
(alpha, T) against the cached teacher logits, so the student keeps what the teacher's signal uses;
`hard_label_loss` is the fallback where no teacher logits are at hand.

Every layer keeps the same number of neurons (BertConfig has one `intermediate_size`) and the same number of
heads (at least one; ONNX Runtime's attention fusion takes one head count per model). Heads go through
transformers' own `prune_heads`, which records `config.pruned_heads`; `from_pretrained` re-applies it on load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekd.errors import InputError
from edgekd.recipe.schema import PruneSpec

# (logits, batch) -> scalar loss whose gradient scores the units
LossFn = Callable[[Any, dict[str, Any]], Any]
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Importance:
    """Taylor scores: `ffn[layer, neuron]` and `heads[layer, head]` (current numbering), summed over batches."""

    ffn: np.ndarray
    heads: np.ndarray


@dataclass(frozen=True)
class PrunePlan:
    """What to keep: the sorted intermediate neurons of each layer (the same count in every layer) and the
    heads to remove per layer (current numbering, as scored)."""

    ffn_kept: list[list[int]]
    heads_removed: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PruneOutcome:
    plan: PrunePlan
    metrics: dict[str, Any]


# ----------------------------------------------------------------------------------------------------------
# The layers of a BERT-family model


def prunable_layers(model: Any) -> list[Any]:
    """The encoder layers, checked to have BERT's block structure (intermediate/output dense, attention heads).

    Raises:
        InputError: the model is not BERT-shaped (MPNet, DistilBERT and others name their blocks otherwise).
    """
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(_is_bert_layer(layer) for layer in layers):
        raise InputError(
            f"student.prune supports BERT-family students (BERT, MiniLM, RoBERTa); "
            f"this student is a {type(model).__name__}",
            hint="remove student.prune, or use a BERT-family student (e.g. layers of MiniLM)",
        )
    return list(layers)


def _is_bert_layer(layer: Any) -> bool:
    attention = getattr(layer, "attention", None)
    return (
        hasattr(getattr(layer, "intermediate", None), "dense")
        and hasattr(getattr(layer, "output", None), "dense")
        and hasattr(getattr(attention, "self", None), "num_attention_heads")
        and hasattr(getattr(attention, "output", None), "dense")
        and hasattr(attention, "prune_heads")
    )


def head_count(layer: Any) -> int:
    return int(layer.attention.self.num_attention_heads)


def ffn_width(layer: Any) -> int:
    return int(layer.intermediate.dense.out_features)


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------------------------------------------
# Importance


def taylor_importance(model: Any, batches: Iterable[dict[str, Any]], loss_fn: LossFn) -> Importance:
    """|dL/d gate| for every intermediate neuron and head, summed over `batches` (absolute value per batch).

    The gates multiply the inputs of `output.dense` (the neurons) and `attention.output.dense` (the heads'
    concatenated contexts), so they see exactly what each unit contributes. Dropout is off while scoring; the
    model's weights and `.grad` are left untouched.

    Args:
        model: A BERT-family sequence classifier.
        batches: Dicts of tensors with the model's inputs (`input_ids`, `attention_mask`, ...) and whatever
            `loss_fn` needs (labels, teacher logits); keys other than the token inputs are not passed to it.
        loss_fn: (logits, batch) -> scalar loss.
    """
    import torch

    layers = prunable_layers(model)
    device = next(model.parameters()).device
    ffn_gates = [torch.ones(ffn_width(layer), device=device, requires_grad=True) for layer in layers]
    head_gates = [torch.ones(head_count(layer), device=device, requires_grad=True) for layer in layers]
    ffn_scores = [torch.zeros(ffn_width(layer), dtype=torch.float64) for layer in layers]
    head_scores = [torch.zeros(head_count(layer), dtype=torch.float64) for layer in layers]
    handles = []
    for layer, ffn_gate, head_gate in zip(layers, ffn_gates, head_gates, strict=True):
        handles.append(layer.output.dense.register_forward_pre_hook(_gate_units(ffn_gate)))
        handles.append(layer.attention.output.dense.register_forward_pre_hook(_gate_heads(head_gate)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in TOKEN_COLUMNS}
            logits = model(**inputs).logits
            loss = loss_fn(logits, {k: v.to(device) for k, v in batch.items()})
            grads = torch.autograd.grad(loss, [*ffn_gates, *head_gates])
            for score, grad in zip([*ffn_scores, *head_scores], grads, strict=True):
                score += grad.detach().abs().double().cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return Importance(
        ffn=np.stack([s.numpy() for s in ffn_scores]),
        heads=_ragged_to_array([s.numpy() for s in head_scores]),
    )


def _gate_units(gate: Any) -> Callable[[Any, tuple[Any, ...]], tuple[Any, ...]]:
    def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * gate.to(args[0].dtype), *args[1:])

    return hook


def _gate_heads(gate: Any) -> Callable[[Any, tuple[Any, ...]], tuple[Any, ...]]:
    def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        context = args[0]
        *lead, width = context.shape
        per_head = context.reshape(*lead, gate.numel(), width // gate.numel())
        gated = (per_head * gate.to(context.dtype)[:, None]).reshape(*lead, width)
        return (gated, *args[1:])

    return hook


def _ragged_to_array(rows: list[np.ndarray]) -> np.ndarray:
    # Layers pruned before may hold different head counts: pad with -inf so a padded slot is never kept.
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), -np.inf)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def distillation_loss_fn(alpha: float, temperature: float) -> LossFn:
    """The distill stage's own loss against `teacher_logits` (plus CE on `labels`, where a row has one)."""
    from edgekd.stages.distill.losses import distillation_loss

    def loss(logits: Any, batch: dict[str, Any]) -> Any:
        return distillation_loss(
            logits, batch["teacher_logits"], batch.get("labels"), alpha, temperature
        ).total

    return loss


def hard_label_loss(logits: Any, batch: dict[str, Any]) -> Any:
    """Cross-entropy on the gold labels: the score when no teacher logits are at hand."""
    import torch

    return torch.nn.functional.cross_entropy(logits, batch["labels"], ignore_index=-100)


# ----------------------------------------------------------------------------------------------------------
# Choosing and applying


def kept_count(total: int, fraction: float) -> int:
    """round(fraction x total), at least one unit."""
    return max(1, min(total, round(fraction * total)))


def choose_plan(importance: Importance, ffn_keep: float, heads_keep: float) -> PrunePlan:
    """Keep the top `ffn_keep` neurons and `heads_keep` heads of every layer, the same count in each layer.

    Ties go to the lower index, so the plan is deterministic.
    """
    ffn_total = importance.ffn.shape[1]
    n_ffn = kept_count(ffn_total, ffn_keep)
    ffn_kept = [sorted(_top(row, n_ffn)) for row in importance.ffn]
    heads_per_layer = [int(np.isfinite(row).sum()) for row in importance.heads]
    n_heads = kept_count(min(heads_per_layer), heads_keep)
    heads_removed: dict[int, list[int]] = {}
    for layer, (row, total) in enumerate(zip(importance.heads, heads_per_layer, strict=True)):
        kept = set(_top(row[:total], n_heads))
        removed = [h for h in range(total) if h not in kept]
        if removed:
            heads_removed[layer] = removed
    return PrunePlan(ffn_kept=ffn_kept, heads_removed=heads_removed)


def _top(scores: np.ndarray, n: int) -> list[int]:
    order = np.argsort(-scores, kind="stable")  # stable: equal scores keep index order
    return [int(i) for i in order[:n]]


def apply_plan(model: Any, plan: PrunePlan) -> Any:
    """Prune `model` in place as `plan` says and return it; its config records the new sizes."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    layers = prunable_layers(model)
    if len(plan.ffn_kept) != len(layers):
        raise InputError(f"the pruning plan covers {len(plan.ffn_kept)} layers; the model has {len(layers)}")
    for layer, kept in zip(layers, plan.ffn_kept, strict=True):
        index: Any = torch.tensor(kept, dtype=torch.long, device=layer.intermediate.dense.weight.device)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
    model.config.intermediate_size = len(plan.ffn_kept[0])
    original = {
        layer: _original_head_ids(layers[layer], heads) for layer, heads in plan.heads_removed.items()
    }
    if original:
        model.prune_heads(original)
    return model


def _original_head_ids(layer: Any, current: list[int]) -> list[int]:
    # prune_heads numbers heads as the unpruned model did; a layer pruned before has gaps in that numbering.
    already = set(getattr(layer.attention, "pruned_heads", set()))
    total = head_count(layer) + len(already)
    remaining = [h for h in range(total) if h not in already]
    return [remaining[i] for i in current]


def prune_student(
    model: Any, batches: Iterable[dict[str, Any]], loss_fn: LossFn, spec: PruneSpec
) -> PruneOutcome:
    """Score, choose and prune `model` in place; the outcome holds the plan and what it changed."""
    started = time.perf_counter()
    layers = prunable_layers(model)
    before = {
        "ffn": ffn_width(layers[0]),
        "heads": head_count(layers[0]),
        "params": parameter_count(model),
    }
    importance = taylor_importance(model, batches, loss_fn)
    plan = shared_plan(choose_plan(importance, spec.ffn_keep, spec.heads_keep))
    apply_plan(model, plan)
    layers = prunable_layers(model)
    metrics = {
        "ffn_keep": spec.ffn_keep,
        "heads_keep": spec.heads_keep,
        "ffn_before": before["ffn"],
        "ffn_after": ffn_width(layers[0]),
        "heads_before": before["heads"],
        "heads_after": [head_count(layer) for layer in layers],
        "params_before": before["params"],
        "params_after": parameter_count(model),
        "scored_batches": spec.batches,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return PruneOutcome(plan=plan, metrics=metrics)


def shared_plan(plan: PrunePlan) -> PrunePlan:
    """Rank 0's plan on every torchrun process: DDP needs identical shapes, and GPU gradients may differ by a
    rounding that flips a tie."""
    from edgekd.distributed import is_distributed

    if not is_distributed():
        return plan
    import torch.distributed as dist

    box: list[Any] = [plan]
    dist.broadcast_object_list(box, src=0)
    shared: PrunePlan = box[0]
    return shared


def describe(metrics: dict[str, Any]) -> str:
    """The one log line: what pruning removed."""
    heads_after = metrics["heads_after"]
    return (
        f"pruned the student: FFN {metrics['ffn_before']} -> {metrics['ffn_after']} per layer, heads "
        f"{metrics['heads_before']} -> {heads_after[0] if heads_after else 0} per layer, parameters "
        f"{metrics['params_before']:,} -> {metrics['params_after']:,} ({metrics['seconds']:.1f}s)"
    )


# ----------------------------------------------------------------------------------------------------------
# Batches from the distill stage's training rows


def scoring_batches(
    rows: Any, tokenizer: Any, batch_size: int, batches: int, seed: int
) -> Iterator[dict[str, Any]]:
    """`batches` batches of `rows` (a tokenized dataset with `label` and `teacher_logits`), drawn in a seeded
    order so a label-sorted file still gives every class a say; labelled rows only when any exist."""
    import torch

    labels = np.asarray(rows["label"])
    pool = np.flatnonzero(labels != -100)
    if len(pool) == 0:
        pool = np.arange(len(rows))
    order = np.random.default_rng(seed).permutation(pool)[: batch_size * batches]
    for start in range(0, len(order), batch_size):
        chosen = rows.select(order[start : start + batch_size].tolist())
        features = [{k: row[k] for k in TOKEN_COLUMNS if k in row} for row in chosen]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        batch["labels"] = torch.tensor(chosen["label"], dtype=torch.long)
        if "teacher_logits" in chosen.column_names:
            batch["teacher_logits"] = torch.tensor(chosen["teacher_logits"], dtype=torch.float32)
        yield batch


def prune_for_distillation(
    student: Any,
    tokenizer: Any,
    train_rows: Any,
    spec: PruneSpec,
    alpha: float,
    temperature: float,
    batch_size: int,
    seed: int,
    log: Callable[[str], None],
) -> PruneOutcome:
    """The distill stage's pruning step: score on the training rows with the distillation loss against the
    cached teacher logits, prune `student` in place, log one line."""
    batches = scoring_batches(train_rows, tokenizer, batch_size, spec.batches, seed)
    outcome = prune_student(student, batches, distillation_loss_fn(alpha, temperature), spec)
    log(describe(outcome.metrics))
    return outcome
