"""Benchmark stage: measure every variant the same way and judge the deployable one against the gates.

In:  teacher/model, distill/model (PyTorch folders), quantize/ (ONNX folder), the test split, recipe.benchmark
     and recipe.gates; teacher/ and distill/ log_history.json for the training curves; when the recipe asks,
     optimum_baseline/ and teacher_int8_optimum/ (ONNX folders made with Optimum's defaults alone).
Out: report.json, report.md, report.html, raw/<variant>.json (per-request latencies and predictions),
     stage.json; and, once report.json is written, the candidate's model card: README.md in the folder users
     ship (quantize/), with this report's figures and sha256 (edgekd/report/model_card.py). The card is not a
     model file, so the report's size and file digests never count it, and not in quantize's recorded files.

The measuring is `edgekd.bench.harness.benchmark_folders`, the same function `edgekd benchmark` runs. A failed
gate is a verdict, not an error: the stage reports `passed: false` and the pipeline turns that into exit code 3.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekd.artifact import CONFIG_FILE, MODEL_FILE
from edgekd.bench.harness import benchmark_folders
from edgekd.bench.inputs import check_threads, latency_sample_indices
from edgekd.bench.spec import HarnessSettings, MeasuredModel
from edgekd.errors import InputError
from edgekd.recipe.schema import Recipe
from edgekd.report.gates import CANDIDATE, OPTIMUM_BASELINE, REFERENCE
from edgekd.report.model_card import MODEL_CARD_FILE, REPORT_FILE, model_card
from edgekd.report.schema import Report
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import fingerprint_path, write_atomically

__all__ = ["VARIANTS", "BenchmarkStage", "Variant", "check_threads", "latency_sample_indices"]


@dataclass(frozen=True)
class Variant:
    """A model to measure: where it lives in the run folder and which runtime serves it."""

    name: str
    format: str
    stage: str
    subfolder: str

    def folder(self, inputs: dict[str, Path]) -> Path:
        base = inputs[self.stage]
        return base / self.subfolder if self.subfolder else base


# The first variant is the reference every other one is compared with.
VARIANTS: tuple[Variant, ...] = (
    Variant(REFERENCE, "pytorch", "teacher", "model"),
    Variant("student", "pytorch", "distill", "model"),
    Variant(CANDIDATE, "onnx", "quantize", ""),
)
CANDIDATE_STAGE = VARIANTS[-1].stage  # the folder users ship, which carries the model card
# Measured too with `benchmark.optimum_baseline`: the same student as Optimum's defaults would ship it.
BASELINE_VARIANT = Variant(OPTIMUM_BASELINE, "onnx", "optimum_baseline", "")
# Measured too with `benchmark.teacher_int8_optimum`: the teacher as Optimum alone ships it, no distillation
# (edgekd.stages.optimum_teacher).
TEACHER_INT8_OPTIMUM = "teacher-int8-optimum"
TEACHER_INT8_VARIANT = Variant(TEACHER_INT8_OPTIMUM, "onnx", "teacher_int8_optimum", "")
# Stages whose Trainer log_history.json is plotted in report.html.
TRAINING_STAGES = ("teacher", "distill")


class BenchmarkStage(StageBase):
    name = "benchmark"
    folder = "report"

    def __init__(
        self, baseline: bool = False, student_stage: str = "distill", teacher_int8: bool = False
    ) -> None:
        """Args:
        baseline: also measure the Optimum baseline stage's model (`benchmark.optimum_baseline`).
        teacher_int8: also measure the Optimum-quantized teacher (`benchmark.teacher_int8_optimum`).
        student_stage: the stage whose fp32 model was exported ("prune_vocab" when the vocabulary is pruned),
            so the fp32 student row is the very model the shipped INT8 was quantized from.
        """
        measured = (
            *VARIANTS,
            *((BASELINE_VARIANT,) if baseline else ()),
            *((TEACHER_INT8_VARIANT,) if teacher_int8 else ()),
        )
        self.variants = tuple(replace(v, stage=student_stage) if v.name == "student" else v for v in measured)
        # distill stays an input even when its model is not measured: its training curve goes into report.html.
        self.needs: tuple[str, ...] = tuple(
            dict.fromkeys([*(v.stage for v in self.variants), *TRAINING_STAGES])
        )

    def params(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "data_files": fingerprint_path(recipe.data.path),
            "benchmark": benchmark_key(recipe),
            "gates": gates_key(recipe),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        models = [MeasuredModel(v.name, v.folder(ctx.inputs), v.format) for v in self.variants]
        for model in models:
            _require_stage_output(model)
        report = benchmark_folders(
            models,
            recipe.data,
            out_dir,
            settings_from_recipe(recipe),
            recipe.gates,
            title=recipe.name,
            candidate=CANDIDATE,
            training_logs={s: ctx.inputs[s] / "log_history.json" for s in TRAINING_STAGES if s in ctx.inputs},
            relative_to=ctx.run_dir,
            stage_times=upstream_stage_times(ctx.upstream),
            student_budget=distill_budget_record(ctx.upstream),
            log=ctx.log,
        )
        candidate = next(model.folder for model in models if model.name == CANDIDATE)
        write_model_card(candidate, report, out_dir / REPORT_FILE)
        failed, unsure = report.failed_gates, report.inconclusive_gates
        summary = "all gates passed" if report.passed else f"gates failed: {', '.join(failed)}"
        if unsure and not failed:
            summary = f"gates inconclusive (measure again with more requests): {', '.join(unsure)}"
        metrics = {"passed": report.passed, "report": "report.json", "failed_gates": failed}
        return StageResult(metrics={**metrics, "inconclusive_gates": unsure}, summary=summary)


def write_model_card(folder: Path, report: Report, report_path: Path) -> None:
    """The candidate folder's README.md, from the report just written at `report_path`."""
    card = model_card(folder, report, report_path)
    write_atomically(folder / MODEL_CARD_FILE, lambda handle: handle.write(card.encode("utf-8")))


def restore_model_card(run_dir: Path) -> None:
    """Write the card a cached benchmark's candidate folder lacks (a run from before cards, or a quantize folder
    rebuilt after damage under the same key) from the report on disk; nothing when there is no readable one."""
    folder = VARIANTS[-1].folder({CANDIDATE_STAGE: run_dir / CANDIDATE_STAGE})
    report_path = run_dir / BenchmarkStage.folder / REPORT_FILE
    if (folder / MODEL_CARD_FILE).is_file() or not folder.is_dir() or not report_path.is_file():
        return
    try:
        report = Report.model_validate_json(report_path.read_bytes())
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return
    write_model_card(folder, report, report_path)


# Gates added after reports were made: left out of the benchmark's key while unset, so those reports stay cached.
LATER_GATES = (
    "max_latency_p99_ms",
    "max_peak_rss_mb",
    "max_load_s",
    "min_throughput_texts_per_s",
    "max_in_scope_accuracy_drop_pts",
    "max_out_of_scope_recall_drop_pts",
)


# Benchmark flags added after reports were made: left out of the key while false, for the same reason.
LATER_FLAGS = ("teacher_int8_optimum",)


def benchmark_key(recipe: Recipe) -> dict[str, Any]:
    spec = recipe.benchmark.model_dump(mode="json")
    return {name: value for name, value in spec.items() if not (name in LATER_FLAGS and value is False)}


def gates_key(recipe: Recipe) -> dict[str, Any]:
    gates = recipe.gates.model_dump(mode="json")
    return {name: limit for name, limit in gates.items() if not (name in LATER_GATES and limit is None)}


def settings_from_recipe(recipe: Recipe) -> HarnessSettings:
    """The harness settings a recipe asks for (what the recipe does not set keeps the harness default)."""
    spec = recipe.benchmark
    return HarnessSettings(
        threads=spec.threads,
        latency_samples=spec.latency_samples,
        warmup=spec.warmup,
        batch_size=spec.batch_size,
        max_length=recipe.data.max_length,
        seed=recipe.seed,
        out_of_scope_label=spec.out_of_scope_label,
    )


def upstream_stage_times(upstream: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Wall time of each stage before the benchmark, in chain order, from its record (a stage that was cached
    reports the time of the run that made it; a resumed one adds the work carried over from its interrupted
    invocations, also given apart). The benchmark's own is in report/stage.json."""
    times = []
    for name, record in upstream.items():
        if isinstance(record.get("wall_time_s"), int | float):
            carried = record.get("carried_over_s")
            carried = float(carried) if isinstance(carried, int | float) else 0.0
            entry = {"stage": name, "wall_time_s": float(record["wall_time_s"]) + carried}
            if carried:
                entry["carried_over_s"] = carried
            times.append(entry)
    return times


def distill_budget_record(upstream: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The distill stage's `student.budget` record (the shapes it timed and chose), when it used one."""
    budget = (upstream.get("distill", {}).get("metrics") or {}).get("budget")
    return budget if isinstance(budget, dict) else None


def _require_stage_output(model: MeasuredModel) -> None:
    """An earlier stage's model missing from the run folder is a broken run, not a user's bad folder."""
    marker = MODEL_FILE if model.format == "onnx" else CONFIG_FILE
    if not (model.folder / marker).is_file() and not any(model.folder.glob("*.onnx")):
        raise InputError(
            f"the {model.name} model is missing from the run: {model.folder}",
            hint="re-run with --force to rebuild the run",
        )
