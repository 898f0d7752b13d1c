"""Teacher labelling throughput: rows/s of each `distill.labelling` backend on the same AG News texts.

    .venv/bin/python benchmarks/teacher_labelling.py --texts 256            # MPNet-base, AG News
    .venv/bin/python benchmarks/teacher_labelling.py --tiny --texts 200     # tiny random model, toy data

Every backend labels the same N texts with the code the distill stage runs (edgekd/stages/distill/labelling.py: length-sorted
batches of 64 with dynamic padding), after one warm-up batch. The first row, `torch-fp32-padded`, is the path the
distill stage used before any of that (the "before" figure of issue 17): PyTorch fp32, batches of 32 in data
order, each padded to max_length; every `speedup_vs_before` is against it. The same thread budget for all: torch and ONNX Runtime both get
every usable core. One-off costs (ONNX export, INT8 quantization) are timed apart from labelling, since the
distill stage pays them once per teacher.

The teacher is MPNet-base with a *random* classification head (no fine-tuned teacher is needed to time it), so
the agreement figures written beside the speeds only show that a backend computes the same function; whether
it labels like the teacher is measured by the distill stage on the validation split of a fine-tuned teacher.

The machine may be shared (a training run, other sessions): each row records how many cores other processes
kept busy while it ran (`other_processes_cores`); compare rows of one run, not runs. Writes
benchmarks/results/teacher_labelling.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgekd.bench.envinfo import cpu_snapshot, environment, other_processes_cores, usable_cores  # noqa: E402
from edgekd.stages.distill import labelling  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "teacher_labelling.json"
MPNET = REPO / "models" / "mpnet-base"
TOY = REPO / "recipes" / "data" / "toy_topics"
AG_NEWS_CLASSES = 4
WARMUP_TEXTS = 64


def display_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (the results file does not name the checkout),
    else as given: a teacher folder elsewhere (a worktree run reads the main checkout's models/) is fine."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=256, help="texts to label per backend")
    parser.add_argument("--max-length", type=int, default=64, help="the ag_news recipe's data.max_length")
    parser.add_argument(
        "--teacher", type=Path, default=MPNET, help="an encoder folder (a random head is added)"
    )
    parser.add_argument("--data", type=Path, default=None, help="a train.jsonl[.gz] (default: AG News)")
    parser.add_argument("--backends", nargs="+", default=list(labelling.BACKENDS), choices=labelling.BACKENDS)
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT on the toy data (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser.parse_args(argv)


def ag_news_train() -> Path:
    root = os.environ.get("EDGEKD_DATA_ROOT")
    candidates = [Path(root) / "ag_news"] if root else []
    candidates.append(REPO.parent / "shared" / "data" / "ag_news")
    for folder in candidates:
        for name in ("train.jsonl.gz", "train.jsonl"):
            if (folder / name).is_file():
                return folder / name
    sys.exit(f"no AG News train.jsonl[.gz] under {', '.join(map(str, candidates))}: pass --data")


def read_texts(path: Path, n: int, seed: int) -> list[str]:
    """`n` texts drawn with `seed` from a JSON-lines file with a `text` field."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def classifier_folder(args: argparse.Namespace, folder: Path) -> Path:
    """A sequence classifier (random head, seeded) with its tokenizer, saved where the backends can load it."""
    import torch

    torch.manual_seed(args.seed)
    if args.tiny:
        from edgekd.models import build_from_config, build_tokenizer
        from edgekd.recipe.schema import TokenizerBuild

        texts = read_texts(TOY / "train.jsonl", 10_000, args.seed)
        tokenizer = build_tokenizer(TokenizerBuild(vocab_size=200), texts)
        config = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2}
        model = build_from_config(
            {**config, "intermediate_size": 64, "max_position_embeddings": 64},
            [str(i) for i in range(AG_NEWS_CLASSES)],
            vocab_size=len(tokenizer),
        )
    else:
        from edgekd.models import load_classifier, load_tokenizer

        labels = [str(i) for i in range(AG_NEWS_CLASSES)]
        model = load_classifier(str(args.teacher), labels=labels)
        tokenizer = load_tokenizer(str(args.teacher))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BEFORE = "torch-fp32-padded"
BEFORE_BATCH_SIZE = 32


def padded_torch_backend(setup: labelling.BackendSetup) -> Any:
    """The teacher-logit pass as it was before length sorting and backends: batches of 32 in data order, each
    padded to max_length, PyTorch fp32."""
    import numpy as np
    import torch

    from edgekd.models import load_classifier, load_tokenizer

    model = load_classifier(str(setup.teacher_dir)).eval()
    tokenizer = load_tokenizer(str(setup.teacher_dir))

    def logits(texts: list[str], desc: str) -> Any:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), BEFORE_BATCH_SIZE):
                enc = tokenizer(
                    texts[start : start + BEFORE_BATCH_SIZE],
                    truncation=True,
                    max_length=setup.max_length,
                    padding="max_length",
                    return_tensors="pt",
                )
                out.append(model(**enc).logits.float().numpy())
        return np.concatenate(out)

    return logits


def measure(backend: str, setup: labelling.BackendSetup, texts: list[str]) -> tuple[dict[str, Any], Any]:
    """Build the backend (timed as setup), warm it up, then time labelling every text once."""
    t0 = time.perf_counter_ns()
    fn = padded_torch_backend(setup) if backend == BEFORE else labelling.FACTORIES[backend](setup)
    setup_s = (time.perf_counter_ns() - t0) / 1e9
    fn(texts[:WARMUP_TEXTS], f"{backend} warm-up")
    before = cpu_snapshot()
    t1 = time.perf_counter_ns()
    logits = fn(texts, backend)
    seconds = (time.perf_counter_ns() - t1) / 1e9
    row = {
        "backend": backend,
        "rows": len(texts),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(texts) / seconds, 2),
        "setup_seconds": round(setup_s, 2),
        "other_processes_cores": other_processes_cores(before, cpu_snapshot()),
    }
    return row, logits


def main(argv: list[str] | None = None) -> int:
    import torch

    from edgekd.errors import EdgekdError
    from edgekd.stages.export import compare_logits

    args = parse_args(argv)
    threads = usable_cores() or 1
    torch.set_num_threads(
        threads
    )  # ONNX Runtime sessions get the same count (edgekd.stages.distill.labelling)
    data = TOY / "train.jsonl" if args.tiny else (args.data or ag_news_train())
    texts = read_texts(data, args.texts, args.seed)
    backends = [BEFORE, labelling.REFERENCE] + [b for b in args.backends if b != labelling.REFERENCE]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="teacher_labelling-") as tmp:
        teacher = classifier_folder(args, Path(tmp) / "teacher")
        setup = labelling.BackendSetup(teacher, args.max_length, Path(tmp) / "cache", "benchmark")
        reference = None
        for backend in backends:
            try:
                row, logits = measure(backend, setup, texts)
            except EdgekdError as exc:  # torch-bf16 on a CPU without native bf16
                rows.append({"backend": backend, "skipped": exc.message})
                print(f"{backend}: skipped ({exc.message})", flush=True)
                continue
            if reference is None:
                reference = logits
            parity = compare_logits(reference, logits)
            row.update(
                argmax_agreement_random_head=parity.argmax_agreement,
                max_abs_diff=round(parity.max_abs_diff, 6),
            )
            rows.append(row)
            print(f"{backend}: {row['rows_per_s']} rows/s (setup {row['setup_seconds']}s)", flush=True)
    before = next((r["rows_per_s"] for r in rows if r["backend"] == BEFORE), None)
    for row in rows:
        if before and "rows_per_s" in row:
            row["speedup_vs_before"] = round(row["rows_per_s"] / before, 2)
    result = {
        "measured_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "teacher": "tiny random BERT" if args.tiny else display_path(args.teacher),
        "head": "random (seeded): agreement shows the backends compute the same function, not labelling quality",
        "data": str(data),
        "texts": len(texts),
        "max_length": args.max_length,
        "batch_size": labelling.BATCH_SIZE,
        "threads": threads,
        "contention": "see other_processes_cores per row (cores other processes kept busy while it ran)",
        "environment": environment(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
