"""Deployed size and parameter counts of model folders, without loading the models.

Size counts every file a deployment has to ship (weights, config, tokenizer) and nothing a stage leaves
behind for humans (stage.json, logs, reports). Parameter counts come from file headers: the safetensors
header for PyTorch folders, initializer shapes for ONNX graphs (quantized ones included).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgekd.errors import InputError, MissingDependencyError, first_line

ONNX_MODEL_FILE = "model.onnx"
CONFIG_FILES = ("config.json", "edgekd.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
PYTORCH_WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
SAFETENSORS_HINT = "save the model with save_pretrained(folder) (safetensors weights)"

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


def onnx_model_path(folder: Path) -> Path:
    """`model.onnx`, else the folder's only `.onnx` file.

    Raises:
        InputError: When there is no such file, or several and none is called model.onnx.
    """
    preferred = folder / ONNX_MODEL_FILE
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
    """File names (relative to the graph's folder) that hold the graph's external tensor data."""
    onnx = _import_onnx()
    model = _load_graph(onnx, onnx_path)
    locations: set[str] = set()
    for tensor in _initializers(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(locations)


def param_count_onnx(onnx_path: str | Path) -> int:
    """Weight elements stored in an ONNX graph, quantized or not, read from initializer shapes only.

    Counted: initializers with float or 8-bit (and 4-bit) integer data. Left out: shape/index constants
    (int32/int64/bool), 0-d scalars, and quantization scales and zero points, so that an INT8 graph counts
    the same parameters as the float graph it came from. Exporters store identical tensors once, so this
    counts unique stored tensors (a randomly initialised model, whose LayerNorm weights are all equal, counts
    fewer than its PyTorch twin; a trained one the same).
    """
    onnx = _import_onnx()
    model = _load_graph(onnx, onnx_path)
    quant_params = _quantization_parameter_names(model.graph)
    counted_types = _weight_tensor_types()
    total = 0
    for tensor in _initializers(model.graph):
        if tensor.data_type not in counted_types or not tensor.dims or tensor.name in quant_params:
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


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx") from None
    return onnx


def _load_graph(onnx: Any, onnx_path: str | Path) -> Any:
    """The graph without its external data.

    Raises:
        InputError: the file is not an ONNX model (damaged, truncated or something else).
    """
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise their own error types per failure
        raise InputError(
            f"cannot read the ONNX graph {onnx_path}: {first_line(exc)}",
            hint="the file is damaged or not an ONNX model: copy or export the folder again",
        ) from None


def _initializers(graph: Any) -> Iterable[Any]:
    return getattr(graph, "initializer", ())


def _weight_tensor_types() -> set[int]:
    from onnx import TensorProto

    names = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT8", "UINT8", "INT4", "UINT4")
    return {getattr(TensorProto, name) for name in names if hasattr(TensorProto, name)}


def _quantization_parameter_names(graph: Any) -> set[str]:
    names: set[str] = set()
    for node in getattr(graph, "node", ()):
        for position in QUANT_PARAM_SLOTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position]:
                names.add(node.input[position])
    return names


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
