"""Torch-free inference on an exported edgekd folder: numpy, onnxruntime and tokenizers only.

A folder written by the export or quantize stage holds `model.onnx`, `tokenizer.json` and `edgekd.json`
(labels, max_length). That is all a device needs:

    from edgekd.runtime import Classifier

    clf = Classifier.load("runs/smoke/quantize", threads=1)
    clf.predict(["the striker scored twice"])[0].label

Behaviour worth knowing:

* Texts longer than `max_length` tokens are truncated (the end is cut, [SEP] kept), as in training; the first
  truncation per classifier emits one `TruncationWarning`.
* The empty string is a valid input: it tokenizes to [CLS] [SEP] and gets a prediction like any other text.
* A folder without edgekd.json still loads: labels come from config.json's id2label and max_length from the
  tokenizer config or the model's position embeddings.
* A tokenizer with more tokens than the model's embedding table (config.json `vocab_size`), e.g. the original
  tokenizer next to a vocabulary-pruned model, is refused at load time with an InputError, and any failure
  of ONNX Runtime on an input is an InputError too, never a raw ONNX Runtime exception.
* Values in the folder's JSON files are taken only when they mean what they say: `max_length: true` or
  2**70, a `pad_token_id` beyond the vocabulary, or id2label keys that are not 0..n-1 are refused (InputError
  with a hint), as is a graph whose logits are not one column per class name (checked on the declared
  shape at load, and on every output when the class dimension is symbolic).
* The graph's inputs may be int64 or int32; a thread count above 4 per core, or a text with a lone
  surrogate (an invalid UTF-8 byte in a command-line argument), is an InputError.

The command line wraps this: `edgekd predict FOLDER "text" ... [--file texts.txt] [--json]` (edgekd.cli.predict).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgekd.artifact import (
    CONFIG_FILE,
    FEEDABLE_INPUTS,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    UNSET_MODEL_MAX_LENGTH,
    feeds_from_encodings,
    find_pad_token,
    is_json_int,
    read_json_object,
    read_labels,
    read_max_length,
)
from edgekd.errors import InputError, first_line

# More intra-op threads than this per logical core only add context switches, and ONNX Runtime spends minutes
# creating a pool of 100,000 threads before it gives up: such a request is refused instead.
MAX_THREADS_PER_CORE = 4
# Graph input types this runtime can fill, with the numpy type it feeds each as.
INTEGER_INPUT_TYPES: dict[str, type[np.integer[Any]]] = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
FOLDER_HINT = "pass a folder written by the edgekd export or quantize stage"


class TruncationWarning(UserWarning):
    """A text was longer than the model's max_length and was truncated."""


@dataclass(frozen=True)
class Prediction:
    """One text's prediction.

    Attributes:
        label: The most probable class.
        score: Its softmax probability.
        scores: Probability of every class, in the model's class order.
    """

    label: str
    score: float
    scores: dict[str, float]


class Classifier:
    """An ONNX text classifier with its tokenizer; build it with `Classifier.load(folder)`.

    This is the code a deployment runs, and also what the benchmark worker measures (edgekd.bench.worker): the
    session options, the tokenization and the feeds of a signed-off latency are this class's own.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        labels: list[str],
        max_length: int,
        folder: Path,
        *,
        model_path: Path | None = None,
        threads: int | None = None,
        inter_threads: int = 1,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.folder = folder
        self.model_path = model_path or folder / MODEL_FILE
        self.threads = threads
        self.inter_threads = inter_threads
        self.input_types = graph_input_types(session, folder)
        self.input_names = list(self.input_types)
        self.output_name = check_graph_output(session, len(labels), folder)
        self._truncation_reported = False
        self._fixed_length_tokenizers: dict[int, Tokenizer] = {}

    @classmethod
    def load(
        cls,
        folder: str | Path,
        threads: int | None = None,
        inter_threads: int = 1,
        model_file: str = MODEL_FILE,
        max_length: int | None = None,
    ) -> Classifier:
        """Load an exported folder (model.onnx, tokenizer.json, edgekd.json or config.json).

        Args:
            folder: The folder an edgekd export or quantize stage wrote.
            threads: Intra-op threads; None lets ONNX Runtime use one per physical core.
            inter_threads: Inter-op threads (only used by parallel execution; kept at 1 by default).
            model_file: The graph's file name in the folder (e.g. model_quantized.onnx from Optimum).
            max_length: Truncation length in tokens; None reads the folder's (edgekd.json, else the tokenizer's
                or the model's limit). The benchmark passes the length it measures at.

        Raises:
            InputError: a file is missing or unreadable, the folder names no labels, or the ONNX graph has
                inputs or outputs a text classifier does not have.
        """
        root = Path(folder)
        if not root.is_dir():
            raise InputError(
                f"model folder not found: {root}", hint="pass the export or quantize folder of a run"
            )
        for name in (model_file, TOKENIZER_FILE):
            if not (root / name).is_file():
                raise InputError(f"{root} has no {name}", hint=FOLDER_HINT)
        if threads is not None:
            check_thread_count(threads, "threads")
        check_thread_count(inter_threads, "inter_threads")
        if max_length is not None:
            check_token_count(max_length, "max_length")
        manifest = read_json_object(root / MANIFEST_FILE)
        config = read_json_object(root / CONFIG_FILE)
        labels = read_labels(root, manifest, config)
        if max_length is None:
            max_length = read_max_length(root, manifest, config)
        tokenizer = load_shipped_tokenizer(root, max_length, config)
        check_vocab_size(root, tokenizer, config)
        model_path = root / model_file
        session = create_session(model_path, threads, inter_threads)
        return cls(
            session,
            tokenizer,
            labels,
            max_length,
            root,
            model_path=model_path,
            threads=threads,
            inter_threads=inter_threads,
        )

    def with_threads(self, threads: int | None) -> Classifier:
        """The same model, tokenizer and labels on a new ONNX Runtime session with `threads` intra-op threads.

        A session's thread pool is fixed when it is created, so another thread count needs another session.

        Raises:
            InputError: `threads` is not a usable thread count.
        """
        if threads is not None:
            check_thread_count(threads, "threads")
        session = create_session(self.model_path, threads, self.inter_threads)
        return type(self)(
            session,
            self.tokenizer,
            self.labels,
            self.max_length,
            self.folder,
            model_path=self.model_path,
            threads=threads,
            inter_threads=self.inter_threads,
        )

    def encode(self, texts: str | Iterable[str]) -> dict[str, np.ndarray]:
        """Tokenize texts into the integer arrays the ONNX graph takes, padded to the longest text.

        Args:
            texts: One text or an iterable of texts.

        Returns:
            A feed dict with exactly the inputs the graph declares.
        """
        return self._encode(_as_text_list(texts), caller_depth=1)

    def encode_fixed_length(self, text: str, length: int) -> dict[str, np.ndarray]:
        """One text as a batch-1 feed of exactly `length` tokens: truncated or padded to it (no warning).

        For timing the model at a given sequence length; `predict` never pads beyond the longest text.

        Raises:
            InputError: `length` is not a whole number of at least 1, or the text is not valid Unicode.
        """
        check_token_count(length, "length")
        [text] = _as_text_list(text)
        tokenizer = self._fixed_length_tokenizers.get(length)
        if tokenizer is None:
            # A copy: the serving tokenizer keeps its own truncation and padding settings.
            tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            padding = self.tokenizer.padding or {}
            tokenizer.enable_truncation(max_length=length)
            tokenizer.enable_padding(
                pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"), length=length
            )
            self._fixed_length_tokenizers[length] = tokenizer
        return feeds_from_encodings([tokenizer.encode(text)], self.input_types)

    def forward(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Raw logits of a feed from `encode` or `encode_fixed_length`: the model call alone.

        Raises:
            InputError: ONNX Runtime failed on the feed, or returned logits of the wrong shape.
        """
        return self._run(feed)

    def predict_logits(self, texts: str | Iterable[str], batch_size: int = 32) -> np.ndarray:
        """Raw logits, shape (number of texts, number of classes), float32.

        Args:
            texts: One text or an iterable of texts.
            batch_size: Texts per forward pass.
        """
        return self._logits(_as_text_list(texts), batch_size, caller_depth=1)

    def predict(self, texts: str | Iterable[str], batch_size: int = 32) -> list[Prediction]:
        """The most probable class of each text, with its probability and every class's probability.

        Args:
            texts: One text or an iterable of texts (a single string counts as one text).
            batch_size: Texts per forward pass.
        """
        probabilities = softmax(self._logits(_as_text_list(texts), batch_size, caller_depth=1))
        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            predictions.append(
                Prediction(
                    label=self.labels[best],
                    score=float(row[best]),
                    scores={label: float(p) for label, p in zip(self.labels, row, strict=True)},
                )
            )
        return predictions

    def _logits(self, batch: list[str], batch_size: int, caller_depth: int) -> np.ndarray:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(
                f"batch_size must be a whole number of at least 1, got {batch_size!r}",
                hint="use a batch size such as 32",
            )
        if not batch:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        chunks = []
        # A loop, not a comprehension: before Python 3.12 a comprehension is a frame of its own, which would
        # move the truncation warning off the caller's line.
        for start in range(0, len(batch), batch_size):
            feed = self._encode(batch[start : start + batch_size], caller_depth + 1)
            chunks.append(self._run(feed))
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        try:
            logits = self.session.run([self.output_name], feed)[0]
        except Exception as exc:  # ONNX Runtime raises its own exception types per failure
            message = first_line(exc)
            raise InputError(
                f"ONNX Runtime failed on the model in {self.folder}: {message}",
                hint="the model and its tokenizer may not belong together; re-export the folder",
            ) from None
        # A graph whose class dimension is symbolic passes the load-time check whatever its width; a width
        # other than the label count would pair scores with the wrong class names.
        rows = len(next(iter(feed.values())))
        if logits.ndim != 2 or logits.shape != (rows, len(self.labels)):
            raise InputError(
                f"the model in {self.folder} returned '{self.output_name}' with shape {list(logits.shape)} "
                f"for {rows} text(s), but the folder names {len(self.labels)} classes",
                hint="the labels in edgekd.json (or config.json id2label) must list one name per model output",
            )
        return logits

    def _encode(self, batch: list[str], caller_depth: int) -> dict[str, np.ndarray]:
        """`caller_depth`: frames between this method and the user's call, so the warning points at it."""
        encodings = self.tokenizer.encode_batch(batch)
        if not self._truncation_reported and any(encoding.overflowing for encoding in encodings):
            self._truncation_reported = True
            warnings.warn(
                f"a text longer than max_length={self.max_length} tokens was truncated "
                "(further truncations by this classifier are not reported)",
                TruncationWarning,
                stacklevel=caller_depth + 2,
            )
        return feeds_from_encodings(encodings, self.input_types)


# ----------------------------------------------------------------------------------------------------------
# Loading


def create_session(onnx_path: Path, threads: int | None, inter_threads: int = 1) -> ort.InferenceSession:
    """A CPU session tuned for predictable latency: sequential execution and no busy-waiting threads.

    Raises:
        InputError: ONNX Runtime cannot load the file.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0 = ONNX Runtime's default, one per physical core
    options.inter_op_num_threads = inter_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn a core between requests and distort latency on a shared machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types per failure
        message = first_line(exc)
        raise InputError(
            f"ONNX Runtime cannot load {onnx_path}: {message}",
            hint="the file is damaged or not an ONNX model: copy or export the folder again",
        ) from None


def check_token_count(value: int, name: str) -> None:
    """Refuse a token count that is not a whole number from 1 to the tokenizer's limit.

    Raises:
        InputError: naming `name`.
    """
    if not (is_json_int(value) and 0 < value < UNSET_MODEL_MAX_LENGTH):
        raise InputError(
            f"{name} must be a whole number of tokens from 1 to {UNSET_MODEL_MAX_LENGTH - 1:,}, got {value!r}",
            hint="use a length such as 128 (what the model was exported with)",
        )


def check_thread_count(threads: int, name: str = "threads") -> None:
    """Refuse a thread count below 1, or so far above the cores that ONNX Runtime would stall creating them.

    Raises:
        InputError: `threads` is not a whole number between 1 and MAX_THREADS_PER_CORE x the logical cores.
    """
    limit = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise InputError(
            f"{name} must be a whole number from 1 to {limit} ({MAX_THREADS_PER_CORE} per core), got {threads!r}",
            hint=f"use at most {os.cpu_count() or 1} thread(s), one per core, or leave it unset for that default",
        )


def load_shipped_tokenizer(folder: Path, max_length: int, config: dict[str, Any] | None = None) -> Tokenizer:
    """The folder's tokenizer.json, set to truncate at `max_length` and pad to the longest text of a batch.

    Raises:
        InputError: tokenizer.json cannot be read.
    """
    try:
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise InputError(
            f"cannot read {folder / TOKENIZER_FILE}: {first_line(exc)}",
            hint="the tokenizer file is damaged: copy the one the export stage wrote next to the model",
        ) from None
    pad_id, pad_token = find_pad_token(folder, tokenizer, config or {})
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def check_vocab_size(folder: Path, tokenizer: Tokenizer, config: dict[str, Any] | None) -> None:
    """Refuse a tokenizer that can produce ids the model's embedding table does not have.

    Without this, a mismatched pair (say, a vocabulary-pruned model with the original tokenizer) would only
    fail inside ONNX Runtime on the first text that uses a high id, with an index error.

    Raises:
        InputError: config.json's vocab_size is smaller than the tokenizer's vocabulary.
    """
    model_vocab = (config or {}).get("vocab_size")
    tokenizer_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if is_json_int(model_vocab) and 0 < model_vocab < tokenizer_vocab:
        raise InputError(
            f"{folder / TOKENIZER_FILE} has {tokenizer_vocab} tokens but the model in {folder} embeds only "
            f"{model_vocab} (config.json vocab_size): the tokenizer does not belong to this model",
            hint="ship the tokenizer files the export stage wrote next to model.onnx",
        )


def check_graph_inputs(session: ort.InferenceSession, folder: Path) -> list[str]:
    """The graph's input names, checked to be token-level int64 tensors (what int64 feeds can fill).

    Raises:
        InputError: an input is neither input_ids, attention_mask nor token_type_ids, is not int64, or
            input_ids is missing.
    """
    return list(graph_input_types(session, folder, accepted=("tensor(int64)",)))


def graph_input_types(
    session: ort.InferenceSession, folder: Path, accepted: tuple[str, ...] = tuple(INTEGER_INPUT_TYPES)
) -> dict[str, type[np.integer[Any]]]:
    """The graph's inputs and the numpy type to feed each, checked to be token-level integer tensors.

    Raises:
        InputError: an input is neither input_ids, attention_mask nor token_type_ids, has a type outside
            `accepted`, or input_ids is missing.
    """
    declared = {graph_input.name: graph_input.type for graph_input in session.get_inputs()}
    unknown = [name for name in declared if name not in FEEDABLE_INPUTS]
    wrong_type = [name for name, kind in declared.items() if name in FEEDABLE_INPUTS and kind not in accepted]
    if unknown or wrong_type or "input_ids" not in declared:
        shown = ", ".join(f"{name}: {kind}" for name, kind in declared.items())
        raise InputError(
            f"the model in {folder} is not a text classifier this runtime can feed: its inputs are {shown}",
            hint=f"the runtime feeds {', '.join(FEEDABLE_INPUTS)} as {' or '.join(accepted)}; "
            "export a sequence-classification model",
        )
    return {name: INTEGER_INPUT_TYPES[kind] for name, kind in declared.items()}


def check_graph_output(session: ort.InferenceSession, num_labels: int, folder: Path) -> str:
    """The logits output name ('logits', else the first output), checked against the number of classes.

    Raises:
        InputError: the output is not (batch, classes) or its class count differs from the labels'.
    """
    outputs = {graph_output.name: graph_output.shape for graph_output in session.get_outputs()}
    if not outputs:
        raise InputError(f"the model in {folder} has no outputs", hint=FOLDER_HINT)
    name = "logits" if "logits" in outputs else next(iter(outputs))
    shape = outputs[name]
    classes = shape[-1] if shape else None
    if len(shape) != 2 or (isinstance(classes, int) and classes != num_labels):
        raise InputError(
            f"the model in {folder} outputs '{name}' with shape {shape}, "
            f"but the folder names {num_labels} classes: (batch, {num_labels}) was expected",
            hint="the labels in edgekd.json (or config.json id2label) must list one name per model output",
        )
    return name


# ----------------------------------------------------------------------------------------------------------
# Helpers


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row max so large logits cannot overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _as_text_list(texts: str | Iterable[str]) -> list[str]:
    """One text or an iterable of texts (list, tuple, numpy array, pandas Series) as a list of str.

    Raises:
        InputError: not strings, or a string the tokenizer cannot take (a lone surrogate such as the one
            Python makes of an invalid UTF-8 byte in a command-line argument).
    """
    if isinstance(texts, str):
        batch = [texts]
    elif isinstance(texts, (bytes, bytearray, dict)) or not isinstance(texts, Iterable):
        raise InputError(
            f"texts must be a string or an iterable of strings, got {type(texts).__name__}",
            hint="pass a str or a list of str (decode bytes first)",
        )
    else:
        batch = list(texts)
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise InputError(
                f"texts[{i}] is a {type(text).__name__}, not a string", hint="pass every text as a str"
            )
        check_encodable(text, f"texts[{i}]")
    return batch


def check_encodable(text: str, where: str) -> None:
    """Refuse a text that has no UTF-8 form (lone surrogates): the tokenizer cannot take it.

    Raises:
        InputError: naming `where` the text came from.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{where} is not valid Unicode text (character {exc.start} is a lone surrogate, "
            f"{text[exc.start]!a}, e.g. from bytes that are not UTF-8)",
            hint="pass UTF-8 text; for text in another encoding, convert it to UTF-8 first",
        ) from None
