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

import errno
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from warnings import catch_warnings, simplefilter

import numpy as np

from edgekd._version import __version__
from edgekd.artifact import folder_size, onnx_model_path, param_count
from edgekd.bench.envinfo import cpu_snapshot, environment, load_average, other_processes_cores, usable_cores
from edgekd.bench.stats import (
    accuracy_diff_ci,
    bootstrap_ci,
    box_stats,
    macro_f1,
    per_class_scores,
    percentiles,
)
from edgekd.bench.worker import WorkerProcess, thread_env
from edgekd.errors import (
    DataError,
    InputError,
    ResourceError,
    RunLockedError,
    first_line,
    resource_error,
)
from edgekd.progress import TaskProgress
from edgekd.recipe.schema import SEED_LIMIT, DataSpec, GatesSpec
from edgekd.report.gates import evaluate_gates
from edgekd.report.markdown import write_report_md
from edgekd.stages.runner import acquire_or_refuse, write_json

N_BOOT = 1000
# Other processes using more than this share of the cores competed with the measurements.
BUSY_CORE_SHARE = 0.5
# How long to watch the machine before the workers start.
IDLE_CHECK_SECONDS = 1.0
# Texts used for the throughput measurement (cycled when the test split is smaller).
THROUGHPUT_TEXTS = 256
ACCURACY_CHUNK = 1024  # texts per request of the accuracy pass: its progress is shown per chunk
THROUGHPUT_ROUNDS = 2
# What a report folder holds; files of a previous report there are removed before a new one is written.
REPORT_FILES = ("report.json", "report.md", "report.html")
RAW_DIR = "raw"
LOCK_FILE = ".lock"
# Above this, a request count is a typo, and would take hours or the memory to draw the sample.
MAX_REQUESTS = 1_000_000
FOLDER_HINT = (
    "pass a model folder: an edgekd export/quantize folder or a Hugging Face folder with safetensors"
)


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
    student_budget: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    lock: bool = False,
) -> dict[str, Any]:
    """Measure every model, compare each with the first, judge the candidate and write the report files.

    Everything that can be checked is checked before the first measurement: settings, the report folder,
    every model folder (ONNX graphs are loaded once and must give one output per class name) and the labels.

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
        student_budget: For a pipeline run with `student.budget`, the distill stage's record of the shapes it
            timed; the report sets its predicted speed-up beside the candidate's measured one.
        log: Where progress lines go.
        lock: Hold a lock on `out_dir` (its .lock file) from before the first measurement to the last file
            written, so that two benchmarks cannot mix their files in one folder (`edgekd benchmark`; a
            pipeline run holds the run folder's lock instead).

    Returns:
        The report (the content of report.json).

    Raises:
        InputError, DataError: A folder is not a model, the labels do not match, or a setting is impossible.
        RunLockedError: Another benchmark is writing into `out_dir` (with `lock`).
        ResourceError: `out_dir` cannot be written.
        StageError: A worker failed.
    """
    check_settings(settings, len(models))
    check_names([m.name for m in models])
    candidate = candidate or models[-1].name
    if candidate not in {m.name for m in models}:
        raise InputError(
            f"the candidate {candidate!r} is not one of the measured models",
            hint=f"name one of: {', '.join(m.name for m in models)}",
        )
    check_output_dir(out_dir)
    labels = {model.name: check_model_folder(model.folder, model.format) for model in models}
    from edgekd.data import load_splits

    # Measuring finished models needs no train split; the reference model then names the classes.
    splits = load_splits(data, settings.seed, model_labels=labels[models[0].name])
    texts, gold = splits.texts("test"), splits.label_ids("test")
    oos = check_out_of_scope_label(settings.out_of_scope_label, splits.labels)
    for model in models:
        check_labels(labels[model.name], splits.labels, model.name)
    latency_idx = latency_sample_indices(len(texts), settings.latency_samples, settings.seed)
    with report_folder_lock(out_dir) if lock else nullcontext():
        return _measure_and_report(
            models,
            out_dir,
            settings,
            gates,
            title=title,
            candidate=candidate,
            texts=texts,
            gold=gold,
            labels=splits.labels,
            latency_texts=[texts[i] for i in latency_idx],
            oos=oos,
            training_logs=training_logs or {},
            relative_to=relative_to,
            stage_times=stage_times,
            student_budget=student_budget,
            log=log,
        )


def _measure_and_report(
    models: Sequence[ModelSpec],
    out_dir: Path,
    settings: HarnessSettings,
    gates: GatesSpec,
    *,
    title: str,
    candidate: str,
    texts: list[str],
    gold: list[int],
    labels: list[str],
    latency_texts: list[str],
    oos: int | None,
    training_logs: Mapping[str, Path],
    relative_to: Path | None,
    stage_times: Sequence[Mapping[str, Any]],
    student_budget: Mapping[str, Any] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The measuring and writing half of `benchmark_folders`, on inputs that were checked."""
    # Taken before the workers start, so they show what else the machine was doing.
    env = environment()
    env["other_processes_cores"] = {"at_start": other_processes_cores_now()}
    warnings = setup_warnings(env, settings.threads, len(texts), settings.latency_samples)
    warnings += [w for m in models if m.format == "onnx" for w in max_length_warnings(m, settings.max_length)]

    start = cpu_snapshot()
    measured = measure_models(models, texts, latency_texts, settings, log)
    env["other_processes_cores"]["during"] = other_processes_cores(start, cpu_snapshot())
    env["load_average_after"] = load_average()
    env["threads"] = thread_settings(settings, measured)
    warnings += busy_after_warnings(env)

    variants = variant_records(models, measured, gold, labels, relative_to, oos)
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
    if student_budget:
        measured_speedup = next(v["speedup_p50"] for v in variants if v["name"] == candidate)
        report["student_budget"] = {**student_budget, "measured_speedup_p50": measured_speedup}
    write_report_files(report, measured, out_dir, training_logs)
    for warning in warnings:
        log(f"  warning: {warning}")
    return report


def write_report_files(
    report: dict[str, Any],
    measured: Mapping[str, Measurements],
    out_dir: Path,
    training_logs: Mapping[str, Path],
) -> None:
    """report.json, report.md, report.html and raw/<name>.json (per-request latencies and predictions).

    The files of a previous report in `out_dir` are removed first, so that raw/ holds only this report's
    models; report.json is written last, so a folder with a report.json holds a whole report.

    Raises:
        ResourceError: The disk is full or the folder cannot be written.
        InputError: Another failure to write in `out_dir`.
    """
    from edgekd.report.html import read_training_logs, write_report_html

    with writing_report(out_dir):
        clear_previous_report(out_dir)
        raw_dir = out_dir / RAW_DIR
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name, result in measured.items():
            write_json(raw_dir / f"{name}.json", raw_record(result))
        write_report_md(report, out_dir / "report.md")
        write_report_html(report, out_dir / "report.html", read_training_logs(training_logs))
        write_json(out_dir / "report.json", report)


def clear_previous_report(out_dir: Path) -> None:
    """Remove the files an earlier report left in `out_dir` (only files a report writes; nothing else)."""
    for name in REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    raw_dir = out_dir / RAW_DIR
    if raw_dir.is_dir():
        for path in raw_dir.glob("*.json"):
            path.unlink()


@contextmanager
def writing_report(out_dir: Path, doing: str = "writing the benchmark report") -> Iterator[None]:
    """An OSError while writing in `out_dir` as one line: ResourceError (disk full, not writable), else
    InputError about the folder."""
    try:
        yield
    except OSError as exc:
        problem = resource_error(exc, out_dir, doing) or InputError(
            f"{doing} in {out_dir} failed: {exc.strerror or exc}",
            hint="choose another report folder with --output-dir",
        )
        raise problem from None


@contextmanager
def report_folder_lock(out_dir: Path) -> Iterator[None]:
    """Create `out_dir` and hold its lock: one benchmark per report folder, refused before it measures.

    Raises:
        RunLockedError: Another process holds the lock.
    """
    busy = RunLockedError(
        f"another edgekd benchmark is writing its report into {out_dir}",
        hint="wait for it to finish, or pass another folder with --output-dir",
    )
    with writing_report(out_dir, "creating the report folder and its lock"):
        out_dir.mkdir(parents=True, exist_ok=True)
        folder_lock = acquire_or_refuse(out_dir / LOCK_FILE, busy)
    try:
        yield
    finally:
        folder_lock.release()


def check_output_dir(out_dir: Path) -> None:
    """Refuse a report folder that cannot take the report, before anything is measured.

    Raises:
        InputError: `out_dir` (or a folder above it) is a file, or a name the report writes is taken by
            something of the other kind (a folder called report.json, a file called raw).
        ResourceError: The folder (or the nearest existing folder above it) cannot be written.
    """
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        where = "is a file" if existing == out_dir else f"is inside {existing}, which is a file"
        raise InputError(
            f"the report folder {out_dir} {where}", hint="pass a folder (new or existing) with --output-dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResourceError(
            f"{os.strerror(errno.EACCES).lower()}: the report folder {out_dir} cannot be written",
            hint=f"check the permissions of {existing}, or pass another folder with --output-dir",
        )
    if existing != out_dir:
        return
    taken = [out_dir / name for name in REPORT_FILES if (out_dir / name).is_dir()]
    if (out_dir / RAW_DIR).exists() and not (out_dir / RAW_DIR).is_dir():
        taken.append(out_dir / RAW_DIR)
    if taken:
        raise InputError(
            f"the report folder {out_dir} holds {taken[0].name} of the wrong kind "
            "(a folder where the report writes a file, or a file where it writes a folder)",
            hint=f"remove {taken[0]}, or pass another folder with --output-dir",
        )


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
    progress = TaskProgress("benchmark latency", len(latency_texts) * len(names), "requests")
    for round_index, chunk in enumerate(round_slices(len(latency_texts), round_size)):
        for name in round_order(names, round_index):
            answer = workers[name].request({"cmd": "latency", "texts": latency_texts[chunk]})
            result = measured[name]
            result.tokenize_ms += answer["tokenize_ms"]
            result.model_ms += answer["model_ms"]
            result.e2e_ms += answer["e2e_ms"]
            result.round_of_request += [round_index] * len(answer["model_ms"])
        progress.advance_to(chunk.stop * len(names))
    progress.close()
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
        result = measured[name]
        result.predictions, result.accuracy_pass_s, result.peak_rss_accuracy_pass_mb = [], 0.0, 0.0
        # In chunks, so that a pass of many minutes (a teacher on thousands of texts) shows its progress.
        progress = TaskProgress(f"benchmark accuracy ({name})", len(texts), "texts")
        for start in range(0, len(texts), ACCURACY_CHUNK):
            chunk = texts[start : start + ACCURACY_CHUNK]
            command = {"cmd": "predict", "texts": chunk, "batch_size": batch_size, "threads": threads}
            answer = worker.request(command)
            result.predictions += [int(p) for p in answer["predictions"]]
            result.accuracy_pass_s += float(answer["seconds"])
            result.accuracy_pass_threads = int(answer.get("threads", threads))
            result.peak_rss_accuracy_pass_mb = max(
                result.peak_rss_accuracy_pass_mb, float(answer["peak_rss_mb"])
            )
            progress.advance_to(start + len(chunk))
        progress.close()


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
        InputError: No models, too many threads, no latency samples, a non-positive size, or a seed numpy
            cannot take.
    """
    if n_models < 1:
        raise InputError("no model folders to benchmark", hint="pass at least one model folder")
    check_threads(settings.threads)
    if settings.throughput_threads is not None:
        check_threads(settings.throughput_threads)
    check_count("the number of latency samples", settings.latency_samples, 1, "--samples")
    check_count("the number of warm-up requests", settings.warmup, 0, "--warmup")
    check_count("batch_size", settings.batch_size, 1, "--batch-size")
    check_count("max_length", settings.max_length, 1, "--max-length")
    check_count("round_size", settings.round_size, 1, "round_size")
    check_count("seq_samples", settings.seq_samples, 1, "seq_samples")
    if not settings.seq_lengths or min(settings.seq_lengths) < 1:
        raise InputError("sequence lengths must be at least 1 token", hint="use lengths such as 16, 64, 128")
    if not settings.throughput_batch_sizes or min(settings.throughput_batch_sizes) < 1:
        raise InputError("throughput batch sizes must be at least 1", hint="use batch sizes such as 8, 32")
    if not 0 <= settings.seed < SEED_LIMIT:
        raise InputError(
            f"the seed must be from 0 to {SEED_LIMIT - 1}, got {settings.seed}", hint="use e.g. --seed 42"
        )


def check_count(what: str, value: int, minimum: int, option: str) -> None:
    """Refuse a count below `minimum`.

    Raises:
        InputError: naming `what` and the option that sets it.
    """
    if value < minimum:
        raise InputError(
            f"{what} must be at least {minimum}, got {value}", hint=f"set {option} to {minimum} or more"
        )


def check_request_counts(settings: HarnessSettings) -> None:
    """Refuse request counts beyond MAX_REQUESTS: on the command line that is a typo (an extra digit or
    two) that would run for days or run out of memory drawing the sample.

    Raises:
        InputError: naming the option.
    """
    for what, value, option in (
        ("the number of latency samples", settings.latency_samples, "--samples"),
        ("the number of warm-up requests", settings.warmup, "--warmup"),
    ):
        if value > MAX_REQUESTS:
            raise InputError(
                f"{what} must be at most {MAX_REQUESTS:,}, got {value}",
                hint=f"set {option} to a smaller value (the default is a good start)",
            )


def check_threads(threads: int) -> None:
    """Refuse a thread budget the machine cannot give: oversubscribed numbers describe no real deployment.

    Raises:
        InputError: When `threads` is below 1 or exceeds the cores this process may use.
    """
    known = [n for n in (os.cpu_count(), usable_cores()) if n]
    available = min(known) if known else 1
    if threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}", hint="use e.g. --threads 1")
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
        # A lone surrogate (an invalid UTF-8 byte in an argument) could not be written into report.md.
        if not name or "/" in name or "\\" in name or name in (".", "..") or not name.isprintable():
            raise InputError(
                f"invalid model name {name!r}", hint="use letters, digits, '-', '_' or '.' in --names"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"model names must be unique, repeated: {', '.join(repeated)}",
            hint="pass --names with one distinct name per folder",
        )


def latency_sample_indices(n_texts: int, n_samples: int, seed: int) -> list[int]:
    """Which test texts the batch-1 requests use: a seeded sample, without replacement when there are enough.

    Raises:
        InputError: When there are no samples to draw or nothing to draw them from.
    """
    if n_samples < 1:
        raise InputError("the number of latency samples must be at least 1", hint="use e.g. --samples 200")
    if n_texts < 1:
        raise InputError(
            "the test split is empty: nothing to benchmark",
            hint="put test texts in the data folder's test file",
        )
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_texts, size=n_samples, replace=n_samples > n_texts)]


def detect_format(folder: Path) -> str:
    """ "onnx" for a folder with an .onnx graph, "pytorch" for a Hugging Face folder with safetensors weights.

    Raises:
        InputError: When the folder is neither.
    """
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}", hint=FOLDER_HINT)
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
        "nor an ONNX one (*.onnx + tokenizer.json)",
        hint=FOLDER_HINT,
    )


def check_model_folder(folder: Path, fmt: str) -> list[str]:
    """Fail before any worker starts when a model folder cannot be measured; its class names in id order.

    An ONNX folder is loaded as `edgekd predict` loads it (JSON files, labels, tokenizer, graph inputs and
    outputs) and runs one text, so a damaged file, a graph that is not a text classifier, or a graph with
    more or fewer outputs than class names is refused here rather than scored. A PyTorch folder's JSON
    files, tokenizer.json and safetensors headers are read (the model itself is loaded by its worker).

    Raises:
        InputError: A needed file is missing or unreadable, or the labels do not fit the model.
    """
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}", hint=FOLDER_HINT)
    labels = check_onnx_folder(folder) if fmt == "onnx" else check_pytorch_folder(folder)
    # The report needs these after measuring; a folder they fail on is refused now, not then.
    folder_size(folder, onnx=fmt == "onnx")
    param_count(folder, onnx=fmt == "onnx")
    return labels


def check_onnx_folder(folder: Path) -> list[str]:
    """The runtime's own checks on an ONNX folder, plus one text through the graph; returns its labels."""
    from edgekd.runtime import Classifier

    graph = onnx_model_path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise InputError(f"the ONNX folder {folder} has no tokenizer.json", hint=FOLDER_HINT)
    classifier = Classifier.load(folder, threads=1, model_file=graph.name)
    # A class dimension the graph leaves symbolic is only known from a real output.
    with catch_warnings():
        simplefilter("ignore")  # a truncation of this probe text is nothing the user should see
        classifier.predict_logits(["a short text to check the model's outputs"])
    return classifier.labels


def check_pytorch_folder(folder: Path) -> list[str]:
    """config.json and the tokenizer files parse, the weights' headers read; returns config.json's labels."""
    from edgekd.artifact import read_json_object, read_labels
    from edgekd.runtime import load_tokenizer

    if not (folder / "config.json").is_file():
        raise InputError(f"the model folder {folder} has no config.json", hint=FOLDER_HINT)
    if not any(
        (folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        raise InputError(
            f"the model folder {folder} has no tokenizer files",
            hint="save the tokenizer next to the model (tokenizer.save_pretrained(folder))",
        )
    config = read_json_object(folder / "config.json")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        read_json_object(folder / name)
    if (folder / "tokenizer.json").is_file():
        load_tokenizer(folder, max_length=8, config=config)
    check_safetensors_headers(folder)
    # transformers labels the outputs from config.json's id2label, whatever else the folder holds.
    return read_labels(folder, None, config)


def check_safetensors_headers(folder: Path) -> None:
    """Each *.safetensors file opens (a truncated or foreign file fails here, not in the worker).

    Raises:
        InputError: naming the file.
    """
    try:
        from safetensors import safe_open
    except ImportError:  # the worker will say which extra to install
        return
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types per failure
            raise InputError(
                f"cannot read the weights {path}: {first_line(exc)}",
                hint="the file is damaged: copy or save the model again",
            ) from None


def check_labels(model_labels: list[str], data_labels: list[str], variant: str) -> None:
    """Every class a model can predict must be a class of the dataset, or its accuracy means nothing.

    Raises:
        InputError: When the model names no classes, or has classes the dataset does not.
    """
    if not model_labels:
        raise InputError(
            f"the {variant} model names no classes (no edgekd.json labels, no config.json id2label)",
            hint="edgekd.json 'labels' or config.json 'id2label' must list the class names",
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
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
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
        raise InputError(
            f"--names gives {len(names)} name(s) for {len(folders)} folder(s)",
            hint="pass one name per model folder, comma-separated, in the same order",
        )
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
        raise InputError(
            f"--gate {field_name}: {first['msg']}", hint="e.g. --gate max_accuracy_drop_pts=1"
        ) from None


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
        raise InputError(
            f"data folder not found: {folder}",
            hint="pass --data a folder with a test file (test.jsonl, test.csv or test.parquet)",
        )
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
        option = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "the data options"
        raise InputError(
            f"{option}: {first['msg']}", hint=f"check the value of {option} (see edgekd benchmark --help)"
        ) from None
