"""The Optimum baseline: the same student as Optimum's defaults ship it, measured and gated against edgekd's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekd.pipeline import stages
from edgekd.recipe.schema import GatesSpec, Recipe
from edgekd.report.gates import OPTIMUM_BASELINE, evaluate_gates
from edgekd.stages.benchmark import BenchmarkStage
from edgekd.stages.optimum_baseline import SETTINGS_FILE, OptimumBaselineStage
from edgekd.stages.quantize.stage import count_quantized_matmuls, count_weight_matmuls
from edgekd.stages.runner import run_stage


def _recipe(toy_data: Path, baseline: bool = True, **gates: object) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "baseline-test",
            "seed": 3,
            "data": {"path": str(toy_data), "max_length": 32},
            "teacher": {"config": {"model_type": "bert"}, "tokenizer": {"vocab_size": 300}},
            "student": {"init": "layers", "layers": [0]},
            "benchmark": {"threads": 1, "latency_samples": 8, "warmup": 2, "optimum_baseline": baseline},
            "gates": gates,
        }
    )


def _variant(name: str, accuracy: float, size_mb: float, p50: float) -> dict:
    return {
        "name": name,
        "accuracy": accuracy,
        "size_bytes": int(size_mb * 1e6),
        "latency_ms": {"p50": p50, "p90": p50 * 1.5},
    }


def test_baseline_gate_compares_accuracy_speed_and_size_with_the_optimum_variant():
    variants = [
        _variant("teacher", 0.90, 400.0, 20.0),
        _variant(OPTIMUM_BASELINE, 0.88, 23.0, 5.0),
        _variant("student-int8-onnx", 0.88, 12.0, 5.5),
    ]
    gates = {g.name: g for g in evaluate_gates(variants, GatesSpec(beat_optimum_baseline=True))}
    assert list(gates) == [
        "beat_optimum_baseline.accuracy",
        "beat_optimum_baseline.p50",
        "beat_optimum_baseline.size",
    ]
    assert gates["beat_optimum_baseline.accuracy"].passed  # equal accuracy is "at least as accurate"
    assert not gates["beat_optimum_baseline.p50"].passed  # 5.5 ms is slower than 5.0 ms
    assert gates["beat_optimum_baseline.p50"].limit == pytest.approx(5.0)
    assert gates["beat_optimum_baseline.size"].passed
    assert all(g.reference == OPTIMUM_BASELINE for g in gates.values())


def test_baseline_gate_needs_the_baseline_variant_and_the_recipe_needs_the_stage(toy_data):
    with pytest.raises(ValueError, match=OPTIMUM_BASELINE):
        evaluate_gates(
            [_variant("teacher", 0.9, 400, 20), _variant("student-int8-onnx", 0.9, 12, 5)],
            GatesSpec(beat_optimum_baseline=True),
        )
    with pytest.raises(ValidationError, match=r"needs benchmark\.optimum_baseline"):
        _recipe(toy_data, baseline=False, beat_optimum_baseline=True)


def test_the_chain_gets_the_baseline_stage_only_when_asked(toy_data):
    assert "optimum_baseline" not in [s.name for s in stages(_recipe(toy_data, baseline=False))]
    chain = stages(_recipe(toy_data))
    assert [s.name for s in chain][-2:] == ["optimum_baseline", "benchmark"]
    assert "optimum_baseline" in chain[-1].needs


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, tiny_classifier_dir, toy_data) -> Path:
    """A run folder with the tiny classifier as teacher and student, the Optimum baseline built from it."""
    run = tmp_path_factory.mktemp("baseline_run")
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    run_stage(OptimumBaselineStage(), _recipe(toy_data), run, {"distill": "d"}, log=lambda _: None)
    return run


def test_baseline_stage_writes_an_int8_onnx_folder_with_its_settings(baseline_run):
    folder = baseline_run / "optimum_baseline"
    onnx_files = sorted(p.name for p in folder.glob("*.onnx"))
    assert onnx_files == ["model_quantized.onnx"]  # the fp32 intermediate is not kept
    quantized = folder / "model_quantized.onnx"
    assert count_weight_matmuls(quantized) == 0 < count_quantized_matmuls(quantized)
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["quantization"] == {"preset": "avx512_vnni", "is_static": False, "per_channel": False}


@pytest.mark.slow
def test_benchmark_measures_the_baseline_and_gates_against_it(
    baseline_run, tiny_classifier_dir, toy_data, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(baseline_run, run)
    shutil.copytree(tiny_classifier_dir, run / "teacher" / "model")
    # The candidate is the same Optimum file: every comparison ties, and ties pass.
    shutil.copytree(run / "optimum_baseline", run / "quantize")
    recipe = _recipe(toy_data, beat_optimum_baseline=True)
    keys = {"teacher": "t", "distill": "d", "quantize": "q", "optimum_baseline": "o"}
    run_stage(BenchmarkStage(baseline=True), recipe, run, keys, log=lambda _: None)
    report = json.loads((run / "report" / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["teacher", "student", "student-int8-onnx", OPTIMUM_BASELINE]
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name[OPTIMUM_BASELINE]["accuracy"] == by_name["student-int8-onnx"]["accuracy"]
    baseline_gates = [g for g in report["gates"] if g["name"].startswith("beat_optimum_baseline")]
    assert [g["name"].split(".")[1] for g in baseline_gates] == ["accuracy", "p50", "size"]
    accuracy_gate, _, size_gate = baseline_gates
    assert accuracy_gate["passed"] and size_gate["passed"]
