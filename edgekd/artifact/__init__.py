"""The shipped model folder's contract, in one torch-free place.

The export and quantize stages write the folder users deploy; this module holds every fact about it:

* file names: `model.onnx` (+ the external data files it references), `tokenizer.json` and the other
  tokenizer files, `config.json` (Hugging Face config: id2label, vocab_size, max_position_embeddings,
  pad_token_id) and `edgekd.json`, the manifest (labels, max_length, inputs, precision, provenance);
* the readers of those files: class names, truncation length, padding token, usable positions;
* which graph is the model and which external data it needs, the inputs a graph may declare and how a
  tokenizer's encodings become its feeds;
* what a deployment ships (size: weights, config and tokenizer files, nothing a stage leaves for humans such
  as stage.json or reports) and how many parameters it holds, from file headers without loading a model
  (safetensors headers, ONNX initializer shapes, quantized graphs included);
* the environment variables that size the native thread pools of a process serving the folder.

The runtime (`edgekd.runtime.Classifier`, `edgekd predict`), the export, quantize and prune_vocab stages and the
benchmark read the folder through these functions, so they agree on labels, max_length and padding.

Module-level imports are the standard library, edgekd.errors and the ONNX reader next to this module
(onnx_graph: ONNX graphs are read without the onnx package, which a device install lacks); numpy and safetensors
are imported inside the functions that need them, tokenizer objects are passed in, and torch, transformers and
onnx are never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from edgekd.artifact.onnx_graph import WEIGHT_TYPES, Graph, MalformedGraph, Node, read_graph
from edgekd.errors import InputError, StageError, first_line

# ----------------------------------------------------------------------------------------------------------
# File names

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
VOCAB_FILE = "vocab.txt"  # WordPiece's vocabulary, one token a line
CONFIG_FILE = "config.json"
MANIFEST_FILE = "edgekd.json"
# edgekd.json's "format" field: bump the number when a reader could misread a newer manifest.
MANIFEST_FORMAT = "edgekd.model/1"
CONFIG_FILES = (CONFIG_FILE, MANIFEST_FILE)
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    "added_tokens.json",
    VOCAB_FILE,
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
PYTORCH_WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
SAFETENSORS_HINT = "save the model with save_pretrained(folder) (safetensors weights)"

# ----------------------------------------------------------------------------------------------------------
# Values in the folder's JSON files

# The inputs a transformer text classifier's graph can declare, in the order a tokenizer encoding gives them.
FEEDABLE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The truncation length of a folder whose edgekd.json, tokenizer config and config all leave it open (a folder
# edgekd did not write, e.g. an Optimum export): BERT's limit, the most any common text encoder takes. The
# export stage always records max_length in edgekd.json, so edgekd's own folders never fall back to this.
DEFAULT_MAX_LENGTH = 512
# transformers' "no limit" sentinel for model_max_length is ~1e30; anything this large means "not set".
UNSET_MODEL_MAX_LENGTH = 1_000_000
# Token ids are 32-bit in the tokenizers library; a vocabulary claimed beyond that is a damaged config.
MAX_TOKEN_ID = 2**31
# RoBERTa-style position ids start after the padding index, so two positions are never usable.
POSITION_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart")
LABELS_HINT = 'id2label must map the class ids 0, 1, ... to names, e.g. {"0": "sports", "1": "tech"}'

# ----------------------------------------------------------------------------------------------------------
# The serving process

# Every environment variable that sizes a native thread pool a process serving the folder may load. The
# thread counts: OpenMP (onnxruntime builds with OpenMP, torch), MKL and OpenBLAS (numpy's and torch's BLAS)
# and Apple Accelerate (VECLIB_MAXIMUM_THREADS, numpy on macOS). TOKENIZERS_PARALLELISM is a switch, not a
# count: the tokenizers library's own Rust pool would otherwise claim every core for a batch. They are read
# once, when the library loads, so they must be set before numpy or onnxruntime is imported. This is the union
# of what the benchmark worker used to set and what the environment record used to report.
TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    TOKENIZERS_PARALLELISM,
)


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps every native thread pool at `threads` (tokenizers' own pool is switched off)."""
    return {name: "false" if name == TOKENIZERS_PARALLELISM else str(threads) for name in THREAD_ENV_VARS}


# ----------------------------------------------------------------------------------------------------------
# Readers


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


def read_labels(folder: Path, manifest: dict[str, Any] | None, config: dict[str, Any] | None) -> list[str]:
    """Class names in id order: edgekd.json's `labels`, else config.json's `id2label`.

    Args:
        folder: The model folder (named in errors).
        manifest: Its edgekd.json (None: none, or not to be used, as for a PyTorch folder).
        config: Its config.json.

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
        f"{folder} names no classes: {MANIFEST_FILE} has no 'labels' and {CONFIG_FILE} no usable 'id2label'",
        hint=f"{MANIFEST_FILE} 'labels' must list the class names; {CONFIG_FILE} 'id2label' must map 0, 1, ... "
        "to names",
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
                f"{folder / CONFIG_FILE}: id2label key {key!r} is not a class id", hint=LABELS_HINT
            ) from None
    if sorted(by_id) != list(range(len(id2label))):
        raise InputError(
            f"{folder / CONFIG_FILE}: id2label has the ids {sorted(by_id)[:10]}, not 0 to {len(id2label) - 1}",
            hint=LABELS_HINT,
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
        if not (is_json_int(value) and 0 < value < UNSET_MODEL_MAX_LENGTH):
            raise InputError(
                f"{folder / MANIFEST_FILE} sets max_length to {json.dumps(value)}, which is not a token count",
                hint=f"set it to a whole number of tokens below {UNSET_MODEL_MAX_LENGTH:,}, e.g. 128 "
                "(what the model was exported with)",
            )
        return int(value)
    tokenizer_limit = (read_json_object(folder / TOKENIZER_CONFIG_FILE) or {}).get("model_max_length")
    if is_json_number(tokenizer_limit) and 0 < tokenizer_limit < UNSET_MODEL_MAX_LENGTH:
        return int(tokenizer_limit)
    positions = (config or {}).get("max_position_embeddings")
    if is_json_int(positions) and positions > 0:
        return min(positions, DEFAULT_MAX_LENGTH)
    return DEFAULT_MAX_LENGTH


# The CPUs `quantize.target` names (Optimum's AutoQuantizationConfig presets); edgekd.json records one of them.
QUANTIZE_TARGETS = ("avx2", "avx512", "avx512_vnni", "arm64")


def quantized_for(manifest: Mapping[str, Any] | None) -> str | None:
    """The CPU an INT8 folder's settings were chosen for, from edgekd.json's `quantization` entry: the recipe's
    `quantize.target`, or for `auto` the target the build CPU fits; None for an fp32 folder, one quantized
    before targets were recorded, or `auto` on a CPU no target fits."""
    quantization = (manifest or {}).get("quantization")
    if not isinstance(quantization, Mapping):
        return None
    target = quantization.get("target_resolved")
    if target is None and quantization.get("target") != "auto":
        target = quantization.get("target")
    return target if target in QUANTIZE_TARGETS else None


def find_pad_token(folder: Path, tokenizer: Any, config: dict[str, Any]) -> tuple[int, str]:
    """The padding token (id, text): tokenizer_config.json, then special_tokens_map.json, then config.json.

    The id matters beyond the attention mask: RoBERTa-style models derive position ids from it.

    Args:
        folder: The model folder.
        tokenizer: Its `tokenizers.Tokenizer` (token_to_id, id_to_token and get_vocab_size are used).
        config: Its config.json.

    Raises:
        InputError: config.json's pad_token_id is beyond both the model's and the tokenizer's vocabulary.
    """
    for file_name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
        token = (read_json_object(folder / file_name) or {}).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id), token
    pad_id = config.get("pad_token_id")
    if is_json_int(pad_id) and pad_id >= 0:
        tokenizer_vocab = int(tokenizer.get_vocab_size(with_added_tokens=True))
        # Some models embed more ids than their tokenizer has; an id beyond both cannot be fed.
        model_vocab = config.get("vocab_size")
        vocab = max(
            tokenizer_vocab, model_vocab if is_json_int(model_vocab) and model_vocab < MAX_TOKEN_ID else 0
        )
        if pad_id >= vocab:
            raise InputError(
                f"{folder / CONFIG_FILE} sets pad_token_id {pad_id}, but the model and its tokenizer have only "
                f"{vocab} token ids",
                hint="set pad_token_id to the id of the tokenizer's padding token (or pad_token in "
                f"{TOKENIZER_CONFIG_FILE})",
            )
        return pad_id, (tokenizer.id_to_token(pad_id) if pad_id < tokenizer_vocab else None) or "[PAD]"
    return 0, tokenizer.id_to_token(0) or "[PAD]"


def usable_positions(config: Mapping[str, Any] | None) -> int | None:
    """The longest input (in tokens) a model's position embeddings allow, from its config; None if unknown."""
    positions = (config or {}).get("max_position_embeddings")
    if not is_json_int(positions) or positions <= 0:
        return None
    offset = 2 if str((config or {}).get("model_type", "")) in POSITION_OFFSET_MODEL_TYPES else 0
    return positions - offset


def feeds_from_encodings(encodings: Sequence[Any], input_types: Mapping[str, Any]) -> dict[str, Any]:
    """A graph's feeds from `tokenizers` encodings of equal length: one numpy array per input in `input_types`.

    Args:
        encodings: `tokenizers.Encoding`s, padded to one length.
        input_types: Graph input name (one of FEEDABLE_INPUTS) -> the numpy integer type to feed it as.
    """
    import numpy as np

    fields = {
        "input_ids": [encoding.ids for encoding in encodings],
        "attention_mask": [encoding.attention_mask for encoding in encodings],
        "token_type_ids": [encoding.type_ids for encoding in encodings],
    }
    return {name: np.asarray(fields[name], dtype=dtype) for name, dtype in input_types.items()}


def is_json_int(value: object) -> TypeGuard[int]:
    """A JSON integer: Python's bool is an int subclass, but `true` is not a count."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (int or float), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------------
# Files, size and parameters

# Inputs that carry quantization scales / zero points rather than weights, by operator (0-based positions).
QUANT_PARAM_SLOTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "DynamicQuantizeMatMul": (2, 3),
    "MatMulIntegerToFloat": (2, 3, 4, 5),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QGemm": (1, 2, 4, 5, 7, 8),
    "QAttention": (3, 4, 6, 7),
}
QUANT_PARAM_SUFFIXES = ("_scale", "_zero_point")


def model_files(folder: str | Path, onnx: bool) -> list[Path]:
    """The files a deployment of the model in `folder` needs, sorted.

    Args:
        folder: An ONNX folder (model.onnx + config + tokenizer) or a Hugging Face PyTorch folder.
        onnx: Which of the two it is.

    Raises:
        InputError: When the folder has no model weights.
    """
    root = Path(folder)
    if onnx:
        graph = onnx_model_path(root)
        weights = [graph, *(root / name for name in external_data_files(graph))]
    else:
        weights = sorted(
            {p for pattern in PYTORCH_WEIGHT_PATTERNS for p in root.glob(pattern) if p.is_file()}
        )
        if not any(p.suffix == ".safetensors" for p in weights):
            raise InputError(f"{root} has no model weights (*.safetensors)", hint=SAFETENSORS_HINT)
    extras = [root / name for name in (*CONFIG_FILES, *TOKENIZER_FILES) if (root / name).is_file()]
    return sorted(set(weights) | set(extras))


def folder_size(folder: str | Path, onnx: bool = True) -> int:
    """Bytes of every file the model needs: weights (incl. ONNX external data), config and tokenizer files.

    Args:
        folder: The model folder.
        onnx: True for an ONNX folder, False for a PyTorch (safetensors) folder.

    Raises:
        InputError: When the folder has no model weights or a referenced external data file is missing.
    """
    total = 0
    for path in model_files(folder, onnx):
        try:
            total += path.stat().st_size
        except OSError:
            raise InputError(
                f"the model file {path} is missing or unreadable",
                hint="copy the whole model folder, with every file the graph refers to",
            ) from None
    return total


def file_digests(folder: str | Path, onnx: bool = True) -> list[dict[str, Any]]:
    """Every file the model needs (as `folder_size` counts them), relative to `folder`, with its size and sha256:
    what a sign-off names, so a device run can prove it measured the same bytes.

    Raises:
        InputError: When the folder has no model weights or a file is missing or unreadable.
    """
    root = Path(folder)
    digests = []
    for path in model_files(root, onnx):
        sha = hashlib.sha256()
        try:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
        except OSError:
            raise InputError(
                f"the model file {path} is missing or unreadable",
                hint="copy the whole model folder, with every file the graph refers to",
            ) from None
        digests.append(
            {
                "path": path.relative_to(root).as_posix(),
                "bytes": path.stat().st_size,
                "sha256": sha.hexdigest(),
            }
        )
    return digests


def onnx_model_path(folder: Path) -> Path:
    """`model.onnx`, else the folder's only `.onnx` file.

    Raises:
        InputError: When there is no such file, or several and none is called model.onnx.
    """
    preferred = folder / MODEL_FILE
    if preferred.is_file():
        return preferred
    candidates = sorted(folder.glob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise InputError(
        f"{folder}: cannot tell which ONNX graph is the model (found: {found})",
        hint="keep one .onnx file in the folder, or name the model's graph model.onnx",
    )


def external_data_files(onnx_path: str | Path) -> list[str]:
    """File names (relative to the graph's folder) that hold the graph's external tensor data.

    Raises:
        InputError: the file is not an ONNX model (damaged, truncated or something else).
    """
    return sorted({t.external_location for t in _read_graph(onnx_path).initializers if t.external_location})


def onnx_file_bytes(onnx_path: Path) -> int:
    """Size on disk of an ONNX model: the .onnx file plus every external data file it references.

    Raises:
        StageError: a referenced external data file is missing.
    """
    total = onnx_path.stat().st_size
    for location in external_data_files(onnx_path):
        data_file = onnx_path.parent / location
        if not data_file.is_file():
            raise StageError(f"{onnx_path.name} references external data {location}, which is missing")
        total += data_file.stat().st_size
    return total


def param_count_onnx(onnx_path: str | Path) -> int:
    """Weight elements stored in an ONNX graph, quantized or not, read from initializer shapes only.

    Counted: initializers with float or 8-bit (and 4-bit) integer data. Left out: shape/index constants
    (int32/int64/bool), 0-d scalars, and quantization scales and zero points, so that an INT8 graph counts
    the same parameters as the float graph it came from. Exporters store identical tensors once, so this
    counts unique stored tensors (a randomly initialised model, whose LayerNorm weights are all equal, counts
    fewer than its PyTorch twin; a trained one the same).
    """
    graph = _read_graph(onnx_path)
    quant_params = _quantization_parameter_names(graph.nodes)
    total = 0
    for tensor in graph.initializers:
        if tensor.data_type not in WEIGHT_TYPES or not tensor.dims or tensor.name in quant_params:
            continue
        if tensor.name.endswith(QUANT_PARAM_SUFFIXES):
            continue
        total += _numel(tensor.dims)
    return total


def param_count_safetensors(folder: str | Path) -> int:
    """Elements of the floating-point tensors in a folder's *.safetensors files, from their headers.

    Raises:
        InputError: When the folder has no safetensors file.
    """
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} has no model weights (*.safetensors)", hint=SAFETENSORS_HINT)
    total = 0
    for path in files:
        with safe_open(str(path), framework="np") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = handle.get_slice(name)
                # Integer tensors are buffers (position ids and the like), not learned weights.
                if tensor.get_dtype().startswith(("F", "BF")):
                    total += _numel(tensor.get_shape())
    return total


def param_count(folder: str | Path, onnx: bool) -> int:
    """Parameters of the model in `folder`: ONNX initializers or safetensors headers (no model is loaded)."""
    if onnx:
        return param_count_onnx(onnx_model_path(Path(folder)))
    return param_count_safetensors(folder)


def _read_graph(onnx_path: str | Path) -> Graph:
    """The graph's initializers and nodes (read without the onnx package; see onnx_graph).

    Raises:
        InputError: the file is not an ONNX model (damaged, truncated or something else).
    """
    try:
        return read_graph(onnx_path)
    except (OSError, MalformedGraph) as exc:
        raise InputError(
            f"cannot read the ONNX graph {onnx_path}: {first_line(exc)}",
            hint="the file is damaged or not an ONNX model: copy or export the folder again",
        ) from None


def _quantization_parameter_names(nodes: Iterable[Node]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        for position in QUANT_PARAM_SLOTS.get(node.op_type, ()):
            if position < len(node.inputs) and node.inputs[position]:
                names.add(node.inputs[position])
    return names


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
