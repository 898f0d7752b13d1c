"""From measurements to report.json: the variant records (accuracy, latency, size, out-of-scope scores with
bootstrap intervals), comparisons against the reference, and the report itself, as the typed models of
edgekd/report/schema.py (which the report files are written from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekd._version import __version__
from edgekd.artifact import file_digests, param_count
from edgekd.bench.inputs import check_labels
from edgekd.bench.measure import round_slices
from edgekd.bench.spec import HarnessSettings, MeasuredModel, Measurements
from edgekd.bench.stats import (
    accuracy_diff_ci,
    bootstrap_ci,
    box_stats,
    macro_f1,
    paired_diff_ci,
    per_class_scores,
    percentile_stat,
    percentiles,
)
from edgekd.errors import (
    DataError,
    InputError,
)
from edgekd.recipe.schema import GatesSpec
from edgekd.report.gates import OPTIMUM_BASELINE, evaluate_gates
from edgekd.report.schema import (
    SCHEMA_VERSION,
    AccuracyDiff,
    BenchmarkSettings,
    BoxStats,
    ClassScores,
    Environment,
    Latency,
    LatencyDiff,
    LengthLatency,
    PairedDiff,
    Percentiles,
    Report,
    ShippedFile,
    Variant,
)

N_BOOT = 1000


def map_predictions(
    labels_of_model: list[str], predictions: list[int], data_labels: list[str], variant: str
) -> np.ndarray:
    """A model's predicted ids (its own label order) as ids into the dataset's label list.

    Raises:
        InputError: When the model predicts a class the dataset does not have.
    """
    model_labels = [str(label) for label in labels_of_model]
    check_labels(model_labels, data_labels, variant)
    predicted = np.asarray(predictions, dtype=np.int64)
    if predicted.size and (predicted.min() < 0 or predicted.max() >= len(model_labels)):
        raise InputError(
            f"the {variant} model predicted class id {int(predicted.max())}, but it names only "
            f"{len(model_labels)} classes",
            hint="the model's labels (edgekd.json or config.json id2label) must list one name per output",
        )
    index = {label: i for i, label in enumerate(data_labels)}
    to_data = np.asarray([index[label] for label in model_labels], dtype=np.int64)
    return to_data[predicted]


def variant_records(
    models: Sequence[MeasuredModel],
    measured: Mapping[str, Measurements],
    gold: list[int],
    labels: list[str],
    relative_to: Path | None,
    out_of_scope: int | None = None,
    paired_with: Sequence[str] = (OPTIMUM_BASELINE,),
) -> list[Variant]:
    """The report's variant list, in the given order, with the comparisons against the first one.

    With `out_of_scope` (the id of a "none of the others" class), each record also gets in-scope accuracy
    and out-of-scope recall. Every variant gets its paired differences (`paired_diffs`) from each variant
    named in `paired_with` that was measured: the gates that compare two models read them.
    """
    predictions = {
        m.name: map_predictions(
            measured[m.name].ready["labels"], measured[m.name].predictions, labels, m.name
        )
        for m in models
    }
    records = []
    for model in models:
        record = variant_record(model, measured[model.name], predictions[model.name], gold, labels)
        record.folder = _shown_path(model.folder, relative_to)
        if out_of_scope is not None:
            scores = out_of_scope_scores(gold, predictions[model.name], out_of_scope)
            record.in_scope_accuracy = scores["in_scope_accuracy"]
            record.out_of_scope_recall = scores["out_of_scope_recall"]
        records.append(record)
    add_reference_comparisons(records, predictions, gold)
    for other in paired_with:
        if other not in measured:
            continue
        for record in records:
            if record.name != other:
                diff = paired_diff(
                    measured[record.name], measured[other], predictions, record.name, other, gold
                )
                record.paired_diffs = {**(record.paired_diffs or {}), other: diff}
    return records


def paired_diff(
    result: Measurements,
    other: Measurements,
    predictions: Mapping[str, np.ndarray],
    name: str,
    other_name: str,
    gold: list[int],
) -> PairedDiff:
    """`name` minus `other_name`: accuracy on the same test texts and batch-1 p50 over the same requests.

    The harness sends every model the same latency texts in the same interleaved rounds, so request i of
    one model and request i of another are the same text timed in the same round: pairing them cancels what
    the text and the machine's state at that moment add to both (measure.measure_latency_rounds).
    """
    gold_arr = np.asarray(gold, dtype=np.int64)
    diff, lo, hi = accuracy_diff_ci(
        predictions[name] == gold_arr, predictions[other_name] == gold_arr, n_boot=N_BOOT, seed=0
    )
    latency = None
    if result.model_ms and len(result.model_ms) == len(other.model_ms):
        rounds = request_rounds(result)
        d, d_lo, d_hi = paired_diff_ci(
            result.model_ms, other.model_ms, np.median, n_boot=N_BOOT, seed=0, clusters=rounds
        )
        latency = LatencyDiff(diff=d, ci95=(d_lo, d_hi), n=len(result.model_ms))
    return PairedDiff(accuracy_pts=AccuracyDiff(diff=diff * 100, ci95=(lo * 100, hi * 100)), p50_ms=latency)


def request_rounds(result: Measurements) -> list[int] | None:
    """The interleaved round of each batch-1 request, for a bootstrap that resamples whole rounds: a round
    the machine was slow for moves all its requests, which a bootstrap over single requests would treat as
    independent luck and so give too narrow an interval (benchmarks/verdict_stability.py). None with fewer than
    two rounds."""
    rounds = result.round_of_request
    if len(rounds) != len(result.model_ms) or len(set(rounds)) < 2:
        return None
    return list(rounds)


def variant_record(
    model: MeasuredModel, result: Measurements, predicted: np.ndarray, gold: list[int], labels: list[str]
) -> Variant:
    """One model's line of the report (the comparisons with the reference are added afterwards)."""
    onnx = model.format == "onnx"
    n_classes = len(labels)
    gold_arr = np.asarray(gold, dtype=np.int64)
    # The same seed gives every statistic the same resamples of the rounds.
    rounds = request_rounds(result)
    p50_ci, p90_ci, p99_ci = (
        bootstrap_ci(result.model_ms, stat, n_boot=N_BOOT, seed=0, clusters=rounds)
        for stat in (np.median, percentile_stat(90), percentile_stat(99))
    )
    correct = (predicted == gold_arr).astype(np.float64)
    files = [ShippedFile.model_validate(f) for f in file_digests(model.folder, onnx=onnx)]
    size = sum(f.bytes for f in files)  # the same files folder_size counts, read once
    n_texts = len(result.predictions)
    scores = per_class_scores(gold, predicted.tolist(), n_classes)
    return Variant(
        name=model.name,
        format=model.format,
        accuracy=float(correct.mean()),
        accuracy_ci95=bootstrap_ci(correct, np.mean, n_boot=N_BOOT, seed=0) if correct.size else None,
        macro_f1=macro_f1(gold, predicted.tolist(), n_classes),
        per_class={label: ClassScores.model_validate(s) for label, s in zip(labels, scores, strict=True)},
        size_bytes=size,
        files=files,
        size_mb=size / 1e6,
        params=param_count(model.folder, onnx=onnx),
        latency_ms=Latency.model_validate(
            {**percentiles(result.model_ms), "p50_ci95": p50_ci, "p90_ci95": p90_ci, "p99_ci95": p99_ci}
        ),
        latency_box_ms=BoxStats.model_validate(box_stats(result.model_ms)),
        latency_e2e_ms=Percentiles.model_validate(percentiles(result.e2e_ms)),
        tokenize_ms=Percentiles.model_validate(percentiles(result.tokenize_ms)),
        latency_by_length_ms=[
            LengthLatency.model_validate({"tokens": length, **percentiles(values)})
            for length, values in sorted(result.by_length_ms.items())
        ],
        throughput_texts_per_s=median_throughput(result.throughput_rounds),
        throughput_range_texts_per_s=throughput_ranges(result.throughput_rounds),
        throughput_threads=result.throughput_threads,
        throughput_per_s=n_texts / result.accuracy_pass_s if result.accuracy_pass_s else None,
        accuracy_pass_threads=result.accuracy_pass_threads,
        peak_rss_mb=result.peak_rss_serving_mb,
        peak_rss_accuracy_pass_mb=result.peak_rss_accuracy_pass_mb,
        peak_rss_throughput_mb=result.peak_rss_throughput_mb,
        rss_after_load_mb=result.ready.get("rss_mb"),
        load_s=result.ready.get("load_s"),
        threads=result.ready.get("threads"),
        effective_threads=result.ready.get("effective_threads"),
        max_positions=result.ready.get("max_positions"),
        torch_imported=result.ready.get("torch_imported"),
        raw=f"raw/{model.name}.json",
    )


def check_out_of_scope_label(label: str | None, labels: Sequence[str]) -> int | None:
    """The id of benchmark.out_of_scope_label, or None when unset.

    Raises:
        DataError: the label is not one of the dataset's classes.
    """
    if label is None:
        return None
    if label not in labels:
        raise DataError(
            f"benchmark.out_of_scope_label {label!r} is not one of the dataset's {len(labels)} classes",
            hint="set it to the class that means 'none of the others' (e.g. oos), or remove it",
        )
    return list(labels).index(label)


def out_of_scope_scores(gold: Sequence[int], predicted: np.ndarray, oos: int) -> dict[str, float | None]:
    """In-scope accuracy (rows whose true class is not `oos`) and out-of-scope recall (rows whose true class
    is `oos`, predicted as `oos`); None where the test split has no such row."""
    gold_arr = np.asarray(gold, dtype=np.int64)
    in_scope, out_scope = gold_arr != oos, gold_arr == oos
    return {
        "in_scope_accuracy": float((predicted[in_scope] == gold_arr[in_scope]).mean())
        if in_scope.any()
        else None,
        "out_of_scope_recall": float((predicted[out_scope] == oos).mean()) if out_scope.any() else None,
    }


def median_throughput(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per batch size, the median texts/s over the rounds."""
    batch_sizes = sorted({b for r in rounds for b in r}, key=int)
    return {b: float(np.median([r[b] for r in rounds if b in r])) for b in batch_sizes}


def throughput_ranges(rounds: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per batch size, the lowest and highest texts/s over the rounds (the spread the throughput gate reads)."""
    batch_sizes = sorted({b for r in rounds for b in r}, key=int)
    return {
        b: (min(r[b] for r in rounds if b in r), max(r[b] for r in rounds if b in r)) for b in batch_sizes
    }


def add_reference_comparisons(
    variants: list[Variant], predictions: Mapping[str, np.ndarray], gold: list[int]
) -> None:
    """Add agreement, paired accuracy difference, speed-up and compression against the first variant."""
    reference = variants[0]
    ref_pred = predictions[reference.name]
    gold_arr = np.asarray(gold, dtype=np.int64)
    for record in variants:
        pred = predictions[record.name]
        diff, lo, hi = accuracy_diff_ci(pred == gold_arr, ref_pred == gold_arr, n_boot=N_BOOT, seed=0)
        record.agreement_with_reference = float((pred == ref_pred).mean())
        record.accuracy_diff_vs_reference_pts = AccuracyDiff(diff=diff * 100, ci95=(lo * 100, hi * 100))
        record.speedup_p50 = _p50(reference.latency_ms) / _p50(record.latency_ms)
        record.speedup_e2e_p50 = _p50(reference.latency_e2e_ms) / _p50(record.latency_e2e_ms)
        record.compression = _measured(reference.size_bytes) / _measured(record.size_bytes)
        record.params_ratio = _measured(record.params) / reference.params if reference.params else None


def build_report(
    title: str,
    env: Mapping[str, Any],
    variants: list[Variant],
    settings: HarnessSettings,
    gates_spec: GatesSpec,
    n_texts: int,
    warnings: list[str],
    reference: str,
    candidate: str,
) -> Report:
    """report.json: the contract keys (recipe, edgekd_version, environment, variants, gates, passed) and more."""
    gates = evaluate_gates(variants, gates_spec, reference=reference, candidate=candidate)
    return Report(
        schema_version=SCHEMA_VERSION,
        recipe=title,
        edgekd_version=__version__,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        environment=Environment.model_validate(env),
        benchmark=BenchmarkSettings(
            threads=settings.threads,
            latency_samples=settings.latency_samples,
            warmup=settings.warmup,
            batch_size=settings.batch_size,
            seed=settings.seed,
            max_length=settings.max_length,
            test_texts=n_texts,
            interleaved_rounds=len(round_slices(settings.latency_samples, settings.round_size)),
            round_size=settings.round_size,
            seq_lengths=list(settings.seq_lengths),
            seq_samples=settings.seq_samples,
            throughput_batch_sizes=list(settings.throughput_batch_sizes),
            latency_definition="batch-1 model call, ms; tokenization timed apart (tokenize_ms, e2e)",
            out_of_scope_label=settings.out_of_scope_label,
        ),
        reference=reference,
        candidate=candidate,
        variants=variants,
        gates=gates,
        passed=all(g.passed for g in gates),
        warnings=warnings,
    )


def describe(variant: Variant) -> str:
    """One log line of a measured variant."""
    return (
        f"{variant.name}: accuracy {_measured(variant.accuracy):.4f}, p50 {_p50(variant.latency_ms):.3f} ms, "
        f"size {_measured(variant.size_bytes) / 1e6:.2f} MB, speed-up {_measured(variant.speedup_p50):.2f}x"
    )


def _p50(latency: Percentiles | None) -> float:
    return _measured(latency.p50 if latency is not None else None)


def _measured(value: float | None) -> float:
    """A number variant_record always sets (a missing one is a bug here, not a user's mistake)."""
    if value is None:
        raise ValueError("a variant record lacks a measured number")
    return float(value)


def _shown_path(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
