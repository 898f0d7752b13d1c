"""Intermediate-layer distillation: which layers are compared, whether the two models can be compared at all,
and the small modules training needs (a learned width projection, an on-the-fly teacher).

Two losses can be added to the logit loss (`distill.losses` in the recipe):

* hidden states: MSE between student layer i and teacher layer `layer_map[i]` (default `uniform_layer_map`),
  optionally also between the two embedding outputs; a learned linear projection maps the student's width to
  the teacher's when they differ. The projection is trained with the student and then thrown away: the saved
  student is an ordinary classifier.
* attention: KL(teacher || student) between the attention distributions of mapped layers (head-averaged when
  the head counts differ).

Both compare the models token by token, so both need the two tokenizers to split every text into the same
tokens (ids may differ, e.g. MPNet and BERT vocabularies are offset); this is checked on the training texts.
Unlike the logits, these targets are too large to cache per example, so the teacher runs on every training
batch (in inference mode); the stage records how much time that costs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekd.errors import InputError
from edgekd.stages.distill.losses import uniform_layer_map

if TYPE_CHECKING:
    import torch

    from edgekd.data import Splits
    from edgekd.recipe.schema import LossesSpec, Recipe


@dataclass(frozen=True)
class ModelShape:
    """What the layer mapping needs to know about an encoder."""

    layers: int
    width: int
    heads: int


@dataclass(frozen=True)
class IntermediatePlan:
    """The resolved intermediate losses: weights and (student, teacher) index pairs.

    `hidden_pairs` index the models' `hidden_states` tuples (0 = embeddings, i + 1 = output of layer i);
    `attention_pairs` index their `attentions` tuples (i = layer i).
    """

    hidden_weight: float
    attention_weight: float
    hidden_pairs: tuple[tuple[int, int], ...]
    attention_pairs: tuple[tuple[int, int], ...]
    student_width: int
    teacher_width: int

    @property
    def needs_hidden(self) -> bool:
        return self.hidden_weight > 0

    @property
    def needs_attention(self) -> bool:
        return self.attention_weight > 0

    @property
    def projects(self) -> bool:
        return self.needs_hidden and self.student_width != self.teacher_width


# ----------------------------------------------------------------------------------------------------------
# Shapes and layer mapping (checked before any training)


def shape_of(config: Any, what: str) -> ModelShape:
    """Layers, width and heads from a transformers config (BERT-like names; DistilBERT maps its own)."""
    try:
        return ModelShape(
            layers=int(config.num_hidden_layers),
            width=int(config.hidden_size),
            heads=int(config.num_attention_heads),
        )
    except (AttributeError, TypeError, ValueError):
        raise InputError(
            f"cannot read the number of layers, width and heads of the {what} ({type(config).__name__})",
            hint="intermediate losses need BERT-like encoders; set distill.losses weights to 0",
        ) from None


def config_of(model: str | None, config: dict[str, Any] | None, trust_remote_code: bool = False) -> Any:
    """The transformers config of a model folder / Hub id, or of an architecture dict, without any weights."""
    from transformers import AutoConfig

    try:
        if config is not None:
            fields = dict(config)
            return AutoConfig.for_model(fields.pop("model_type"), **fields)
        return AutoConfig.from_pretrained(model or "", trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"cannot read the config of '{model or config}': {str(exc).splitlines()[0]}"
        ) from None


def recipe_shapes(recipe: Recipe) -> tuple[ModelShape, ModelShape]:
    """(teacher, student) shapes as the recipe will build them, read from configs only."""
    teacher_spec = recipe.teacher
    teacher = shape_of(
        config_of(teacher_spec.model, teacher_spec.config, teacher_spec.trust_remote_code), "teacher"
    )
    spec = recipe.student
    if spec.init == "config":
        return teacher, shape_of(config_of(None, spec.config), "student")
    source = (
        teacher
        if spec.model == "teacher"
        else shape_of(config_of(spec.model, None, spec.trust_remote_code), f"student source {spec.model}")
    )
    if spec.init == "layers":
        name = "teacher" if spec.model == "teacher" else spec.model
        # with student.budget every candidate must exist in the source (the recipe refuses budget + losses,
        # so the shape returned is only checked, never planned with)
        layer_lists = [c.layers for c in spec.budget.candidates] if spec.budget else [spec.layers or []]
        for layers in layer_lists:
            check_layer_subset(layers, source.layers, name)
        return teacher, ModelShape(len(layer_lists[0]), source.width, source.heads)
    return teacher, source


def check_layer_subset(layers: list[int], available: int, source: str | None) -> None:
    """`student.layers` must exist in the model they are copied from."""
    bad = [i for i in layers if i >= available]
    if bad:
        raise InputError(
            f"student.layers {bad} out of range: {source} has {available} layers (0..{available - 1})",
            hint=f"pick student.layers from 0..{available - 1}",
        )


def plan_intermediate(
    losses: LossesSpec, teacher: ModelShape, student: ModelShape
) -> IntermediatePlan | None:
    """Resolve the layer mapping of the intermediate losses and refuse combinations that cannot work.

    Returns None when both intermediate weights are 0 (logit distillation only).

    Raises:
        InputError: a mapped layer does not exist, the map has the wrong length, or widths differ while the
            hidden-state projection is switched off.
    """
    hidden, attention = losses.hidden, losses.attention
    if hidden.weight <= 0 and attention.weight <= 0:
        return None
    hidden_pairs: list[tuple[int, int]] = []
    if hidden.weight > 0:
        layer_map = resolve_layer_map(hidden.layer_map, teacher, student, "hidden")
        if hidden.embeddings:
            hidden_pairs.append((0, 0))
        hidden_pairs += [(i + 1, t + 1) for i, t in enumerate(layer_map)]
        if student.width != teacher.width and hidden.projection == "none":
            raise InputError(
                f"distill.losses.hidden: the student's width {student.width} differs from the teacher's "
                f"{teacher.width} and projection is 'none', so the hidden states cannot be compared",
                hint="set distill.losses.hidden.projection: linear",
            )
    attention_pairs: list[tuple[int, int]] = []
    if attention.weight > 0:
        layer_map = resolve_layer_map(attention.layer_map, teacher, student, "attention")
        attention_pairs = list(enumerate(layer_map))
    return IntermediatePlan(
        hidden_weight=hidden.weight,
        attention_weight=attention.weight,
        hidden_pairs=tuple(hidden_pairs),
        attention_pairs=tuple(attention_pairs),
        student_width=student.width,
        teacher_width=teacher.width,
    )


def resolve_layer_map(
    layer_map: list[int] | None, teacher: ModelShape, student: ModelShape, loss: str
) -> list[int]:
    """The recipe's `layer_map` (teacher layer for each student layer) checked against both models,
    or the uniform default."""
    if layer_map is None:
        return uniform_layer_map(student.layers, teacher.layers)
    where = f"distill.losses.{loss}.layer_map"
    if len(layer_map) != student.layers:
        raise InputError(
            f"{where} has {len(layer_map)} entries but the student has {student.layers} layers",
            hint=f"give one teacher layer per student layer, e.g. {uniform_layer_map(student.layers, teacher.layers)}",
        )
    bad = [t for t in layer_map if t >= teacher.layers]
    if bad:
        raise InputError(
            f"{where} {bad} out of range: the teacher has {teacher.layers} layers (0..{teacher.layers - 1})",
            hint=f"e.g. the uniform map {uniform_layer_map(student.layers, teacher.layers)}",
        )
    return list(layer_map)


# ----------------------------------------------------------------------------------------------------------
# Tokenization


# MPNet's <s>/</s> play the roles of BERT's [CLS]/[SEP]: compare roles, not spellings, for special tokens.
SPECIAL_ROLES = (
    ("cls_token_id", "cls"),
    ("bos_token_id", "cls"),
    ("sep_token_id", "sep"),
    ("eos_token_id", "sep"),
    ("pad_token_id", "pad"),
    ("unk_token_id", "unk"),
    ("mask_token_id", "mask"),
)


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """Token strings with special tokens reduced to their role, so [CLS] and <s> compare equal."""
    roles: dict[int, str] = {}
    for attribute, role in SPECIAL_ROLES:
        token_id = getattr(tokenizer, attribute, None)
        if token_id is not None:
            roles.setdefault(token_id, f"<{role}>")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [roles.get(i, tok) for i, tok in zip(ids, tokens, strict=True)]


def teacher_ids_for_student_tokens(
    teacher_tokenizer: Any, student_tokenizer: Any, texts: list[str], max_length: int, where: str
) -> list[list[int]] | None:
    """Check that both tokenizers split every text into the same tokens; return the teacher's ids.

    Returns None when the ids are identical too (the common case: a student made of the teacher's layers),
    so the student's `input_ids` can be fed to the teacher as they are.

    Raises:
        InputError: naming the first text whose tokens differ.
    """
    teacher_ids = teacher_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    student_ids = student_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    if teacher_ids == student_ids:
        return None
    for i, (t_ids, s_ids) in enumerate(zip(teacher_ids, student_ids, strict=True)):
        t_tokens = token_strings(teacher_tokenizer, t_ids)
        s_tokens = token_strings(student_tokenizer, s_ids)
        if t_tokens != s_tokens:
            raise InputError(
                f"attention and hidden-state distillation compare the models token by token, but {where} example "
                f"{i} ({texts[i][:50]!r}) tokenizes differently: {describe_difference(t_tokens, s_tokens)}",
                hint="give the student the teacher's tokenizer, or set distill.losses.*.weight: 0",
            )
    return [list(ids) for ids in teacher_ids]


def describe_difference(teacher_tokens: list[str], student_tokens: list[str]) -> str:
    first = next(
        (k for k, (a, b) in enumerate(zip(teacher_tokens, student_tokens, strict=False)) if a != b),
        min(len(teacher_tokens), len(student_tokens)),
    )
    t_tok = teacher_tokens[first] if first < len(teacher_tokens) else "(end)"
    s_tok = student_tokens[first] if first < len(student_tokens) else "(end)"
    return (
        f"teacher {len(teacher_tokens)} tokens, student {len(student_tokens)}; "
        f"first difference at token {first}: {t_tok!r} vs {s_tok!r}"
    )


def preflight_intermediate(recipe: Recipe, splits: Splits, unlabeled: list[str]) -> IntermediatePlan | None:
    """Everything about intermediate losses and the student's layers that can be checked before training.

    Reads configs and tokenizers only (no weights). Raises InputError with one clear line.
    """
    from edgekd.models import resolve_tokenizer

    needs_shapes = recipe.student.init == "layers" or _has_intermediate(recipe.distill.losses)
    if not needs_shapes:
        return None
    teacher, student = recipe_shapes(recipe)
    plan = plan_intermediate(recipe.distill.losses, teacher, student)
    if plan is None or not student_may_tokenize_differently(recipe):
        return plan
    texts = splits.texts("train")
    teacher_tok = resolve_tokenizer(recipe.teacher, texts)
    spec = recipe.student
    student_tok = resolve_tokenizer(spec, texts, fallback=recipe.teacher.model)
    teacher_ids_for_student_tokens(teacher_tok, student_tok, texts, recipe.data.max_length, "train")
    if unlabeled:
        teacher_ids_for_student_tokens(
            teacher_tok, student_tok, unlabeled, recipe.data.max_length, "unlabeled"
        )
    return plan


def _has_intermediate(losses: LossesSpec) -> bool:
    return losses.hidden.weight > 0 or losses.attention.weight > 0


def student_may_tokenize_differently(recipe: Recipe) -> bool:
    """False when the student is certain to use the teacher's own tokenizer (nothing to check)."""
    spec = recipe.student
    if spec.tokenizer is not None:
        return True
    if spec.init == "config":
        return False  # falls back to the teacher's tokenizer
    return spec.model != "teacher"


# ----------------------------------------------------------------------------------------------------------
# Training-time modules


def make_student_module(student: Any, plan: IntermediatePlan) -> Any:
    """The student wrapped with its width projection, as one module the Trainer optimises (and DDP syncs)."""
    import torch

    class StudentWithProjection(torch.nn.Module):
        """Runs the student and projects the mapped hidden states to the teacher's width.

        Only `student` is saved at the end; `projection` exists to make widths comparable during training.
        Keeping the projection inside the module the Trainer wraps means DDP averages its gradients too.
        """

        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.config = student.config
            self.projection = (
                torch.nn.Linear(plan.student_width, plan.teacher_width)
                if plan.projects
                else torch.nn.Identity()
            )

        def forward(self, output_intermediates: bool = False, **inputs: Any) -> dict[str, Any]:
            if not output_intermediates:
                return self.student(**inputs)
            out = self.student(
                **inputs, output_hidden_states=plan.needs_hidden, output_attentions=plan.needs_attention
            )
            projected = (
                tuple(self.projection(out.hidden_states[s]) for s, _ in plan.hidden_pairs)
                if plan.needs_hidden
                else ()
            )
            return {"logits": out.logits, "projected_hidden": projected, "attentions": out.attentions}

    return StudentWithProjection()


def prepare_for_attention_transfer(model: Any) -> None:
    """Eager attention (SDPA does not return the probabilities) and no dropout on the attention
    probabilities: dropped-out rows no longer sum to 1, which would make the KL meaningless."""
    import torch

    if hasattr(model, "set_attn_implementation"):
        # Legacy attention classes cannot switch, but fall back to eager when asked for the probabilities.
        with contextlib.suppress(ValueError, AttributeError, NotImplementedError):
            model.set_attn_implementation("eager")
    for module in model.modules():
        if "SelfAttention" in type(module).__name__ and isinstance(
            getattr(module, "dropout", None), torch.nn.Dropout
        ):
            module.dropout.p = 0.0
        if hasattr(module, "dropout_prob") and "SelfAttention" in type(module).__name__:
            module.dropout_prob = 0.0


def intermediate_losses(
    student_out: dict[str, Any], teacher_out: Any, attention_mask: torch.Tensor, plan: IntermediatePlan
) -> dict[str, torch.Tensor]:
    """The hidden-state and attention losses of one batch, each averaged over its layer pairs.

    The teacher's tensors come from inference mode; `clone()` turns them into ordinary tensors that autograd
    may save for the backward pass (inference tensors cannot be saved).
    """
    from edgekd.stages.distill.losses import attention_kl, hidden_state_mse

    parts: dict[str, torch.Tensor] = {}
    if plan.needs_hidden:
        terms = [
            hidden_state_mse(projected, teacher_out.hidden_states[t].clone(), attention_mask)
            for projected, (_, t) in zip(student_out["projected_hidden"], plan.hidden_pairs, strict=True)
        ]
        parts["hidden"] = sum(terms[1:], terms[0]) / len(terms)
    if plan.needs_attention:
        terms = [
            attention_kl(student_out["attentions"][s], teacher_out.attentions[t].clone(), attention_mask)
            for s, t in plan.attention_pairs
        ]
        parts["attention"] = sum(terms[1:], terms[0]) / len(terms)
    return parts
