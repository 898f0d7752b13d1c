"""Optuna search: seeded sampling, pruning through the Trainer callback, the search record, and the stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from edgekd.errors import StageError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import SearchSpec
from edgekd.stages.distill.search import run_search
from edgekd.stages.distill.stage import DistillStage
from edgekd.stages.runner import run_stage
from edgekd.stages.teacher import TeacherStage


class PruneAfterFirstTrial(optuna.pruners.BasePruner):
    """Deterministic pruning for tests: every trial after the first is pruned at its first report."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number > 0


def fake_training(accuracy_per_epoch: float = 0.5):
    """A stand-in for training: reports one evaluation per epoch through the callbacks, as the Trainer does."""
    calls: list[dict[str, Any]] = []

    def train_trial(params: dict[str, Any], callbacks: list[Any]) -> tuple[str, dict[str, Any]]:
        calls.append(params)
        accuracy = 0.0
        for epoch in range(1, params["epochs"] + 1):
            accuracy = min(1.0, params["alpha"] * accuracy_per_epoch * epoch)
            for cb in callbacks:
                cb.on_evaluate(
                    None, SimpleNamespace(epoch=float(epoch)), None, metrics={"eval_accuracy": accuracy}
                )
        return f"model-{len(calls) - 1}", {"validation_accuracy": accuracy}

    return train_trial, calls


def test_the_same_seed_proposes_the_same_trials() -> None:
    spec = SearchSpec(n_trials=4, epochs=(1, 2))
    first, calls_a = fake_training()
    second, calls_b = fake_training()
    run_search(spec, 7, first, log=lambda _: None)
    run_search(spec, 7, second, log=lambda _: None)
    assert calls_a == calls_b
    for params in calls_a:
        assert 0.1 <= params["alpha"] <= 0.9 and 1 <= params["temperature"] <= 8
        assert 1e-5 <= params["learning_rate"] <= 5e-4 and params["epochs"] in (1, 2)


def test_best_trial_model_is_kept_and_every_trial_is_recorded() -> None:
    train, _ = fake_training()
    outcome = run_search(SearchSpec(n_trials=5, pruning=False), 0, train, log=lambda _: None)
    record = outcome.record
    assert [t["state"] for t in record["trials"]] == ["COMPLETE"] * 5
    best = max(record["trials"], key=lambda t: t["value"])
    assert record["best_trial"] == best["number"] and record["best_value"] == best["value"]
    assert outcome.model == f"model-{best['number']}"
    assert outcome.metrics["search_best_trial"] == best["number"]
    plot = record["plot"]
    assert plot["trial"] == [0, 1, 2, 3, 4]
    assert plot["best_so_far"][-1] == best["value"]
    assert all(a <= b for a, b in zip(plot["best_so_far"], plot["best_so_far"][1:], strict=False))
    assert record["sampler"] == "TPESampler(seed=0)"


def test_pruned_trials_stop_early_and_are_recorded_as_pruned() -> None:
    train, _ = fake_training()
    outcome = run_search(SearchSpec(n_trials=3), 0, train, log=lambda _: None, pruner=PruneAfterFirstTrial())
    states = [t["state"] for t in outcome.record["trials"]]
    assert states == ["COMPLETE", "PRUNED", "PRUNED"]
    assert outcome.model == "model-0"
    assert all(len(t["epoch_accuracy"]) == 1 for t in outcome.record["trials"][1:])  # stopped after epoch 1


def test_no_finished_trial_is_a_clear_error() -> None:
    class PruneAll(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    train, _ = fake_training()
    with pytest.raises(StageError, match="no search trial finished"):
        run_search(SearchSpec(n_trials=2), 0, train, log=lambda _: None, pruner=PruneAll())


@pytest.mark.slow
def test_distill_stage_search_keeps_the_best_student_and_writes_search_json(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path
) -> None:
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"name: s\nseed: 1\ndata: {{path: {toy_data}, max_length: 32}}\nteacher: {{model: {tiny_classifier_dir}}}\n"
        "student: {init: layers, layers: [0]}\n"
        "distill: {batch_size: 64, search: {n_trials: 3, epochs: [1, 2], learning_rate: [0.001, 0.01]}}\n"
    )
    recipe = load_recipe(recipe_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    key, _, _ = run_stage(TeacherStage(), recipe, run_dir, {})
    _, record, _ = run_stage(DistillStage(), recipe, run_dir, {"teacher": key})
    search = json.loads((run_dir / "distill" / "search.json").read_text())
    assert len(search["trials"]) == 3
    assert {t["state"] for t in search["trials"]} <= {"COMPLETE", "PRUNED"}
    assert record["metrics"]["search_best_trial"] == search["best_trial"]
    assert record["metrics"]["validation_accuracy"] == pytest.approx(search["best_value"])
    assert "search.json" in record["files"]
    assert not (run_dir / "distill" / "checkpoints").exists()
