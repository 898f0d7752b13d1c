"""Export and quantize stages on the tiny BERT: artifact contract, parity, INT8 graph, round trips."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import InputError, ParityError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import QuantizeSpec, Recipe
from edgekd.stages import export as export_module
from edgekd.stages.base import StageContext, StageResult
from edgekd.stages.export import ExportStage, check_parity, compare_logits
from edgekd.stages.quantize.ort import resolve_weight_type
from edgekd.stages.quantize.stage import (
    QuantizeStage,
    count_quantized_matmuls,
    count_weight_matmuls,
    with_run_relative_source,
)

REPO = Path(__file__).resolve().parent.parent
PARITY_SAMPLES = 24
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
EXPORT_FILES = {"model.onnx", "config.json", "edgekd.json", "parity.json", *TOKENIZER_FILES}
# The folder users ship: nothing but the deployment (the stage's details go to its record, beside the folder).
QUANTIZE_FILES = {"model.onnx", "config.json", "edgekd.json", *TOKENIZER_FILES}
# 2 layers x (query, key, value, attention output, intermediate, output) + pooler + classifier.
TINY_BERT_WEIGHT_MATMULS = 2 * 6 + 2


def smoke_recipe(*overrides: str) -> Recipe:
    return load_recipe(
        REPO / "recipes" / "smoke.yaml", [f"export.parity_samples={PARITY_SAMPLES}", *overrides]
    )


def run_stage(
    stage: ExportStage | QuantizeStage, recipe: Recipe, inputs: dict[str, Path], out: Path
) -> StageResult:
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(recipe=recipe, run_dir=out.parent, inputs=inputs, log=lambda message: None)
    return stage.run(ctx, out)


def file_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def distill_dir(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    shutil.copytree(tiny_classifier_dir, root / "model")
    return root


@pytest.fixture(scope="module")
def exported(distill_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StageResult, list]:
    """The export stage's folder and result, and every outbound connection the run attempted."""
    attempts: list = []

    def refuse(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in tests")

    out = tmp_path_factory.mktemp("run") / "export"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        result = run_stage(ExportStage(), smoke_recipe(), {"distill": distill_dir}, out)
    return out, result, attempts


@pytest.fixture(scope="module")
def quantized(exported: tuple[Path, StageResult, list]) -> tuple[Path, StageResult]:
    export_dir = exported[0]
    out = export_dir.parent / "quantize"
    return out, run_stage(QuantizeStage(), smoke_recipe(), {"export": export_dir}, out)


def torch_argmax_labels(model_dir: Path, texts: list[str], max_length: int) -> list[str]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ids = model(**encoded).logits.argmax(-1).tolist()
    return [model.config.id2label[i] for i in ids]


# ----------------------------------------------------------------------------------------------------------
# Export


def test_export_writes_exactly_the_contracted_files(exported, toy_labels):
    folder, _, _ = exported
    assert file_names(folder) == EXPORT_FILES
    manifest = json.loads((folder / "edgekd.json").read_text())
    assert manifest["labels"] == toy_labels
    assert manifest["max_length"] == 32
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    provenance = manifest["provenance"]
    assert provenance["recipe"] == "smoke"
    assert provenance["opset"] == 17
    assert provenance["edgekd_version"]
    assert provenance["source"] == "distill/model"  # relative to the run folder: never a build-machine path


def test_export_graph_has_dynamic_batch_and_sequence_axes(exported):
    import onnx

    graph = onnx.load(str(exported[0] / "model.onnx")).graph
    for graph_input in graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert [bool(d.dim_param) for d in dims] == [True, True], graph_input.name


def test_export_parity_is_within_tolerance_on_real_texts(exported):
    folder, result, _ = exported
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["samples"] == PARITY_SAMPLES
    assert parity["passed"] is True
    assert result.metrics["max_abs_diff"] == parity["max_abs_diff"] <= parity["atol"] == 1e-3
    assert result.metrics["argmax_agreement"] == parity["argmax_agreement"] == 1.0
    assert result.metrics["onnx_bytes"] == (folder / "model.onnx").stat().st_size


def test_export_makes_no_network_call(exported):
    assert exported[2] == []


def test_export_fails_with_parity_error_when_atol_is_tiny(exported, distill_dir, tmp_path, monkeypatch):
    measured = json.loads((exported[0] / "parity.json").read_text())["max_abs_diff"]
    if measured == 0.0:  # bit-identical logits: perturb the ONNX side so a difference exists
        real = export_module._onnx_logits
        monkeypatch.setattr(export_module, "_onnx_logits", lambda s, a: real(s, a) + np.float32(1e-6))
    with pytest.raises(ParityError, match=r"max abs diff .* \(tolerance export\.atol = 1\.0e-12\)") as info:
        run_stage(
            ExportStage(), smoke_recipe("export.atol=1e-12"), {"distill": distill_dir}, tmp_path / "export"
        )
    assert f"on {PARITY_SAMPLES} validation texts" in str(info.value)


def test_parity_error_when_a_predicted_class_changes_within_atol():
    reference = np.array([[0.30, 0.10], [0.10, 0.20]], dtype=np.float32)
    candidate = np.array([[0.30, 0.10], [0.21, 0.20]], dtype=np.float32)  # row 2 flips, |diff| 0.11
    report = compare_logits(reference, candidate)
    assert report.argmax_agreement == 0.5
    with pytest.raises(ParityError, match=r"argmax agreement 50\.00% \(1 text\(s\) get another class"):
        check_parity(report, atol=1.0)
    check_parity(compare_logits(reference, reference), atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# Quantize


def test_quantize_writes_exactly_the_contracted_files(exported, quantized, toy_labels):
    folder, result = quantized
    assert file_names(folder) == QUANTIZE_FILES
    manifest = json.loads((folder / "edgekd.json").read_text())
    export_manifest = json.loads((exported[0] / "edgekd.json").read_text())
    assert manifest["labels"] == toy_labels
    assert manifest["provenance"] == export_manifest["provenance"]
    assert manifest["precision"] == "int8-dynamic"
    quantization = manifest["quantization"]
    assert quantization["tool"] == "onnxruntime.quantization.quantize_dynamic"
    assert quantization["settings"]["weight_type"] == resolve_weight_type("auto")[0]
    assert quantization["settings"]["weight_type_requested"] == "auto"
    assert quantization["settings"]["op_types"] == QuantizeSpec().op_types
    assert quantization["trials"] == "quantize.stage.json: metrics.fp32_fallback.trials"
    report = result.metrics  # what quantize.json held, in the stage's record
    assert [t["purpose"] for t in report["fp32_fallback"]["trials"]] == ["all-int8"]
    assert report["fp32_weight_matmuls"] == TINY_BERT_WEIGHT_MATMULS
    # The accuracy measured for this very file, and for the fp32 ONNX it came from, on the validation split.
    accuracy = manifest["accuracy"]
    assert accuracy["split"] == "validation" and accuracy["samples"] == 96  # recipes/data/toy_topics
    assert result.metrics["validation_accuracy_int8"] == accuracy["int8_onnx"]
    assert result.metrics["validation_accuracy_fp32"] == accuracy["fp32_onnx"]
    assert accuracy["drop_pts"] == pytest.approx(
        (accuracy["fp32_onnx"] - accuracy["int8_onnx"]) * 100, abs=1e-3
    )
    assert report["fp32_bytes"] == result.metrics["fp32_bytes"] == (exported[0] / "model.onnx").stat().st_size
    assert report["int8_bytes"] == result.metrics["int8_bytes"] == (folder / "model.onnx").stat().st_size
    assert report["int8_bytes"] < report["fp32_bytes"]


def test_the_shipped_folder_records_its_target_and_the_build_cpu(quantized):
    from edgekd.stages.quantize.ort import build_cpu

    quantization = json.loads((quantized[0] / "edgekd.json").read_text())["quantization"]
    build = build_cpu()
    assert (quantization["target"], quantization["build_cpu"]) == ("auto", build)
    assert quantization["target_resolved"] == build["target"]
    settings = quantization["settings"]
    # smoke.yaml sets neither: target auto keeps both off, as before targets.
    assert (settings["per_channel"], settings["per_channel_requested"]) == (False, None)
    assert (settings["reduce_range"], settings["reduce_range_requested"]) == (False, None)
    assert settings["per_channel_reason"] == settings["reduce_range_reason"] == "not set: off"


def test_a_named_target_quantizes_with_its_preset(exported, tmp_path):
    import onnx

    recipe = smoke_recipe("quantize.target=avx2", "quantize.per_channel=null")
    out = tmp_path / "quantize"
    result = run_stage(QuantizeStage(), recipe, {"export": exported[0]}, out)
    quantization = json.loads((out / "edgekd.json").read_text())["quantization"]
    assert (quantization["target"], quantization["target_resolved"]) == ("avx2", "avx2")
    settings = quantization["settings"]
    assert (settings["weight_type"], settings["per_channel"], settings["reduce_range"]) == (
        "quint8",
        True,
        False,
    )
    assert settings["weight_type_reason"].startswith("target avx2 (AutoQuantizationConfig.avx2)")
    # The file itself holds uint8 weights for every quantized MatMul (the preset reached the quantizer).
    graph = onnx.load(str(out / "model.onnx")).graph
    weight_types = {t.name: t.data_type for t in graph.initializer}
    matmul_weights = [n.input[1] for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(matmul_weights) == result.metrics["quantized_matmuls"] == TINY_BERT_WEIGHT_MATMULS
    assert {weight_types[name] for name in matmul_weights} == {onnx.TensorProto.UINT8}


def test_an_export_folder_from_before_gets_a_run_relative_source(tmp_path):
    def source(value: str) -> str:
        manifest = {"labels": ["a"], "provenance": {"recipe": "r", "source": value}}
        return with_run_relative_source(manifest, tmp_path)["provenance"]["source"]

    assert source(str(tmp_path / "prune_vocab" / "model")) == "prune_vocab/model"
    assert source("/root/edgekd-runs/other/distill/model") == "distill/model"  # another machine's run
    assert source("distill/model") == "distill/model"


def test_every_weight_matmul_is_quantized(exported, quantized):
    fp32, int8 = exported[0] / "model.onnx", quantized[0] / "model.onnx"
    assert count_quantized_matmuls(fp32) == 0
    assert count_weight_matmuls(fp32) == TINY_BERT_WEIGHT_MATMULS
    assert (
        count_quantized_matmuls(int8) == TINY_BERT_WEIGHT_MATMULS == quantized[1].metrics["quantized_matmuls"]
    )


def test_excluding_the_classifier_gemm_by_its_exported_name_keeps_it_fp32(exported, tmp_path):
    recipe = smoke_recipe("quantize.nodes_to_exclude=['/classifier/Gemm']")
    result = run_stage(QuantizeStage(), recipe, {"export": exported[0]}, tmp_path / "quantize")
    assert result.metrics["quantized_matmuls"] == TINY_BERT_WEIGHT_MATMULS - 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quantize.op_types=['Matmul']", "did you mean 'MatMul'"),
        ("quantize.nodes_to_exclude=['/classifier/Gem']", "no node named '/classifier/Gem'"),
    ],
)
def test_quantize_rejects_settings_that_would_silently_do_nothing(exported, tmp_path, override, message):
    with pytest.raises(InputError, match=message):
        run_stage(QuantizeStage(), smoke_recipe(override), {"export": exported[0]}, tmp_path / "quantize")


# ----------------------------------------------------------------------------------------------------------
# Round trips through optimum and transformers


@pytest.mark.parametrize("variant", ["export", "quantize"])
def test_folder_loads_in_optimum_and_runs_in_a_pipeline(variant, exported, quantized, distill_dir, toy_texts):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    folder = exported[0] if variant == "export" else quantized[0]
    model = ORTModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    texts = toy_texts[:8]
    predicted = [row["label"] for row in classify(texts, truncation=True, max_length=32)]
    expected = torch_argmax_labels(distill_dir / "model", texts, max_length=32)
    if variant == "export":
        assert predicted == expected
    else:  # INT8 may legitimately flip near-ties; the labels must still be the model's classes
        assert set(predicted) <= set(model.config.id2label.values())


@pytest.mark.parametrize("variant", ["export", "quantize"])
def test_pipeline_truncates_a_long_text_where_the_runtime_does(variant, exported, quantized, toy_texts):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    from edgekd.runtime import Classifier, TruncationWarning

    folder = exported[0] if variant == "export" else quantized[0]
    max_length = json.loads((folder / "edgekd.json").read_text())["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == max_length
    assert tokenizer.truncation_side == "right"
    # Well past max_length (32) and past the tiny model's 64 position embeddings, which an unset
    # model_max_length would feed whole.
    text = " ".join(toy_texts[0].split() * 20)
    assert len(tokenizer(text)["input_ids"]) > 3 * max_length

    model = ORTModelForSequenceClassification.from_pretrained(folder)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    (piped,) = classify([text], truncation=True)
    with pytest.warns(TruncationWarning):
        (ours,) = Classifier.load(folder).predict(text)
    assert piped["label"] == ours.label
    assert piped["score"] == pytest.approx(ours.score, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------
# The model card (README.md): what the benchmark stage writes into this folder, from its report


def card_report() -> dict:
    """A report.json as the benchmark writes it, cut to what the card shows."""
    latency = {"p50": 1.2345, "p90": 1.5, "p99": 2.0}
    return {
        "recipe": "smoke",
        "edgekd_version": "0.0.test",
        "created_utc": "2026-01-01T00:00:00+00:00",
        "environment": {
            "cpu": {
                "model": "Test CPU 9000",
                "logical_cores": 2,
                "usable_cores": 2,
                "flags": {"avx2": True, "avx512_vnni": False},
            },
            "versions": {"onnxruntime": "1.2.3"},
            "platform": "Linux-test",
        },
        "benchmark": {"test_texts": 120},
        "reference": "teacher",
        "candidate": "student-int8-onnx",
        "variants": [
            {"name": "teacher", "accuracy": 0.9},
            {
                "name": "student-int8-onnx",
                "accuracy": 0.875,
                "threads": 1,
                "latency_ms": latency,
                "size_bytes": 1234567,
                "size_mb": 1.234567,
                "speedup_p50": 12.34,
                "compression": 8.76,
                "accuracy_diff_vs_reference_pts": {"diff": -2.5, "ci95": [-4.0, -1.0]},
                "files": [{"path": "model.onnx", "bytes": 1, "sha256": "0" * 64}],
            },
        ],
        "gates": [
            {
                "name": "max_accuracy_drop_pts",
                "limit": 3.0,
                "value": 2.5,
                "passed": True,
                "comparison": "<=",
                "unit": "pts",
            },
            {
                "name": "max_size_mb",
                "limit": 1.0,
                "value": 1.23,
                "passed": False,
                "comparison": "<=",
                "unit": "MB",
            },
        ],
        "passed": False,
    }


def test_the_model_card_shows_the_report_and_its_snippets_run(
    quantized, toy_labels, tmp_path, monkeypatch, capsys
):
    import hashlib
    import re

    from edgekd.report.model_card import model_card, render_model_card
    from edgekd.report.schema import Report
    from edgekd.runtime import Classifier
    from edgekd.stages.benchmark import restore_model_card

    folder = quantized[0]
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps(card_report()))
    card = model_card(folder, Report.model_validate(card_report()), report_path)
    assert f"sha256 `{hashlib.sha256(report_path.read_bytes()).hexdigest()}`" in card
    assert f"| Labels | {len(toy_labels)}: {', '.join(toy_labels)} |" in card
    assert "| Max length | 32 tokens" in card
    assert "| Precision | int8-dynamic (onnxruntime.quantization.quantize_dynamic" in card
    assert "| Accuracy (test split) | 0.8750 on 120 texts (teacher: 0.9000, -2.50 pts) |" in card
    assert "| Latency p50, batch 1 | 1.234 ms on 1 thread (p90 1.500 ms, p99 2.000 ms;" in card
    assert (
        "| Speed-up vs teacher (p50) | 12.3x |" in card and "| Compression vs teacher (size) | 8.8x |" in card
    )
    assert "Measured on: Test CPU 9000, 2 logical cores (2 usable); flags: avx2; onnxruntime 1.2.3" in card
    assert "### Gates: FAIL (max_size_mb)" in card
    assert "| `max_size_mb` | <= 1 MB | 1.23 MB | FAIL |" in card
    assert "`model.onnx`, `README.md`" in card
    assert "Not benchmarked yet" in render_model_card({"labels": ["a"]}, None, "", "quantize")

    # A cached benchmark whose candidate has no card (a run from before cards) writes it from its report.
    run = tmp_path / "run"
    shutil.copytree(folder, run / "quantize")
    (run / "report").mkdir()
    shutil.copy(report_path, run / "report" / "report.json")
    restore_model_card(run)
    assert (run / "quantize" / "README.md").read_text() == card

    # The feeds are the graph's inputs, as edgekd.json lists them; the snippets run from the folder above.
    runtime, optimum, plain = re.findall(r"```python\n(.*?)```", card, re.S)
    assert 'from_pretrained("quantize")' in optimum
    for name in json.loads((folder / "edgekd.json").read_text())["inputs"]:
        assert f'"{name}": np.array(' in plain
    monkeypatch.chdir(run)
    exec(runtime, {})
    exec(plain, {})
    ours, theirs = capsys.readouterr().out.splitlines()
    label, score = theirs.rsplit(" ", 1)
    expected = Classifier.load(folder).predict(["Type the text to classify here"])[0]
    assert ours == repr(expected)
    assert (label, float(score)) == (expected.label, pytest.approx(expected.score, abs=1e-5))
