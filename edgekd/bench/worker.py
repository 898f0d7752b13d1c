"""Benchmark one model in a process of its own: accuracy predictions, batch-1 latency and peak memory.

    python -m edgekd.bench.worker --model DIR --format pytorch|onnx --texts FILE.json \
        --threads N --warmup W --out RESULT.json [--batch-size B] [--max-length L]

FILE.json is {"texts": [...every test text...], "latency_texts": [...batch-1 request texts...]}.

One process per model, because what a process has loaded cannot be unloaded: a PyTorch model measured after
another would share its allocator, its thread pools and its peak memory, and an ONNX model measured in a
process that imported torch would look as heavy as torch. The thread budget is fixed through the environment
before any numeric library is imported, since OpenMP reads it once at start-up.

Latency is measured per request with `time.perf_counter_ns`: tokenization and the model call are timed
separately (end-to-end = both), after `--warmup` untimed requests and with the garbage collector paused, as
`timeit` does, so collector pauses triggered by the harness's own bookkeeping are not charged to the model.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

FORMATS = ("pytorch", "onnx")
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
DEFAULT_MAX_LENGTH = 128
STDERR_TAIL_LINES = 15


class Backend(Protocol):
    """A loaded model with its tokenizer; `encode` output is whatever `forward` takes."""

    labels: list[str]

    def encode(self, texts: Sequence[str]) -> Any: ...

    def forward(self, encoded: Any) -> Any: ...

    def logits(self, encoded: Any) -> Any: ...

    def session(self) -> contextlib.AbstractContextManager[Any]: ...

    def effective_threads(self) -> int: ...


# ----------------------------------------------------------------------------------------------------------
# Backends (imports inside: the process imports only the library of the format it measures)


class TorchBackend:
    """transformers AutoModelForSequenceClassification (safetensors only) with its AutoTokenizer."""

    def __init__(self, folder: Path, threads: int, max_length: int) -> None:
        import torch

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set when torch was initialised by someone else
            torch.set_num_interop_threads(1)
        import transformers

        transformers.logging.set_verbosity_error()
        self._torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), use_safetensors=True
        ).eval()
        self.max_length = max_length
        id2label = {int(k): v for k, v in (self.model.config.id2label or {}).items()}
        self.labels = [str(id2label[i]) for i in sorted(id2label)]

    def encode(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def forward(self, encoded: Any) -> Any:
        return self.model(**encoded).logits

    def logits(self, encoded: Any) -> Any:
        return self.forward(encoded).float().numpy()

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return self._torch.inference_mode()

    def effective_threads(self) -> int:
        return int(self._torch.get_num_threads())


class OnnxBackend:
    """An onnxruntime CPU session fed by the `tokenizers` library directly: what a lean deployment runs."""

    INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, folder: Path, threads: int, max_length: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from edgekd.size import onnx_model_path

        self._np = np
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the cores between requests and inflate the numbers of whatever runs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.ort_session = ort.InferenceSession(
            str(onnx_model_path(folder)), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.feeds = self._input_types()
        outputs = [o.name for o in self.ort_session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        pad_token = _pad_token(folder)
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
        self.labels = _onnx_labels(folder)

    def _input_types(self) -> dict[str, Any]:
        feeds = {}
        for spec in self.ort_session.get_inputs():
            if spec.name not in self.INPUT_NAMES:
                raise ValueError(f"the ONNX graph takes an input this worker cannot feed: {spec.name}")
            feeds[spec.name] = self._np.int32 if spec.type == "tensor(int32)" else self._np.int64
        return feeds

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        np = self._np
        encodings = (
            [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(texts)
        )
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.asarray(columns[name], dtype=dtype) for name, dtype in self.feeds.items()}

    def forward(self, encoded: dict[str, Any]) -> Any:
        return self.ort_session.run([self.output_name], encoded)[0]

    def logits(self, encoded: dict[str, Any]) -> Any:
        return self.forward(encoded)

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def effective_threads(self) -> int:
        return self.threads


def _pad_token(folder: Path) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return "[PAD]"


def _onnx_labels(folder: Path) -> list[str]:
    try:
        labels = json.loads((folder / "edgekd.json").read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError):
        labels = None
    if labels:
        return [str(label) for label in labels]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [str(id2label[i]) for i in sorted(id2label)]


def load_backend(folder: Path, fmt: str, threads: int, max_length: int) -> Backend:
    """Load the model in `folder` with the library its format needs.

    Raises:
        ValueError: Unknown format.
    """
    if fmt == "pytorch":
        return TorchBackend(folder, threads, max_length)
    if fmt == "onnx":
        return OnnxBackend(folder, threads, max_length)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


# ----------------------------------------------------------------------------------------------------------
# Measurements


def measure_latency(backend: Backend, texts: Sequence[str], warmup: int) -> dict[str, list[float]]:
    """Batch-1 requests over `texts` after `warmup` untimed ones.

    Returns:
        Per request, in milliseconds: {"tokenize_ms", "model_ms", "e2e_ms"}.
    """
    for i in range(warmup):
        backend.forward(backend.encode([texts[i % len(texts)]]))
    tokenize_ns: list[int] = []
    model_ns: list[int] = []
    with _collector_paused():
        for text in texts:
            t0 = time.perf_counter_ns()
            encoded = backend.encode([text])
            t1 = time.perf_counter_ns()
            backend.forward(encoded)
            t2 = time.perf_counter_ns()
            tokenize_ns.append(t1 - t0)
            model_ns.append(t2 - t1)
    return {
        "tokenize_ms": [ns / 1e6 for ns in tokenize_ns],
        "model_ms": [ns / 1e6 for ns in model_ns],
        "e2e_ms": [(a + b) / 1e6 for a, b in zip(tokenize_ns, model_ns, strict=True)],
    }


def predict_all(backend: Backend, texts: Sequence[str], batch_size: int) -> list[int]:
    """Predicted class ids of every text, in the input order.

    Texts are batched by length so that batches carry little padding; the order is restored afterwards.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    predictions = [0] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = backend.logits(backend.encode([texts[i] for i in chunk]))
        for i, label_id in zip(chunk, logits.argmax(axis=-1).tolist(), strict=True):
            predictions[i] = int(label_id)
    return predictions


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB = 1e6 bytes).

    On Linux this is VmHWM, the high-water mark of the process's own address space. `getrusage().ru_maxrss`
    is not used there: the kernel carries it across exec, so a worker started from a parent that holds torch
    would report the parent's peak (subprocess starts children with vfork, which shares the parent's memory
    until exec).
    """
    high_water = _proc_status_kb("VmHWM")
    if high_water is not None:
        return high_water * 1024 / 1e6
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, the other Unixes kilobytes.
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e6


def current_rss_mb() -> float | None:
    """This process's resident memory now (MB = 1e6 bytes), where the platform tells."""
    resident = _proc_status_kb("VmRSS")
    if resident is not None:
        return resident * 1024 / 1e6
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.Process().memory_info().rss) / 1e6


def _proc_status_kb(field: str) -> int | None:
    try:
        lines = Path("/proc/self/status").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field and value.split():
            return int(value.split()[0])
    return None


def benchmark(
    folder: Path,
    fmt: str,
    texts: Sequence[str],
    latency_texts: Sequence[str],
    *,
    threads: int,
    warmup: int,
    batch_size: int,
    max_length: int,
) -> dict[str, Any]:
    """Load a model, time batch-1 requests, then predict every text.

    Latency is measured first, in a process that has done nothing but load the model, so the reported serving
    memory (`peak_rss_mb`) is that of a batch-1 server; the batched accuracy pass comes after and is reported
    apart (`peak_rss_accuracy_pass_mb`).

    Returns:
        JSON-ready dict with labels, predictions, per-request latencies (ms), memory and timings.
    """
    t0 = time.perf_counter()
    backend = load_backend(folder, fmt, threads, max_length)
    load_s = time.perf_counter() - t0
    rss_after_load = current_rss_mb()
    with backend.session():
        latency = measure_latency(backend, latency_texts, warmup) if latency_texts else {}
        serving_peak = peak_rss_mb()
        t1 = time.perf_counter()
        predictions = predict_all(backend, texts, batch_size)
        accuracy_pass_s = time.perf_counter() - t1
    return {
        "model": str(folder),
        "format": fmt,
        "threads": threads,
        "effective_threads": backend.effective_threads(),
        "warmup": warmup,
        "batch_size": batch_size,
        "max_length": max_length,
        "labels": backend.labels,
        "predictions": predictions,
        **latency,
        "load_s": load_s,
        "accuracy_pass_s": accuracy_pass_s,
        "throughput_per_s": len(texts) / accuracy_pass_s if accuracy_pass_s > 0 else None,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": serving_peak,
        "peak_rss_accuracy_pass_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }


# ----------------------------------------------------------------------------------------------------------
# Process boundary


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps every native thread pool at `threads` (tokenizers' own pool is switched off)."""
    env = {name: str(threads) for name in THREAD_ENV_VARS}
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def read_texts(path: Path) -> tuple[list[str], list[str]]:
    """The accuracy texts and the latency request texts from a worker input file.

    Raises:
        ValueError: When the file is not {"texts": [...], "latency_texts": [...]} with strings.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        data = {"texts": data, "latency_texts": data}
    texts, latency = data.get("texts"), data.get("latency_texts", [])
    for name, value in (("texts", texts), ("latency_texts", latency)):
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ValueError(f"{path}: '{name}' must be a list of strings")
    return texts, latency


def default_max_length(folder: Path) -> int:
    """The max_length the export recorded in edgekd.json, else the recipe default."""
    try:
        return int(json.loads((folder / "edgekd.json").read_text(encoding="utf-8"))["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_LENGTH


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edgekd.bench.worker", description="Benchmark one model in a process of its own."
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument(
        "--texts", required=True, type=Path, help='JSON {"texts": [...], "latency_texts": [...]}'
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the accuracy pass")
    parser.add_argument(
        "--max-length", type=int, default=None, help="truncation (default: edgekd.json, else 128)"
    )
    parser.add_argument("--out", required=True, type=Path, help="result JSON")
    args = parser.parse_args(argv)
    for name in ("threads", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup cannot be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point; returns the process exit code."""
    args = parse_args(argv)
    # Before numpy/torch/onnxruntime are imported: OpenMP and MKL read these once, at load.
    os.environ.update(thread_env(args.threads))
    texts, latency_texts = read_texts(args.texts)
    result = benchmark(
        args.model,
        args.fmt,
        texts,
        latency_texts,
        threads=args.threads,
        warmup=args.warmup,
        batch_size=args.batch_size,
        max_length=args.max_length or default_max_length(args.model),
    )
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    return 0


def run_worker(
    model_dir: Path,
    fmt: str,
    texts_file: Path,
    out_file: Path,
    *,
    threads: int,
    warmup: int,
    batch_size: int,
    max_length: int,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run the worker for one model in a fresh Python process and return its result.

    Args:
        model_dir: The model folder.
        fmt: "pytorch" or "onnx".
        texts_file: Worker input file (see the module docstring).
        out_file: Where the worker writes its result JSON.
        threads: Intra-op threads for the model (and the cap for every native pool).
        warmup: Untimed requests before the timed ones.
        batch_size: Batch size of the accuracy pass.
        max_length: Truncation length in tokens.
        timeout: Seconds before the worker is killed (None: no limit).

    Raises:
        StageError: The worker failed or timed out; the message ends with its last stderr lines.
    """
    from edgekd.errors import StageError

    command = [
        sys.executable,
        "-m",
        "edgekd.bench.worker",
        *("--model", str(model_dir), "--format", fmt, "--texts", str(texts_file), "--out", str(out_file)),
        *("--threads", str(threads), "--warmup", str(warmup)),
        *("--batch-size", str(batch_size), "--max-length", str(max_length)),
    ]
    try:
        done = subprocess.run(
            command, env=worker_env(threads), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise StageError(f"the benchmark worker for {model_dir} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
        raise StageError(f"the benchmark worker for {model_dir} failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(out_file.read_text(encoding="utf-8"))
    return result


def worker_env(threads: int) -> dict[str, str]:
    """The parent's environment, offline, with the thread caps, and with this edgekd first on the path."""
    env = dict(os.environ)
    env.update(thread_env(threads))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The worker must run the same edgekd as the parent, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


if __name__ == "__main__":
    sys.exit(main())
