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
before any numeric library is imported, since OpenMP reads it once at start-up.

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

FORMATS = ("pytorch", "onnx")
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
DEFAULT_MAX_LENGTH = 128
STDERR_TAIL_LINES = 15
# RoBERTa-style position ids start after the padding index, so two positions are never usable.
POSITION_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart")


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
    """An onnxruntime CPU session fed by the `tokenizers` library directly: what a lean deployment runs."""

    INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, folder: Path, threads: int, max_length: int) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        from edgekd.artifact import onnx_model_path

        self._np = np
        self.model_path = onnx_model_path(folder)
        self.threads = threads
        self.ort_session = self._create_session(threads)
        self.feeds = self._input_types()
        outputs = [o.name for o in self.ort_session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.pad_token = _pad_token(folder)
        pad_id = self.tokenizer.token_to_id(self.pad_token)
        self.pad_id = pad_id if pad_id is not None else 0
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token)
        self._fixed_tokenizers: dict[int, Any] = {}
        self.labels = _onnx_labels(folder)
        self.max_positions = usable_positions(_read_json_object(folder / "config.json"))

    def _create_session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the cores between requests and inflate the numbers of whatever runs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def _input_types(self) -> dict[str, Any]:
        feeds = {}
        for spec in self.ort_session.get_inputs():
            if spec.name not in self.INPUT_NAMES:
                raise ValueError(f"the ONNX graph takes an input this worker cannot feed: {spec.name}")
            feeds[spec.name] = self._np.int32 if spec.type == "tensor(int32)" else self._np.int64
        return feeds

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        encodings = (
            [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(texts)
        )
        return self._as_feeds(encodings)

    def encode_fixed(self, text: str, length: int) -> dict[str, Any]:
        tokenizer = self._fixed_tokenizers.get(length)
        if tokenizer is None:
            from tokenizers import Tokenizer

            # A copy: the serving tokenizer keeps its own truncation and padding settings.
            tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            tokenizer.enable_truncation(length)
            tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token, length=length)
            self._fixed_tokenizers[length] = tokenizer
        return self._as_feeds([tokenizer.encode(text)])

    def _as_feeds(self, encodings: Sequence[Any]) -> dict[str, Any]:
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: self._np.asarray(columns[name], dtype=dtype) for name, dtype in self.feeds.items()}

    def forward(self, encoded: dict[str, Any]) -> Any:
        return self.ort_session.run([self.output_name], encoded)[0]

    def logits(self, encoded: dict[str, Any]) -> Any:
        return self.forward(encoded)

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def set_threads(self, threads: int) -> None:
        # An ONNX Runtime session's thread pool is fixed at creation: a new session replaces the old one.
        if threads != self.threads:
            self.ort_session = self._create_session(threads)
            self.threads = threads

    def effective_threads(self) -> int:
        return self.threads


def usable_positions(config: dict[str, Any]) -> int | None:
    """The longest input (in tokens) a model's position embeddings allow, from its config; None if unknown."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    offset = 2 if str(config.get("model_type", "")) in POSITION_OFFSET_MODEL_TYPES else 0
    return positions - offset


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pad_token(folder: Path) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        value = _read_json_object(folder / name).get("pad_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return "[PAD]"


def _onnx_labels(folder: Path) -> list[str]:
    # The runtime's reading, so that the worker serves the very labels the harness checked before it started.
    from edgekd.runtime import read_labels

    return read_labels(
        folder, _read_json_object(folder / "edgekd.json"), _read_json_object(folder / "config.json")
    )


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


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps every native thread pool at `threads` (tokenizers' own pool is switched off)."""
    env = {name: str(threads) for name in THREAD_ENV_VARS}
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def default_max_length(folder: Path) -> int:
    """The max_length the export recorded in edgekd.json, else the recipe default."""
    value = _read_json_object(folder / "edgekd.json").get("max_length")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # `true` is not 1 token
        return DEFAULT_MAX_LENGTH
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edgekd.bench.worker",
        description="Serve benchmark commands (JSON lines on stdin) for one model in a process of its own.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-length", type=int, default=None, help="truncation (default: edgekd.json, else 128)"
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
    max_length = args.max_length or default_max_length(args.model)
    t0 = time.perf_counter()
    try:
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
