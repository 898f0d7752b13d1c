"""Training the student: the distillation `Trainer` (its loss: CE on labels + KD on the cached teacher logits,
plus intermediate losses when asked), the datasets it reads, and one run or a search of runs.

Imports torch and transformers at module level: the distill stage imports it only when it trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from edgekd.data import Splits
from edgekd.distributed import barrier, is_distributed, world_size
from edgekd.errors import StageError
from edgekd.models import (
    load_classifier,
    load_tokenizer,
)
from edgekd.progress import show_training_progress
from edgekd.recipe.schema import DistillSpec, Recipe
from edgekd.stages.base import StageContext
from edgekd.stages.distill.intermediate import (
    IntermediatePlan,
    intermediate_losses,
    make_student_module,
    prepare_for_attention_transfer,
    teacher_ids_for_student_tokens,
)
from edgekd.stages.distill.losses import distillation_loss
from edgekd.stages.distill.structured_prune import PrunePlan
from edgekd.stages.runner import (
    last_checkpoint,
)
from edgekd.training import (
    accuracy_metric,
    tokenize,
    training_arguments,
)

# ----------------------------------------------------------------------------------------------------------
# Training data


@dataclass
class DistillData:
    """Tokenized training rows (labelled, then unlabelled with label -100) and validation rows, each with the
    teacher's logits; plus the teacher's own token ids when they differ from the student's."""

    train: Any
    validation: Any
    labelled_rows: int
    unlabeled_rows: int
    teacher_validation_accuracy: float
    teacher_pad_id: int | None = None


def distill_data(
    splits: Splits,
    unlabeled: list[str],
    logits: dict[str, Any],
    tokenizer: Any,
    teacher_dir: Path,
    plan: IntermediatePlan | None,
    max_length: int,
    augmented: list[str] | None = None,
) -> DistillData:
    """Tokenize once (every search trial reuses it) and attach the cached teacher outputs.

    Rows without a label (unlabelled text, then augmented text) follow the labelled ones with label -100.
    """
    from datasets import Dataset, concatenate_datasets

    train_rows = splits.dataset("train")
    train_logits = logits["train"]
    augmented = augmented or []
    for split, extra_texts in (("unlabeled", unlabeled), ("augmented", augmented)):
        if extra_texts:
            extra = Dataset.from_dict({"text": extra_texts, "label": [-100] * len(extra_texts)})
            train_rows = concatenate_datasets([train_rows, extra])
            train_logits = np.concatenate([train_logits, logits[split]])
    teacher_ids, teacher_pad_id = None, None
    if plan is not None:
        teacher_tokenizer = load_tokenizer(str(teacher_dir))
        texts = splits.texts("train") + unlabeled + augmented
        teacher_ids = teacher_ids_for_student_tokens(teacher_tokenizer, tokenizer, texts, max_length, "train")
        teacher_pad_id = teacher_tokenizer.pad_token_id
    train = tokenize(train_rows, tokenizer, max_length)
    train = train.add_column("teacher_logits", [row.tolist() for row in train_logits])
    if teacher_ids is not None:
        train = train.add_column("teacher_input_ids", teacher_ids)
    validation = tokenize(splits.dataset("validation"), tokenizer, max_length)
    validation = validation.add_column("teacher_logits", [row.tolist() for row in logits["validation"]])
    teacher_val_acc = float(
        (logits["validation"].argmax(-1) == np.array(splits.label_ids("validation"))).mean()
    )
    return DistillData(
        train=train,
        validation=validation,
        labelled_rows=len(splits.train),
        unlabeled_rows=len(unlabeled),
        teacher_validation_accuracy=teacher_val_acc,
        teacher_pad_id=teacher_pad_id,
    )


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainJob:
    """What every training run of this stage shares (one run, or one per search trial)."""

    recipe: Recipe
    data: DistillData
    plan: IntermediatePlan | None
    teacher_dir: Path
    precision: str
    ctx: StageContext
    prune: PrunePlan | None = None  # applied to every fresh student (search trials build their own)


@dataclass
class TrainedStudent:
    model: Any
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]]


def train_student(
    student: Any,
    tokenizer: Any,
    spec: DistillSpec,
    job: TrainJob,
    checkpoints: Path,
    callbacks: list[Any] | None = None,
    resume: bool = True,
) -> TrainedStudent:
    """Distil into `student` with `spec`'s settings; keep the checkpoint with the best validation accuracy.

    Args:
        student: The student classifier (trained in place).
        tokenizer: The student's tokenizer (pads the batches).
        spec: Distillation settings (the recipe's, or a search trial's variant of them).
        job: Data, intermediate-loss plan, precision and context shared by every run of the stage.
        checkpoints: Trainer checkpoint folder; the caller removes it once the trained model is saved.
        callbacks: Extra Trainer callbacks (the search's pruning callback).
        resume: Continue from a checkpoint an interrupted run left in `checkpoints`.
    """
    data, plan = job.data, job.plan
    args = training_arguments(
        checkpoints,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_ratio=spec.warmup_ratio,
        max_steps=spec.max_steps,
        seed=spec.seed,
        precision=job.precision,
        n_train=len(data.train),
    )
    args.remove_unused_columns = False  # keep teacher_logits for compute_loss
    args.label_names = ["labels"]  # the Trainer cannot infer it from the projection wrapper's forward()
    model = student
    teacher = None
    if plan is not None:
        model = make_student_module(student, plan)
        teacher = load_classifier(str(job.teacher_dir)).eval().to(args.device)
        if plan.needs_attention:
            prepare_for_attention_transfer(student)
            prepare_for_attention_transfer(teacher)
    trainer = make_distill_trainer(
        model, tokenizer, job.data, args, spec.alpha, spec.temperature, plan, teacher, callbacks or []
    )
    job.ctx.log(
        f"distilling into the student on {len(data.train)} rows ({job.precision}, alpha {spec.alpha:.3g}, "
        f"T {spec.temperature:.3g}, lr {spec.learning_rate:.3g}, {spec.epochs:g} epochs"
        + (f", {world_size()} processes" if is_distributed() else "")
        + ")"
    )
    t0 = time.perf_counter()
    last = last_checkpoint(checkpoints) if resume else None
    if last:
        job.ctx.log(f"resuming training from {Path(last).name}")
    output = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - t0
    final = trainer.evaluate()
    barrier()  # every rank has loaded the best checkpoint before rank 0 deletes them (once the model is saved)
    wrapped: Any = trainer.model  # the student, wrapped with its projections when intermediate losses are on
    trained = wrapped.student if plan is not None else wrapped
    metrics: dict[str, Any] = {
        "precision": job.precision,
        "train_rows": data.labelled_rows,
        "unlabeled_rows": data.unlabeled_rows,
        "validation_accuracy": final["eval_accuracy"],
        "teacher_validation_accuracy": data.teacher_validation_accuracy,
        "train_seconds": round(seconds, 1),
        "train_samples_per_s": round(output.metrics.get("train_samples_per_second", 0.0), 2),
        "epochs_run": round(trainer.state.epoch or 0.0, 3),
        "world_size": world_size(),
    }
    if plan is not None:
        metrics["intermediate"] = intermediate_metrics(plan, trainer.teacher_seconds, seconds)
    return TrainedStudent(trained.eval(), metrics, list(trainer.state.log_history))


def intermediate_metrics(
    plan: IntermediatePlan, teacher_seconds: float, train_seconds: float
) -> dict[str, Any]:
    """What the intermediate losses were and what running the teacher on every batch cost."""
    return {
        "hidden_weight": plan.hidden_weight,
        "hidden_pairs": [list(p) for p in plan.hidden_pairs],
        "attention_weight": plan.attention_weight,
        "attention_pairs": [list(p) for p in plan.attention_pairs],
        "projection": plan.projects,
        "teacher_forward_seconds": round(teacher_seconds, 2),
        "teacher_forward_share": round(teacher_seconds / train_seconds, 3) if train_seconds else None,
    }


class DistillTrainer(Trainer):
    """A `Trainer` whose loss is the distillation loss; its parts (CE, KD, hidden, attention) are logged beside
    the total. With an intermediate-loss `plan`, the teacher runs on every training batch (its per-token outputs
    are too large to cache)."""

    def __init__(
        self,
        *args: Any,
        alpha: float,
        temperature: float,
        plan: IntermediatePlan | None = None,
        teacher: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature, self.plan, self.teacher = alpha, temperature, plan, teacher
        show_training_progress(self, "student distillation")
        # Our loss is a per-batch mean, so let the Trainer do gradient-accumulation scaling itself
        # instead of expecting a sum divided by `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        self._parts: dict[str, list[float]] = {"ce": [], "kd": [], "hidden": [], "attention": []}
        self.teacher_seconds = 0.0

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        plan = self.plan
        targets = inputs.pop("teacher_logits")
        labels = inputs.pop("labels", None)
        teacher_ids = inputs.pop("teacher_input_ids", None)
        if plan is not None and model.training:
            outputs = model(**inputs, output_intermediates=True)
            teacher_out = self.teacher_forward(teacher_ids, inputs)
            logits = outputs["logits"]
            extra = intermediate_losses(outputs, teacher_out, inputs["attention_mask"], plan)
        else:
            outputs = model(**inputs)
            logits = outputs.logits
            extra = {}
        loss = distillation_loss(logits, targets, labels, self.alpha, self.temperature)
        total = loss.total
        if plan is not None and extra:
            total = total + plan.hidden_weight * extra.get("hidden", 0.0)
            total = total + plan.attention_weight * extra.get("attention", 0.0)
        if not torch.isfinite(total):
            raise StageError(
                f"the distillation loss became {total.item()} at training step {self.state.global_step + 1}",
                hint="lower distill.learning_rate or use precision: fp32",
            )
        if model.training:
            self._parts["ce"].append(loss.ce.item())
            self._parts["kd"].append(loss.kd.item())
            for name, value in extra.items():
                self._parts[name].append(value.item())
        return (total, outputs) if return_outputs else total

    def teacher_forward(self, teacher_ids: Any, inputs: dict[str, Any]) -> Any:
        """The teacher's hidden states / attentions for this batch, timed (they cannot be cached)."""
        plan = self.plan
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.teacher(
                input_ids=teacher_ids if teacher_ids is not None else inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                output_hidden_states=plan is not None and plan.needs_hidden,
                output_attentions=plan is not None and plan.needs_attention,
            )
        self.teacher_seconds += time.perf_counter() - t0
        return out

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            for part, values in self._parts.items():
                if values:
                    logs[f"{part}_loss"] = round(sum(values) / len(values), 6)
                values.clear()
        super().log(logs, *args, **kwargs)


def make_distill_trainer(
    model: Any,
    tokenizer: Any,
    data: DistillData,
    args: Any,
    alpha: float,
    temperature: float,
    plan: IntermediatePlan | None = None,
    teacher: Any = None,
    callbacks: list[Any] | None = None,
) -> DistillTrainer:
    return DistillTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=TeacherLogitsCollator(tokenizer, data.teacher_pad_id),
        compute_metrics=accuracy_metric,
        callbacks=callbacks or [],
        alpha=alpha,
        temperature=temperature,
        plan=plan,
        teacher=teacher,
    )


class TeacherLogitsCollator:
    """Dynamic padding for the token fields; teacher logits are stacked as a float tensor, and the teacher's
    own token ids (when its vocabulary differs) are padded like the student's."""

    def __init__(self, tokenizer: Any, teacher_pad_id: int | None = None) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)
        self.teacher_pad_id = teacher_pad_id if teacher_pad_id is not None else 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        targets = torch.tensor([f.pop("teacher_logits") for f in features], dtype=torch.float32)
        teacher_ids = (
            [f.pop("teacher_input_ids") for f in features] if "teacher_input_ids" in features[0] else None
        )
        for f in features:
            f.pop("length", None)
        batch = self.pad(features)
        batch["teacher_logits"] = targets
        if teacher_ids is not None:
            width = batch["input_ids"].shape[1]
            batch["teacher_input_ids"] = torch.tensor(
                [ids + [self.teacher_pad_id] * (width - len(ids)) for ids in teacher_ids], dtype=torch.long
            )
        return batch
