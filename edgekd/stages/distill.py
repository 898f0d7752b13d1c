"""Distill stage: train the student on the teacher's soft targets plus the gold labels.

In:  teacher/model (from the teacher stage), recipe.student, recipe.distill, the data.
Out: model/ (student, Hugging Face folder with tokenizer), log_history.json, stage.json.

The teacher's logits are computed once per example and cached under <run>/cache/, keyed by the teacher
stage's key and the data; every epoch (and every re-run with other distillation settings) reuses them.
Because the targets are per example, the student may use a different tokenizer from the teacher's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data import Splits, load_splits
from edgekd.errors import InputError, StageError
from edgekd.losses import distillation_loss
from edgekd.models import (
    build_from_config,
    keep_layers,
    load_classifier,
    load_tokenizer,
    resolve_tokenizer,
)
from edgekd.recipe import Recipe
from edgekd.stage import StageContext, StageResult, fingerprint_path, read_stage_json, stable_hash
from edgekd.training import (
    accuracy_metric,
    choose_precision,
    last_checkpoint,
    save_log_history,
    seed_everything,
    tokenize,
    training_arguments,
)


class DistillStage:
    name = "distill"
    folder = "distill"
    needs: tuple[str, ...] = ("teacher",)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "student": recipe.student.model_dump(mode="json"),
            "student_files": fingerprint_path(
                recipe.student.model if recipe.student.model != "teacher" else None
            ),
            "distill": recipe.distill.model_dump(mode="json"),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        splits = load_splits(recipe.data, recipe.seed)
        teacher_dir = ctx.inputs["teacher"] / "model"
        precision = choose_precision(recipe.distill.precision)
        logits = {
            split: cached_teacher_logits(teacher_dir, splits, split, recipe, ctx)
            for split in ("train", "validation")
        }
        seed_everything(recipe.distill.seed)  # before any fresh head or model is initialised
        student, tokenizer = build_student(recipe, splits, teacher_dir)
        model, metrics = train_student(student, tokenizer, splits, logits, recipe, precision, out_dir, ctx)
        model.save_pretrained(out_dir / "model", safe_serialization=True)
        tokenizer.save_pretrained(out_dir / "model")
        metrics["params"] = sum(p.numel() for p in model.parameters())
        return StageResult(metrics=metrics)


# ----------------------------------------------------------------------------------------------------------
# Student


def build_student(recipe: Recipe, splits: Splits, teacher_dir: Path) -> tuple[Any, Any]:
    """The student and its tokenizer, as `student.init` asks: pretrained, a layer subset, or a fresh config."""
    spec = recipe.student
    source = str(teacher_dir) if spec.model == "teacher" else spec.model
    if spec.init == "pretrained":
        model = load_classifier(
            source or "",
            labels=splits.labels,
            allow_pickle=spec.allow_pickle,
            trust_remote_code=spec.trust_remote_code,
        )
        tokenizer = resolve_tokenizer(spec.model_copy(update={"model": source}), splits.texts("train"))
    elif spec.init == "layers":
        full = load_classifier(
            source or "",
            labels=splits.labels,
            allow_pickle=spec.allow_pickle,
            trust_remote_code=spec.trust_remote_code,
        )
        model = keep_layers(full, spec.layers or [])
        tokenizer = resolve_tokenizer(spec.model_copy(update={"model": source}), splits.texts("train"))
    else:
        tokenizer = resolve_tokenizer(spec, splits.texts("train"), fallback=str(teacher_dir))
        model = build_from_config(spec.config or {}, splits.labels, vocab_size=len(tokenizer))
    if model.config.num_labels != len(splits.labels):
        raise InputError(f"the student has {model.config.num_labels} outputs for {len(splits.labels)} labels")
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------
# Teacher outputs


def cached_teacher_logits(
    teacher_dir: Path, splits: Splits, split: str, recipe: Recipe, ctx: StageContext
) -> Any:
    """The teacher's logits for every row of `split`, from <run>/cache/ or computed once and stored there."""
    teacher_record = read_stage_json(teacher_dir.parent) or {}
    key = stable_hash(
        {
            "teacher": teacher_record.get("key") or fingerprint_path(str(teacher_dir)),
            "texts": stable_hash(splits.texts(split)),
            "max_length": recipe.data.max_length,
        }
    )
    path = ctx.run_dir / "cache" / f"teacher_logits-{split}-{key}.npy"
    if path.is_file():
        ctx.log(f"teacher logits for {split}: cached ({path.name})")
        return np.load(path)
    t0 = time.perf_counter()
    logits = teacher_logits(teacher_dir, splits.texts(split), recipe.data.max_length, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.npy")
    np.save(tmp, logits)
    tmp.replace(path)  # a killed run never leaves a cache file that looks complete
    ctx.log(f"teacher logits for {split}: {len(logits)} rows in {time.perf_counter() - t0:.1f}s")
    return logits


def teacher_logits(teacher_dir: Path, texts: list[str], max_length: int, desc: str = "") -> Any:
    """Batched fp32 teacher inference, sorted by length so batches carry little padding."""
    import torch
    from tqdm.auto import tqdm

    model = load_classifier(str(teacher_dir)).eval()
    tokenizer = load_tokenizer(str(teacher_dir))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    batch = 64
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch), desc=f"teacher logits {desc}", unit="batch"):
            idx = order[start : start + batch]
            enc = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out[idx] = model(**enc).logits.float().numpy()
    return out


# ----------------------------------------------------------------------------------------------------------
# Training


def train_student(
    student: Any,
    tokenizer: Any,
    splits: Splits,
    logits: dict[str, Any],
    recipe: Recipe,
    precision: str,
    out_dir: Path,
    ctx: StageContext,
) -> tuple[Any, dict[str, Any]]:
    import shutil

    spec = recipe.distill
    train = tokenize(splits.dataset("train"), tokenizer, recipe.data.max_length)
    train = train.add_column("teacher_logits", [row.tolist() for row in logits["train"]])
    validation = tokenize(splits.dataset("validation"), tokenizer, recipe.data.max_length)
    validation = validation.add_column("teacher_logits", [row.tolist() for row in logits["validation"]])
    checkpoints = out_dir / "checkpoints"
    args = training_arguments(
        checkpoints,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_ratio=spec.warmup_ratio,
        max_steps=spec.max_steps,
        seed=spec.seed,
        precision=precision,
        n_train=len(train),
    )
    args.remove_unused_columns = False  # keep teacher_logits for compute_loss
    trainer = make_distill_trainer(student, tokenizer, args, train, validation, spec.alpha, spec.temperature)
    ctx.log(
        f"distilling into the student on {len(train)} rows ({precision}, alpha {spec.alpha}, T {spec.temperature})"
    )
    t0 = time.perf_counter()
    resume = last_checkpoint(checkpoints)
    if resume:
        ctx.log(f"resuming training from {Path(resume).name}")
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    final = trainer.evaluate()
    save_log_history(trainer.state.log_history, out_dir / "log_history.json")
    shutil.rmtree(checkpoints, ignore_errors=True)
    teacher_val_acc = float(
        (logits["validation"].argmax(-1) == np.array(splits.label_ids("validation"))).mean()
    )
    return trainer.model.eval(), {
        "precision": precision,
        "train_rows": len(train),
        "validation_accuracy": final["eval_accuracy"],
        "teacher_validation_accuracy": teacher_val_acc,
        "train_seconds": round(seconds, 1),
        "train_samples_per_s": round(output.metrics.get("train_samples_per_second", 0.0), 2),
        "epochs_run": round(trainer.state.epoch or 0.0, 3),
    }


def make_distill_trainer(
    model: Any, tokenizer: Any, args: Any, train: Any, validation: Any, alpha: float, temperature: float
) -> Any:
    """A `Trainer` whose loss is the distillation loss; CE and KD parts are logged beside the total."""
    import torch
    from transformers import Trainer

    collate = TeacherLogitsCollator(tokenizer)

    class DistillTrainer(Trainer):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            # Our loss is a per-batch mean, so let the Trainer do gradient-accumulation scaling itself
            # instead of expecting a sum divided by `num_items_in_batch`.
            self.model_accepts_loss_kwargs = False
            self._parts: dict[str, list[float]] = {"ce": [], "kd": []}

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            targets = inputs.pop("teacher_logits")
            labels = inputs.pop("labels", None)
            outputs = model(**inputs)
            loss = distillation_loss(outputs.logits, targets, labels, alpha, temperature)
            if not torch.isfinite(loss.total):
                raise StageError(
                    f"the distillation loss became {loss.total.item()} at step {self.state.global_step}",
                    hint="lower distill.learning_rate or use precision: fp32",
                )
            if model.training:
                self._parts["ce"].append(loss.ce.item())
                self._parts["kd"].append(loss.kd.item())
            return (loss.total, outputs) if return_outputs else loss.total

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs:
                for part, values in self._parts.items():
                    if values:
                        logs[f"{part}_loss"] = round(sum(values) / len(values), 6)
                    values.clear()
            super().log(logs, *args, **kwargs)

    return DistillTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collate,
        compute_metrics=accuracy_metric,
    )


class TeacherLogitsCollator:
    """Dynamic padding for the token fields; teacher logits are stacked as a float tensor."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        targets = torch.tensor([f.pop("teacher_logits") for f in features], dtype=torch.float32)
        for f in features:
            f.pop("length", None)
        batch = self.pad(features)
        batch["teacher_logits"] = targets
        return batch
