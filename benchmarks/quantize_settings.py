"""Measure INT8 settings on this CPU: accuracy and latency of weight types, reduce_range, fusions, static mode.

Why: on x86 CPUs without VNNI, ONNX Runtime's u8s8 dynamic kernel accumulates pairs of products in int16 with
saturation, so qint8 weights can lose accuracy; quint8 weights (u8u8 kernel) or reduce_range (7-bit weights)
avoid it at some cost. `weight_type: auto` in edgekd/stages/quantize/stage.py is chosen from these numbers.

Usage (each RUN is a run folder with export/ and recipe.resolved.yaml, e.g. runs/quickstart):

    .venv/bin/python benchmarks/quantize_settings.py runs/quickstart /tmp/smoke-run \
        --out benchmarks/results/quantize_settings.json

Per run and setting it records validation accuracy (and the fp32 ONNX's), agreement with the fp32 argmax, logit
MSE and max |diff| against fp32, and the median single-thread batch-1 latency over validation texts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bench.envinfo import cpu_flags, cpu_model
from edgekd.data import load_splits
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import QuantizeSpec
from edgekd.stages.export import onnx_file_bytes
from edgekd.stages.quantize.ort import fuse_graph, make_quantizer, quantization_settings
from edgekd.stages.quantize.search import Evaluation, OnnxEvaluator, batch1_latency_ms

SETTINGS: list[dict[str, Any]] = [
    {"weight_type": "qint8", "reduce_range": False},
    {"weight_type": "qint8", "reduce_range": True},
    {"weight_type": "quint8", "reduce_range": False},
    {"weight_type": "quint8", "reduce_range": True},
    {"weight_type": "qint8", "reduce_range": False, "per_channel": True},
    {"weight_type": "quint8", "reduce_range": False, "optimize": "extended"},
    {"weight_type": "qint8", "reduce_range": False, "optimize": "extended"},
    {"weight_type": "qint8", "reduce_range": False, "mode": "static", "calibration_samples": 64},
]


def measure_run(run_dir: Path, validation_limit: int, latency_texts: int, rounds: int) -> dict[str, Any]:
    """Every setting in SETTINGS on one run's exported fp32 model.

    Latency is timed in `rounds` interleaved rounds over all models (fp32 first), and the median of the
    per-round medians is reported: on a shared machine, load that comes and goes then hits every setting alike.
    """
    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    export_dir = run_dir / "export"
    fp32_path = export_dir / "model.onnx"
    splits = load_splits(recipe.data, recipe.seed)
    texts = splits.texts("validation")[:validation_limit]
    labels = splits.label_ids("validation")[:validation_limit]
    max_length = recipe.data.max_length
    evaluate = OnnxEvaluator(export_dir, texts, labels, max_length)
    reference = evaluate(fp32_path)
    rows: list[dict[str, Any]] = [
        {"setting": "fp32", "accuracy": reference.accuracy, "bytes": onnx_file_bytes(fp32_path)}
    ]
    paths = [fp32_path]
    work = Path(tempfile.mkdtemp(prefix="edgekd-qsettings-"))
    try:
        fused = fuse_graph(fp32_path, export_dir, "extended", work / "fused.onnx")
        for number, overrides in enumerate(SETTINGS):
            spec = QuantizeSpec(**overrides)
            settings = quantization_settings(spec, [])
            calibration = splits.texts("train")[: spec.calibration_samples] if spec.mode == "static" else []
            quantize = make_quantizer(spec, settings, export_dir, calibration, max_length, 0)
            out = work / f"q{number}" / "model.onnx"
            out.parent.mkdir()
            quantize(fused if spec.optimize == "extended" else fp32_path, [], out)
            rows.append(
                {"setting": overrides, **compare(reference, evaluate(out)), "bytes": onnx_file_bytes(out)}
            )
            paths.append(out)
        timings: list[list[float]] = [[] for _ in paths]
        for _ in range(rounds):
            for index, path in enumerate(paths):
                timings[index].append(batch1_latency_ms(path, export_dir, texts[:latency_texts], max_length))
        for row, times in zip(rows, timings, strict=True):
            row["p50_ms"] = round(statistics.median(times), 3)
            row["p50_ms_per_round"] = [round(t, 3) for t in times]
            print(run_dir.name, row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "run": str(run_dir),
        "model": json.loads((export_dir / "config.json").read_text()).get("model_type"),
        "layers_hidden": _shape(export_dir),
        "validation_samples": len(texts),
        "latency_texts": latency_texts,
        "latency_rounds": rounds,
        "results": rows,
    }


def compare(reference: Evaluation, result: Evaluation) -> dict[str, Any]:
    """Accuracy and how far the INT8 logits are from the fp32 ones."""
    diff = result.logits.astype(np.float64) - reference.logits
    return {
        "accuracy": result.accuracy,
        "drop_pts": round((reference.accuracy - result.accuracy) * 100, 3),
        "argmax_agreement": float(np.mean(result.logits.argmax(-1) == reference.logits.argmax(-1))),
        "logit_mse": float(np.mean(diff**2)),
        "logit_max_abs_diff": float(np.abs(diff).max()),
    }


def _shape(export_dir: Path) -> str:
    config = json.loads((export_dir / "config.json").read_text())
    return f"{config.get('num_hidden_layers')}x{config.get('hidden_size')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run folders with export/ and recipe.resolved.yaml"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quantize_settings.json"))
    parser.add_argument("--validation-limit", type=int, default=500)
    parser.add_argument("--latency-texts", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    flags = cpu_flags()
    result = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": flags,
        "threads": 1,
        "command": "benchmarks/quantize_settings.py " + " ".join(str(run) for run in args.runs),
        "load_average_before": os.getloadavg(),
        "runs": [
            measure_run(run, args.validation_limit, args.latency_texts, args.rounds) for run in args.runs
        ],
    }
    result["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
