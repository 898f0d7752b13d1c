"""The quantize stage: INT8 of the exported ONNX model with ONNX Runtime, measured on the validation split.

`onnxruntime.quantization.quantize_dynamic` (default) or `quantize_static` is called directly: every recipe
setting (weight type, per-channel, reduce-range, op types, excluded nodes) maps onto one of its arguments,
with no preset in between. The stage then:

* measures validation accuracy of the fp32 ONNX and of the INT8 ONNX with the runtime's tokenizer, and records
  both in `edgekd.json` and `quantize.json`;
* with `max_accuracy_drop_pts`, keeps the most sensitive layers in fp32 until the drop fits the budget
  (`edgekd.stages.quantize.search`), or fails listing every trial;
* with `optimize`, applies ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu,
  EmbedLayerNormalization) to the fp32 graph before quantizing. The runtime session already applies ORT's
  generic graph optimizations online, so offline fusion only matters for what the quantizer sees: a fused
  Attention becomes one QAttention. `auto` quantizes both graphs, times them single-thread at batch 1 on
  validation texts and keeps the fused one only when it is faster (by more than `FUSION_MIN_GAIN`). `all`
  adds hardware-specific layout transforms: only use it on the machine that will serve the model.

Default weight type (`weight_type: auto`), from `benchmarks/quantize_settings.py` (results in
`benchmarks/results/quantize_settings.json`). Dynamic INT8 multiplies uint8 activations by the weights:

* With VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8), the u8 x s8 product is one instruction that accumulates in
  int32: qint8 (s8) weights are exact and fastest. -> qint8.
* On AVX2 without VNNI (the machine these numbers come from: 2-core AMD EPYC, flags avx2 only), ORT's u8s8
  kernel uses `vpmaddubsw`, which adds pairs of u8 x s8 products into int16 *with saturation*; quint8
  weights take the u8u8 kernel, which cannot saturate but is slower. Measured on the quickstart student
  (3x384, pruned vocabulary, 500 AG News validation texts, single thread, batch 1, median of 3 interleaved
  rounds, quiet machine; fp32 ONNX: accuracy 0.900, 10.8 ms):

  | setting | accuracy | p50 ms |
  |---|---|---|
  | qint8 | 0.896 | 6.62 |
  | qint8 + reduce_range | 0.896 | 6.37 |
  | qint8 + per_channel | 0.900 | 6.43 |
  | quint8 | 0.890 | 7.56 |
  | quint8 + reduce_range | 0.900 | 7.71 |

  On a real student the saturation costs no accuracy while quint8 costs ~15% latency, so -> qint8 here too
  (and `per_channel: true`, the most accurate at no cost, in the shipped recipes). Saturation is visible on
  tiny random models (logit MSE 1e-2 against quint8's 5e-6 on the 1x64 smoke student): recipes can set
  `weight_type: quint8`, and `max_accuracy_drop_pts` guards every run.
* Other CPUs (Arm, no AVX2) -> qint8, ORT's recommended default.

Fusions (`optimize`) were 21% faster on the smoke student (0.115 vs 0.146 ms) and slower on the 3x384
student (6.77 vs 6.62 ms), hence `none` by default and `auto` to measure on the serving machine.

Output folder (the artifact contract): `model.onnx` (INT8), the export folder's `config.json` and tokenizer
files, `edgekd.json` (the export's, plus "quantization" and "accuracy" entries) and `quantize.json` (tool,
settings, accuracies, trials, optimization timings, quantized MatMul count, sizes). It loads with
`ORTModelForSequenceClassification.from_pretrained(folder)`, `transformers.pipeline` and
`edgekd.runtime.Classifier`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.artifact import MANIFEST_FILE, MODEL_FILE, external_data_files, onnx_file_bytes
from edgekd.data import load_splits
from edgekd.errors import InputError, StageError, first_line
from edgekd.recipe.schema import QuantizeSpec, Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.export import PARITY_FILE
from edgekd.stages.quantize.search import (
    OnnxEvaluator,
    SearchResult,
    accuracy_aware_search,
    batch1_latency_ms,
    weight_node_groups,
)
from edgekd.stages.runner import STAGE_FILE, fingerprint_path, write_json

REPORT_FILE = "quantize.json"
TOOLS = {
    "dynamic": "onnxruntime.quantization.quantize_dynamic",
    "static": "onnxruntime.quantization.quantize_static",
}
TOOL = TOOLS["dynamic"]
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
# What static (QOperator) quantization of a transformer's weights can use from the recipe's op types.
STATIC_OP_TYPES = frozenset({"MatMul", "Gemm"})
# The protobuf limit of a single .onnx file; past it, weights must go to an external data file.
PROTOBUF_LIMIT_BYTES = 2**31
# CPU flags that give ORT's u8s8 kernels an int32-accumulating dot product (no int16 saturation).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Fused graph must beat the plain one by this share of latency to be kept (timing noise on shared machines).
FUSION_MIN_GAIN = 0.03
LATENCY_TEXTS = 24
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


class QuantizeStage(StageBase):
    """Exported fp32 ONNX folder -> INT8 ONNX folder, with measured accuracy."""

    name = "quantize"
    folder = "quantize"
    needs: tuple[str, ...] = ("export",)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        """The quantize section, the quantizer's version, the CPU flags `auto` reads, and the data measured on."""
        return {
            "quantize": recipe.quantize.model_dump(mode="json"),
            "onnxruntime": _onnxruntime_version(),
            "weight_type": resolve_weight_type(recipe.quantize.weight_type)[0],
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "data_files": fingerprint_path(recipe.data.path),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe, spec = ctx.recipe, ctx.recipe.quantize
        export_dir = ctx.inputs["export"]
        fp32_path = export_dir / MODEL_FILE
        if not fp32_path.is_file():
            raise StageError(
                f"the export stage's {MODEL_FILE} is missing: {fp32_path}", hint="re-run with --force"
            )
        check_op_types(spec.op_types)
        excluded = resolve_excluded_nodes(fp32_path, spec.nodes_to_exclude)
        settings = quantization_settings(spec, excluded)
        splits = load_splits(recipe.data, recipe.seed)
        max_length = recipe.data.max_length
        evaluate = OnnxEvaluator(
            export_dir, splits.texts("validation"), splits.label_ids("validation"), max_length
        )
        fp32_bytes = onnx_file_bytes(fp32_path)
        work = out_dir / ".work"
        work.mkdir(exist_ok=True)
        try:
            reference = evaluate(fp32_path)
            calibration = splits.texts("train")[: spec.calibration_samples] if spec.mode == "static" else []
            quantize = make_quantizer(spec, settings, export_dir, calibration, max_length, fp32_bytes)
            latency_texts = splits.texts("validation")[:LATENCY_TEXTS]
            prepared = prepare_graph(
                fp32_path, export_dir, spec.optimize, quantize, latency_texts, max_length, work
            )
            ctx.log(
                f"quantize: {spec.mode} INT8 ({settings['weight_type']}, per_channel={spec.per_channel}, "
                f"optimize={prepared.optimization['applied']}) of {fp32_path}"
            )
            groups = weight_node_groups(prepared.path, _quantizable_op_types(spec), spec.fallback)
            search = accuracy_aware_search(
                lambda names, path: quantize(prepared.path, [*excluded, *names], path),
                evaluate,
                reference,
                groups,
                spec.max_accuracy_drop_pts,
                work,
                ctx.log,
            )
            for source in search.chosen.path.parent.iterdir():
                shutil.move(str(source), out_dir / source.name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        fallback = [name for group in search.chosen.fp32_groups for name in groups[group]]
        settings = {**settings, "nodes_to_exclude": [*excluded, *fallback]}
        accuracy = accuracy_record(
            reference.accuracy, search, len(evaluate.labels), spec.max_accuracy_drop_pts
        )
        return self._finish(ctx, out_dir, export_dir, settings, accuracy, search, prepared, fp32_bytes)

    def _finish(
        self,
        ctx: StageContext,
        out_dir: Path,
        export_dir: Path,
        settings: dict[str, Any],
        accuracy: dict[str, Any],
        search: SearchResult,
        prepared: Prepared,
        fp32_bytes: int,
    ) -> StageResult:
        """Check the shipped file and write edgekd.json, quantize.json and the support files."""
        int8_path = out_dir / MODEL_FILE
        check_loads(int8_path)
        quantized = count_quantized_matmuls(int8_path)
        if quantized == 0:
            raise StageError(
                "quantization left every MatMul in fp32: the INT8 model would not be INT8",
                hint="quantize.op_types must include MatMul, and nodes_to_exclude must not list every MatMul",
            )
        tool = {"tool": TOOLS[settings["mode"]], "onnxruntime": _onnxruntime_version()}
        int8_bytes = onnx_file_bytes(int8_path)
        copy_support_files(export_dir, out_dir)
        write_json(
            out_dir / MANIFEST_FILE,
            quantized_manifest(export_dir, settings, accuracy, prepared, search.chosen.fp32_groups),
        )
        write_json(
            out_dir / REPORT_FILE,
            {
                **tool,
                "settings": settings,
                "accuracy": accuracy,
                "optimization": prepared.optimization,
                "fp32_fallback": {
                    "groups": search.chosen.fp32_groups,
                    "sensitivity_ranking": search.sensitivity,
                    "trials": [trial.record() for trial in search.trials],
                },
                "quantized_matmuls": quantized,
                "fp32_weight_matmuls": count_weight_matmuls(ctx.inputs["export"] / MODEL_FILE),
                "fp32_bytes": fp32_bytes,
                "int8_bytes": int8_bytes,
                "compression": round(fp32_bytes / int8_bytes, 3),
                "int8_op_types": dict(sorted(_op_type_counts(int8_path).items())),
            },
        )
        ratio = fp32_bytes / int8_bytes
        ctx.log(
            f"quantize: {quantized} INT8 MatMuls, {fp32_bytes / 1e6:.1f} -> {int8_bytes / 1e6:.1f} MB "
            f"({ratio:.1f}x); validation accuracy {accuracy['fp32_onnx']:.4f} -> {accuracy['int8_onnx']:.4f}"
        )
        return StageResult(
            metrics={
                "int8_bytes": int8_bytes,
                "fp32_bytes": fp32_bytes,
                "quantized_matmuls": quantized,
                "validation_accuracy_fp32": accuracy["fp32_onnx"],
                "validation_accuracy_int8": accuracy["int8_onnx"],
                "fp32_groups": search.chosen.fp32_groups,
            },
            summary=f"{quantized} INT8 MatMuls, {ratio:.1f}x smaller",
        )


def accuracy_record(
    fp32_accuracy: float, search: SearchResult, samples: int, budget: float | None
) -> dict[str, Any]:
    """The accuracy entry of edgekd.json / quantize.json: the shipped file's and the fp32 ONNX's."""
    return {
        "split": "validation",
        "samples": samples,
        "fp32_onnx": round(fp32_accuracy, 6),
        "int8_onnx": round(search.chosen.accuracy, 6),
        "drop_pts": round(search.chosen.drop_pts, 4),
        "max_accuracy_drop_pts": budget,
        "measured_with": "edgekd.runtime tokenizer + onnxruntime CPU, batch 32",
    }


# ----------------------------------------------------------------------------------------------------------
# Settings


def resolve_weight_type(requested: str, flags: dict[str, bool] | None = None) -> tuple[str, str]:
    """The weight type to use and why: `auto` picks by the CPU's instruction set (see the module docstring).

    Args:
        requested: "auto", "qint8" or "quint8".
        flags: CPU flags as `edgekd.bench.envinfo.cpu_flags()` returns them (read from /proc/cpuinfo when None).
    """
    if requested != "auto":
        return requested, "set in the recipe"
    from edgekd.bench.envinfo import cpu_flags

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


def quantization_settings(spec: QuantizeSpec, nodes_to_exclude: list[str]) -> dict[str, Any]:
    """The settings as recorded in quantize.json and edgekd.json (weight type resolved)."""
    weight_type, reason = resolve_weight_type(spec.weight_type)
    settings: dict[str, Any] = {
        "mode": spec.mode,
        "weight_type": weight_type,
        "weight_type_requested": spec.weight_type,
        "weight_type_reason": reason,
        # Dynamic quantization always quantizes activations to uint8; static uses uint8 too (MLAS's fast path).
        "activation_type": "quint8",
        "per_channel": spec.per_channel,
        "reduce_range": spec.reduce_range,
        "op_types": _quantizable_op_types(spec),
        "nodes_to_exclude": nodes_to_exclude,
    }
    if spec.mode == "static":
        settings.update(
            calibration_samples=spec.calibration_samples,
            calibration_method="MinMax",
            quant_format="QOperator",
        )
    return settings


def _quantizable_op_types(spec: QuantizeSpec) -> list[str]:
    if spec.mode == "static":
        return [op for op in spec.op_types if op in STATIC_OP_TYPES]
    return list(spec.op_types)


# ----------------------------------------------------------------------------------------------------------
# Graph optimization


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


# ----------------------------------------------------------------------------------------------------------
# Quantization


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
    from edgekd.runtime import load_tokenizer

    if not texts:
        raise StageError("static quantization needs calibration texts, and the train split is empty")
    tokenizer = load_tokenizer(support_dir, max_length)
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


def quantized_manifest(
    export_dir: Path,
    settings: dict[str, Any],
    accuracy: dict[str, Any],
    prepared: Prepared,
    fp32_groups: list[str],
) -> dict[str, Any]:
    """The export's edgekd.json with the precision, a "quantization" entry (tool, settings, graph
    optimization) and the validation "accuracy" measured for this file.

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
    manifest["precision"] = f"int8-{settings['mode']}"
    manifest["quantization"] = {
        "tool": TOOLS[settings["mode"]],
        "onnxruntime": _onnxruntime_version(),
        "settings": settings,
        "graph_optimization": prepared.optimization.get("applied", "none"),
        "fp32_fallback_groups": fp32_groups,
        "trials": "quantize.json: fp32_fallback.trials",
    }
    manifest["accuracy"] = accuracy
    return manifest


def _onnxruntime_version() -> str | None:
    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return None
