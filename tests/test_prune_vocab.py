"""Vocabulary pruning: identical outputs for kept tokens, [UNK] for the rest, sizes, pipeline wiring."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import InputError
from edgekd.pipeline import stages
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.runtime import Classifier
from edgekd.stages.base import StageContext, StageResult
from edgekd.stages.benchmark import BenchmarkStage
from edgekd.stages.export import ExportStage
from edgekd.stages.prune_vocab import PruneVocabStage, read_wordpiece_tokenizer

REPO = Path(__file__).resolve().parent.parent


def smoke(*overrides: str) -> Recipe:
    return load_recipe(REPO / "recipes" / "smoke.yaml", ["export.parity_samples=8", *overrides])


def run_prune(run: Path, *overrides: str) -> StageResult:
    out = run / "prune_vocab"
    out.mkdir()
    recipe = smoke("prune_vocab.enabled=true", *overrides)
    return PruneVocabStage().run(StageContext(recipe, run, {"distill": run / "distill"}, lambda m: None), out)


@pytest.fixture(scope="module")
def pruned(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StageResult]:
    run = tmp_path_factory.mktemp("prune_run")
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    return run, run_prune(run)


def torch_logits(model_dir: Path, texts: list[str]):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    encoded = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**encoded).logits, tokenizer


def test_logits_are_bit_for_bit_identical_on_text_whose_tokens_are_kept(pruned, toy_texts):
    import torch

    run, _ = pruned
    texts = toy_texts[:64]  # training texts: every token they use is kept
    original, _ = torch_logits(run / "distill" / "model", texts)
    after, tokenizer = torch_logits(run / "prune_vocab" / "model", texts)
    assert torch.equal(original, after)
    assert tokenizer.unk_token_id not in tokenizer(texts)["input_ids"][0]


def test_words_with_dropped_tokens_become_unk(pruned, toy_texts):
    from transformers import AutoTokenizer

    run, result = pruned
    before = AutoTokenizer.from_pretrained(run / "distill" / "model")
    after = AutoTokenizer.from_pretrained(run / "prune_vocab" / "model")
    dropped = sorted(set(before.get_vocab()) - set(after.get_vocab()))
    # A word the kept pieces cannot cover becomes one [UNK]; one they can cover is re-split into them.
    words = [token.removeprefix("##").rjust(len(token), "a") for token in dropped if token.isascii()]
    uncovered = [w for w in words if "[UNK]" not in before.tokenize(w) and after.tokenize(w) == ["[UNK]"]]
    assert uncovered, "the fixture should drop some piece that nothing else covers"
    kept = next(t for t in sorted(after.get_vocab()) if t.isalpha() and len(t) > 2 and not t.startswith("##"))
    assert after.tokenize(f"{kept} {uncovered[0]} {kept}") == [kept, "[UNK]", kept]
    assert before.tokenize(kept) == after.tokenize(kept) == [kept]
    assert after.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert len(after) == result.metrics["vocab_after"] < result.metrics["vocab_before"] == len(before)


def test_stage_reports_size_saved_and_validation_accuracy(pruned):
    run, result = pruned
    metrics = result.metrics
    assert metrics["bytes_saved"] == metrics["bytes_before"] - metrics["bytes_after"] > 0
    hidden = json.loads((run / "distill" / "model" / "config.json").read_text())["hidden_size"]
    # At least the dropped embedding rows (fp32) are saved.
    assert metrics["bytes_saved"] >= (metrics["vocab_before"] - metrics["vocab_after"]) * hidden * 4
    assert metrics["validation_samples"] == 96
    assert 0 <= metrics["validation_accuracy_after"] <= 1
    assert 0 <= metrics["validation_unk_token_share_after"] < 1
    assert 0 <= metrics["validation_texts_retokenized_share"] < 1
    config = json.loads((run / "prune_vocab" / "model" / "config.json").read_text())
    assert config["vocab_size"] == metrics["vocab_after"]


def test_reserve_keeps_that_many_more_tokens(pruned, tmp_path):
    run, base = pruned
    shutil.copytree(run / "distill", tmp_path / "distill")
    result = run_prune(tmp_path, "prune_vocab.reserve=7")
    assert result.metrics["vocab_after"] == base.metrics["vocab_after"] + 7


def test_export_of_the_pruned_model_runs_in_the_runtime_with_the_same_predictions(pruned, toy_texts):
    run, _ = pruned
    recipe = smoke("prune_vocab.enabled=true")
    folders = {}
    for name, stage in (("full", ExportStage()), ("pruned", ExportStage(source="prune_vocab"))):
        out = run / f"export_{name}"
        out.mkdir()
        stage.run(StageContext(recipe, run, {stage.source: run / stage.source}, lambda m: None), out)
        folders[name] = out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = Classifier.load(folders["full"], threads=1).predict_logits(toy_texts[:32])
        small = Classifier.load(folders["pruned"], threads=1).predict_logits(toy_texts[:32])
    np.testing.assert_array_equal(full, small)
    assert (folders["pruned"] / "model.onnx").stat().st_size < (folders["full"] / "model.onnx").stat().st_size


def test_runtime_refuses_a_tokenizer_bigger_than_the_model_vocabulary(pruned, tmp_path):
    run, _ = pruned
    folder = run / "export_pruned"
    if not folder.is_dir():
        pytest.skip("needs the export test above")
    broken = shutil.copytree(folder, tmp_path / "mismatch")
    shutil.copy(run / "distill" / "model" / "tokenizer.json", broken / "tokenizer.json")
    with pytest.raises(InputError, match="the tokenizer does not belong to this model"):
        Classifier.load(broken)


def test_non_wordpiece_tokenizers_are_refused(pruned, tmp_path):
    run, _ = pruned
    data = json.loads((run / "distill" / "model" / "tokenizer.json").read_text())
    data["model"]["type"] = "BPE"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="supports WordPiece tokenizers only"):
        read_wordpiece_tokenizer(tmp_path)


def test_pipeline_inserts_the_stage_only_when_enabled():
    plain = stages(smoke())
    assert [s.name for s in plain] == ["teacher", "distill", "export", "quantize", "benchmark"]
    assert plain[2].needs == ("distill",)
    with_pruning = stages(smoke("prune_vocab.enabled=true"))
    names = [s.name for s in with_pruning]
    assert names == ["teacher", "distill", "prune_vocab", "export", "quantize", "benchmark"]
    assert with_pruning[3].needs == ("prune_vocab",)
    # The report's fp32 student is the model the shipped INT8 came from; distill still feeds the training curve.
    pruned_benchmark, plain_benchmark = with_pruning[-1], plain[-1]
    assert isinstance(pruned_benchmark, BenchmarkStage) and isinstance(plain_benchmark, BenchmarkStage)
    student = {v.name: v for v in pruned_benchmark.variants}["student"]
    assert student.stage == "prune_vocab" and "distill" in pruned_benchmark.needs
    assert {v.name: v for v in plain_benchmark.variants}["student"].stage == "distill"
    assert plain[-1].needs == ("teacher", "distill", "quantize")  # unchanged, so cached reports stay valid
