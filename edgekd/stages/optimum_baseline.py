"""The Optimum baseline stage: what a user gets from the same distilled student with Optimum's defaults.

edgekd's shipped model must beat the obvious alternative, so the benchmark measures it in the same run:
the distilled student (before vocabulary pruning) exported by optimum-onnx and quantized by `ORTQuantizer` with
the `avx512_vnni` dynamic preset, per-tensor, as in Optimum's documentation. No accuracy-aware fallback, no
graph fusion, no choice of weight type for the CPU: that is the point of the comparison.

In:  distill/model (PyTorch folder), recipe.export.opset.
Out: model_quantized.onnx, config.json, the tokenizer files, baseline.json (the exact settings), stage.json.

Enabled by `benchmark.optimum_baseline: true`; the `beat_optimum_baseline` gate then checks the shipped
model is at least as accurate, at least as fast (p50) and no larger.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekd.artifact import MODEL_FILE, external_data_files, onnx_file_bytes
from edgekd.errors import StageError, first_line
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.export import export_onnx, package_versions
from edgekd.stages.runner import write_json

SETTINGS_FILE = "baseline.json"
# Optimum's documented dynamic-quantization example: AutoQuantizationConfig.avx512_vnni(is_static=False,
# per_channel=False). Kept in one place so the report can say exactly what was compared.
PRESET = {"preset": "avx512_vnni", "is_static": False, "per_channel": False}


class OptimumBaselineStage(StageBase):
    """Distilled student -> optimum-onnx export -> ORTQuantizer avx512_vnni dynamic INT8."""

    name = "optimum_baseline"
    folder = "optimum_baseline"
    needs: tuple[str, ...] = ("distill",)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "opset": recipe.export.opset,
            "preset": PRESET,
            "tools": package_versions("optimum-onnx", "optimum", "onnxruntime", "torch", "transformers"),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        source = ctx.inputs["distill"] / "model"
        ctx.log(f"optimum baseline: {source} -> optimum export + ORTQuantizer {PRESET['preset']} dynamic")
        # The fp32 export is an intermediate: only the quantized model and its support files are kept.
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".fp32-") as tmp:
            fp32_dir = Path(tmp)
            export_onnx(source, fp32_dir, ctx.recipe.export.opset)
            quantized = quantize_with_optimum(fp32_dir, out_dir)
            copy_tokenizer_files(fp32_dir, out_dir)
        write_json(out_dir / SETTINGS_FILE, {"source": str(source), "quantization": PRESET})
        size = onnx_file_bytes(quantized)
        ctx.log(f"optimum baseline: {quantized.name} {size / 1e6:.1f} MB")
        return StageResult(
            metrics={"onnx_file": quantized.name, "onnx_bytes": size},
            summary=f"Optimum {PRESET['preset']} dynamic INT8, {size / 1e6:.1f} MB",
        )


def quantize_with_optimum(fp32_dir: Path, out_dir: Path, preset: Mapping[str, Any] = PRESET) -> Path:
    """Quantize `fp32_dir/model.onnx` with ORTQuantizer's preset into `out_dir`; returns the written file.

    Args:
        fp32_dir: The exporter's folder.
        out_dir: Where the quantized model goes.
        preset: `preset` names the `AutoQuantizationConfig` method (avx2, avx512, avx512_vnni, arm64), called
            with `is_static` and `per_channel`.

    Raises:
        StageError: the quantizer failed or wrote nothing.
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    make_config = getattr(AutoQuantizationConfig, preset["preset"])
    config = make_config(is_static=preset["is_static"], per_channel=preset["per_channel"])
    # A graph over protobuf's 2 GB limit (a large teacher) keeps its weights in an external data file.
    external = bool(external_data_files(fp32_dir / MODEL_FILE))
    try:
        quantizer = ORTQuantizer.from_pretrained(fp32_dir, file_name=MODEL_FILE)
        written = Path(
            quantizer.quantize(
                quantization_config=config, save_dir=out_dir, use_external_data_format=external
            )
        )
    except Exception as exc:  # optimum and onnxruntime raise many types; the message is what matters
        raise StageError(f"Optimum quantization of {fp32_dir} failed: {first_line(exc)}") from exc
    # quantize() returns the save folder; the model is the one .onnx file in it.
    files = [written] if written.is_file() else sorted(out_dir.glob("*.onnx"))
    if len(files) != 1:
        raise StageError(f"ORTQuantizer wrote {len(files)} .onnx files into {out_dir}, expected one")
    return files[0]


def copy_tokenizer_files(fp32_dir: Path, out_dir: Path) -> None:
    """The exporter saved config and tokenizer next to the fp32 model; the quantized folder needs them too."""
    for path in fp32_dir.iterdir():
        if path.is_file() and path.suffix != ".onnx" and not (out_dir / path.name).exists():
            shutil.copy2(path, out_dir / path.name)
