"""Distillation throughput: edgekd's distill stage against the naive loop of the AG News seed article.

    .venv/bin/python benchmarks/distill_throughput.py                # real assets when present, else tiny models
    .venv/bin/python benchmarks/distill_throughput.py --tiny --rows 400
    .venv/bin/python benchmarks/distill_throughput.py --teacher runs/ag_news/teacher/model \
        --student models/minilm-l6 --out benchmarks/results/distill_throughput_mpnet.json

Both sides train the same student (the teacher's layers 1, 3, 5, layer 1 for the tiny fallback, or with
--student a pretrained checkpoint with its own tokenizer, as MPNet-base -> MiniLM-L6 in the AG News recipe) from
the same fine-tuned teacher on the same rows, for the same epochs, batch size, learning-rate schedule and loss, fp32,
and both evaluate on the validation rows after every epoch:

* edgekd: the distill stage as `edgekd compress` runs it, starting with an empty cache: one batched teacher
  pass over the data (cached logits), then the Trainer with dynamic padding and length-grouped batches.
* naive: the seed's loop: every batch padded to max_length, the teacher run on every batch of every epoch.

Effective throughput = training examples x epochs / wall seconds (cache build, tokenization and evaluation
included). One run each, on whatever else this shared machine is doing: treat the ratio, not the absolute
numbers, as the result. Writes benchmarks/results/distill_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "distill_throughput.json"
REAL_TEACHER = REPO / "runs" / "quickstart" / "teacher" / "model"
MINILM = REPO / "models" / "minilm-l6"
AG_NEWS = REPO.parent / "shared" / "data" / "ag_news"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=600, help="training rows")
    parser.add_argument("--validation-rows", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=None, help="default 64 (real) / 32 (tiny)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=None, help="default 2e-4 (real) / 3e-3 (tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the toy data")
    parser.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="a fine-tuned classifier folder (default: the quickstart's)",
    )
    parser.add_argument(
        "--student", type=Path, default=None, help="a pretrained student folder (default: teacher layers)"
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser.parse_args(argv)


def recipe_text(args: argparse.Namespace, real: bool) -> str:
    """A recipe for the edgekd side (the naive side reads the same splits and teacher)."""
    if real:
        teacher = args.teacher or (REAL_TEACHER if REAL_TEACHER.is_dir() else MINILM)
        data, layers, lr, max_length = AG_NEWS, [1, 3, 5], args.learning_rate or 2e-4, args.max_length or 64
        teacher_yaml = f"teacher: {{model: {teacher}, finetune: {{epochs: 1, learning_rate: 0.0001}}}}"
    else:
        data, layers, lr, max_length = (
            REPO / "recipes" / "data" / "toy_topics",
            [1],
            args.learning_rate or 3e-3,
            32,
        )
        max_length = args.max_length or max_length
        teacher_yaml = (
            "teacher:\n  config: {model_type: bert, num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4,"
            " intermediate_size: 128}\n  tokenizer: {vocab_size: 300}\n  finetune: {epochs: 4, learning_rate: 0.003}"
        )
    student_yaml = (
        f"student: {{init: pretrained, model: {args.student.resolve()}}}"
        if args.student
        else f"student: {{init: layers, layers: {layers}}}"
    )
    return f"""
name: distill-throughput
seed: 42
data:
  path: {data}
  max_length: {max_length}
  limits: {{train: {args.rows}, validation: {args.validation_rows}, test: 50}}
{teacher_yaml}
{student_yaml}
distill:
  epochs: {args.epochs}
  batch_size: {args.batch_size}
  learning_rate: {lr}
  precision: fp32
"""


def run_edgekd(recipe: Any, run_dir: Path) -> tuple[Path, dict[str, Any], float]:
    """The teacher stage (untimed: it only copies a ready classifier), then the timed distill stage."""
    from edgekd.stages.distill.stage import DistillStage
    from edgekd.stages.runner import run_stage
    from edgekd.stages.teacher import TeacherStage

    key, _, _ = run_stage(TeacherStage(), recipe, run_dir, {})
    t0 = time.perf_counter()
    _, record, _ = run_stage(DistillStage(), recipe, run_dir, {"teacher": key}, force=True)
    return run_dir / "teacher" / "model", record, time.perf_counter() - t0


def run_naive(recipe: Any, teacher_dir: Path) -> tuple[float, float]:
    """The seed's loop: fixed padding to max_length and a teacher forward on every step. Returns
    (wall seconds, final validation accuracy)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from edgekd.data import load_splits
    from edgekd.models import keep_layers, load_classifier, load_tokenizer
    from edgekd.stages.distill.losses import distillation_loss
    from edgekd.training import seed_everything

    spec, max_length = recipe.distill, recipe.data.max_length
    t0 = time.perf_counter()
    splits = load_splits(recipe.data, recipe.seed)
    seed_everything(spec.seed)
    teacher_tokenizer = load_tokenizer(str(teacher_dir))
    teacher = load_classifier(str(teacher_dir)).eval()
    if recipe.student.init == "pretrained":  # its own checkpoint and tokenizer, as the seed's student
        student_dir = str(recipe.student.model)
        student_tokenizer = load_tokenizer(student_dir)
        student = load_classifier(student_dir, labels=splits.labels)
    else:
        student_tokenizer = teacher_tokenizer
        student = keep_layers(
            load_classifier(str(teacher_dir), labels=splits.labels), recipe.student.layers or []
        )

    def tokenize(tokenizer: Any, texts: list[str]) -> Any:
        return tokenizer(
            texts, truncation=True, padding="max_length", max_length=max_length, return_tensors="pt"
        )

    def encode(split: str) -> Any:
        """Student ids/mask, teacher ids/mask (the same tensors when the tokenizer is shared), labels."""
        texts = splits.texts(split)
        s_enc = tokenize(student_tokenizer, texts)
        t_enc = s_enc if student_tokenizer is teacher_tokenizer else tokenize(teacher_tokenizer, texts)
        return torch.utils.data.TensorDataset(
            s_enc["input_ids"],
            s_enc["attention_mask"],
            t_enc["input_ids"],
            t_enc["attention_mask"],
            torch.tensor(splits.label_ids(split)),
        )

    train, validation = encode("train"), encode("validation")
    generator = torch.Generator().manual_seed(spec.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=spec.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(student.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    steps = math.ceil(len(train) / spec.batch_size) * int(spec.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(spec.warmup_ratio * steps), steps)
    accuracy = 0.0
    for _ in range(int(spec.epochs)):
        student.train()
        for input_ids, mask, teacher_ids, teacher_mask, labels in loader:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=teacher_ids, attention_mask=teacher_mask).logits
            logits = student(input_ids=input_ids, attention_mask=mask).logits
            loss = distillation_loss(logits, teacher_logits, labels, spec.alpha, spec.temperature).total
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # as the Trainer does
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        accuracy = evaluate(student, validation)
    return time.perf_counter() - t0, accuracy


def evaluate(model: Any, dataset: Any) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for input_ids, mask, _, _, labels in torch.utils.data.DataLoader(dataset, batch_size=64):
            correct += int(
                (model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1) == labels).sum()
            )
    return correct / len(dataset)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from edgekd.recipe.load import load_recipe

    real = not args.tiny and MINILM.is_dir() and AG_NEWS.is_dir()
    with tempfile.TemporaryDirectory(prefix="distill-throughput-") as tmp:
        recipe_path = Path(tmp) / "recipe.yaml"
        recipe_path.write_text(recipe_text(args, real))
        recipe = load_recipe(recipe_path)
        teacher_dir, record, edgekd_seconds = run_edgekd(recipe, Path(tmp) / "run")
        naive_seconds, naive_accuracy = run_naive(recipe, teacher_dir)
        rows = record["metrics"]["train_rows"]
    examples = rows * args.epochs
    result = {
        "edgekd_samples_per_s": round(examples / edgekd_seconds, 2),
        "naive_samples_per_s": round(examples / naive_seconds, 2),
        "speedup": round(naive_seconds / edgekd_seconds, 2),
        "edgekd_seconds": round(edgekd_seconds, 1),
        "naive_seconds": round(naive_seconds, 1),
        "edgekd_validation_accuracy": record["metrics"]["validation_accuracy"],
        "naive_validation_accuracy": naive_accuracy,
        "teacher_validation_accuracy": record["metrics"]["teacher_validation_accuracy"],
        "settings": {
            "assets": "real" if real else "tiny",
            "teacher": str(recipe.teacher.model or "tiny bert (config)"),
            "student": str(recipe.student.model) if recipe.student.init == "pretrained" else None,
            "student_layers": recipe.student.layers,
            "data": recipe.data.path,
            "train_rows": rows,
            "validation_rows": args.validation_rows,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": recipe.distill.learning_rate,
            "max_length": recipe.data.max_length,
            "precision": "fp32",
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "measured_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "what": "examples x epochs / wall seconds; edgekd = distill stage with an empty teacher-logit cache "
        "(dynamic padding, length-grouped batches); naive = teacher forward every step, fixed padding to "
        "max_length; both evaluate on validation after every epoch",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("edgekd_samples_per_s", "naive_samples_per_s", "speedup")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
