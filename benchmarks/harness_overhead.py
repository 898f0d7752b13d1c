"""How much does the benchmark harness add to the latency it reports? Goal: overhead_ratio <= 1.05.

    .venv/bin/python benchmarks/harness_overhead.py                       # a tiny BERT exported in a temp dir
    .venv/bin/python benchmarks/harness_overhead.py --model runs/quickstart/quantize

The harness's batch-1 p50 (the `model_ms` its worker process reports) is compared with a bare
`onnxruntime.InferenceSession.run` loop in this process, on identical pre-tokenized inputs, with one intra-op
thread each and the same session options. The two alternate in blocks (which one goes first alternates too),
so drift on this shared machine hits both alike. The whole measurement is repeated (`--repeats`) to show its
spread. Writes benchmarks/results/harness_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOY_DATA = REPO / "recipes" / "data" / "toy_topics"
RESULT = REPO / "benchmarks" / "results" / "harness_overhead.json"
TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}


def build_tiny_model(folder: Path) -> None:
    """Export a tiny random BERT classifier with a tokenizer trained on the toy data (runs in a subprocess)."""
    from optimum.exporters.onnx import main_export

    from edgekd.models import build_from_config, build_tokenizer
    from edgekd.recipe.schema import TokenizerBuild

    texts = read_texts(TOY_DATA / "train.jsonl")
    labels = (TOY_DATA / "labels.txt").read_text().split()
    tokenizer = build_tokenizer(TokenizerBuild(vocab_size=300), texts)
    model = build_from_config(TINY_BERT, labels, vocab_size=len(tokenizer))
    source = folder / "pytorch"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    main_export(str(source), output=folder / "onnx", task="text-classification", do_validation=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if not (folder / "onnx" / name).exists():
            (folder / "onnx" / name).write_bytes((source / name).read_bytes())


def read_texts(path: Path) -> list[str]:
    return [
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def bare_session(model_path: Path) -> Any:
    """The session the harness worker measures (edgekd.runtime's options), with one intra-op thread."""
    from edgekd.runtime import create_session

    return create_session(model_path, threads=1)


def pretokenize(
    folder: Path, texts: list[str], max_length: int, input_names: list[str]
) -> list[dict[str, Any]]:
    """Batch-1 feeds for every text, tokenized exactly as the harness worker (edgekd.runtime.Classifier) does."""
    from edgekd.bench.worker import OnnxBackend

    backend = OnnxBackend(folder, threads=1, max_length=max_length)
    return [{k: v for k, v in backend.encode([text]).items() if k in input_names} for text in texts]


def time_bare(session: Any, output: str, feeds: list[dict[str, Any]]) -> list[float]:
    """perf_counter_ns around each `session.run`, as bare as a loop gets."""
    times = []
    for feed in feeds:
        t0 = time.perf_counter_ns()
        session.run([output], feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def measure_once(folder: Path, texts: list[str], max_length: int, blocks: int, warmup: int) -> dict[str, Any]:
    """One repeat: harness and bare loop in alternating blocks over the same texts."""
    import numpy as np

    from edgekd.artifact import onnx_model_path
    from edgekd.bench.worker import WorkerProcess

    session = bare_session(onnx_model_path(folder))
    output = (
        "logits" if "logits" in [o.name for o in session.get_outputs()] else session.get_outputs()[0].name
    )
    feeds = pretokenize(folder, texts, max_length, [i.name for i in session.get_inputs()])
    harness_ms: list[float] = []
    bare_ms: list[float] = []
    with WorkerProcess("overhead", folder, "onnx", threads=1, max_length=max_length) as worker:
        worker.wait_ready()
        worker.request({"cmd": "warmup", "texts": texts[:warmup]})
        time_bare(session, output, feeds[:warmup])
        chunk = max(1, len(texts) // blocks)
        for block in range(blocks):
            part = slice(block * chunk, (block + 1) * chunk)
            harness_first = block % 2 == 0
            if harness_first:
                harness_ms += worker.request({"cmd": "latency", "texts": texts[part]})["model_ms"]
            bare_ms += time_bare(session, output, feeds[part])
            if not harness_first:
                harness_ms += worker.request({"cmd": "latency", "texts": texts[part]})["model_ms"]
    harness_p50, bare_p50 = float(np.median(harness_ms)), float(np.median(bare_ms))
    return {
        "harness_p50_ms": harness_p50,
        "bare_p50_ms": bare_p50,
        "overhead_ratio": harness_p50 / bare_p50,
        "n_per_side": len(harness_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="ONNX model folder (default: a tiny BERT built here)")
    parser.add_argument("--texts", type=Path, default=TOY_DATA / "test.jsonl", help="jsonl with a text field")
    parser.add_argument("--samples", type=int, default=400, help="requests per side and repeat")
    parser.add_argument("--blocks", type=int, default=8, help="alternating blocks per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="default: what edgekd.runtime reads from the folder (edgekd.json)",
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--build-tiny", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_tiny:
        build_tiny_model(args.build_tiny)
        return 0
    sys.path.insert(0, str(REPO))
    from edgekd.artifact import thread_env
    from edgekd.bench.worker import default_max_length

    # Equal budgets for both sides: this process's own native pools are capped like the worker's.
    os.environ.update(thread_env(1))

    with tempfile.TemporaryDirectory(prefix="edgekd-overhead-") as tmp:
        folder = args.model
        if folder is None:
            # Built in a subprocess so that this process never imports torch.
            subprocess.run([sys.executable, __file__, "--build-tiny", tmp], check=True, capture_output=True)
            folder = Path(tmp) / "onnx"
        max_length = args.max_length or default_max_length(folder, "onnx")
        pool = read_texts(args.texts)
        texts = [pool[i % len(pool)] for i in range(args.samples)]
        runs = [
            measure_once(folder, texts, max_length, args.blocks, args.warmup) for _ in range(args.repeats)
        ]
    ratios = [r["overhead_ratio"] for r in runs]
    result = {
        "model": str(args.model) if args.model else "tiny BERT (2 layers, hidden 64), exported here",
        "max_length": max_length,
        "threads": 1,
        "samples_per_side_per_repeat": args.samples,
        "harness_p50_ms": float(sum(r["harness_p50_ms"] for r in runs) / len(runs)),
        "bare_p50_ms": float(sum(r["bare_p50_ms"] for r in runs) / len(runs)),
        "overhead_ratio": float(sum(ratios) / len(ratios)),
        "overhead_ratio_spread": [min(ratios), max(ratios)],
        "repeats": runs,
        "goal": "overhead_ratio <= 1.05",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("harness_p50_ms", "bare_p50_ms", "overhead_ratio")}))
    print(
        f"spread of the ratio over {args.repeats} repeats: {result['overhead_ratio_spread']}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
