"""INT8 latency and size of a student by encoder depth: how many layers a speed-up target leaves room for.

Why: a recipe's `min_speedup_p50` gate divides the teacher's batch-1 latency by the shipped student's. On a CPU
without VNNI each 384-wide INT8 layer costs milliseconds, so the gate fixes the student's depth before any
training; this measures that budget on this machine instead of guessing it.

Usage (MODEL is any local BERT-like *ForSequenceClassification folder, e.g. a distilled or pruned student):

    .venv/bin/python benchmarks/student_depth.py runs/ag_news/prune_vocab/model --data ../shared/data/ag_news \\
        --teacher-p50-ms 208.67 --out benchmarks/results/student_depth.json

For each depth it keeps the first N encoder layers (weights as they are: latency and size do not depend on them),
exports with edgekd's exporter, quantizes with the settings `weight_type: auto` resolves to (per-channel, or per
tensor with --per-channel off/both: on AVX2 per-channel costs latency), and measures the median single-thread
batch-1 latency over real test texts, all models in one process, interleaved over several rounds so machine noise
hits them alike. With --teacher-p50-ms (a reference measured by the benchmark
stage) it adds the speed-up each depth would give. With --ffn-keep 1 0.34 (and --heads-keep 1 0.5) each depth is also
measured with only that share of its feed-forward neurons and attention heads (`student.prune`; which units does
not matter for latency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekd.bench.envinfo import cpu_flags, cpu_model
from edgekd.data import load_splits
from edgekd.recipe.schema import DataSpec, QuantizeSpec
from edgekd.stages.distill.structured_prune import (
    PrunePlan,
    apply_plan,
    ffn_width,
    head_count,
    kept_count,
    prunable_layers,
)
from edgekd.stages.export import export_onnx, onnx_file_bytes
from edgekd.stages.quantize.ort import quantization_settings, quantize_model, resolve_weight_type
from edgekd.stages.quantize.search import batch1_latency_ms


def truncated_copy(
    model_dir: Path, depth: int, out_dir: Path, ffn_keep: float = 1.0, heads_keep: float = 1.0
) -> None:
    """Save `model_dir` with only its first `depth` encoder layers, `ffn_keep` of each layer's feed-forward
    neurons and `heads_keep` of its attention heads (tokenizer files copied alongside)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    encoder = model.base_model.encoder
    if depth > len(encoder.layer):
        raise SystemExit(f"{model_dir} has {len(encoder.layer)} layers; depth {depth} asked")
    encoder.layer = encoder.layer[:depth]
    model.config.num_hidden_layers = depth
    if ffn_keep < 1.0 or heads_keep < 1.0:
        first = prunable_layers(model)[0]
        kept = list(range(kept_count(ffn_width(first), ffn_keep)))
        heads = head_count(first)
        removed = list(range(heads - kept_count(heads, heads_keep)))
        apply_plan(
            model, PrunePlan(ffn_kept=[kept] * depth, heads_removed=dict.fromkeys(range(depth), removed))
        )
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)


def exported_depth(
    model_dir: Path, depth: int, work: Path, ffn_keep: float = 1.0, heads_keep: float = 1.0
) -> Path:
    """The fp32 ONNX folder of the first `depth` layers of `model_dir` (with the tokenizer files)."""
    name = f"{depth}-{ffn_keep:g}-{heads_keep:g}"
    truncated, exported = work / f"pt-{name}", work / f"onnx-{name}"
    truncated_copy(model_dir, depth, truncated, ffn_keep, heads_keep)
    export_onnx(truncated, exported, opset=17)
    return exported


def int8_model(exported: Path, per_channel: bool) -> Path:
    """The INT8 ONNX file of an exported folder, as `weight_type: auto` quantizes it on this CPU."""
    weight_type, _ = resolve_weight_type("auto")
    spec = QuantizeSpec(weight_type=weight_type, per_channel=per_channel)
    int8 = exported / f"model-int8{'-per-channel' if per_channel else ''}.onnx"
    quantize_model(exported / "model.onnx", int8, quantization_settings(spec, []), [])
    return int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a data folder with a test split")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--ffn-keep", type=float, nargs="+", default=[1.0], help="shares of FFN neurons kept, in (0, 1]"
    )
    parser.add_argument(
        "--heads-keep", type=float, nargs="+", default=[1.0], help="shares of attention heads kept, in (0, 1]"
    )
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-channel", choices=["on", "off", "both"], default="on")
    parser.add_argument("--teacher-p50-ms", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/student_depth.json"))
    args = parser.parse_args()
    if any(not 0 < keep <= 1 for keep in args.ffn_keep + args.heads_keep):
        parser.error("--ffn-keep and --heads-keep values must be in (0, 1]")

    texts = load_splits(DataSpec(path=str(args.data.resolve()), max_length=args.max_length)).texts("test")
    texts = texts[: args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        per_channel = {"on": [True], "off": [False], "both": [True, False]}[args.per_channel]
        shapes = [(d, f, h) for d in args.depths for f in args.ffn_keep for h in args.heads_keep]
        exported = {(d, f, h): exported_depth(args.model, d, work, f, h) for d, f, h in shapes}
        models = {(*shape, pc): int8_model(exported[shape], pc) for shape in shapes for pc in per_channel}
        timings: dict[tuple[int, float, float, bool], list[float]] = {key: [] for key in models}
        for _ in range(args.rounds):
            for key, path in models.items():
                timings[key].append(batch1_latency_ms(path, path.parent, texts, args.max_length))
        rows: list[dict[str, Any]] = []
        for (depth, keep, heads_keep, pc), path in models.items():
            p50 = statistics.median(timings[depth, keep, heads_keep, pc])
            config = json.loads((path.parent / "config.json").read_text())
            row = {
                "depth": depth,
                "ffn_keep": keep,
                "heads_keep": heads_keep,
                "pruned_heads": sum(len(h) for h in (config.get("pruned_heads") or {}).values()),
                "intermediate_size": json.loads((path.parent / "config.json").read_text())[
                    "intermediate_size"
                ],
                "per_channel": pc,
                "int8_p50_ms": round(p50, 3),
                "rounds_ms": [round(t, 3) for t in timings[depth, keep, heads_keep, pc]],
            }
            row["int8_onnx_mb"] = round(onnx_file_bytes(path) / 1e6, 2)
            if args.teacher_p50_ms:
                row["speedup_vs_teacher"] = round(args.teacher_p50_ms / p50, 1)
            rows.append(row)
    result = {
        "measured_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "model": str(args.model),
        "hidden_size": json.loads((args.model / "config.json").read_text()).get("hidden_size"),
        "texts": len(texts),
        "max_length": args.max_length,
        "threads": 1,
        "teacher_p50_ms": args.teacher_p50_ms,
        "depths": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
