"""Teacher stage: a classifier for the dataset's labels, fine-tuned here when it is not one yet.

In:  recipe.teacher (folder, Hub id, or architecture config) + the data.
Out: model/ (Hugging Face folder with tokenizer), log_history.json, stage.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgekd.data import Splits, load_splits
from edgekd.distributed import barrier, is_main_process, world_size
from edgekd.errors import DataError
from edgekd.models import build_from_config, load_classifier, model_labels, resolve_tokenizer
from edgekd.recipe import Recipe
from edgekd.stage import CHECKPOINTS_FOLDER, StageContext, StageResult, fingerprint_path
from edgekd.training import (
    accuracy_metric,
    choose_precision,
    finite_loss_trainer_class,
    last_checkpoint,
    save_log_history,
    save_model_then_drop_checkpoints,
    seed_everything,
    tokenize,
    training_arguments,
)


class TeacherStage:
    name = "teacher"
    folder = "teacher"
    needs: tuple[str, ...] = ()
    distributed = True  # every torchrun process fine-tunes (DDP); rank 0 writes

    def params(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "data_files": fingerprint_path(recipe.data.path),
            "teacher": recipe.teacher.model_dump(mode="json"),
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
        "world_size": world_size(),
    }
