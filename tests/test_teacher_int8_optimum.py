"""`teacher-int8-optimum`: the teacher as Optimum alone ships it (no distillation), measured beside the student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd.pipeline import stages
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.report.markdown import summary_rows
from edgekd.stages.benchmark import TEACHER_INT8_OPTIMUM, BenchmarkStage
from edgekd.stages.optimum_baseline import SETTINGS_FILE
from edgekd.stages.optimum_teacher import TeacherInt8OptimumStage, teacher_preset
from edgekd.stages.quantize.stage import count_quantized_matmuls, count_weight_matmuls
from edgekd.stages.runner import run_stage, stage_key

REPO = Path(__file__).resolve().parent.parent
QUANTIZED = "model_quantized.onnx"


def _recipe(toy_data: Path, teacher_int8: bool = True, baseline: bool = False) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "teacher-int8-test",
            "seed": 3,
            "data": {"path": str(toy_data), "max_length": 32},
            "teacher": {"config": {"model_type": "bert"}, "tokenizer": {"vocab_size": 300}},
            "student": {"init": "layers", "layers": [0]},
            "benchmark": {
                "threads": 1,
                "latency_samples": 8,
                "warmup": 2,
                "optimum_baseline": baseline,
                "teacher_int8_optimum": teacher_int8,
            },
        }
    )


@pytest.mark.parametrize(
    ("flags", "machine", "preset"),
    [
        ({"avx2": True, "avx512f": True, "avx512_vnni": True}, "x86_64", "avx512_vnni"),
        ({"avx2": True, "avx512f": True, "avx512_vnni": False}, "x86_64", "avx512"),
        ({"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": True}, "x86_64", "avx2"),
        ({}, "x86_64", "avx2"),  # flags unknown: the broadest x86 preset
        ({"asimd": True}, "aarch64", "arm64"),
    ],
)
def test_the_preset_follows_the_build_cpu_as_optimum_suggests(flags, machine, preset):
    chosen = teacher_preset(flags, machine)
    assert chosen["preset"] == preset
    assert (chosen["is_static"], chosen["per_channel"]) == (False, False)  # dynamic, per-tensor
    assert chosen["reason"]


def test_a_quantize_target_names_the_preset_whatever_the_build_cpu():
    chosen = teacher_preset({"avx2": True, "avx512_vnni": False}, "x86_64", target="arm64")
    assert (chosen["preset"], chosen["reason"]) == ("arm64", "quantize.target is arm64")


def test_the_chain_gets_the_stage_only_when_asked(toy_data):
    plain = stages(_recipe(toy_data, teacher_int8=False))
    assert "teacher_int8_optimum" not in [s.name for s in plain]
    assert "teacher_int8_optimum" not in plain[-1].needs
    assert isinstance(plain[-1], BenchmarkStage)
    assert TEACHER_INT8_OPTIMUM not in [v.name for v in plain[-1].variants]

    chain = stages(_recipe(toy_data, baseline=True))
    assert [s.name for s in chain][-3:] == ["optimum_baseline", "teacher_int8_optimum", "benchmark"]
    benchmark = chain[-1]
    assert isinstance(benchmark, BenchmarkStage)
    assert {"teacher_int8_optimum", "optimum_baseline"} <= set(benchmark.needs)
    assert [v.name for v in benchmark.variants][-2:] == ["optimum-int8", TEACHER_INT8_OPTIMUM]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_the_flag_unset_keeps_the_benchmark_key_and_set_changes_it(name):
    # The real recipes measure the variant; the key must be the old one for any recipe without it.
    recipe = load_recipe(REPO / "recipes" / name, ["benchmark.teacher_int8_optimum=false"])
    params = BenchmarkStage().params(recipe)
    # The key as it was before the flag existed: the benchmark section without it.
    before = recipe.benchmark.model_dump(mode="json")
    del before["teacher_int8_optimum"]
    assert params["benchmark"] == before
    flagged = load_recipe(REPO / "recipes" / name, ["benchmark.teacher_int8_optimum=true"])
    assert BenchmarkStage().params(flagged)["benchmark"]["teacher_int8_optimum"] is True
    inputs = {"teacher": "t", "distill": "d", "quantize": "q"}
    assert stage_key(BenchmarkStage(), recipe, inputs) != stage_key(BenchmarkStage(), flagged, inputs)


@pytest.fixture(scope="module")
def teacher_int8_run(tmp_path_factory, tiny_classifier_dir, toy_data) -> Path:
    """A run folder with the tiny classifier as teacher, its Optimum INT8 built from it."""
    run = tmp_path_factory.mktemp("teacher_int8_run")
    shutil.copytree(tiny_classifier_dir, run / "teacher" / "model")
    run_stage(TeacherInt8OptimumStage(), _recipe(toy_data), run, {"teacher": "t"}, log=lambda _: None)
    return run


def test_the_stage_writes_an_int8_teacher_folder_with_its_preset(teacher_int8_run):
    folder = teacher_int8_run / "teacher_int8_optimum"
    assert sorted(p.name for p in folder.glob("*.onnx")) == [QUANTIZED]  # the fp32 intermediate is not kept
    assert not [p for p in folder.iterdir() if p.name.startswith(".fp32-")]
    quantized = folder / QUANTIZED
    assert count_weight_matmuls(quantized) == 0 < count_quantized_matmuls(quantized)
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["quantization"] == teacher_preset()
    assert settings["source"].endswith(str(Path("teacher") / "model"))
    record = json.loads((folder / "stage.json").read_text())
    assert record["metrics"]["preset"] == teacher_preset()["preset"]
    assert record["params"]["preset"] == {k: v for k, v in teacher_preset().items() if k != "reason"}


@pytest.mark.filterwarnings("ignore:a text longer than max_length")
def test_the_int8_teacher_loads_in_the_runtime_and_in_optimum_alike(teacher_int8_run, toy_texts, toy_labels):
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from edgekd.runtime import Classifier

    folder = teacher_int8_run / "teacher_int8_optimum"
    texts = toy_texts[:8]
    classifier = Classifier.load(folder, threads=1, model_file=QUANTIZED, max_length=32)
    assert classifier.labels == toy_labels
    ours = classifier.predict_logits(texts)

    model = ORTModelForSequenceClassification.from_pretrained(folder, file_name=QUANTIZED)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**batch).logits.numpy()
    assert ours.shape == (len(texts), len(toy_labels))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.slow
def test_the_benchmark_measures_the_int8_teacher_in_every_report(
    teacher_int8_run, tiny_classifier_dir, int8_dir, toy_data, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(teacher_int8_run, run)
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    shutil.copytree(int8_dir, run / "quantize")
    keys = {"teacher": "t", "distill": "d", "quantize": "q", "teacher_int8_optimum": "o"}
    run_stage(BenchmarkStage(teacher_int8=True), _recipe(toy_data), run, keys, log=lambda _: None)
    report = json.loads((run / "report" / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["teacher", "student", "student-int8-onnx", TEACHER_INT8_OPTIMUM]
    measured = report["variants"][-1]
    assert measured["format"] == "onnx" and measured["folder"].endswith("teacher_int8_optimum")
    assert 0.0 <= measured["accuracy"] <= 1.0 and measured["latency_ms"]["p50"] > 0
    assert measured["torch_imported"] is False  # served like the shipped folder, by the torch-free runtime
    assert f"`{TEACHER_INT8_OPTIMUM}`" in (run / "report" / "report.md").read_text()
    assert TEACHER_INT8_OPTIMUM in (run / "report" / "report.html").read_text()
    assert TEACHER_INT8_OPTIMUM in [row[0] for row in summary_rows(report)]
