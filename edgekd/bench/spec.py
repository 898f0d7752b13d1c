"""What a benchmark is asked to measure (`MeasuredModel`, `HarnessSettings`) and what one model's measurement
gives back (`Measurements`); the `Worker` a model is measured in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class MeasuredModel:
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
