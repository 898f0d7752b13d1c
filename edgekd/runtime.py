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

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edgekd.errors import InputError, first_line

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "edgekd.json"
CONFIG_FILE = "config.json"
# The inputs a transformer text classifier's graph can declare and this runtime knows how to fill.
FEEDABLE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Used only for folders without edgekd.json whose configs do not say either.
DEFAULT_MAX_LENGTH = 512
# transformers' "no limit" sentinel for model_max_length is ~1e30; anything this large means "not set".
UNSET_MODEL_MAX_LENGTH = 1_000_000
# Token ids are 32-bit in the tokenizers library; a vocabulary claimed beyond that is a damaged config.
MAX_TOKEN_ID = 2**31
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
    """An ONNX text classifier with its tokenizer; build it with `Classifier.load(folder)`."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        labels: list[str],
        max_length: int,
        folder: Path,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.folder = folder
        self.input_types = graph_input_types(session, folder)
        self.input_names = list(self.input_types)
        self.output_name = check_graph_output(session, len(labels), folder)
        self._truncation_reported = False

    @classmethod
    def load(
        cls,
        folder: str | Path,
        threads: int | None = None,
        inter_threads: int = 1,
        model_file: str = MODEL_FILE,
    ) -> Classifier:
        """Load an exported folder (model.onnx, tokenizer.json, edgekd.json or config.json).

        Args:
            folder: The folder an edgekd export or quantize stage wrote.
            threads: Intra-op threads; None lets ONNX Runtime use one per physical core.
            inter_threads: Inter-op threads (only used by parallel execution; kept at 1 by default).
            model_file: The graph's file name in the folder (e.g. model_quantized.onnx from Optimum).

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
        manifest = read_json_object(root / MANIFEST_FILE)
        config = read_json_object(root / CONFIG_FILE)
        labels = read_labels(root, manifest, config)
        max_length = read_max_length(root, manifest, config)
        tokenizer = load_tokenizer(root, max_length, config)
        check_vocab_size(root, tokenizer, config)
        session = create_session(root / model_file, threads, inter_threads)
        return cls(session, tokenizer, labels, max_length, root)

    def encode(self, texts: str | Iterable[str]) -> dict[str, np.ndarray]:
        """Tokenize texts into the int64 arrays the ONNX graph takes, padded to the longest text.

        Args:
            texts: One text or an iterable of texts.

        Returns:
            A feed dict with exactly the inputs the graph declares.
        """
        return self._encode(_as_text_list(texts), caller_depth=1)

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
        fields = {
            "input_ids": [encoding.ids for encoding in encodings],
            "attention_mask": [encoding.attention_mask for encoding in encodings],
            "token_type_ids": [encoding.type_ids for encoding in encodings],
        }
        return {name: np.asarray(fields[name], dtype=dtype) for name, dtype in self.input_types.items()}


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


def load_tokenizer(folder: Path, max_length: int, config: dict[str, Any] | None = None) -> Tokenizer:
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
    if _is_int(model_vocab) and 0 < model_vocab < tokenizer_vocab:
        raise InputError(
            f"{folder / TOKENIZER_FILE} has {tokenizer_vocab} tokens but the model in {folder} embeds only "
            f"{model_vocab} (config.json vocab_size): the tokenizer does not belong to this model",
            hint="ship the tokenizer files the export stage wrote next to model.onnx",
        )


def find_pad_token(folder: Path, tokenizer: Tokenizer, config: dict[str, Any]) -> tuple[int, str]:
    """The padding token (id, text): tokenizer_config.json, then special_tokens_map.json, then config.json.

    The id matters beyond the attention mask: RoBERTa-style models derive position ids from it.
    """
    for file_name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = (read_json_object(folder / file_name) or {}).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id, token
    pad_id = config.get("pad_token_id")
    if _is_int(pad_id) and pad_id >= 0:
        tokenizer_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        # Some models embed more ids than their tokenizer has; an id beyond both cannot be fed.
        model_vocab = config.get("vocab_size")
        vocab = max(
            tokenizer_vocab, model_vocab if _is_int(model_vocab) and model_vocab < MAX_TOKEN_ID else 0
        )
        if pad_id >= vocab:
            raise InputError(
                f"{folder / CONFIG_FILE} sets pad_token_id {pad_id}, but the model and its tokenizer have only "
                f"{vocab} token ids",
                hint="set pad_token_id to the id of the tokenizer's padding token (or pad_token in "
                "tokenizer_config.json)",
            )
        return pad_id, (tokenizer.id_to_token(pad_id) if pad_id < tokenizer_vocab else None) or "[PAD]"
    return 0, tokenizer.id_to_token(0) or "[PAD]"


def read_labels(folder: Path, manifest: dict[str, Any] | None, config: dict[str, Any] | None) -> list[str]:
    """Class names in id order: edgekd.json's `labels`, else config.json's `id2label`.

    Raises:
        InputError: neither file names the classes, or config.json's id2label is not keyed 0, 1, ... n-1.
    """
    labels = (manifest or {}).get("labels")
    if isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels):
        return labels
    id2label = (config or {}).get("id2label")
    if isinstance(id2label, dict) and id2label:
        return labels_from_id2label(folder, id2label)
    raise InputError(
        f"{folder} names no classes: edgekd.json has no 'labels' and config.json no usable 'id2label'",
        hint="edgekd.json 'labels' must list the class names; config.json 'id2label' must map 0, 1, ... to names",
    )


def labels_from_id2label(folder: Path, id2label: dict[str, Any]) -> list[str]:
    """config.json's id2label ({"0": "sports", ...}) as a list in id order.

    Raises:
        InputError: a key is not a whole number, or the ids are not 0, 1, ... n-1.
    """
    by_id: dict[int, str] = {}
    for key, value in id2label.items():
        try:
            by_id[int(key)] = str(value)
        except (TypeError, ValueError):
            raise InputError(
                f"{folder / CONFIG_FILE}: id2label key {key!r} is not a class id",
                hint='id2label must map the class ids 0, 1, ... to names, e.g. {"0": "sports", "1": "tech"}',
            ) from None
    if sorted(by_id) != list(range(len(id2label))):
        raise InputError(
            f"{folder / CONFIG_FILE}: id2label has the ids {sorted(by_id)[:10]}, not 0 to {len(id2label) - 1}",
            hint='id2label must map the class ids 0, 1, ... to names, e.g. {"0": "sports", "1": "tech"}',
        )
    return [by_id[i] for i in range(len(by_id))]


def read_max_length(folder: Path, manifest: dict[str, Any] | None, config: dict[str, Any] | None) -> int:
    """Truncation length: edgekd.json's max_length, else the tokenizer's or the model's limit, else 512.

    Raises:
        InputError: edgekd.json sets max_length to something other than a token count (a bool, a string,
            0, or more than the tokenizer can represent).
    """
    value = (manifest or {}).get("max_length")
    if value is not None:
        if not (_is_int(value) and 0 < value < UNSET_MODEL_MAX_LENGTH):
            raise InputError(
                f"{folder / MANIFEST_FILE} sets max_length to {json.dumps(value)}, which is not a token count",
                hint=f"set it to a whole number of tokens below {UNSET_MODEL_MAX_LENGTH:,}, e.g. 128 "
                "(what the model was exported with)",
            )
        return int(value)
    tokenizer_limit = (read_json_object(folder / "tokenizer_config.json") or {}).get("model_max_length")
    if _is_number(tokenizer_limit) and 0 < tokenizer_limit < UNSET_MODEL_MAX_LENGTH:
        return int(tokenizer_limit)
    positions = (config or {}).get("max_position_embeddings")
    if _is_int(positions) and positions > 0:
        return min(positions, DEFAULT_MAX_LENGTH)
    return DEFAULT_MAX_LENGTH


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


def _is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: Python's bool is an int subclass, but `true` is not a count."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, None when the file does not exist.

    Raises:
        InputError: the file exists but is not a JSON object.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(
            f"cannot read {path}: {first_line(exc)}",
            hint=f"{path.name} is damaged: copy the one the export stage wrote next to the model",
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path} is not a JSON object (it holds a {type(data).__name__})",
            hint=f"{path.name} must be a JSON object ({{...}}), as the export stage writes it",
        )
    return data
