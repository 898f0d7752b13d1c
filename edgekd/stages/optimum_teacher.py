"""The Optimum teacher stage: what a user ships today with Optimum alone, without distillation.

The fine-tuned teacher exported by optimum-onnx and quantized by `ORTQuantizer` with the dynamic preset
Optimum's documentation suggests for the CPU at hand (`AutoQuantizationConfig.arm64 / avx2 / avx512 /
avx512_vnni`, per-tensor, as in its quantization example). The benchmark measures it as the variant
`teacher-int8-optimum`, so the report sets edgekd's student against the fastest model a user could have had
without training a student.

In:  teacher/model (PyTorch folder), recipe.export.opset; the build machine's CPU flags pick the preset.
Out: model_quantized.onnx, config.json, the tokenizer files, baseline.json (the preset and why), stage.json.

Enabled by `benchmark.teacher_int8_optimum: true`; without it the chain and every key are as before.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

from edgekd.artifact import onnx_file_bytes
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.export import export_onnx, package_versions
from edgekd.stages.optimum_baseline import SETTINGS_FILE, copy_tokenizer_files, quantize_with_optimum
from edgekd.stages.runner import write_json

ARM_MACHINES = frozenset({"aarch64", "arm64"})


def teacher_preset(
    flags: dict[str, bool] | None = None, machine: str | None = None, target: str = "auto"
) -> dict[str, Any]:
    """Optimum's dynamic preset for this CPU, as its docs suggest, with the reason (recorded in baseline.json).

    Args:
        flags: CPU flags as `edgekd.bench.envinfo.cpu_flags()` returns them (read from /proc/cpuinfo when None).
        machine: `platform.machine()` when None.
        target: `quantize.target`: a preset name is used as it is (the CPU the shipped model is built for, so
            both INT8 models are made for the same one); "auto" picks by the build CPU.
    """
    from edgekd.bench.envinfo import cpu_flags

    present = cpu_flags() if flags is None else flags
    arch = (platform.machine() if machine is None else machine).lower()
    if target != "auto":
        name, reason = target, f"quantize.target is {target}"
    elif arch in ARM_MACHINES:
        name, reason = "arm64", f"the build machine is {arch}"
    elif present.get("avx512_vnni"):
        name, reason = "avx512_vnni", "the build CPU has avx512_vnni"
    elif present.get("avx512f"):
        name, reason = "avx512", "the build CPU has avx512f but not avx512_vnni"
    elif present.get("avx2"):
        name, reason = "avx2", "the build CPU has avx2 but not avx512f"
    else:  # the broadest x86 preset where the flags are unknown (no /proc/cpuinfo) or older than AVX2
        name, reason = "avx2", "the build CPU lists no avx2, avx512f or avx512_vnni flag"
    return {"preset": name, "is_static": False, "per_channel": False, "reason": reason}


def recipe_preset(recipe: Recipe) -> dict[str, Any]:
    """The preset for a recipe: its `quantize.target`, or the build CPU's when that is auto."""
    return teacher_preset(target=recipe.quantize.target)


class TeacherInt8OptimumStage(StageBase):
    """Fine-tuned teacher -> optimum-onnx export -> ORTQuantizer dynamic INT8 with the CPU's preset."""

    name = "teacher_int8_optimum"
    folder = "teacher_int8_optimum"
    needs: tuple[str, ...] = ("teacher",)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        # The preset follows the build CPU, so a run folder moved to another kind of CPU quantizes again.
        return {
            "opset": recipe.export.opset,
            "preset": {k: v for k, v in recipe_preset(recipe).items() if k != "reason"},
            "tools": package_versions("optimum-onnx", "optimum", "onnxruntime", "torch", "transformers"),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        source = ctx.inputs["teacher"] / "model"
        preset = recipe_preset(ctx.recipe)
        ctx.log(
            f"teacher int8 (Optimum): {source} -> optimum export + ORTQuantizer {preset['preset']} dynamic "
            f"({preset['reason']})"
        )
        # The fp32 export is an intermediate: only the quantized model and its support files are kept.
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".fp32-") as tmp:
            fp32_dir = Path(tmp)
            export_onnx(source, fp32_dir, ctx.recipe.export.opset)
            quantized = quantize_with_optimum(fp32_dir, out_dir, preset)
            copy_tokenizer_files(fp32_dir, out_dir)
        write_json(out_dir / SETTINGS_FILE, {"source": str(source), "quantization": preset})
        size = onnx_file_bytes(quantized)
        ctx.log(f"teacher int8 (Optimum): {quantized.name} {size / 1e6:.1f} MB")
        return StageResult(
            metrics={"onnx_file": quantized.name, "onnx_bytes": size, "preset": preset["preset"]},
            summary=f"teacher, Optimum {preset['preset']} dynamic INT8, {size / 1e6:.1f} MB",
        )
