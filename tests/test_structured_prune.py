"""Structured pruning of the student (`student.prune`): Taylor scores have one value per neuron and head, the
units that carry the output are the ones kept, the pruned model saves, reloads and exports with parity, the
distill key is unchanged for every recipe that does not ask for pruning, and `compress` prunes end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from recipe_history import STUDENT_KEYS, earlier

from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import PruneSpec
from edgekd.stages.distill.stage import DistillStage
from edgekd.stages.distill.structured_prune import (
    Importance,
    apply_plan,
    choose_plan,
    hard_label_loss,
    prune_student,
    taylor_importance,
)
from edgekd.stages.runner import stable_hash

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
LIVE_NEURONS = [5, 17]  # the only neurons whose output reaches the next layer in `dead_units_model`
DEAD_HEAD = 0


def tiny_model(tiny_classifier_dir: Path) -> Any:
    from edgekd.models import load_classifier

    return load_classifier(str(tiny_classifier_dir)).eval()


def batch_of(tokenizer: Any, texts: list[str], labels: list[int]) -> dict[str, Any]:
    import torch

    enc = dict(tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt"))
    enc["labels"] = torch.tensor(labels)
    return enc


@pytest.fixture()
def batches(tiny_tokenizer: Any, toy_texts: list[str]) -> list[dict[str, Any]]:
    return [batch_of(tiny_tokenizer, toy_texts[i : i + 8], [i % 4 for i in range(8)]) for i in (0, 8, 16)]


def dead_units_model(tiny_classifier_dir: Path) -> Any:
    """The tiny BERT with every neuron but LIVE_NEURONS and head DEAD_HEAD cut off from the layer's output
    (zero output columns): only the live units can matter, and pruning the others changes no logit."""
    import torch

    model = tiny_model(tiny_classifier_dir)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            dead = [i for i in range(layer.output.dense.in_features) if i not in LIVE_NEURONS]
            layer.output.dense.weight[:, dead] = 0.0
            head_size = layer.attention.self.attention_head_size
            start = DEAD_HEAD * head_size
            layer.attention.output.dense.weight[:, start : start + head_size] = 0.0
    return model


def logits_of(model: Any, batch: dict[str, Any]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits.numpy()


# ----------------------------------------------------------------------------------------------------------
# Scores and choice


def test_importance_has_one_score_per_neuron_and_head(tiny_classifier_dir: Path, batches) -> None:
    model = tiny_model(tiny_classifier_dir)
    scores = taylor_importance(model, batches, hard_label_loss)
    assert scores.ffn.shape == (2, 64) and scores.heads.shape == (2, 2)
    assert np.isfinite(scores.ffn).all() and (scores.ffn >= 0).all() and scores.ffn.sum() > 0
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind
    assert not model.training


def test_only_units_that_reach_the_output_score(tiny_classifier_dir: Path, batches) -> None:
    scores = taylor_importance(dead_units_model(tiny_classifier_dir), batches, hard_label_loss)
    for row in scores.ffn:
        assert set(np.flatnonzero(row > 0)) == set(LIVE_NEURONS)
    assert (scores.heads[:, DEAD_HEAD] == 0).all() and (scores.heads[:, 1 - DEAD_HEAD] > 0).all()


def test_choice_keeps_the_top_units_with_the_same_count_in_every_layer() -> None:
    importance = Importance(
        ffn=np.array([[0.1, 0.9, 0.5, 0.0], [0.7, 0.1, 0.2, 0.8]]),
        heads=np.array([[0.3, 0.1, 0.2], [0.0, 0.0, 0.5]]),
    )
    plan = choose_plan(importance, ffn_keep=0.5, heads_keep=0.4)
    assert plan.ffn_kept == [[1, 2], [0, 3]]
    assert plan.heads_removed == {0: [1, 2], 1: [0, 1]}  # round(0.4 x 3) = 1 head kept per layer
    tiny = choose_plan(importance, ffn_keep=0.01, heads_keep=0.01)
    assert [len(k) for k in tiny.ffn_kept] == [1, 1] and all(len(r) == 2 for r in tiny.heads_removed.values())
    assert choose_plan(importance, 1.0, 1.0).heads_removed == {}


def test_pruning_the_dead_units_keeps_the_live_ones_and_every_logit(
    tiny_classifier_dir: Path, batches, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    from edgekd.models import load_classifier

    model = dead_units_model(tiny_classifier_dir)
    before = [logits_of(model, b) for b in batches]
    params_before = sum(p.numel() for p in model.parameters())
    spec = PruneSpec(ffn_keep=len(LIVE_NEURONS) / 64, heads_keep=0.5, batches=len(batches))
    outcome = prune_student(model, batches, hard_label_loss, spec)
    assert outcome.plan.ffn_kept == [LIVE_NEURONS, LIVE_NEURONS]
    assert outcome.plan.heads_removed == {0: [DEAD_HEAD], 1: [DEAD_HEAD]}
    metrics = outcome.metrics
    assert (metrics["ffn_before"], metrics["ffn_after"]) == (64, 2)
    assert (metrics["heads_before"], metrics["heads_after"]) == (2, [1, 1])
    assert metrics["params_before"] == params_before > metrics["params_after"]
    assert metrics["params_after"] == sum(p.numel() for p in model.parameters())
    for batch, expected in zip(batches, before, strict=True):
        np.testing.assert_allclose(logits_of(model, batch), expected, atol=1e-5)

    # Saved and reloaded as any model: the config carries the new sizes and the pruned heads.
    model.save_pretrained(tmp_path / "pruned")
    tiny_tokenizer.save_pretrained(tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["intermediate_size"] == 2 and config["pruned_heads"] == {"0": [0], "1": [0]}
    reloaded = load_classifier(str(tmp_path / "pruned")).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == metrics["params_after"]
    assert [layer.attention.self.num_attention_heads for layer in reloaded.bert.encoder.layer] == [1, 1]
    for batch, expected in zip(batches, before, strict=True):
        np.testing.assert_allclose(logits_of(reloaded, batch), expected, atol=1e-5)


def test_a_pruned_student_exports_to_onnx_with_parity(
    tiny_classifier_dir: Path, batches, tmp_path: Path, tiny_tokenizer: Any, toy_texts: list[str]
) -> None:
    from edgekd.stages.export import MODEL_FILE, check_parity, export_onnx, measure_parity

    model = tiny_model(tiny_classifier_dir)
    prune_student(model, batches, hard_label_loss, PruneSpec(ffn_keep=0.25, heads_keep=0.5, batches=3))
    source = tmp_path / "pruned"
    model.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    export_onnx(source, tmp_path / "onnx", opset=17)
    assert (tmp_path / "onnx" / MODEL_FILE).is_file()
    report = measure_parity(source, tmp_path / "onnx", toy_texts[:24], max_length=32)
    check_parity(report, atol=1e-4)
    assert report.samples == 24 and report.argmax_agreement == 1.0


def test_apply_plan_refuses_a_plan_for_another_depth(tiny_classifier_dir: Path) -> None:
    from edgekd.errors import InputError
    from edgekd.stages.distill.structured_prune import PrunePlan

    with pytest.raises(InputError, match="covers 1 layers"):
        apply_plan(tiny_model(tiny_classifier_dir), PrunePlan(ffn_kept=[[0, 1]]))


def test_a_student_that_is_not_bert_shaped_is_refused_with_a_hint() -> None:
    import torch

    from edgekd.errors import InputError
    from edgekd.stages.distill.structured_prune import prunable_layers

    with pytest.raises(InputError) as err:
        prunable_layers(torch.nn.Linear(2, 2))
    assert err.value.hint and "student.prune" in err.value.hint


# ----------------------------------------------------------------------------------------------------------
# Recipe and cache key


def relative_student(recipe: Any) -> dict[str, Any]:
    student = DistillStage().params(recipe)["student"]
    model = student.get("model")
    if model and Path(model).is_absolute():
        student = {**student, "model": Path(model).relative_to(REPO).as_posix()}
    return student


@pytest.mark.parametrize("name", sorted(STUDENT_KEYS))
def test_distill_key_is_unchanged_without_prune_and_changes_with_it(name: str) -> None:
    assert sorted(p.name for p in (REPO / "recipes").glob("*.yaml")) == sorted(STUDENT_KEYS)
    shape = earlier(name)
    recipe = load_recipe(REPO / "recipes" / name, shape)
    assert recipe.student.prune is None
    assert "prune" not in DistillStage().params(recipe)["student"]
    assert stable_hash(relative_student(recipe)) == STUDENT_KEYS[name]
    pruned = load_recipe(REPO / "recipes" / name, [*shape, "student.prune={ffn_keep: 0.34}"])
    assert DistillStage().params(pruned)["student"]["prune"] == {
        "ffn_keep": 0.34,
        "heads_keep": 1.0,
        "batches": 8,
    }
    other = load_recipe(REPO / "recipes" / name, [*shape, "student.prune={ffn_keep: 0.5}"])
    assert len({stable_hash(DistillStage().params(r)) for r in (recipe, pruned, other)}) == 3


def test_later_stages_do_not_hash_the_student_section() -> None:
    """export, quantize, prune_vocab and benchmark keys follow the distilled model's files, not the recipe's
    student section: pruning settings reach them only through the model."""
    from edgekd.stages.benchmark import BenchmarkStage
    from edgekd.stages.export import ExportStage
    from edgekd.stages.prune_vocab import PruneVocabStage
    from edgekd.stages.quantize.stage import QuantizeStage

    recipe = load_recipe(SMOKE)
    pruned = load_recipe(SMOKE, ["student.prune={ffn_keep: 0.5}"])
    for stage in (ExportStage(), QuantizeStage(), PruneVocabStage(), BenchmarkStage()):
        assert stage.params(recipe) == stage.params(pruned), stage.name


@pytest.mark.parametrize(
    "value, field",
    [("{ffn_keep: 0}", "ffn_keep"), ("{heads_keep: 1.5}", "heads_keep"), ("{batches: 0}", "batches")],
)
def test_prune_settings_out_of_range_name_the_field(value: str, field: str) -> None:
    from edgekd.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, [f"student.prune={value}"])
    assert f"student.prune.{field}" in "\n".join(err.value.problems)


# ----------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.e2e
def test_compress_prunes_the_student_and_the_chain_completes(tmp_path: Path) -> None:
    """The smoke student (one layer: 4 heads, 128 neurons) pruned to half, distilled, exported, quantized and
    benchmarked through the CLI; distill/stage.json records what pruning removed."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekd.cli",
            "compress",
            str(SMOKE),
            "--output-dir",
            str(run_dir),
            "--set",
            "student.prune={ffn_keep: 0.5, heads_keep: 0.5}",
            "--set",
            "teacher.finetune.epochs=2",
            "--set",
            "distill.epochs=1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = json.loads((run_dir / "distill" / "stage.json").read_text())["metrics"]["prune"]
    assert (pruned["ffn_before"], pruned["ffn_after"]) == (128, 64)
    assert (pruned["heads_before"], pruned["heads_after"]) == (4, [2])
    assert pruned["params_before"] > pruned["params_after"] > 0 and pruned["seconds"] >= 0
    config = json.loads((run_dir / "distill" / "model" / "config.json").read_text())
    assert config["intermediate_size"] == 64 and len(config["pruned_heads"]["0"]) == 2
    assert (
        "pruned the student: FFN 128 -> 64 per layer, heads 4 -> 2 per layer" in result.stderr + result.stdout
    )
    for record in ("export/stage.json", "quantize.stage.json", "report/stage.json"):  # quantize's sits beside
        assert json.loads((run_dir / record).read_text()), record
    assert (run_dir / "report" / "report.json").is_file()
    assert json.loads((run_dir / "export" / "parity.json").read_text())["passed"] is True


@pytest.mark.slow
def test_student_depth_benchmark_measures_pruned_widths(
    tmp_path: Path, tiny_classifier_dir: Path, toy_data: Path
) -> None:
    out = tmp_path / "depth.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "student_depth.py"),
            str(tiny_classifier_dir),
            *["--data", str(toy_data), "--depths", "1", "--ffn-keep", "1", "0.25"],
            *["--texts", "4", "--rounds", "1", "--out", str(out)],
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    full, pruned = json.loads(out.read_text())["depths"]
    assert (full["ffn_keep"], full["intermediate_size"]) == (1.0, 64)
    assert (pruned["ffn_keep"], pruned["intermediate_size"]) == (0.25, 16)
    assert pruned["int8_onnx_mb"] <= full["int8_onnx_mb"] and pruned["int8_p50_ms"] > 0
