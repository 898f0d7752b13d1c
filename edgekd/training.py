"""What the teacher and distill stages share: precision choice, tokenization, Trainer arguments, metrics."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import StageError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, TrainingArguments


def choose_precision(setting: str) -> str:
    """`auto` means bf16 autocast where the CPU has native bf16 (AVX-512 BF16 or AMX): about 2x faster training
    on such CPUs; elsewhere bf16 is emulated and slower than fp32."""
    if setting != "auto":
        return setting
    import torch

    from edgekd.bench.envinfo import bf16_native

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if bf16_native() else "fp32"


def tokenize(ds: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Tokenize without padding: the collator pads per batch (dynamic padding), and `length` lets the sampler
    group similar lengths so little compute goes to padding."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    return ds.map(encode, batched=True, remove_columns=["text"], desc="tokenizing")


def training_arguments(
    out_dir: Path,
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    max_steps: int | None,
    seed: int,
    precision: str,
    n_train: int,
    evals_per_epoch: int = 1,
) -> TrainingArguments:
    """Trainer arguments shared by fine-tuning and distillation: evaluate and save a few times per epoch,
    keep the best checkpoint by validation accuracy, group batches by length."""
    from transformers import TrainingArguments

    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    eval_steps = max(1, steps_per_epoch // evals_per_epoch)
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        max_steps=max_steps or -1,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(64, batch_size),
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=max(1, min(50, eval_steps // 2)),
        group_by_length=True,
        length_column_name="length",
        bf16=precision == "bf16",
        use_cpu=not _has_cuda(),
        # Multi-process CPU runs (torchrun) use gloo; GPUs get NCCL from the Trainer. Single-process runs must
        # not name a backend: accelerate would then expect a process group.
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_cuda() else None,
        seed=seed,
        data_seed=seed,
        report_to=[],
        save_safetensors=True,
        dataloader_num_workers=0,
        disable_tqdm=True,  # edgekd.progress shows training instead (labelled, to stderr)
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def accuracy_metric(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def save_log_history(log_history: list[dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps(log_history, indent=1) + "\n")


def save_model_then_drop_checkpoints(model: Any, tokenizer: Any, model_dir: Path, checkpoints: Path) -> None:
    """Write the trained model and its tokenizer to `model_dir`, then delete the Trainer checkpoints.

    In this order, and with the model fsync'ed in between, because the checkpoints are the only other copy of
    hours of training: a run killed while the model is written (seconds for a 400 MB teacher) resumes from the
    last checkpoint instead of training again from the start.
    """
    from edgekd.stages.runner import sync_tree

    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    sync_tree(model_dir)
    remove_checkpoints(checkpoints)


def remove_checkpoints(checkpoints: Path) -> None:
    """Delete a stage's Trainer checkpoints once its final model is safely on disk."""
    shutil.rmtree(checkpoints, ignore_errors=True)


def check_finite_loss(loss: Any, step: int, what: str, hint: str) -> None:
    """Stop training at the first NaN or infinite loss, naming the step, instead of training on garbage.

    Raises:
        StageError: the loss is not finite.
    """
    value = float(loss.detach().float().item())
    if not math.isfinite(value):
        raise StageError(f"the {what} loss became {value} at training step {step}", hint=hint)


def finite_loss_trainer_class(what: str, hint: str) -> Any:
    """A `transformers.Trainer` subclass whose loss is checked with `check_finite_loss` at every step.

    Args:
        what: Names the loss in the error, e.g. "fine-tuning".
        hint: What to change when the loss is not finite.
    """
    from transformers import Trainer

    from edgekd.progress import show_training_progress

    class FiniteLossTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            show_training_progress(self, f"teacher {what}")

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            check_finite_loss(result[0] if return_outputs else result, self.state.global_step + 1, what, hint)
            return result

    return FiniteLossTrainer


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: the Trainer seeds itself, but models are built before it exists."""
    from transformers import set_seed

    set_seed(seed)
