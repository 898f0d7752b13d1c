"""A persistent benchmark worker: one model per process, driven by JSON-line commands on stdin.

    python -m edgekd.bench.worker --model DIR --format pytorch|onnx --threads N [--max-length L]

The worker loads the model, answers with one `ready` line, then reads one JSON command per line on stdin and
answers each with one JSON line on stdout (`{"ok": true, ...}` or `{"ok": false, "error": "..."}`):

=============  ===========================================================  ==================================
command        fields                                                       answer
=============  ===========================================================  ==================================
status         -                                                            (memory fields only)
warmup         texts                                                        n
latency        texts (batch-1 requests, timed one by one)                   tokenize_ms, model_ms, e2e_ms
fixed_length   text, length, repeats, warmup (token-exact inputs)           tokens, model_ms
predict        texts, batch_size, threads (optional)                        predictions, seconds, threads
throughput     texts, batch_sizes, threads                                  texts_per_s {batch: n/s}, threads
exit           -                                                            (the process ends)
=============  ===========================================================  ==================================

Every answer also carries the process's `rss_mb` and `peak_rss_mb`. The parent (`WorkerProcess`) keeps one
worker per variant alive and hands each of them the same chunk of requests in turn, so that slow drifts of
the machine (another job, thermal throttling) hit every variant alike instead of whichever ran last.

One process per model, because what a process has loaded cannot be unloaded: a PyTorch model measured after
another would share its allocator, its thread pools and its peak memory, and an ONNX model measured in a
process that imported torch would look as heavy as torch. The thread budget is fixed through the environment
before any numeric library is imported, since OpenMP reads it once at start-up. An ONNX model is served by
`edgekd.runtime.Classifier`, the code users deploy; a PyTorch one by transformers.

Latency is measured per request with `time.perf_counter_ns`: tokenization and the model call are timed
separately (end-to-end = both; a chunk is tokenized first, then its model calls run back to back on the
pre-tokenized inputs), with the garbage collector paused, as `timeit` does, so collector pauses
triggered by the harness's own bookkeeping are not charged to the model.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

# Standard library only at module level (edgekd.artifact imports nothing else): the thread caps must be in the
# environment before numpy, onnxruntime or torch is first imported.
from edgekd.artifact import (
    CONFIG_FILE,
    MANIFEST_FILE,
    is_json_int,
    read_json_object,
    read_max_length,
    thread_env,
    usable_positions,
)

FORMATS = ("pytorch", "onnx")
# A PyTorch folder's truncation length when neither --max-length nor edgekd.json gives one: the recipe default
# data.max_length, which edgekd distils and exports at. Not the runtime's rule for ONNX folders: that takes the
# tokenizer's model_max_length, for a checkpoint the architecture's limit (512 for BERT), not a length it was
# trained at. The harness always passes --max-length; this only matters for a worker started by hand.
PYTORCH_DEFAULT_MAX_LENGTH = 128
STDERR_TAIL_LINES = 15


class Backend(Protocol):
    """A loaded model with its tokenizer; `encode` output is whatever `forward` takes."""

    labels: list[str]
    max_positions: int | None

    def encode(self, texts: Sequence[str]) -> Any: ...

    def encode_fixed(self, text: str, length: int) -> Any: ...

    def forward(self, encoded: Any) -> Any: ...

    def logits(self, encoded: Any) -> Any: ...

    def session(self) -> contextlib.AbstractContextManager[Any]: ...

    def set_threads(self, threads: int) -> None: ...

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
        self.max_positions = usable_positions(self.model.config.to_dict())

    def encode(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def encode_fixed(self, text: str, length: int) -> Any:
        return self.tokenizer(
            [text], padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )

    def forward(self, encoded: Any) -> Any:
        return self.model(**encoded).logits

    def logits(self, encoded: Any) -> Any:
        return self.forward(encoded).float().numpy()

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return self._torch.inference_mode()

    def set_threads(self, threads: int) -> None:
        self._torch.set_num_threads(threads)

    def effective_threads(self) -> int:
        return int(self._torch.get_num_threads())


class OnnxBackend:
    """`edgekd.runtime.Classifier`, the code a deployment runs, through its public API only: the session options,
    tokenization and feeds measured are the classifier's own (what `predict` adds on top is the softmax)."""

    def __init__(self, folder: Path, threads: int, max_length: int) -> None:
        from edgekd.artifact import onnx_model_path
        from edgekd.runtime import Classifier

        self.classifier = Classifier.load(
            folder, threads=threads, model_file=onnx_model_path(folder).name, max_length=max_length
        )
        self.labels = self.classifier.labels
        self.max_positions = usable_positions(read_json_object(folder / CONFIG_FILE))

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        return self.classifier.encode(texts)

    def encode_fixed(self, text: str, length: int) -> dict[str, Any]:
        return self.classifier.encode_fixed_length(text, length)

    def forward(self, encoded: dict[str, Any]) -> Any:
        return self.classifier.forward(encoded)

    def logits(self, encoded: dict[str, Any]) -> Any:
        return self.forward(encoded)

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def set_threads(self, threads: int) -> None:
        # An ONNX Runtime session's thread pool is fixed at creation: a new session replaces the old one.
        if threads != self.classifier.threads:
            self.classifier = self.classifier.with_threads(threads)

    def effective_threads(self) -> int:
        return int(self.classifier.threads or 0)


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


def run_untimed(backend: Backend, texts: Sequence[str]) -> None:
    """Batch-1 requests whose times are thrown away: they fill caches and let allocators settle."""
    for text in texts:
        backend.forward(backend.encode([text]))


def measure_latency(backend: Backend, texts: Sequence[str]) -> dict[str, list[float]]:
    """One batch-1 request per text, tokenizer and model call timed apart (e2e is their sum).

    Returns:
        Per request, in milliseconds: {"tokenize_ms", "model_ms", "e2e_ms"}.
    """
    tokenize_ns: list[int] = []
    model_ns: list[int] = []
    encoded_inputs = []
    with _collector_paused():
        # Tokenize the whole chunk first, then run the model calls back to back: a tokenizer run just before
        # each call would evict the model's weights from the CPU caches and charge that to the model.
        for text in texts:
            t0 = time.perf_counter_ns()
            encoded_inputs.append(backend.encode([text]))
            tokenize_ns.append(time.perf_counter_ns() - t0)
        for encoded in encoded_inputs:
            t0 = time.perf_counter_ns()
            backend.forward(encoded)
            model_ns.append(time.perf_counter_ns() - t0)
    return {
        "tokenize_ms": [ns / 1e6 for ns in tokenize_ns],
        "model_ms": [ns / 1e6 for ns in model_ns],
        "e2e_ms": [(a + b) / 1e6 for a, b in zip(tokenize_ns, model_ns, strict=True)],
    }


def measure_fixed_length(
    backend: Backend, text: str, length: int, repeats: int, warmup: int
) -> dict[str, Any]:
    """Batch-1 model calls on one input of exactly `length` tokens (tokenized once, outside the timing).

    Returns:
        {"tokens": the input's real length, "model_ms": one value per repeat}.
    """
    encoded = backend.encode_fixed(text, length)
    for _ in range(warmup):
        backend.forward(encoded)
    model_ns: list[int] = []
    with _collector_paused():
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            backend.forward(encoded)
            model_ns.append(time.perf_counter_ns() - t0)
    return {"tokens": int(encoded["input_ids"].shape[1]), "model_ms": [ns / 1e6 for ns in model_ns]}


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


def measure_throughput(backend: Backend, texts: Sequence[str], batch_size: int) -> float:
    """Texts per second, tokenization included, over `texts` in arrival order (no length bucketing).

    One untimed batch first, so the first timed batch does not pay for growing buffers to the new shape.
    """
    backend.logits(backend.encode(list(texts[:batch_size])))
    t0 = time.perf_counter_ns()
    for start in range(0, len(texts), batch_size):
        backend.logits(backend.encode(list(texts[start : start + batch_size])))
    elapsed_s = (time.perf_counter_ns() - t0) / 1e9
    return len(texts) / elapsed_s if elapsed_s > 0 else float("inf")


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
    try:
        import resource
    except ImportError:  # Windows: psutil knows the peak working set
        import psutil

        memory = psutil.Process().memory_info()
        return float(getattr(memory, "peak_wset", memory.rss)) / 1e6
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


# ----------------------------------------------------------------------------------------------------------
# The command loop (inside the worker process)


def handle_command(backend: Backend, command: dict[str, Any]) -> dict[str, Any]:
    """Run one protocol command against the loaded model and return its answer (without the memory fields).

    Raises:
        ValueError: Unknown command or missing fields.
    """
    name = command.get("cmd")
    if name == "status":
        return {}
    if name == "warmup":
        run_untimed(backend, command["texts"])
        return {"n": len(command["texts"])}
    if name == "latency":
        return dict(measure_latency(backend, command["texts"]))
    if name == "fixed_length":
        return measure_fixed_length(
            backend,
            command["text"],
            int(command["length"]),
            int(command["repeats"]),
            int(command.get("warmup", 1)),
        )
    if name == "predict":
        if "threads" in command:
            backend.set_threads(int(command["threads"]))
        t0 = time.perf_counter()
        predictions = predict_all(backend, command["texts"], int(command["batch_size"]))
        return {
            "predictions": predictions,
            "seconds": time.perf_counter() - t0,
            "threads": backend.effective_threads(),
        }
    if name == "throughput":
        backend.set_threads(int(command["threads"]))
        rates = {
            str(b): measure_throughput(backend, command["texts"], int(b)) for b in command["batch_sizes"]
        }
        return {"texts_per_s": rates, "threads": backend.effective_threads()}
    raise ValueError(f"unknown command {name!r}")


def serve(backend: Backend, lines: IO[str], answer: Callable[[dict[str, Any]], None]) -> None:
    """Answer commands until `exit` or the end of input; a failing command is reported, not fatal."""
    with backend.session():
        for line in lines:
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                if command.get("cmd") == "exit":
                    return
                result = {"ok": True, **handle_command(backend, command)}
            except Exception as exc:  # the parent turns it into a StageError naming the variant
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            answer({**result, "rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb()})


def _protocol_writer() -> Callable[[dict[str, Any]], None]:
    """A writer on the original stdout; fd 1 is pointed at stderr so stray library prints cannot corrupt it."""
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    return answer


def default_max_length(folder: Path, fmt: str) -> int:
    """The truncation length when none is given: for an ONNX folder the one `Classifier.load` reads (edgekd.json,
    else the tokenizer's or the model's limit); for a PyTorch folder edgekd.json's, else the recipe default.

    Raises:
        InputError: an ONNX folder's edgekd.json or config.json is unreadable or sets an impossible max_length.
    """
    manifest = read_json_object(folder / MANIFEST_FILE)
    if fmt == "onnx":
        return read_max_length(folder, manifest, read_json_object(folder / CONFIG_FILE))
    value = (manifest or {}).get("max_length")
    return value if is_json_int(value) and value > 0 else PYTORCH_DEFAULT_MAX_LENGTH


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edgekd.bench.worker",
        description="Serve benchmark commands (JSON lines on stdin) for one model in a process of its own.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="truncation (default: what the runtime reads from the folder; PyTorch: edgekd.json, else 128)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point; returns the process exit code."""
    args = parse_args(argv)
    # Before numpy/torch/onnxruntime are imported: OpenMP and MKL read these once, at load.
    os.environ.update(thread_env(args.threads))
    answer = _protocol_writer()
    t0 = time.perf_counter()
    try:
        max_length = args.max_length or default_max_length(args.model, args.fmt)
        backend = load_backend(args.model, args.fmt, args.threads, max_length)
    except Exception as exc:
        answer({"ok": False, "error": f"cannot load {args.model}: {type(exc).__name__}: {exc}"})
        return 1
    answer(
        {
            "ok": True,
            "event": "ready",
            "labels": backend.labels,
            "max_positions": backend.max_positions,
            "max_length": max_length,
            "load_s": time.perf_counter() - t0,
            "threads": args.threads,
            "effective_threads": backend.effective_threads(),
            "torch_imported": "torch" in sys.modules,
            "rss_mb": current_rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    serve(backend, sys.stdin, answer)
    return 0


# ----------------------------------------------------------------------------------------------------------
# The parent's side of the process boundary


class WorkerProcess:
    """A running worker for one model: send a command, get its answer (one at a time, synchronously).

    Call `wait_ready()` before the first `request()`. Use as a context manager, or call `close()`: the process
    is asked to exit and killed if it does not.

    Args:
        name: The variant's name, used in error messages.
        folder: The model folder.
        fmt: "pytorch" or "onnx".
        threads: Intra-op threads for the model (and the cap for every native pool).
        max_length: Truncation length in tokens for the text requests.
    """

    def __init__(self, name: str, folder: Path, fmt: str, threads: int, max_length: int) -> None:
        self.name = name
        self.folder = folder
        # stderr goes to a file, not a pipe: a chatty library could otherwise fill the pipe and stall the worker.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        command = [sys.executable, "-m", "edgekd.bench.worker", "--model", str(folder), "--format", fmt]
        command += ["--threads", str(threads), "--max-length", str(max_length)]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=worker_env(threads),
            text=True,
            encoding="utf-8",
        )
        self._ready: dict[str, Any] | None = None

    def wait_ready(self) -> dict[str, Any]:
        """The worker's `ready` answer (labels, max_positions, load_s, ...), waiting for it the first time.

        Workers are started first and waited for afterwards, so that the models load side by side.
        """
        if self._ready is None:
            self._ready = self._read_answer("loading the model")
        return self._ready

    def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its answer.

        Raises:
            StageError: The worker died, or answered with an error.
        """
        from edgekd.errors import StageError

        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise StageError(self._failure(f"'{command.get('cmd')}'")) from None
        return self._read_answer(f"'{command.get('cmd')}'")

    def _read_answer(self, what: str) -> dict[str, Any]:
        from edgekd.errors import StageError

        stdout = self._process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise StageError(self._failure(what))
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise StageError(f"the benchmark worker for {self.name} failed at {what}: {answer.get('error')}")
        return answer

    def _failure(self, what: str) -> str:
        code = self._process.wait(timeout=30)
        self._stderr.seek(0)
        tail = "\n".join(self._stderr.read().strip().splitlines()[-STDERR_TAIL_LINES:])
        return f"the benchmark worker for {self.name} ({self.folder}) failed at {what} (exit {code}):\n{tail}"

    def close(self) -> None:
        """Ask the worker to exit; kill it if it does not within a few seconds."""
        if self._process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                assert self._process.stdin is not None
                self._process.stdin.write('{"cmd": "exit"}\n')
                self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        self._stderr.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
