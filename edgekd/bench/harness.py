"""The sign-off harness: measure any list of model folders the same way and write the report files.

Both `edgekd benchmark DIR ...` and the pipeline's benchmark stage call `benchmark_folders`, so a number in a
run's report and a number from the command line come from one code path.

How the measurements are taken:

* One persistent worker process per model (edgekd.bench.worker), started side by side and driven by JSON-line
  commands, each with the same thread budget (ONNX Runtime spin-waiting off, inter-op 1).
* Batch-1 latency over a seeded sample of the test texts, in interleaved rounds: every round hands the same
  chunk of requests to each worker in turn, in an order rotated per round, so machine drift hits every model
  alike.
* Latency against sequence length on token-exact inputs (16, 64, 128, 256 tokens, capped at what the model's
  position embeddings allow), interleaved the same way.
* The accuracy pass over the whole test split, then throughput (texts/s) at larger batch sizes, both on every
  core: predictions do not depend on the thread count, and on a 2-core machine the teacher's single-thread pass
  over 7,600 texts alone took 19 minutes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekd import __version__
from edgekd.bench.stats import (
    accuracy_diff_ci,
    bootstrap_ci,
    box_stats,
    macro_f1,
    per_class_scores,
    percentiles,
)
from edgekd.bench.worker import WorkerProcess, thread_env
from edgekd.envinfo import (
    cpu_snapshot,
    environment,
    load_average,
    other_processes_cores,
    usable_cores,
)
from edgekd.errors import DataError, InputError
from edgekd.recipe import DataSpec, GatesSpec
from edgekd.report import evaluate_gates, write_report_md
from edgekd.size import folder_size, onnx_model_path, param_count
from edgekd.stage import write_json

N_BOOT = 1000
# Other processes using more than this share of the cores competed with the measurements.
BUSY_CORE_SHARE = 0.5
# How long to watch the machine before the workers start.
IDLE_CHECK_SECONDS = 1.0
# Texts used for the throughput measurement (cycled when the test split is smaller).
THROUGHPUT_TEXTS = 256
THROUGHPUT_ROUNDS = 2


@dataclass(frozen=True)
class ModelSpec:
    """A model folder to measure, under the name the report gives it."""

    name: str
    folder: Path
    format: str


@dataclass(frozen=True)
class HarnessSettings:
    """How every model is measured (the same for all of them).

    Attributes:
        threads: Intra-op threads per model for the batch-1 latency and the accuracy pass.
        latency_samples: Batch-1 requests per model (a seeded sample of the test texts).
        warmup: Untimed requests per model before the timed ones.
        batch_size: Batch size of the accuracy pass.
        max_length: Truncation length in tokens of the text requests.
        seed: Seed of the latency sample.
        round_size: Requests each model serves per interleaved round.
        seq_lengths: Token lengths of the latency-vs-sequence-length inputs.
        seq_samples: Timed requests per model and sequence length.
        throughput_batch_sizes: Batch sizes of the throughput measurement.
        throughput_threads: Threads for throughput (None: every core this process may use).
        out_of_scope_label: The "none of the others" class, scored apart (in-scope accuracy, OOS recall).
    """

    threads: int = 1
    latency_samples: int = 200
    warmup: int = 20
    batch_size: int = 32
    max_length: int = 128
    seed: int = 42
    round_size: int = 20
    seq_lengths: tuple[int, ...] = (16, 64, 128, 256)
    seq_samples: int = 30
    throughput_batch_sizes: tuple[int, ...] = (8, 32)
    throughput_threads: int | None = None
    out_of_scope_label: str | None = None


@dataclass
class Measurements:
    """Everything a worker measured for one model (the content of raw/<name>.json)."""

    ready: dict[str, Any]
    tokenize_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    round_of_request: list[int] = field(default_factory=list)
    by_length_ms: dict[int, list[float]] = field(default_factory=dict)
    predictions: list[int] = field(default_factory=list)
    accuracy_pass_s: float | None = None
    accuracy_pass_threads: int | None = None
    throughput_rounds: list[dict[str, float]] = field(default_factory=list)
    throughput_threads: int | None = None
    peak_rss_serving_mb: float | None = None
    peak_rss_accuracy_pass_mb: float | None = None
    peak_rss_throughput_mb: float | None = None


class Worker(Protocol):
    """What the harness needs from a worker process (a fake one stands in for it in tests)."""

    def wait_ready(self) -> dict[str, Any]: ...

    def request(self, command: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


WorkerFactory = Callable[[ModelSpec, int, int], Worker]


def start_worker(model: ModelSpec, threads: int, max_length: int) -> Worker:
    """A real worker process for `model`."""
    return WorkerProcess(model.name, model.folder, model.format, threads, max_length)


# ----------------------------------------------------------------------------------------------------------
# Entry point


def benchmark_folders(
    models: Sequence[ModelSpec],
    data: DataSpec,
    out_dir: Path,
    settings: HarnessSettings = HarnessSettings(),
    gates: GatesSpec = GatesSpec(),
    *,
    title: str = "benchmark",
    candidate: str | None = None,
    training_logs: Mapping[str, Path] | None = None,
    relative_to: Path | None = None,
    stage_times: Sequence[Mapping[str, Any]] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every model, compare each with the first, judge the candidate and write the report files.

    Args:
        models: The folders to measure; the first is the reference.
        data: The dataset (its test split is measured); `settings.max_length` is the truncation used.
        out_dir: Where report.json, report.md, report.html and raw/<name>.json go (created if needed).
        settings: How to measure.
        gates: Limits the candidate must meet against the reference.
        title: The report's title (a recipe name, for a pipeline run).
        candidate: Name of the model the gates judge (default: the last one).
        training_logs: Stage name -> Trainer log_history.json, plotted in report.html when the file exists.
        relative_to: Model folders are shown relative to this folder in the report (when inside it).
        stage_times: For a pipeline run, the wall time of each stage before the benchmark (where the time went).
        log: Where progress lines go.

    Returns:
        The report (the content of report.json).

    Raises:
        InputError, DataError: A folder is not a model, the labels do not match, or a setting is impossible.
        StageError: A worker failed.
    """
    check_settings(settings, len(models))
    check_names([m.name for m in models])
    candidate = candidate or models[-1].name
    if candidate not in {m.name for m in models}:
        raise InputError(f"the candidate {candidate!r} is not one of the measured models")
    from edgekd.data import load_splits

    # Measuring finished models needs no train split; the reference model then names the classes.
    splits = load_splits(data, settings.seed, model_labels=declared_labels(models[0].folder))
    texts, gold = splits.texts("test"), splits.label_ids("test")
    oos = check_out_of_scope_label(settings.out_of_scope_label, splits.labels)
    for model in models:
        check_model_folder(model.folder, model.format)
        check_labels(declared_labels(model.folder), splits.labels, model.name)
    latency_idx = latency_sample_indices(len(texts), settings.latency_samples, settings.seed)
    # Taken before the workers start, so they show what else the machine was doing.
    env = environment()
    env["other_processes_cores"] = {"at_start": other_processes_cores_now()}
    warnings = setup_warnings(env, settings.threads, len(texts), settings.latency_samples)
    warnings += [w for m in models if m.format == "onnx" for w in max_length_warnings(m, settings.max_length)]

    start = cpu_snapshot()
    measured = measure_models(models, texts, [texts[i] for i in latency_idx], settings, log)
    env["other_processes_cores"]["during"] = other_processes_cores(start, cpu_snapshot())
    env["load_average_after"] = load_average()
    env["threads"] = thread_settings(settings, measured)
    warnings += busy_after_warnings(env)

    variants = variant_records(models, measured, gold, splits.labels, relative_to, oos)
    for record in variants:
        log(
            f"  {record['name']}: accuracy {record['accuracy']:.4f}, "
            f"p50 {record['latency_ms']['p50']:.3f} ms, size {record['size_bytes'] / 1e6:.2f} MB, "
            f"speed-up {record['speedup_p50']:.2f}x"
        )
    report = build_report(
        title, env, variants, settings, gates, len(texts), warnings, models[0].name, candidate
    )
    if stage_times:
        report["stage_times"] = [dict(t) for t in stage_times]
    write_report_files(report, measured, out_dir, training_logs or {})
    for warning in warnings:
        log(f"  warning: {warning}")
    return report


def write_report_files(
    report: dict[str, Any],
    measured: Mapping[str, Measurements],
    out_dir: Path,
    training_logs: Mapping[str, Path],
) -> None:
    """report.json, report.md, report.html and raw/<name>.json (per-request latencies and predictions)."""
    from edgekd.html_report import read_training_logs, write_report_html

    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, result in measured.items():
        write_json(raw_dir / f"{name}.json", raw_record(result))
    write_json(out_dir / "report.json", report)
    write_report_md(report, out_dir / "report.md")
    write_report_html(report, out_dir / "report.html", read_training_logs(training_logs))


# ----------------------------------------------------------------------------------------------------------
# Measuring


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order in which the models serve a round: rotated by one per round, so none is always first."""
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def round_slices(n_requests: int, round_size: int) -> list[slice]:
    """The requests of each interleaved round (the last one may be shorter)."""
    return [slice(start, min(start + round_size, n_requests)) for start in range(0, n_requests, round_size)]


def measure_models(
    models: Sequence[ModelSpec],
    texts: list[str],
    latency_texts: list[str],
    settings: HarnessSettings,
    log: Callable[[str], None],
    worker_factory: WorkerFactory = start_worker,
) -> dict[str, Measurements]:
    """Start one worker per model, run every measurement interleaved across them, stop the workers."""
    with ExitStack() as stack:
        workers: dict[str, Worker] = {}
        for model in models:
            worker = worker_factory(model, settings.threads, settings.max_length)
            stack.callback(worker.close)
            workers[model.name] = worker
        log(f"benchmark: loading {len(models)} model(s), one process each, {settings.threads} thread(s)")
        measured = {name: Measurements(ready=worker.wait_ready()) for name, worker in workers.items()}
        warm_up(workers, latency_texts, settings.warmup)
        log(f"benchmark: {len(latency_texts)} batch-1 requests per model in interleaved rounds")
        measure_latency_rounds(workers, measured, latency_texts, settings.round_size)
        log(f"benchmark: latency at sequence lengths {', '.join(map(str, settings.seq_lengths))}")
        measure_length_rounds(
            workers, measured, long_text(latency_texts, max(settings.seq_lengths)), settings
        )
        threads = settings.throughput_threads or usable_cores() or 1
        log(f"benchmark: accuracy on {len(texts)} test texts on {threads} thread(s)")
        measure_accuracy(workers, measured, texts, settings.batch_size, threads)
        log(f"benchmark: throughput at batch {settings.throughput_batch_sizes} on {threads} thread(s)")
        measure_throughput_rounds(workers, measured, throughput_texts(texts, settings), settings, threads)
    return measured


def warm_up(workers: Mapping[str, Worker], latency_texts: list[str], warmup: int) -> None:
    """`warmup` untimed requests per worker, cycling through the latency texts."""
    if warmup < 1:
        return
    texts = [latency_texts[i % len(latency_texts)] for i in range(warmup)]
    for worker in workers.values():
        worker.request({"cmd": "warmup", "texts": texts})


def measure_latency_rounds(
    workers: Mapping[str, Worker],
    measured: Mapping[str, Measurements],
    latency_texts: list[str],
    round_size: int,
) -> None:
    """Batch-1 requests, each round's chunk served by every worker in turn (rotated order)."""
    names = list(workers)
    for round_index, chunk in enumerate(round_slices(len(latency_texts), round_size)):
        for name in round_order(names, round_index):
            answer = workers[name].request({"cmd": "latency", "texts": latency_texts[chunk]})
            result = measured[name]
            result.tokenize_ms += answer["tokenize_ms"]
            result.model_ms += answer["model_ms"]
            result.e2e_ms += answer["e2e_ms"]
            result.round_of_request += [round_index] * len(answer["model_ms"])
    for name, result in measured.items():
        result.peak_rss_serving_mb = float(workers[name].request({"cmd": "status"})["peak_rss_mb"])


def lengths_for(seq_lengths: Sequence[int], max_positions: int | None) -> list[int]:
    """The sequence lengths a model can take: each capped at its position embeddings, duplicates dropped."""
    cap = max_positions if isinstance(max_positions, int) and max_positions > 0 else None
    return sorted({min(length, cap) if cap else length for length in seq_lengths})


def long_text(texts: Sequence[str], n_tokens: int) -> str:
    """Real test text repeated until it has at least `n_tokens` words (every word is one token or more)."""
    base = " ".join(t for t in texts if t.strip()) or "the quick brown fox jumps over the lazy dog"
    words = base.split()
    repeats = math.ceil((n_tokens + 8) / max(1, len(words)))
    return " ".join(words * repeats)


def measure_length_rounds(
    workers: Mapping[str, Worker],
    measured: Mapping[str, Measurements],
    text: str,
    settings: HarnessSettings,
) -> None:
    """Latency on token-exact inputs per sequence length, interleaved across workers like the text requests."""
    names = list(workers)
    lengths = {
        name: lengths_for(settings.seq_lengths, measured[name].ready.get("max_positions")) for name in names
    }
    all_lengths = sorted({length for per_model in lengths.values() for length in per_model})
    round_index = 0
    for length in all_lengths:
        for first, chunk in enumerate(round_slices(settings.seq_samples, settings.round_size)):
            for name in round_order(names, round_index):
                if length not in lengths[name]:
                    continue
                command = {
                    "cmd": "fixed_length",
                    "text": text,
                    "length": length,
                    "repeats": chunk.stop - chunk.start,
                    "warmup": 2 if first == 0 else 0,
                }
                answer = workers[name].request(command)
                measured[name].by_length_ms.setdefault(int(answer["tokens"]), []).extend(answer["model_ms"])
            round_index += 1


def measure_accuracy(
    workers: Mapping[str, Worker],
    measured: Mapping[str, Measurements],
    texts: list[str],
    batch_size: int,
    threads: int,
) -> None:
    """Predictions for every test text on `threads` threads (after the latency phase, so serving memory is
    measured first)."""
    for name, worker in workers.items():
        command = {"cmd": "predict", "texts": texts, "batch_size": batch_size, "threads": threads}
        answer = worker.request(command)
        measured[name].predictions = [int(p) for p in answer["predictions"]]
        measured[name].accuracy_pass_s = float(answer["seconds"])
        measured[name].accuracy_pass_threads = int(answer.get("threads", threads))
        measured[name].peak_rss_accuracy_pass_mb = float(answer["peak_rss_mb"])


def throughput_texts(texts: Sequence[str], settings: HarnessSettings) -> list[str]:
    """A seeded shuffle of the test texts, cycled to enough texts for two batches of the largest size."""
    n = max(2 * max(settings.throughput_batch_sizes), min(len(texts), THROUGHPUT_TEXTS))
    order = np.random.default_rng(settings.seed).permutation(len(texts))
    return [texts[int(order[i % len(texts)])] for i in range(n)]


def measure_throughput_rounds(
    workers: Mapping[str, Worker],
    measured: Mapping[str, Measurements],
    texts: list[str],
    settings: HarnessSettings,
    threads: int,
) -> None:
    """Texts/s at each batch size on `threads` threads, in rotated rounds like the latency."""
    names = list(workers)
    for round_index in range(THROUGHPUT_ROUNDS):
        for name in round_order(names, round_index):
            command = {
                "cmd": "throughput",
                "texts": texts,
                "batch_sizes": list(settings.throughput_batch_sizes),
                "threads": threads,
            }
            answer = workers[name].request(command)
            measured[name].throughput_rounds.append({k: float(v) for k, v in answer["texts_per_s"].items()})
            measured[name].throughput_threads = int(answer["threads"])
            measured[name].peak_rss_throughput_mb = float(answer["peak_rss_mb"])


def raw_record(result: Measurements) -> dict[str, Any]:
    """raw/<name>.json: the per-request numbers behind the report, for recomputing or re-plotting."""
    raw = asdict(result)
    raw["by_length_ms"] = {str(k): v for k, v in sorted(result.by_length_ms.items())}
    raw["labels"] = result.ready.get("labels", [])
    return raw


# ----------------------------------------------------------------------------------------------------------
# Inputs


def check_settings(settings: HarnessSettings, n_models: int) -> None:
    """Refuse settings that cannot give a meaningful measurement.

    Raises:
        InputError: No models, too many threads, no latency samples, or a non-positive size.
    """
    if n_models < 1:
        raise InputError("no model folders to benchmark")
    check_threads(settings.threads)
    if settings.throughput_threads is not None:
        check_threads(settings.throughput_threads)
    if settings.latency_samples < 1:
        raise InputError("the number of latency samples must be at least 1")
    for name in ("batch_size", "round_size", "seq_samples", "max_length"):
        if getattr(settings, name) < 1:
            raise InputError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if settings.warmup < 0:
        raise InputError(f"warmup cannot be negative, got {settings.warmup}")
    if not settings.seq_lengths or min(settings.seq_lengths) < 1:
        raise InputError("sequence lengths must be at least 1 token")
    if not settings.throughput_batch_sizes or min(settings.throughput_batch_sizes) < 1:
        raise InputError("throughput batch sizes must be at least 1")


def check_threads(threads: int) -> None:
    """Refuse a thread budget the machine cannot give: oversubscribed numbers describe no real deployment.

    Raises:
        InputError: When `threads` is below 1 or exceeds the cores this process may use.
    """
    known = [n for n in (os.cpu_count(), usable_cores()) if n]
    available = min(known) if known else 1
    if threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    if threads > available:
        raise InputError(
            f"threads is {threads} but this machine gives this process {available} core(s)",
            hint=f"use at most {available} thread(s)",
        )


def check_names(names: Sequence[str]) -> None:
    """Names become file names (raw/<name>.json) and table rows: unique, non-empty, no path separators.

    Raises:
        InputError: When a name is empty, repeated or contains a path separator.
    """
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            raise InputError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.'")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"model names must be unique, repeated: {', '.join(repeated)}", hint="pass --names")


def latency_sample_indices(n_texts: int, n_samples: int, seed: int) -> list[int]:
    """Which test texts the batch-1 requests use: a seeded sample, without replacement when there are enough.

    Raises:
        InputError: When there are no samples to draw or nothing to draw them from.
    """
    if n_samples < 1:
        raise InputError("the number of latency samples must be at least 1")
    if n_texts < 1:
        raise InputError("the test split is empty: nothing to benchmark")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_texts, size=n_samples, replace=n_samples > n_texts)]


def detect_format(folder: Path) -> str:
    """ "onnx" for a folder with an .onnx graph, "pytorch" for a Hugging Face folder with safetensors weights.

    Raises:
        InputError: When the folder is neither.
    """
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}")
    if any(folder.glob("*.onnx")):
        return "onnx"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "pytorch"
    if (folder / "config.json").is_file() and (folder / "pytorch_model.bin").is_file():
        raise InputError(
            f"{folder} holds pytorch_model.bin weights; only safetensors weights are loaded",
            hint="re-save the model with save_pretrained(..., safe_serialization=True)",
        )
    raise InputError(
        f"{folder} is neither a PyTorch model folder (config.json + *.safetensors) "
        "nor an ONNX one (*.onnx + tokenizer.json)"
    )


def check_model_folder(folder: Path, fmt: str) -> None:
    """Fail before any worker starts when a model folder lacks what its format needs.

    Raises:
        InputError: A needed file is missing.
    """
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}")
    if fmt == "onnx":
        onnx_model_path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise InputError(f"the ONNX folder {folder} has no tokenizer.json")
        return
    if not (folder / "config.json").is_file():
        raise InputError(f"the model folder {folder} has no config.json")
    if not any(
        (folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        raise InputError(f"the model folder {folder} has no tokenizer files")


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
        InputError: When the model names no classes, or has classes the dataset does not.
    """
    if not model_labels:
        raise InputError(
            f"the {variant} model names no classes (no edgekd.json labels, no config.json id2label)"
        )
    unknown = [label for label in model_labels if label not in set(data_labels)]
    if unknown:
        raise InputError(
            f"the {variant} model predicts classes the dataset does not have: {unknown[:5]} "
            f"(dataset classes: {data_labels[:5]}{'...' if len(data_labels) > 5 else ''})",
            hint="the model and the data must share the same label names",
        )


def setup_warnings(env: dict[str, Any], threads: int, n_texts: int, n_samples: int) -> list[str]:
    """Conditions under which the numbers deserve less trust; they go into the report."""
    warnings = []
    cores = env.get("cpu", {}).get("usable_cores") or os.cpu_count() or 1
    others = (env.get("other_processes_cores") or {}).get("at_start")
    if others is not None and others > BUSY_CORE_SHARE * cores:
        warnings.append(
            f"other processes were using {others} of {cores} cores when the benchmark started: "
            "latency may be inflated"
        )
    load = (env.get("load_average") or [0.0])[0]
    if others is None and load > BUSY_CORE_SHARE * cores:
        warnings.append(
            f"the machine was busy at the start (load {load} on {cores} cores): latency may be inflated"
        )
    if threads == cores and cores > 1:
        warnings.append(f"threads uses every core ({cores}): the OS and the harness compete with the model")
    if n_samples > n_texts:
        warnings.append(
            f"latency samples ({n_samples}) exceed the test split ({n_texts} texts): texts were reused"
        )
    return warnings


def other_processes_cores_now(seconds: float = IDLE_CHECK_SECONDS) -> float | None:
    """Cores other processes keep busy, watched for `seconds` while this process sleeps."""
    before = cpu_snapshot()
    time.sleep(seconds)
    return other_processes_cores(before, cpu_snapshot())


def busy_after_warnings(env: dict[str, Any]) -> list[str]:
    """A machine that got busy during the run makes every model slower; interleaving keeps them comparable."""
    cores = env.get("cpu", {}).get("usable_cores") or os.cpu_count() or 1
    others = (env.get("other_processes_cores") or {}).get("during")
    if others is not None:
        if others <= BUSY_CORE_SHARE * cores:
            return []
        return [
            f"other processes used {others} of {cores} cores on average during the run: absolute latencies may "
            "be inflated (ratios between models stay comparable: they were measured interleaved)"
        ]
    # No /proc/stat (not Linux): the load average, which also counts the benchmark's own workers.
    before = (env.get("load_average") or [0.0])[0]
    after = (env.get("load_average_after") or [0.0])[0]
    if after > BUSY_CORE_SHARE * cores and after > before:
        return [
            f"the load average rose to {after} on {cores} cores during the run: absolute latencies may be "
            "inflated (ratios between models stay comparable: they were measured interleaved)"
        ]
    return []


def max_length_warnings(model: ModelSpec, max_length: int) -> list[str]:
    """An export records its max_length; a different one here measures another model than is shipped."""
    try:
        recorded = json.loads((model.folder / "edgekd.json").read_text(encoding="utf-8")).get("max_length")
    except (OSError, ValueError, AttributeError):
        return []
    if recorded is not None and recorded != max_length:
        return [f"{model.name} was exported with max_length {recorded}; the benchmark used {max_length}"]
    return []


def thread_settings(settings: HarnessSettings, measured: Mapping[str, Measurements]) -> dict[str, Any]:
    """The thread budgets the numbers were taken with, as the report's environment records them."""
    return {
        "latency_threads": settings.threads,
        "accuracy_threads": next(
            (m.accuracy_pass_threads for m in measured.values() if m.accuracy_pass_threads), None
        ),
        "throughput_threads": next(
            (m.throughput_threads for m in measured.values() if m.throughput_threads), None
        ),
        "effective_threads": {name: m.ready.get("effective_threads") for name, m in measured.items()},
        "inter_op_threads": 1,
        "onnxruntime": {"execution_mode": "sequential", "allow_spinning": False},
        "worker_env": thread_env(settings.threads),
    }


# ----------------------------------------------------------------------------------------------------------
# Numbers


def map_predictions(
    labels_of_model: list[str], predictions: list[int], data_labels: list[str], variant: str
) -> np.ndarray:
    """A model's predicted ids (its own label order) as ids into the dataset's label list.

    Raises:
        InputError: When the model predicts a class the dataset does not have.
    """
    model_labels = [str(label) for label in labels_of_model]
    check_labels(model_labels, data_labels, variant)
    index = {label: i for i, label in enumerate(data_labels)}
    to_data = np.asarray([index[label] for label in model_labels], dtype=np.int64)
    return to_data[np.asarray(predictions, dtype=np.int64)]


def variant_records(
    models: Sequence[ModelSpec],
    measured: Mapping[str, Measurements],
    gold: list[int],
    labels: list[str],
    relative_to: Path | None,
    out_of_scope: int | None = None,
) -> list[dict[str, Any]]:
    """The report's variant list, in the given order, with the comparisons against the first one.

    With `out_of_scope` (the id of a "none of the others" class), each record also gets in-scope accuracy
    and out-of-scope recall.
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
        record["folder"] = _shown_path(model.folder, relative_to)
        if out_of_scope is not None:
            record.update(out_of_scope_scores(gold, predictions[model.name], out_of_scope))
        records.append(record)
    add_reference_comparisons(records, predictions, gold)
    return records


def variant_record(
    model: ModelSpec, result: Measurements, predicted: np.ndarray, gold: list[int], labels: list[str]
) -> dict[str, Any]:
    """One model's line of the report (the comparisons with the reference are added afterwards)."""
    onnx = model.format == "onnx"
    n_classes = len(labels)
    gold_arr = np.asarray(gold, dtype=np.int64)
    lo, hi = bootstrap_ci(result.model_ms, np.median, n_boot=N_BOOT, seed=0)
    size = folder_size(model.folder, onnx=onnx)
    n_texts = len(result.predictions)
    return {
        "name": model.name,
        "format": model.format,
        "accuracy": float((predicted == gold_arr).mean()),
        "macro_f1": macro_f1(gold, predicted.tolist(), n_classes),
        "per_class": dict(zip(labels, per_class_scores(gold, predicted.tolist(), n_classes), strict=True)),
        "size_bytes": size,
        "size_mb": size / 1e6,
        "params": param_count(model.folder, onnx=onnx),
        "latency_ms": {**percentiles(result.model_ms), "p50_ci95": [lo, hi]},
        "latency_box_ms": box_stats(result.model_ms),
        "latency_e2e_ms": percentiles(result.e2e_ms),
        "tokenize_ms": percentiles(result.tokenize_ms),
        "latency_by_length_ms": [
            {"tokens": length, **percentiles(values)}
            for length, values in sorted(result.by_length_ms.items())
        ],
        "throughput_texts_per_s": median_throughput(result.throughput_rounds),
        "throughput_threads": result.throughput_threads,
        "throughput_per_s": n_texts / result.accuracy_pass_s if result.accuracy_pass_s else None,
        "accuracy_pass_threads": result.accuracy_pass_threads,
        "peak_rss_mb": result.peak_rss_serving_mb,
        "peak_rss_accuracy_pass_mb": result.peak_rss_accuracy_pass_mb,
        "peak_rss_throughput_mb": result.peak_rss_throughput_mb,
        "rss_after_load_mb": result.ready.get("rss_mb"),
        "load_s": result.ready.get("load_s"),
        "threads": result.ready.get("threads"),
        "effective_threads": result.ready.get("effective_threads"),
        "max_positions": result.ready.get("max_positions"),
        "torch_imported": result.ready.get("torch_imported"),
        "raw": f"raw/{model.name}.json",
    }


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


def add_reference_comparisons(
    variants: list[dict[str, Any]], predictions: Mapping[str, np.ndarray], gold: list[int]
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


def build_report(
    title: str,
    env: dict[str, Any],
    variants: list[dict[str, Any]],
    settings: HarnessSettings,
    gates_spec: GatesSpec,
    n_texts: int,
    warnings: list[str],
    reference: str,
    candidate: str,
) -> dict[str, Any]:
    """report.json: the contract keys (recipe, edgekd_version, environment, variants, gates, passed) and more."""
    gates = evaluate_gates(variants, gates_spec, reference=reference, candidate=candidate)
    return {
        "recipe": title,
        "edgekd_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "benchmark": {
            "threads": settings.threads,
            "latency_samples": settings.latency_samples,
            "warmup": settings.warmup,
            "batch_size": settings.batch_size,
            "seed": settings.seed,
            "max_length": settings.max_length,
            "test_texts": n_texts,
            "interleaved_rounds": len(round_slices(settings.latency_samples, settings.round_size)),
            "round_size": settings.round_size,
            "seq_lengths": list(settings.seq_lengths),
            "seq_samples": settings.seq_samples,
            "throughput_batch_sizes": list(settings.throughput_batch_sizes),
            "latency_definition": "batch-1 model call, ms; tokenization timed apart (tokenize_ms, e2e)",
        },
        "reference": reference,
        "candidate": candidate,
        "variants": variants,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "warnings": warnings,
    }


def _shown_path(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------------------
# Command-line inputs (`edgekd benchmark`)


def models_from_folders(folders: Sequence[Path], names: Sequence[str] | None = None) -> list[ModelSpec]:
    """ModelSpecs for folders given on the command line, format detected, named by `names` or the folder.

    A folder called `model` (a pipeline stage's PyTorch output) is named after its parent instead.

    Raises:
        InputError: A folder is not a model, or `names` does not match the folders one to one.
    """
    if names is not None and len(names) != len(folders):
        raise InputError(f"--names gives {len(names)} name(s) for {len(folders)} folder(s)")
    specs = []
    for i, folder in enumerate(folders):
        fmt = detect_format(folder)
        default = folder.resolve().parent.name if folder.resolve().name == "model" else folder.resolve().name
        specs.append(ModelSpec(names[i] if names is not None else default, folder, fmt))
    check_names([s.name for s in specs])
    return specs


def parse_gates(assignments: Sequence[str]) -> GatesSpec:
    """`name=value` pairs as GatesSpec, e.g. ["max_accuracy_drop_pts=1", "min_speedup_p50=2"].

    Raises:
        InputError: Malformed pair, unknown gate (with the closest name) or an out-of-range value.
    """
    import difflib

    from pydantic import ValidationError

    limits: dict[str, str] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise InputError(f"--gate {text!r} is not name=value", hint="e.g. --gate max_accuracy_drop_pts=1")
        if name not in GatesSpec.model_fields:
            close = difflib.get_close_matches(name, list(GatesSpec.model_fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"gates: {', '.join(GatesSpec.model_fields)}"
            raise InputError(f"unknown gate {name!r}", hint=hint)
        limits[name] = value.strip()
    try:
        return GatesSpec.model_validate(limits)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"])
        raise InputError(f"--gate {field_name}: {first['msg']}") from None


def data_spec_for(
    folder: Path,
    max_length: int,
    labels: Sequence[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> DataSpec:
    """The DataSpec of a data folder given on the command line (no limits: the whole test split is used).

    Raises:
        InputError: When the folder is missing or a value is out of range.
    """
    from pydantic import ValidationError

    if not folder.is_dir():
        raise InputError(f"data folder not found: {folder}")
    try:
        return DataSpec(
            path=str(folder),
            max_length=max_length,
            labels=list(labels) if labels else None,
            text_column=text_column,
            label_column=label_column,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
