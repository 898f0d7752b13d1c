"""Teacher stage: a classifier for the dataset's labels, fine-tuned here when it is not one yet.

In:  recipe.teacher (folder, Hub id, or architecture config) + the data.
Out: model/ (Hugging Face folder with tokenizer), log_history.json, stage.json.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgekd.data import Splits, load_splits
from edgekd.distributed import barrier, is_main_process, world_size
from edgekd.errors import DataError, StageError
from edgekd.models import build_from_config, load_classifier, model_labels, resolve_tokenizer
from edgekd.recipe.schema import Recipe, TeacherSpec
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import CHECKPOINTS_FOLDER, fingerprint_path, last_checkpoint
from edgekd.training import (
    accuracy_metric,
    choose_precision,
    finite_loss_trainer_class,
    save_log_history,
    save_model_then_drop_checkpoints,
    seed_everything,
    tokenize,
    training_arguments,
)

# Settings of the teacher section that judge the finished teacher instead of shaping it. They stay out of the
# stage's cache key, so changing one never re-trains a teacher (hours on the real recipes).
RESULT_CHECKS = frozenset({"min_gain_over_majority_pts"})


class TeacherStage(StageBase):
    name = "teacher"
    folder = "teacher"
    needs: tuple[str, ...] = ()
    distributed = True  # every torchrun process fine-tunes (DDP); rank 0 writes

    def params(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "data_files": fingerprint_path(recipe.data.path),
            "teacher": recipe.teacher.model_dump(mode="json", exclude=set(RESULT_CHECKS)),
            "teacher_files": fingerprint_path(recipe.teacher.model),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        spec = recipe.teacher
        splits = load_splits(recipe.data, recipe.seed)
        seed_everything(recipe.seed)  # before any fresh head or model is initialised
        tokenizer = resolve_tokenizer(spec, splits.texts("train"))
        known = model_labels(spec.model, spec.trust_remote_code) if spec.model else None
        if known is not None:
            check_teacher_labels(known, splits.labels, spec.model or "")
            model = load_classifier(
                spec.model or "", allow_pickle=spec.allow_pickle, trust_remote_code=spec.trust_remote_code
            )
            metrics: dict[str, Any] = {"finetuned": False}
            ctx.log(f"teacher already classifies the {len(known)} labels: no fine-tuning")
        else:
            if spec.config is not None:
                model = build_from_config(spec.config, splits.labels, vocab_size=len(tokenizer))
            else:
                model = load_classifier(
                    spec.model or "",
                    labels=splits.labels,
                    allow_pickle=spec.allow_pickle,
                    trust_remote_code=spec.trust_remote_code,
                )
            model, metrics = finetune(model, tokenizer, splits, recipe, out_dir, ctx)
        if is_main_process():
            save_model_then_drop_checkpoints(
                model, tokenizer, out_dir / "model", out_dir / CHECKPOINTS_FOLDER
            )
        metrics["params"] = sum(p.numel() for p in model.parameters())
        return StageResult(metrics=metrics)


def check_teacher_labels(teacher_labels: list[str], data_labels: list[str], source: str) -> None:
    """A ready-made classifier must know exactly the dataset's classes, in the same id order."""
    if set(teacher_labels) != set(data_labels):
        missing = sorted(set(data_labels) - set(teacher_labels))[:5]
        extra = sorted(set(teacher_labels) - set(data_labels))[:5]
        raise DataError(
            f"the teacher {source} classifies other labels than the dataset "
            f"(dataset only: {missing}; teacher only: {extra})",
            hint="use a teacher trained on these labels, or a pretrained encoder that edgekd fine-tunes",
        )
    if teacher_labels != data_labels:
        raise DataError(
            "the teacher's label order differs from the dataset's",
            hint=f"set data.labels: {teacher_labels}",
        )


def finetune(
    model: Any, tokenizer: Any, splits: Splits, recipe: Recipe, out_dir: Path, ctx: StageContext
) -> tuple[Any, dict[str, Any]]:
    """Supervised fine-tuning with the Trainer; keeps the checkpoint with the best validation accuracy."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback

    spec = recipe.teacher.finetune
    precision = choose_precision(spec.precision)
    train = tokenize(splits.dataset("train"), tokenizer, recipe.data.max_length)
    validation = tokenize(splits.dataset("validation"), tokenizer, recipe.data.max_length)
    checkpoints = out_dir / CHECKPOINTS_FOLDER
    args = training_arguments(
        checkpoints,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_ratio=spec.warmup_ratio,
        max_steps=spec.max_steps,
        seed=recipe.seed,
        precision=precision,
        n_train=len(train),
        evals_per_epoch=spec.evals_per_epoch,
    )
    callbacks = []
    if spec.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    trainer_class = finite_loss_trainer_class(
        "fine-tuning", hint="lower teacher.finetune.learning_rate or use precision: fp32"
    )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_metric,
        callbacks=callbacks,
    )
    ctx.log(f"fine-tuning the teacher on {len(train)} rows ({precision})")
    t0 = time.perf_counter()
    resume = last_checkpoint(checkpoints)
    if resume:
        ctx.log(f"resuming training from {Path(resume).name}")
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    final = trainer.evaluate()
    barrier()  # every rank has loaded the best checkpoint before rank 0 deletes them (once the model is saved)
    if is_main_process():
        save_log_history(trainer.state.log_history, out_dir / "log_history.json")
    model = trainer.model.eval()
    return model, {
        "finetuned": True,
        "precision": precision,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "validation_carved": splits.validation_carved,
        "validation_accuracy": final["eval_accuracy"],
        "train_seconds": round(seconds, 1),
        "train_samples_per_s": round(output.metrics.get("train_samples_per_second", 0.0), 2),
        "best_checkpoint": trainer.state.best_model_checkpoint
        and Path(trainer.state.best_model_checkpoint).name,
        "epochs_run": round(trainer.state.epoch or 0.0, 3),
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        # Early stopping is the only way the Trainer ends before its planned steps (a bad loss raises).
        "early_stopped": trainer.state.global_step < trainer.state.max_steps,
        "world_size": world_size(),
    }


# ----------------------------------------------------------------------------------------------------------
# Did the teacher learn anything? Checked by the pipeline after this stage, fresh or reused from the cache.


def judge_teacher(
    spec: TeacherSpec, metrics: dict[str, Any], validation_labels: Sequence[int], log: Callable[[str], None]
) -> None:
    """Log the teacher's validation accuracy (and any early stop), then refuse a teacher that is not clearly
    better than always answering the most frequent class: distilling it would only copy chance, and the drop
    gate would still pass because it compares the student with that same teacher.

    A teacher used as-is (already a classifier) has no validation accuracy in its metrics: not checked.

    Args:
        spec: The recipe's teacher section (`min_gain_over_majority_pts`: null or 0 turns the check off).
        metrics: The teacher stage's metrics (its stage.json).
        validation_labels: The label id of every validation row, as the teacher was evaluated on them.
        log: Where the summary line goes.

    Raises:
        StageError: the teacher's validation accuracy is below what the check asks for.
    """
    accuracy = metrics.get("validation_accuracy")
    if not isinstance(accuracy, int | float) or isinstance(accuracy, bool) or not validation_labels:
        return
    majority = majority_rate(validation_labels)
    log(teacher_summary(float(accuracy), majority, metrics))
    if not spec.min_gain_over_majority_pts:
        return
    needed = required_accuracy(majority, spec.min_gain_over_majority_pts)
    # A NaN accuracy compares False, so it fails too; the epsilon keeps an exact tie from failing on rounding.
    if accuracy + 1e-9 >= needed:
        return
    raise StageError(
        f"the teacher learned nothing useful: validation accuracy {accuracy:.3f}, the majority class alone "
        f"scores {majority:.3f} (this check asks for at least {needed:.3f})",
        hint=_retrain_hint(spec, metrics),
    )


def majority_rate(label_ids: Sequence[int]) -> float:
    """The accuracy of always answering the most frequent class."""
    return max(Counter(label_ids).values()) / len(label_ids) if label_ids else 0.0


def required_accuracy(majority: float, min_gain_pts: float) -> float:
    """The majority rate plus `min_gain_pts` points, the gain capped at half the gap to 100%: at a majority
    rate of 0.97 a teacher at 0.99 is useful, though only 2 points better."""
    return majority + min(min_gain_pts / 100.0, (1.0 - majority) / 2.0)


def teacher_summary(accuracy: float, majority: float, metrics: dict[str, Any]) -> str:
    """One line: the teacher's validation accuracy against the majority class, and how its training ended."""
    line = f"teacher: validation accuracy {accuracy:.4f} (the majority class alone: {majority:.4f})"
    steps, max_steps, epochs = metrics.get("steps"), metrics.get("max_steps"), metrics.get("epochs_run")
    if metrics.get("early_stopped"):
        line += f"; early stopping ended training at step {steps} of {max_steps} (epoch {epochs})"
    elif isinstance(epochs, int | float) and epochs:
        line += f" after {epochs} epoch(s)"
    return line


def _retrain_hint(spec: TeacherSpec, metrics: dict[str, Any]) -> str:
    if metrics.get("early_stopped"):
        longer = "raise teacher.finetune.early_stopping_patience"
    elif spec.finetune.max_steps:
        longer = "raise teacher.finetune.max_steps"
    else:
        longer = "train longer (teacher.finetune.epochs)"
    return (
        f"{longer}, try another teacher.finetune.learning_rate (too high and too low both stall), check that "
        "data.label_column holds the right labels, or set teacher.min_gain_over_majority_pts: null to skip "
        "this check"
    )
