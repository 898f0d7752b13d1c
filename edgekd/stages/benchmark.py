"""Benchmark stage: measure every variant the same way and judge the deployable one against the gates.

In:  teacher/model, distill/model (PyTorch folders), quantize/ (ONNX folder), the test split, recipe.benchmark
     and recipe.gates.
Out: report.json, report.md, raw/<variant>.json (per-request latencies and predictions), stage.json.

Each variant runs in a fresh worker process (edgekd.bench.worker), one after the other, with the same thread
budget, the same warm-up and the same latency texts: a seeded sample of the test split, so request lengths
follow the real distribution. A failed gate is a verdict, not an error: the stage reports `passed: false`
and the pipeline turns that into exit code 3.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import __version__
from edgekd.bench.stats import accuracy_diff_ci, bootstrap_ci, macro_f1, per_class_scores, percentiles
from edgekd.bench.worker import run_worker
from edgekd.data import load_splits
from edgekd.envinfo import environment, usable_cores
from edgekd.errors import InputError
from edgekd.recipe import Recipe
from edgekd.report import CANDIDATE, REFERENCE, evaluate_gates, write_report_md
from edgekd.size import folder_size, onnx_model_path, param_count
from edgekd.stage import StageContext, StageResult, fingerprint_path, require_file, write_json

N_BOOT = 1000
# A load average above this share of the cores means other work competed with the measurements.
BUSY_LOAD_SHARE = 0.5


@dataclass(frozen=True)
class Variant:
    """A model to measure: where it lives in the run folder and which runtime serves it."""

    name: str
    format: str
    stage: str
    subfolder: str

    def folder(self, inputs: dict[str, Path]) -> Path:
        base = inputs[self.stage]
        return base / self.subfolder if self.subfolder else base


# The first variant is the reference every other one is compared with.
VARIANTS: tuple[Variant, ...] = (
    Variant(REFERENCE, "pytorch", "teacher", "model"),
    Variant("student", "pytorch", "distill", "model"),
    Variant(CANDIDATE, "onnx", "quantize", ""),
)


class BenchmarkStage:
    name = "benchmark"
    folder = "report"
    needs: tuple[str, ...] = ("teacher", "distill", "quantize")

    def params(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "data_files": fingerprint_path(recipe.data.path),
            "benchmark": recipe.benchmark.model_dump(mode="json"),
            "gates": recipe.gates.model_dump(mode="json"),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        check_threads(recipe.benchmark.threads)
        splits = load_splits(recipe.data, recipe.seed)
        texts, gold = splits.texts("test"), splits.label_ids("test")
        latency_idx = latency_sample_indices(len(texts), recipe.benchmark.latency_samples, recipe.seed)
        # Taken before the workers start, so the load average shows what else the machine was doing.
        env = environment()
        warnings = setup_warnings(env, recipe.benchmark.threads, len(texts), recipe.benchmark.latency_samples)
        folders = {v.name: v.folder(ctx.inputs) for v in VARIANTS}
        for variant in VARIANTS:
            check_model_folder(folders[variant.name], variant.format)
            check_labels(declared_labels(folders[variant.name]), splits.labels, variant.name)
        warnings += max_length_warnings(folders[CANDIDATE], recipe.data.max_length)

        raws = measure_variants(
            folders, texts, [texts[i] for i in latency_idx], recipe, out_dir / "raw", ctx.log
        )
        variants = variant_records(folders, raws, gold, splits.labels, ctx.run_dir)
        for record in variants:
            ctx.log(
                f"  {record['name']}: accuracy {record['accuracy']:.4f}, "
                f"p50 {record['latency_ms']['p50']:.3f} ms, size {record['size_bytes'] / 1e6:.2f} MB, "
                f"speed-up {record['speedup_p50']:.2f}x"
            )
        report = build_report(recipe, env, variants, len(texts), warnings)
        write_json(out_dir / "report.json", report)
        write_report_md(report, out_dir / "report.md")
        for warning in warnings:
            ctx.log(f"  warning: {warning}")
        failed = [g["name"] for g in report["gates"] if not g["passed"]]
        return StageResult(
            metrics={"passed": report["passed"], "report": "report.json", "failed_gates": failed},
            summary="all gates passed" if not failed else f"gates failed: {', '.join(failed)}",
        )


def measure_variants(
    folders: dict[str, Path],
    texts: list[str],
    latency_texts: list[str],
    recipe: Recipe,
    raw_dir: Path,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Run every variant's worker, one after the other; each leaves its raw result in raw_dir/<name>.json."""
    spec = recipe.benchmark
    raw_dir.mkdir(parents=True, exist_ok=True)
    raws = {}
    # The inputs (the whole test split) go to a temporary file: the report folder keeps only results.
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        write_json(texts_file, {"texts": texts, "latency_texts": latency_texts})
        for i, variant in enumerate(VARIANTS, start=1):
            log(
                f"benchmark {i}/{len(VARIANTS)}: {variant.name} ({variant.format}, "
                f"{spec.threads} thread(s), {len(latency_texts)} requests)"
            )
            t0 = time.perf_counter()
            raws[variant.name] = run_worker(
                folders[variant.name],
                variant.format,
                texts_file,
                raw_dir / f"{variant.name}.json",
                threads=spec.threads,
                warmup=spec.warmup,
                batch_size=spec.batch_size,
                max_length=recipe.data.max_length,
            )
            log(f"  done in {time.perf_counter() - t0:.1f}s")
    return raws


def variant_records(
    folders: dict[str, Path],
    raws: dict[str, dict[str, Any]],
    gold: list[int],
    labels: list[str],
    run_dir: Path,
) -> list[dict[str, Any]]:
    """The report's variant list, in `VARIANTS` order, with the comparisons against the first one."""
    predictions = {name: map_predictions(raw, labels, name) for name, raw in raws.items()}
    records = []
    for variant in VARIANTS:
        folder = folders[variant.name]
        record = variant_record(variant, folder, raws[variant.name], predictions[variant.name], gold, labels)
        record["folder"] = _relative(folder, run_dir)
        records.append(record)
    add_reference_comparisons(records, predictions, gold)
    return records


def build_report(
    recipe: Recipe, env: dict[str, Any], variants: list[dict[str, Any]], n_texts: int, warnings: list[str]
) -> dict[str, Any]:
    """report.json: the contract keys (recipe, edgekd_version, environment, variants, gates, passed) and more."""
    gates = evaluate_gates(variants, recipe.gates)
    return {
        "recipe": recipe.name,
        "edgekd_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "benchmark": {
            **recipe.benchmark.model_dump(mode="json"),
            "seed": recipe.seed,
            "max_length": recipe.data.max_length,
            "test_texts": n_texts,
            "latency_definition": "batch-1 model call, ms; tokenization timed apart (tokenize_ms, e2e)",
        },
        "reference": REFERENCE,
        "candidate": CANDIDATE,
        "variants": variants,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "warnings": warnings,
    }


# ----------------------------------------------------------------------------------------------------------
# Inputs


def check_threads(threads: int) -> None:
    """Refuse a thread budget the machine cannot give: oversubscribed numbers describe no real deployment.

    Raises:
        InputError: When `threads` exceeds the cores this process may use.
    """
    known = [n for n in (os.cpu_count(), usable_cores()) if n]
    available = min(known) if known else 1
    if threads > available:
        raise InputError(
            f"benchmark.threads is {threads} but this machine gives this process {available} core(s)",
            hint=f"set benchmark.threads to at most {available}",
        )


def latency_sample_indices(n_texts: int, n_samples: int, seed: int) -> list[int]:
    """Which test texts the batch-1 requests use: a seeded sample, without replacement when there are enough.

    Raises:
        InputError: When there are no samples to draw or nothing to draw them from.
    """
    if n_samples < 1:
        raise InputError("benchmark.latency_samples must be at least 1")
    if n_texts < 1:
        raise InputError("the test split is empty: nothing to benchmark")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_texts, size=n_samples, replace=n_samples > n_texts)]


def check_model_folder(folder: Path, fmt: str) -> None:
    """Fail early, before any worker starts, when an earlier stage's model is not where it should be."""
    if fmt == "onnx":
        require_file(folder / "tokenizer.json", "the ONNX model's tokenizer")
        try:
            onnx_model_path(folder)
        except InputError as exc:
            raise InputError(exc.message, hint="re-run with --force to rebuild the run") from None
    else:
        require_file(folder / "config.json", f"the model config in {folder}")


def declared_labels(folder: Path) -> list[str]:
    """Class names in id order as a model folder declares them (edgekd.json, else config.json id2label)."""
    for name in ("edgekd.json", "config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("labels"):
            return [str(label) for label in data["labels"]]
        if data.get("id2label"):
            id2label = {int(k): v for k, v in data["id2label"].items()}
            return [str(id2label[i]) for i in sorted(id2label)]
    return []


def check_labels(model_labels: list[str], data_labels: list[str], variant: str) -> None:
    """Every class a model can predict must be a class of the dataset, or its accuracy means nothing.

    Raises:
        InputError: When the model has classes the dataset does not.
    """
    unknown = [label for label in model_labels if label not in set(data_labels)]
    if unknown:
        raise InputError(
            f"the {variant} model predicts classes the dataset does not have: {unknown[:5]}",
            hint="the model and the recipe's data must share the same labels",
        )


def setup_warnings(env: dict[str, Any], threads: int, n_texts: int, n_samples: int) -> list[str]:
    """Conditions under which the numbers deserve less trust; they go into the report."""
    warnings = []
    cores = env.get("cpu", {}).get("usable_cores") or os.cpu_count() or 1
    load = (env.get("load_average") or [0.0])[0]
    if load > BUSY_LOAD_SHARE * cores:
        warnings.append(
            f"the machine was busy at the start (load {load} on {cores} cores): latency may be inflated"
        )
    if threads == cores and cores > 1:
        warnings.append(
            f"benchmark.threads uses every core ({cores}): the OS and the harness compete with the model"
        )
    if n_samples > n_texts:
        warnings.append(
            f"latency_samples ({n_samples}) exceeds the test split ({n_texts} texts): texts were reused"
        )
    return warnings


def max_length_warnings(onnx_folder: Path, max_length: int) -> list[str]:
    """The export records its max_length; a different one here would measure another model than is shipped."""
    try:
        recorded = json.loads((onnx_folder / "edgekd.json").read_text(encoding="utf-8")).get("max_length")
    except (OSError, ValueError, AttributeError):
        return [f"{onnx_folder}/edgekd.json is missing or unreadable"]
    if recorded is not None and recorded != max_length:
        return [f"the ONNX folder was exported with max_length {recorded}; the benchmark used {max_length}"]
    return []


# ----------------------------------------------------------------------------------------------------------
# Numbers


def map_predictions(raw: dict[str, Any], data_labels: list[str], variant: str) -> np.ndarray:
    """The worker's predicted ids (the model's label order) as ids into the dataset's label list.

    Raises:
        InputError: When the model predicts a class the dataset does not have.
    """
    model_labels = [str(label) for label in raw["labels"]]
    check_labels(model_labels, data_labels, variant)
    index = {label: i for i, label in enumerate(data_labels)}
    to_data = np.asarray([index[label] for label in model_labels], dtype=np.int64)
    return to_data[np.asarray(raw["predictions"], dtype=np.int64)]


def variant_record(
    variant: Variant,
    folder: Path,
    raw: dict[str, Any],
    predicted: np.ndarray,
    gold: list[int],
    labels: list[str],
) -> dict[str, Any]:
    """One variant's line of the report, from its worker result (comparisons are added afterwards)."""
    onnx = variant.format == "onnx"
    n_classes = len(labels)
    gold_arr = np.asarray(gold, dtype=np.int64)
    model_ms = raw["model_ms"]
    lo, hi = bootstrap_ci(model_ms, np.median, n_boot=N_BOOT, seed=0)
    size = folder_size(folder, onnx=onnx)
    return {
        "name": variant.name,
        "format": variant.format,
        "accuracy": float((predicted == gold_arr).mean()),
        "macro_f1": macro_f1(gold, predicted.tolist(), n_classes),
        "per_class": dict(zip(labels, per_class_scores(gold, predicted.tolist(), n_classes), strict=True)),
        "size_bytes": size,
        "size_mb": size / 1e6,
        "params": param_count(folder, onnx=onnx),
        "latency_ms": {**percentiles(model_ms), "p50_ci95": [lo, hi]},
        "latency_e2e_ms": percentiles(raw["e2e_ms"]),
        "tokenize_ms": percentiles(raw["tokenize_ms"]),
        "peak_rss_mb": raw.get("peak_rss_mb"),
        "peak_rss_accuracy_pass_mb": raw.get("peak_rss_accuracy_pass_mb"),
        "rss_after_load_mb": raw.get("rss_after_load_mb"),
        "load_s": raw.get("load_s"),
        "throughput_per_s": raw.get("throughput_per_s"),
        "threads": raw.get("threads"),
        "torch_imported": raw.get("torch_imported"),
        "raw": f"raw/{variant.name}.json",
    }


def add_reference_comparisons(
    variants: list[dict[str, Any]], predictions: dict[str, np.ndarray], gold: list[int]
) -> None:
    """Add agreement, paired accuracy difference, speed-up and compression against the first variant."""
    reference = variants[0]
    ref_pred = predictions[reference["name"]]
    gold_arr = np.asarray(gold, dtype=np.int64)
    for record in variants:
        pred = predictions[record["name"]]
        diff, lo, hi = accuracy_diff_ci(pred == gold_arr, ref_pred == gold_arr, n_boot=N_BOOT, seed=0)
        record["agreement_with_reference"] = float((pred == ref_pred).mean())
        record["accuracy_diff_vs_reference_pts"] = {"diff": diff * 100, "ci95": [lo * 100, hi * 100]}
        record["speedup_p50"] = reference["latency_ms"]["p50"] / record["latency_ms"]["p50"]
        record["speedup_e2e_p50"] = reference["latency_e2e_ms"]["p50"] / record["latency_e2e_ms"]["p50"]
        record["compression"] = reference["size_bytes"] / record["size_bytes"]
        record["params_ratio"] = record["params"] / reference["params"] if reference["params"] else None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
