"""The measurements: latency, per-length latency, accuracy and throughput, in rounds that interleave the models
(each round visits them in a rotated order, so drift on a shared machine falls on all of them alike).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

import numpy as np

from edgekd.bench.envinfo import usable_cores
from edgekd.bench.spec import HarnessSettings, MeasuredModel, Measurements, Worker
from edgekd.bench.worker import WorkerProcess
from edgekd.progress import TaskProgress

# Texts used for the throughput measurement (cycled when the test split is smaller).
THROUGHPUT_TEXTS = 256


ACCURACY_CHUNK = 1024  # texts per request of the accuracy pass: its progress is shown per chunk


THROUGHPUT_ROUNDS = 2


WorkerFactory = Callable[[MeasuredModel, int, int], Worker]


def start_worker(model: MeasuredModel, threads: int, max_length: int) -> Worker:
    """A real worker process for `model`."""
    return WorkerProcess(model.name, model.folder, model.format, threads, max_length)


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
    models: Sequence[MeasuredModel],
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
