"""The quantize stage: dynamic INT8 of the exported ONNX model with ONNX Runtime.

`onnxruntime.quantization.quantize_dynamic` is used directly: every recipe setting (weight type, per-channel,
reduce-range, op types, excluded nodes) maps onto one of its arguments, with no preset in between.

Output folder (the artifact contract): `model.onnx` (INT8), the export folder's `config.json` and tokenizer
files, `edgekd.json` (the export's, plus a "quantization" entry) and `quantize.json` (settings, quantized
MatMul count, sizes). It loads with `ORTModelForSequenceClassification.from_pretrained(folder)`,
`transformers.pipeline` and `edgekd.runtime.Classifier`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekd.errors import InputError, StageError
from edgekd.recipe import QuantizeSpec, Recipe
from edgekd.size import external_data_files
from edgekd.stage import STAGE_FILE, StageContext, StageResult, write_json
from edgekd.stages.export import MANIFEST_FILE, MODEL_FILE, PARITY_FILE, onnx_file_bytes

REPORT_FILE = "quantize.json"
TOOL = "onnxruntime.quantization.quantize_dynamic"
# Node types that do the matrix product in integer arithmetic (what a quantized MatMul/Gemm becomes, before
# or after ONNX Runtime's graph fusions).
QUANTIZED_MATMUL_OPS = frozenset(
    {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm", "QAttention"}
)
# Op types quantize_dynamic can act on. Gemm is listed because the quantizer rewrites every Gemm into
# MatMul + Add before quantizing, so Gemm weights are quantized through MatMul.
DYNAMIC_OP_TYPES = frozenset(
    {"MatMul", "Gemm", "Attention", "Conv", "LSTM", "Gather", "EmbedLayerNormalization", "Transpose"}
)
# The protobuf limit of a single .onnx file; past it, weights must go to an external data file.
PROTOBUF_LIMIT_BYTES = 2**31


class QuantizeStage:
    """Exported fp32 ONNX folder -> dynamic INT8 ONNX folder."""

    name = "quantize"
    folder = "quantize"
    needs: tuple[str, ...] = ("export",)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        """The recipe's quantize section and the quantizer's version (a new ONNX Runtime re-quantizes)."""
        return {"quantize": recipe.quantize.model_dump(mode="json"), "onnxruntime": _onnxruntime_version()}

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        spec = ctx.recipe.quantize
        export_dir = ctx.inputs["export"]
        fp32_path = export_dir / MODEL_FILE
        if not fp32_path.is_file():
            raise StageError(
                f"the export stage's {MODEL_FILE} is missing: {fp32_path}", hint="re-run with --force"
            )
        check_op_types(spec.op_types)
        excluded = resolve_excluded_nodes(fp32_path, spec.nodes_to_exclude)

        fp32_bytes = onnx_file_bytes(fp32_path)
        int8_path = out_dir / MODEL_FILE
        ctx.log(f"quantize: dynamic INT8 ({spec.weight_type}, per_channel={spec.per_channel}) of {fp32_path}")
        quantize_model(fp32_path, int8_path, spec, excluded, external_data=fp32_bytes > PROTOBUF_LIMIT_BYTES)
        check_loads(int8_path)

        quantized = count_quantized_matmuls(int8_path)
        if quantized == 0:
            raise StageError(
                "dynamic quantization left every MatMul in fp32: the INT8 model would not be INT8",
                hint="quantize.op_types must include MatMul, and nodes_to_exclude must not list every MatMul",
            )
        int8_bytes = onnx_file_bytes(int8_path)
        copy_support_files(export_dir, out_dir)
        settings = quantization_settings(spec, excluded)
        write_json(out_dir / MANIFEST_FILE, quantized_manifest(export_dir, settings))
        write_json(
            out_dir / REPORT_FILE,
            {
                "tool": TOOL,
                "onnxruntime": _onnxruntime_version(),
                "settings": settings,
                "quantized_matmuls": quantized,
                "fp32_weight_matmuls": count_weight_matmuls(fp32_path),
                "fp32_bytes": fp32_bytes,
                "int8_bytes": int8_bytes,
                "compression": round(fp32_bytes / int8_bytes, 3),
                "int8_op_types": dict(sorted(_op_type_counts(int8_path).items())),
            },
        )
        ratio = fp32_bytes / int8_bytes
        sizes = f"{fp32_bytes / 1e6:.1f} -> {int8_bytes / 1e6:.1f} MB ({ratio:.1f}x)"
        ctx.log(f"quantize: {quantized} INT8 MatMuls, {sizes}")
        return StageResult(
            metrics={"int8_bytes": int8_bytes, "fp32_bytes": fp32_bytes, "quantized_matmuls": quantized},
            summary=f"{quantized} INT8 MatMuls, {fp32_bytes / int8_bytes:.1f}x smaller",
        )


# ----------------------------------------------------------------------------------------------------------
# Quantization


def quantize_model(
    fp32_path: Path,
    int8_path: Path,
    spec: QuantizeSpec,
    nodes_to_exclude: list[str],
    external_data: bool = False,
) -> None:
    """Dynamic INT8 quantization of `fp32_path` into `int8_path` with the recipe's settings.

    Args:
        fp32_path: The fp32 ONNX model.
        int8_path: Where to write the INT8 model.
        spec: The recipe's quantize section.
        nodes_to_exclude: Node names to keep in fp32 (already resolved with `resolve_excluded_nodes`).
        external_data: Write the weights to an external data file (models past the 2 GB protobuf limit).

    Raises:
        StageError: the quantizer failed.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[spec.weight_type]
    try:
        with _without_preprocessing_nag():
            quantize_dynamic(
                fp32_path,
                int8_path,
                op_types_to_quantize=list(spec.op_types),
                per_channel=spec.per_channel,
                reduce_range=spec.reduce_range,
                weight_type=weight_type,
                nodes_to_exclude=nodes_to_exclude,
                use_external_data_format=external_data,
                # Without it, quantizing a fused (ORT-optimized) graph fails with "Unable to find data type
                # for weight_name=..."; on a plain exported graph it changes nothing.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as exc:  # the quantizer raises many types; the message is what matters
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageError(f"dynamic quantization of {fp32_path} failed: {first_line}") from exc


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_nag() -> Iterator[None]:
    """Silence quantize_dynamic's root-logger advice to pre-process the model: shape inference and graph
    optimization before quantizing matter for static (QDQ) quantization, not for dynamic INT8 of a plain
    exported transformer."""
    root = logging.getLogger()
    nag = _DropMessage("consider to run pre-processing before quantization")
    root.addFilter(nag)
    try:
        yield
    finally:
        root.removeFilter(nag)


def check_op_types(op_types: list[str]) -> None:
    """Refuse op types dynamic quantization cannot act on: a typo would silently quantize nothing.

    Raises:
        InputError: with the closest valid name.
    """
    for op_type in op_types:
        if op_type in DYNAMIC_OP_TYPES:
            continue
        close = difflib.get_close_matches(op_type, sorted(DYNAMIC_OP_TYPES), n=1, cutoff=0.6)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(
            f"quantize.op_types: '{op_type}' is not an op type dynamic quantization handles{suggestion}",
            hint=f"use some of: {', '.join(sorted(DYNAMIC_OP_TYPES))}",
        )


def resolve_excluded_nodes(fp32_path: Path, names: list[str]) -> list[str]:
    """The node names to pass to the quantizer for the recipe's `nodes_to_exclude`.

    The quantizer renames every Gemm `X` to a MatMul `X_MatMul` before it looks at the exclusion list, so
    excluding a Gemm by the name the exported graph shows would silently do nothing; both names are passed.

    Raises:
        InputError: a name is not a node of the graph (with the closest node names).
    """
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    op_type_of = {node.name: node.op_type for node in graph.node}
    resolved: list[str] = []
    for name in names:
        if name not in op_type_of:
            close = difflib.get_close_matches(name, list(op_type_of), n=3, cutoff=0.5)
            raise InputError(
                f"quantize.nodes_to_exclude: no node named '{name}' in {fp32_path.name}",
                hint=f"closest node names: {', '.join(close)}"
                if close
                else "list node names with netron or onnx",
            )
        resolved.append(name)
        if op_type_of[name] == "Gemm":
            resolved.append(f"{name}_MatMul")
    return resolved


def check_loads(onnx_path: Path) -> None:
    """Open the quantized model in ONNX Runtime now, so a broken graph fails here and not on a device.

    Raises:
        StageError: ONNX Runtime refuses the model.
    """
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types per failure
        raise StageError(f"ONNX Runtime cannot load the quantized model: {str(exc).splitlines()[0]}") from exc


def quantization_settings(spec: QuantizeSpec, nodes_to_exclude: list[str]) -> dict[str, Any]:
    """The settings as recorded in quantize.json and edgekd.json."""
    return {
        "mode": "dynamic",
        "weight_type": spec.weight_type,
        "activation_type": "quint8",  # dynamic quantization always quantizes activations to uint8
        "per_channel": spec.per_channel,
        "reduce_range": spec.reduce_range,
        "op_types": list(spec.op_types),
        "nodes_to_exclude": nodes_to_exclude,
    }


# ----------------------------------------------------------------------------------------------------------
# Graph inspection


def count_quantized_matmuls(onnx_path: str | Path) -> int:
    """Number of nodes in an ONNX graph that compute a matrix product in integer arithmetic.

    Counts MatMulInteger, DynamicQuantizeMatMul, MatMulIntegerToFloat, QLinearMatMul, QGemm and QAttention
    nodes (a fused QAttention counts once).

    Args:
        onnx_path: The .onnx file (external weights are not read).
    """
    counts = _op_type_counts(Path(onnx_path))
    return sum(n for op_type, n in counts.items() if op_type in QUANTIZED_MATMUL_OPS)


def count_weight_matmuls(onnx_path: str | Path) -> int:
    """Number of MatMul and Gemm nodes whose second operand is a weight (an initializer).

    These are the nodes dynamic quantization turns into integer MatMuls; products of two activations (the
    attention scores) stay in fp32.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    return sum(1 for node in graph.node if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights)


def _op_type_counts(onnx_path: Path) -> Counter[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


# ----------------------------------------------------------------------------------------------------------
# Folder


def copy_support_files(export_dir: Path, out_dir: Path) -> list[str]:
    """Copy what the export folder ships besides the model (config.json, tokenizer files).

    The fp32 model and its external data, the export's own reports and edgekd.json (rewritten by this stage)
    are left out.

    Returns:
        The names of the copied files.
    """
    skip = {MODEL_FILE, PARITY_FILE, MANIFEST_FILE, STAGE_FILE, *external_data_files(export_dir / MODEL_FILE)}
    copied = []
    for path in sorted(export_dir.iterdir()):
        if path.is_file() and path.name not in skip and not path.name.startswith("."):
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied


def quantized_manifest(export_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The export's edgekd.json with the precision and a "quantization" entry.

    Raises:
        StageError: the export's edgekd.json is missing or unreadable.
    """
    path = export_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(
            f"cannot read the export's {MANIFEST_FILE}: {exc}", hint="re-run with --force"
        ) from None
    manifest["precision"] = "int8-dynamic"
    manifest["quantization"] = {"tool": TOOL, "onnxruntime": _onnxruntime_version(), "settings": settings}
    return manifest


def _onnxruntime_version() -> str | None:
    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return None
