"""Accuracy-aware quantization, static INT8, graph fusions and the weight-type default.

The fallback case is constructed so INT8 must break exactly one MatMul: a briefly trained tiny BERT whose
classifier weight gets one huge outlier (1000) on a pooled feature that is exactly 0 (its pooler row and bias are
zeroed, and tanh(0) = 0). In fp32 the outlier multiplies 0 and changes nothing; per-tensor INT8 needs a scale of
~1000/255 for it, which rounds every other classifier weight to 0, so every text gets the same class. Labels of
the dataset are the fp32 ONNX model's own predictions, so the fp32 accuracy is 100% by construction and every
lost point is INT8's doing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import StageError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.runtime import Classifier
from edgekd.stages.base import StageContext, StageResult
from edgekd.stages.export import ExportStage
from edgekd.stages.quantize.ort import resolve_weight_type
from edgekd.stages.quantize.search import Evaluation, accuracy_aware_search, weight_node_groups
from edgekd.stages.quantize.stage import QuantizeStage, count_quantized_matmuls

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "recipes" / "data" / "toy_topics"
BROKEN = "/classifier/Gemm"
WEIGHT_MATMULS_PER_LAYER = 6
TINY_BERT_WEIGHT_MATMULS = 2 * WEIGHT_MATMULS_PER_LAYER + 2


def train_briefly(model_dir: Path, target: Path, labels: list[str]) -> None:
    """A few epochs on the toy topics (about 4 s on 2 cores), so predictions differ between texts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (TOY / "train.jsonl").read_text().splitlines()]
    encoded = tokenizer(
        [r["text"] for r in rows], truncation=True, max_length=32, padding=True, return_tensors="pt"
    )
    gold = torch.tensor([labels.index(r["label"]) for r in rows])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(6):
        order = torch.randperm(len(gold))
        for start in range(0, len(gold), 32):
            batch = order[start : start + 32]
            loss = model(**{k: v[batch] for k, v in encoded.items()}, labels=gold[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        model.bert.pooler.dense.weight[0] = 0.0  # pooled feature 0 is now exactly tanh(0) = 0...
        model.bert.pooler.dense.bias[0] = 0.0
        model.classifier.weight[0, 0] = 1000.0  # ...so this outlier is harmless in fp32 only
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def self_labelled_data(export_dir: Path, target: Path) -> Path:
    """The toy texts labelled with the fp32 ONNX model's predictions."""
    import warnings

    classifier = Classifier.load(export_dir, threads=1)
    target.mkdir()
    shutil.copy(TOY / "labels.txt", target / "labels.txt")
    for split in ("train", "validation", "test"):
        texts = [json.loads(line)["text"] for line in (TOY / f"{split}.jsonl").read_text().splitlines()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictions = classifier.predict(texts)
        lines = [json.dumps({"text": t, "label": p.label}) for t, p in zip(texts, predictions, strict=True)]
        (target / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture(scope="module")
def broken(
    tiny_classifier_dir: Path, toy_labels: list[str], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    run = tmp_path_factory.mktemp("broken_run")
    train_briefly(tiny_classifier_dir, run / "distill" / "model", toy_labels)
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", ["export.parity_samples=8"])
    (run / "export").mkdir()
    ExportStage().run(StageContext(recipe, run, {"distill": run / "distill"}, lambda m: None), run / "export")
    data = self_labelled_data(run / "export", run / "data")
    return {"run": run, "export": run / "export", "data": data}


def quantize(broken: dict, out: Path, *overrides: str) -> StageResult:
    recipe = recipe_for(broken, *overrides)
    out.mkdir(parents=True)
    return QuantizeStage().run(
        StageContext(recipe, out.parent, {"export": broken["export"]}, lambda m: None), out
    )


def recipe_for(broken: dict, *overrides: str) -> Recipe:
    return load_recipe(
        REPO / "recipes" / "smoke.yaml",
        [f"data.path={broken['data']}", "quantize.weight_type=quint8", *overrides],
    )


# ----------------------------------------------------------------------------------------------------------
# Accuracy-aware fallback


@pytest.mark.slow
def test_over_budget_int8_falls_back_to_fp32_for_the_broken_matmul_only(broken, tmp_path):
    result = quantize(broken, tmp_path / "quantize", "quantize.max_accuracy_drop_pts=5")
    folder = tmp_path / "quantize"
    report = result.metrics  # the stage's record (quantize.stage.json, beside the shipped folder)
    manifest = json.loads((folder / "edgekd.json").read_text())

    trials = report["fp32_fallback"]["trials"]
    assert trials[0]["purpose"] == "all-int8" and trials[0]["drop_pts"] > 5  # INT8 everywhere breaks it
    assert report["fp32_fallback"]["sensitivity_ranking"][0] == BROKEN
    assert report["fp32_fallback"]["groups"] == [BROKEN] == result.metrics["fp32_groups"]
    # Only the classifier stays fp32; every other weight MatMul is INT8.
    assert count_quantized_matmuls(folder / "model.onnx") == TINY_BERT_WEIGHT_MATMULS - 1
    assert manifest["quantization"]["settings"]["nodes_to_exclude"] == [BROKEN, f"{BROKEN}_MatMul"]
    assert manifest["quantization"]["tool"] == "onnxruntime.quantization.quantize_dynamic"
    accuracy = manifest["accuracy"]
    assert accuracy["fp32_onnx"] == 1.0  # labels are the fp32 predictions
    assert accuracy["drop_pts"] <= accuracy["max_accuracy_drop_pts"] == 5
    # The shipped folder is what was measured: the runtime reproduces the recorded accuracy.
    data = [json.loads(line) for line in (broken["data"] / "validation.jsonl").read_text().splitlines()]
    predicted = [p.label for p in Classifier.load(folder, threads=1).predict([row["text"] for row in data])]
    assert (
        np.mean([p == row["label"] for p, row in zip(predicted, data, strict=True)]) == accuracy["int8_onnx"]
    )


@pytest.mark.slow
def test_without_a_budget_the_all_int8_model_ships_and_its_drop_is_recorded(broken, tmp_path):
    report = quantize(broken, tmp_path / "quantize").metrics
    accuracy = json.loads((tmp_path / "quantize" / "edgekd.json").read_text())["accuracy"]
    assert report["fp32_fallback"]["groups"] == []
    assert [t["purpose"] for t in report["fp32_fallback"]["trials"]] == ["all-int8"]
    assert accuracy["drop_pts"] > 5
    assert accuracy["max_accuracy_drop_pts"] is None


def test_an_unreachable_budget_fails_with_every_trial_listed(tmp_path):
    groups = {"layer.0": ["a"], "layer.1": ["b"], "classifier": ["c"]}
    reference = Evaluation(accuracy=1.0, logits=np.zeros((4, 2), dtype=np.float32))

    def evaluate(path: Path) -> Evaluation:
        return Evaluation(accuracy=0.5, logits=np.ones((4, 2), dtype=np.float32))

    with pytest.raises(StageError) as caught:
        accuracy_aware_search(
            lambda names, path: None, evaluate, reference, groups, 1.0, tmp_path, lambda m: None
        )
    message = caught.value.message
    assert "no INT8 model within quantize.max_accuracy_drop_pts = 1.0" in message
    # 1 all-INT8 + 3 sensitivity + 1 cumulative fallback (the 2 most sensitive); never all 3 groups in fp32.
    assert message.count("  - ") == 5
    assert "all-int8: fp32 groups [none] -> accuracy 0.5000, drop 50.00 pts" in message


@pytest.mark.slow
def test_node_groups_follow_encoder_layers(broken):
    groups = weight_node_groups(broken["export"] / "model.onnx", ["MatMul", "Gemm", "Attention"], "layer")
    assert len(groups["layer.0"]) == len(groups["layer.1"]) == WEIGHT_MATMULS_PER_LAYER
    assert groups["/classifier/Gemm"] == ["/classifier/Gemm", "/classifier/Gemm_MatMul"]
    single = weight_node_groups(broken["export"] / "model.onnx", ["MatMul"], "node")
    assert len(single) == TINY_BERT_WEIGHT_MATMULS


# ----------------------------------------------------------------------------------------------------------
# Static INT8 and fusions


@pytest.mark.slow
def test_static_mode_calibrates_on_training_rows(broken, tmp_path):
    result = quantize(
        broken,
        tmp_path / "quantize",
        "quantize.mode=static",
        "quantize.calibration_samples=16",
        "quantize.max_accuracy_drop_pts=5",
    )
    manifest = json.loads((tmp_path / "quantize" / "edgekd.json").read_text())
    assert manifest["precision"] == "int8-static"
    assert manifest["quantization"]["tool"] == "onnxruntime.quantization.quantize_static"
    assert manifest["quantization"]["settings"]["calibration_samples"] == 16
    assert result.metrics["quantized_matmuls"] > 0
    report = result.metrics
    assert report["int8_op_types"].get("QLinearMatMul", 0) > 0


@pytest.mark.slow
def test_fused_graph_quantizes_attention_and_auto_records_both_timings(broken, tmp_path):
    report = quantize(
        broken, tmp_path / "extended", "quantize.optimize=extended", "quantize.max_accuracy_drop_pts=5"
    ).metrics
    assert report["optimization"] == {"requested": "extended", "applied": "extended"}
    assert report["int8_op_types"].get("QAttention", 0) == 2  # one fused attention per layer
    assert Classifier.load(tmp_path / "extended", threads=1).predict(["the striker scored"])[0].label

    auto = quantize(
        broken, tmp_path / "auto", "quantize.optimize=auto", "quantize.max_accuracy_drop_pts=5"
    ).metrics["optimization"]
    assert set(auto["int8_p50_ms_batch1_1thread"]) == {"none", "extended"}
    timings = auto["int8_p50_ms_batch1_1thread"]
    faster = "extended" if timings["extended"] < timings["none"] * (1 - 0.03) else "none"
    assert auto["applied"] == faster


# ----------------------------------------------------------------------------------------------------------
# Weight type default


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2": True, "avx512_vnni": True}, "qint8"),
        ({"avx2": True, "avx_vnni": True}, "qint8"),
        ({"avx2": True}, "qint8"),  # faster than u8u8, and measured as accurate on a real student
        ({"neon": True, "asimd": True}, "qint8"),
    ],
)
def test_auto_weight_type_follows_the_instruction_set(flags, expected):
    chosen, reason = resolve_weight_type("auto", flags)
    assert chosen == expected
    assert reason.startswith("auto:")
    assert resolve_weight_type("qint8", flags) == ("qint8", "set in the recipe")
