"""What the teacher and distill stages share: precision choice, tokenization, Trainer arguments, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, TrainingArguments


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_precision(setting: str) -> str:
    """`auto` means bf16 autocast where the CPU has native bf16 (AVX-512 BF16 or AMX): about 2x faster training
    on such CPUs; elsewhere bf16 is emulated and slower than fp32."""
    if setting != "auto":
        return setting
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


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
        seed=seed,
        data_seed=seed,
        report_to=[],
        save_safetensors=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
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


def last_checkpoint(folder: Path) -> str | None:
    """The newest Trainer checkpoint in `folder`, if an interrupted run left one (to resume from it)."""
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: the Trainer seeds itself, but models are built before it exists."""
    from transformers import set_seed

    set_seed(seed)
