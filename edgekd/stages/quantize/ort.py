"""ONNX Runtime quantization: the settings (weight type, per-channel and reduce-range for the target CPU, op
types, excluded nodes), graph optimisation (fusion kept only when measurably faster), and dynamic or static
(calibrated) INT8 quantization of one graph.

`quantize.target` names the CPU the model will serve on. `auto` (default) is the CPU running `compress`, with
edgekd's own choices (`resolve_weight_type`; per_channel and reduce_range off unless set). The other targets take
the settings of Optimum's preset of the same name, `AutoQuantizationConfig.<target>(is_static=...)` (optimum-onnx
0.1.0, optimum/onnxruntime/configuration.py), which `optimum-cli onnxruntime quantize --<target>` calls:

| preset      | activations | weights     | per_channel (default) | reduce_range            |
|-------------|-------------|-------------|-----------------------|-------------------------|
| avx2        | uint8       | uint8 (u8u8)| True                  | False (a parameter)     |
| avx512      | uint8       | int8 (u8s8) | True                  | False (a parameter)     |
| avx512_vnni | uint8       | int8 (u8s8) | True                  | False (fixed)           |
| arm64       | uint8       | int8 (u8s8) | True                  | False (fixed)           |

Every preset leaves `operators_to_quantize` at ONNX Runtime's default list for the mode (the same for all four),
so the target does not touch `quantize.op_types`. `optimum-cli` passes its own `--per_channel` flag (off unless
given) where the Python presets default to True; edgekd follows the presets. A setting the recipe gives
(`weight_type` other than auto, `per_channel`, `reduce_range`) wins over the preset; edgekd.json records what
was asked, what was used and why. ONNX Runtime's quantization guide says why the presets differ: on AVX2 and
AVX512 without VNNI the u8s8 kernel uses VPMADDUBSW, which can saturate in int16 (reduce_range, 7-bit weights,
or u8u8 avoid it); VNNI and Arm have no such issue.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import InputError, StageError, first_line
from edgekd.recipe.schema import QuantizeSpec
from edgekd.stages.export import MODEL_FILE
from edgekd.stages.quantize.search import (
    batch1_latency_ms,
)

# Op types quantize_dynamic can act on. Gemm is listed because the quantizer rewrites every Gemm into
# MatMul + Add before quantizing, so Gemm weights are quantized through MatMul.
DYNAMIC_OP_TYPES = frozenset(
    {"MatMul", "Gemm", "Attention", "Conv", "LSTM", "Gather", "EmbedLayerNormalization", "Transpose"}
)


# What static (QOperator) quantization of a transformer's weights can use from the recipe's op types.
STATIC_OP_TYPES = frozenset({"MatMul", "Gemm"})


# The protobuf limit of a single .onnx file; past it, weights must go to an external data file.
PROTOBUF_LIMIT_BYTES = 2**31


@dataclass(frozen=True)
class TargetPreset:
    """What Optimum's `AutoQuantizationConfig.<target>` preset sets for dynamic and static INT8, and why."""

    weight_type: str
    per_channel: bool
    reduce_range: bool
    why: str


# The presets of the module docstring's table (activations are uint8 in every one, as edgekd always uses).
TARGET_PRESETS = {
    "avx2": TargetPreset(
        "quint8",
        True,
        False,
        "u8 weights: ORT's u8u8 kernel cannot saturate, where u8s8's VPMADDUBSW adds pairs into int16 on AVX2",
    ),
    "avx512": TargetPreset(
        "qint8",
        True,
        False,
        "s8 weights: u8s8 does twice the multiply-adds of u8u8 per AVX512 instruction; VPMADDUBSW can "
        "saturate in int16 (set reduce_range: true if accuracy drops)",
    ),
    "avx512_vnni": TargetPreset(
        "qint8", True, False, "s8 weights: VNNI's VPDPBUSD accumulates u8 x s8 in int32, no saturation"
    ),
    "arm64": TargetPreset(
        "qint8",
        True,
        False,
        "s8 weights: u8s8 is faster than u8u8 on low-end ARM64 and the same on high-end, no saturation",
    ),
}
AUTO_TARGET = "auto"


# Fused graph must beat the plain one by this share of latency to be kept (timing noise on shared machines).
FUSION_MIN_GAIN = 0.03


# Encoder architectures ONNX Runtime's BERT fusions recognise.
BERT_LIKE = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "mpnet", "albert", "deberta"}
)


OPT_LEVELS = {"basic": 1, "extended": 2, "all": 99}


@dataclass
class Prepared:
    """The fp32 graph to quantize and how it was chosen (the optimization record)."""

    path: Path
    optimization: dict[str, Any] = field(default_factory=dict)


def resolve_weight_type(requested: str, flags: dict[str, bool] | None = None) -> tuple[str, str]:
    """The weight type to use and why: `auto` picks by the CPU's instruction set (see the module docstring).

    Args:
        requested: "auto", "qint8" or "quint8".
        flags: CPU flags as `edgekd.bench.envinfo.cpu_flags()` returns them (read from /proc/cpuinfo when None).
    """
    if requested != "auto":
        return requested, "set in the recipe"
    from edgekd.bench.envinfo import VNNI_FLAGS, cpu_flags

    present = flags if flags is not None else cpu_flags()
    vnni = [flag for flag in VNNI_FLAGS if present.get(flag)]
    if vnni:
        return "qint8", f"auto: the CPU has {vnni[0]} (u8s8 accumulates in int32, no saturation)"
    if not present.get("avx2"):
        return "qint8", "auto: not an AVX2 x86 CPU (ORT's recommended default)"
    return "qint8", (
        "auto: AVX2 without VNNI; u8s8 is ~15% faster than u8u8 and its int16 saturation cost no accuracy "
        "on a real student (benchmarks/results/quantize_settings.json)"
    )


def target_settings(spec: QuantizeSpec, flags: dict[str, bool] | None = None) -> dict[str, Any]:
    """Weight type, per-channel and reduce-range for `spec.target`, each with what the recipe asked and why.

    Args:
        spec: The quantize section.
        flags: The build CPU's flags (read from /proc/cpuinfo when None; only target auto reads them).

    Returns:
        `weight_type`, `per_channel`, `reduce_range` (what the quantizer gets), and for each `<name>_requested`
        (the recipe's value: "auto" or None mean the target's choice) and `<name>_reason`.
    """
    requested = {"per_channel": spec.per_channel, "reduce_range": spec.reduce_range}
    settings: dict[str, Any] = {"weight_type_requested": spec.weight_type}
    if spec.target == AUTO_TARGET:
        weight_type, reason = resolve_weight_type(spec.weight_type, flags)
        settings.update(weight_type=weight_type, weight_type_reason=reason)
        for name, value in requested.items():
            settings[name] = bool(value)
            settings[f"{name}_reason"] = "set in the recipe" if value is not None else "not set: off"
    else:
        preset = TARGET_PRESETS[spec.target]
        origin = f"AutoQuantizationConfig.{spec.target}"
        if spec.weight_type == "auto":
            settings.update(
                weight_type=preset.weight_type,
                weight_type_reason=f"target {spec.target} ({origin}): {preset.why}",
            )
        else:
            settings.update(
                weight_type=spec.weight_type,
                weight_type_reason=f"set in the recipe (target {spec.target}'s preset: {preset.weight_type})",
            )
        for name, value in requested.items():
            chosen = getattr(preset, name)
            settings[name] = chosen if value is None else value
            settings[f"{name}_reason"] = (
                f"target {spec.target}: {origin} sets {name}={chosen}"
                if value is None
                else f"set in the recipe (target {spec.target}'s preset: {chosen})"
            )
    settings.update({f"{name}_requested": value for name, value in requested.items()})
    return settings


def build_cpu(flags: dict[str, bool] | None = None, machine: str | None = None) -> dict[str, Any]:
    """The CPU running `compress` as edgekd.json records it: architecture, the INT8-relevant flags it has, and
    the `quantize.target` it fits (what `target: auto` stands for; None where unknown)."""
    import platform

    from edgekd.bench.envinfo import cpu_flags, cpu_flags_summary, cpu_target

    present = cpu_flags() if flags is None else flags
    arch = platform.machine() if machine is None else machine
    return {"machine": arch, "flags": cpu_flags_summary(present), "target": cpu_target(present, arch)}


def quantization_settings(
    spec: QuantizeSpec, nodes_to_exclude: list[str], flags: dict[str, bool] | None = None
) -> dict[str, Any]:
    """The settings as recorded in quantize.json and edgekd.json (target, weight type, per-channel and
    reduce-range resolved; `flags`: the build CPU's, read from /proc/cpuinfo when None)."""
    chosen = target_settings(spec, flags)
    settings: dict[str, Any] = {
        "mode": spec.mode,
        "target": spec.target,
        "weight_type": chosen["weight_type"],
        "weight_type_requested": chosen["weight_type_requested"],
        "weight_type_reason": chosen["weight_type_reason"],
        # Dynamic quantization always quantizes activations to uint8; static uses uint8 too (MLAS's fast path).
        "activation_type": "quint8",
        **{
            f"{name}{suffix}": chosen[f"{name}{suffix}"]
            for name in ("per_channel", "reduce_range")
            for suffix in ("", "_requested", "_reason")
        },
        "op_types": quantizable_op_types(spec),
        "nodes_to_exclude": nodes_to_exclude,
    }
    if spec.mode == "static":
        settings.update(
            calibration_samples=spec.calibration_samples,
            calibration_method="MinMax",
            quant_format="QOperator",
        )
    return settings


def quantizable_op_types(spec: QuantizeSpec) -> list[str]:
    if spec.mode == "static":
        return [op for op in spec.op_types if op in STATIC_OP_TYPES]
    return list(spec.op_types)


def prepare_graph(
    fp32_path: Path,
    support_dir: Path,
    optimize: str,
    quantize: Callable[[Path, list[str], Path], None],
    latency_texts: list[str],
    max_length: int,
    work: Path,
) -> Prepared:
    """The fp32 graph to quantize: the exported one, a fused one, or (auto) whichever quantizes faster.

    Raises:
        StageError: the optimizer failed.
    """
    if optimize == "none":
        return Prepared(fp32_path, {"requested": "none", "applied": "none"})
    if optimize != "auto":
        fused = fuse_graph(fp32_path, support_dir, optimize, work / f"fused_{optimize}.onnx")
        return Prepared(fused, {"requested": optimize, "applied": optimize})
    fused = fuse_graph(fp32_path, support_dir, "extended", work / "fused_extended.onnx")
    timings = {}
    for level, graph in (("none", fp32_path), ("extended", fused)):
        candidate = work / f"timing_{level}" / MODEL_FILE
        candidate.parent.mkdir(parents=True, exist_ok=True)
        quantize(graph, [], candidate)
        timings[level] = round(batch1_latency_ms(candidate, support_dir, latency_texts, max_length), 4)
    keep_fused = timings["extended"] < timings["none"] * (1 - FUSION_MIN_GAIN)
    record = {
        "requested": "auto",
        "applied": "extended" if keep_fused else "none",
        "int8_p50_ms_batch1_1thread": timings,
        "texts": len(latency_texts),
        "rule": f"fused kept only when more than {FUSION_MIN_GAIN:.0%} faster",
    }
    return Prepared(fused if keep_fused else fp32_path, record)


def fuse_graph(fp32_path: Path, support_dir: Path, level: str, out_path: Path) -> Path:
    """ONNX Runtime's transformer fusions at `level` (basic, extended, all), written to `out_path`.

    Raises:
        StageError: the optimizer failed or the architecture has no fusion patterns.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((support_dir / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in BERT_LIKE:
        raise StageError(
            f"quantize.optimize: ONNX Runtime has no transformer fusions for model_type {model_type!r}",
            hint="set quantize.optimize: none",
        )
    try:
        model = optimize_model(
            str(fp32_path),
            model_type="bert",
            # A head-pruned student keeps fewer heads than config.num_attention_heads says (transformers records
            # them in pruned_heads): 0 and 0 let the optimizer read the real sizes from the graph.
            num_heads=0 if config.get("pruned_heads") else int(config.get("num_attention_heads", 0)),
            hidden_size=0 if config.get("pruned_heads") else int(config.get("hidden_size", 0)),
            opt_level=OPT_LEVELS[level],
            use_gpu=False,
        )
        model.save_model_to_file(str(out_path))
    except Exception as exc:  # the optimizer raises many types; the message is what matters
        raise StageError(f"ONNX Runtime graph optimization failed: {str(exc).splitlines()[0]}") from exc
    return out_path


def make_quantizer(
    spec: QuantizeSpec,
    settings: dict[str, Any],
    support_dir: Path,
    calibration_texts: list[str],
    max_length: int,
    fp32_bytes: int,
) -> Callable[[Path, list[str], Path], None]:
    """A function (fp32 graph, nodes to keep in fp32, output path) -> writes the INT8 model."""
    external = fp32_bytes > PROTOBUF_LIMIT_BYTES
    if spec.mode == "dynamic":
        return lambda graph, exclude, out: quantize_model(graph, out, settings, exclude, external)
    feeds = calibration_feeds(support_dir, calibration_texts, max_length)
    return lambda graph, exclude, out: quantize_static_model(graph, out, settings, exclude, feeds, external)


def quantize_model(
    fp32_path: Path,
    int8_path: Path,
    settings: dict[str, Any] | QuantizeSpec,
    nodes_to_exclude: list[str],
    external_data: bool = False,
) -> None:
    """Dynamic INT8 quantization of `fp32_path` into `int8_path`.

    Args:
        fp32_path: The fp32 ONNX model.
        int8_path: Where to write the INT8 model.
        settings: `quantization_settings(...)` (or a QuantizeSpec with a concrete weight type).
        nodes_to_exclude: Node names to keep in fp32 (already resolved with `resolve_excluded_nodes`).
        external_data: Write the weights to an external data file (models past the 2 GB protobuf limit).

    Raises:
        StageError: the quantizer failed.
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    options = settings if isinstance(settings, dict) else quantization_settings(settings, nodes_to_exclude)
    try:
        with _without_preprocessing_nag():
            quantize_dynamic(
                fp32_path,
                int8_path,
                op_types_to_quantize=list(options["op_types"]),
                per_channel=options["per_channel"],
                reduce_range=options["reduce_range"],
                weight_type=_quant_type(options["weight_type"]),
                nodes_to_exclude=nodes_to_exclude,
                use_external_data_format=external_data,
                # Without it, quantizing a fused (ORT-optimized) graph fails with "Unable to find data type
                # for weight_name=..."; on a plain exported graph it changes nothing.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as exc:  # the quantizer raises many types; the message is what matters
        raise StageError(f"dynamic quantization of {fp32_path} failed: {first_line(exc)}") from exc


def quantize_static_model(
    fp32_path: Path,
    int8_path: Path,
    settings: dict[str, Any],
    nodes_to_exclude: list[str],
    feeds: list[dict[str, np.ndarray]],
    external_data: bool = False,
) -> None:
    """Static INT8 (QOperator: QLinearMatMul) with activation ranges calibrated (MinMax) on `feeds`.

    Raises:
        StageError: the quantizer failed.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    try:
        with _without_preprocessing_nag():
            quantize_static(
                fp32_path,
                int8_path,
                ListDataReader(feeds, fp32_path),
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=list(settings["op_types"]),
                per_channel=settings["per_channel"],
                reduce_range=settings["reduce_range"],
                activation_type=_quant_type("quint8"),
                weight_type=_quant_type(settings["weight_type"]),
                nodes_to_exclude=nodes_to_exclude,
                use_external_data_format=external_data,
                # Only weight MatMuls: products of two activations (attention scores) stay fp32, as in dynamic.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
            )
    except Exception as exc:  # the quantizer raises many types; the message is what matters
        raise StageError(f"static quantization of {fp32_path} failed: {first_line(exc)}") from exc


def calibration_feeds(support_dir: Path, texts: list[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """Batch-1 int64 feeds of the calibration texts, tokenized as the runtime does (the real input shapes)."""
    from edgekd.runtime import load_shipped_tokenizer

    if not texts:
        raise StageError("static quantization needs calibration texts, and the train split is empty")
    tokenizer = load_shipped_tokenizer(support_dir, max_length)
    feeds = []
    for encoding in tokenizer.encode_batch(texts):
        row = {
            "input_ids": encoding.ids,
            "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids,
        }
        feeds.append({name: np.asarray([values], dtype=np.int64) for name, values in row.items()})
    return feeds


class ListDataReader:
    """An onnxruntime CalibrationDataReader over prepared feeds, restricted to the graph's inputs."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], onnx_path: Path) -> None:
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        names = [graph_input.name for graph_input in graph.input]
        self._feeds = iter([{name: feed[name] for name in names} for feed in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # the calibrator reads the data once
        return None


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


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
    nags = [
        _DropMessage("consider to run pre-processing before quantization"),
        _DropMessage("consider pre-processing"),
    ]
    for nag in nags:
        root.addFilter(nag)
    try:
        yield
    finally:
        for nag in nags:
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
