"""The quantize stage: INT8 of the exported ONNX model with ONNX Runtime, measured on the validation split.

`onnxruntime.quantization.quantize_dynamic` (default) or `quantize_static` is called directly: every recipe
setting (weight type, per-channel, reduce-range, op types, excluded nodes) maps onto one of its arguments,
with no preset in between. The stage then:

* measures validation accuracy of the fp32 ONNX and of the INT8 ONNX with the runtime's tokenizer, and records
  both in `edgekd.json`;
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
* On AVX2 without VNNI, ORT's u8s8 kernel uses `vpmaddubsw`, which adds pairs of u8 x s8 products into int16 *with
  saturation*; quint8 weights take the u8u8 kernel, which cannot saturate but is slower. On a 3x384 student the
  accuracies differed by less than the noise of 500 validation texts while quint8 cost ~15% latency
  (benchmarks/results/quantize_settings.json), so -> qint8 here too, and `per_channel: true` in the shipped
  recipes. Saturation shows on tiny random models: recipes can set `weight_type: quint8`, and
  `max_accuracy_drop_pts` guards every run.
* Other CPUs (Arm, no AVX2) -> qint8, ORT's recommended default.

That is `quantize.target: auto`, the CPU running `compress`. A named target (avx2, avx512, avx512_vnni, arm64)
takes weight type, per-channel and reduce-range from Optimum's preset for it instead (`edgekd.stages.quantize.ort`
has the table and the sources); the validation accuracy is still measured with this CPU's kernels, so a target
whose kernels differ from the build CPU's (int16 saturation or not) can score differently on the device: the
log says so, and `edgekd benchmark` on a CPU other than the folder's target warns.

Fusions (`optimize`) were faster on the smoke student and slower on a 3x384 one (benchmarks/results/
quantize_settings.json), hence `none` by default and `auto` to measure on the serving machine.

Output folder (the artifact contract, the folder users ship): `model.onnx` (INT8), the export folder's
`config.json` and tokenizer files, and `edgekd.json` (the export's, plus "quantization" and "accuracy" entries).
Nothing else: the stage's record (the search's trials, optimization timings, quantized MatMul count, sizes, op
types in its `metrics`) is the run's bookkeeping, kept beside the folder in `<run>/quantize.stage.json`
(`ships = True`), and the benchmark stage adds the model card, README.md. It loads with
`ORTModelForSequenceClassification.from_pretrained(folder)`, `transformers.pipeline` and
`edgekd.runtime.Classifier`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekd.artifact import MANIFEST_FILE, MODEL_FILE, external_data_files, onnx_file_bytes
from edgekd.data import load_splits
from edgekd.errors import StageError
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.export import PARITY_FILE
from edgekd.stages.quantize.ort import (
    Prepared,
    build_cpu,
    check_op_types,
    make_quantizer,
    prepare_graph,
    quantizable_op_types,
    quantization_settings,
    resolve_excluded_nodes,
    target_settings,
)
from edgekd.stages.quantize.search import (
    OnnxEvaluator,
    SearchResult,
    accuracy_aware_search,
    weight_node_groups,
)
from edgekd.stages.runner import STAGE_FILE, fingerprint_path, write_json

# Where the search's trials are recorded: the stage's record, beside the shipped folder (runner.record_beside).
TRIALS_RECORD = f"quantize.{STAGE_FILE}: metrics.fp32_fallback.trials"
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
LATENCY_TEXTS = 24


class QuantizeStage(StageBase):
    """Exported fp32 ONNX folder -> INT8 ONNX folder, with measured accuracy."""

    name = "quantize"
    folder = "quantize"
    needs: tuple[str, ...] = ("export",)
    ships = True

    def params(self, recipe: Recipe) -> dict[str, Any]:
        """The quantize section (per_channel and reduce_range as the quantizer gets them), the quantizer's
        version, the weight type (for target auto: what the build CPU's flags pick), and the data measured on."""
        spec = recipe.quantize
        chosen = target_settings(spec)
        # `target` joins the key only when set: folders quantized before it existed keep their key.
        quantize = spec.model_dump(mode="json", exclude={"target"} if spec.target == "auto" else None)
        quantize.update(per_channel=chosen["per_channel"], reduce_range=chosen["reduce_range"])
        return {
            "quantize": quantize,
            "onnxruntime": _onnxruntime_version(),
            "weight_type": chosen["weight_type"],
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
        build = build_cpu()
        note = target_note(spec.target, build)
        if note:
            ctx.log(f"quantize: {note}")
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
                f"quantize: {spec.mode} INT8 for target {spec.target} ({settings['weight_type']}, "
                f"per_channel={settings['per_channel']}, reduce_range={settings['reduce_range']}, "
                f"optimize={prepared.optimization['applied']}) of {fp32_path}"
            )
            groups = weight_node_groups(prepared.path, quantizable_op_types(spec), spec.fallback)
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
        return self._finish(ctx, out_dir, export_dir, settings, accuracy, search, prepared, fp32_bytes, build)

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
        build: dict[str, Any],
    ) -> StageResult:
        """Check the shipped file, write edgekd.json and the support files; the details go to the record."""
        int8_path = out_dir / MODEL_FILE
        check_loads(int8_path)
        quantized = count_quantized_matmuls(int8_path)
        if quantized == 0:
            raise StageError(
                "quantization left every MatMul in fp32: the INT8 model would not be INT8",
                hint="quantize.op_types must include MatMul, and nodes_to_exclude must not list every MatMul",
            )
        int8_bytes = onnx_file_bytes(int8_path)
        copy_support_files(export_dir, out_dir)
        manifest = quantized_manifest(
            export_dir, settings, accuracy, prepared, search.chosen.fp32_groups, build
        )
        write_json(out_dir / MANIFEST_FILE, with_run_relative_source(manifest, ctx.run_dir))
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
                # What quantize.json held (tool, settings and accuracy are in edgekd.json).
                "fp32_weight_matmuls": count_weight_matmuls(ctx.inputs["export"] / MODEL_FILE),
                "compression": round(ratio, 3),
                "optimization": prepared.optimization,
                "fp32_fallback": {
                    "groups": search.chosen.fp32_groups,
                    "sensitivity_ranking": search.sensitivity,
                    "trials": [trial.record() for trial in search.trials],
                },
                "int8_op_types": dict(sorted(_op_type_counts(int8_path).items())),
            },
            summary=f"{quantized} INT8 MatMuls, {ratio:.1f}x smaller",
        )


def accuracy_record(
    fp32_accuracy: float, search: SearchResult, samples: int, budget: float | None
) -> dict[str, Any]:
    """The accuracy entry of edgekd.json: the shipped file's and the fp32 ONNX's."""
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


def target_note(target: str, build: dict[str, Any]) -> str | None:
    """A line for the log when the named target is not the CPU running `compress`: the validation accuracy
    measured here then comes from other INT8 kernels than the device's."""
    if target == "auto" or build.get("target") == target:
        return None
    return (
        f"target {target}, built on {build.get('target') or 'an unrecognised CPU'} ({build.get('machine')}: "
        f"{build.get('flags')}): the validation accuracy is measured with this CPU's INT8 kernels; measure the "
        "folder on the target with `edgekd benchmark`"
    )


# ----------------------------------------------------------------------------------------------------------
# Graph optimization


# ----------------------------------------------------------------------------------------------------------
# Quantization


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
    build: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The export's edgekd.json with the precision, a "quantization" entry (tool, target, settings, graph
    optimization) and the validation "accuracy" measured for this file.

    The target is recorded three ways: `target` as the recipe asked it, `build_cpu` (machine, flags, and the
    target that CPU fits: what `auto` stands for) and `target_resolved`, the CPU the settings were chosen for
    (`edgekd.artifact.quantized_for` reads it; `edgekd benchmark` warns on another CPU).

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
    target = settings["target"]
    manifest["quantization"] = {
        "tool": TOOLS[settings["mode"]],
        "onnxruntime": _onnxruntime_version(),
        "target": target,
        "target_resolved": (build or {}).get("target") if target == "auto" else target,
        "build_cpu": build,
        "settings": settings,
        "graph_optimization": prepared.optimization.get("applied", "none"),
        "fp32_fallback_groups": fp32_groups,
        "trials": TRIALS_RECORD,
    }
    manifest["accuracy"] = accuracy
    return manifest


def with_run_relative_source(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """`manifest` with provenance.source relative to the run folder ("prune_vocab/model"): an export folder
    written before the export stage recorded it so still names a path of the machine that built it."""
    provenance = manifest.get("provenance")
    if not isinstance(provenance, dict):
        return manifest
    source = provenance.get("source")
    if not isinstance(source, str) or not Path(source).is_absolute():
        return manifest
    try:
        relative = Path(source).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:  # not inside this run folder: its last two parts still say which stage's model it was
        relative = Path(*Path(source).parts[-2:]).as_posix()
    return {**manifest, "provenance": {**provenance, "source": relative}}


def _onnxruntime_version() -> str | None:
    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return None
