"""A teacher that learned nothing stops the run before distillation (issue 14, item 15).

The check compares the teacher's validation accuracy with always answering the most frequent class; its
threshold (`teacher.min_gain_over_majority_pts`) judges the result, so it must never change the teacher's key.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgekd.errors import RecipeError, StageError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import TeacherSpec
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import stable_hash, stage_key
from edgekd.stages.teacher import TeacherStage, judge_teacher, majority_rate, required_accuracy

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))
CHECK = "min_gain_over_majority_pts"
# sha256 of the smoke recipe's teacher section as the teacher key hashed it before the check existed (no paths
# in it, so it is the same in every checkout): teachers trained before this change are still reused.
SMOKE_TEACHER_SECTION_HASH = "1da771febbf59a67"


def spec(**fields: Any) -> TeacherSpec:
    return TeacherSpec(model="some/teacher", **fields)


def labels(counts: list[int]) -> list[int]:
    """Label ids with `counts[i]` rows of class i."""
    return [label for label, n in enumerate(counts) for _ in range(n)]


def finetuned(accuracy: float, **extra: Any) -> dict[str, Any]:
    return {"finetuned": True, "validation_accuracy": accuracy, "epochs_run": 3.0, **extra}


# ----------------------------------------------------------------------------------------------------------
# The cache key


@pytest.mark.parametrize("recipe_path", SHIPPED, ids=lambda p: p.name)
def test_the_threshold_is_not_part_of_the_teacher_key(recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path)
    hashed = TeacherStage().params(recipe)["teacher"]
    assert hashed == {k: v for k, v in recipe.teacher.model_dump(mode="json").items() if k != CHECK}
    key = stage_key(TeacherStage(), recipe, {})
    for value in ("null", "0", "50"):
        changed = load_recipe(recipe_path, [f"teacher.{CHECK}={value}"])
        assert stage_key(TeacherStage(), changed, {}) == key, value
    # A training input still changes the key, so the comparison above can fail.
    retrained = load_recipe(recipe_path, ["teacher.finetune.epochs=7"])
    assert stage_key(TeacherStage(), retrained, {}) != key


def test_the_smoke_teacher_section_hashes_as_before_the_check() -> None:
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml")
    assert stable_hash(TeacherStage().params(recipe)["teacher"]) == SMOKE_TEACHER_SECTION_HASH


def test_the_threshold_is_on_by_default_and_validated() -> None:
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml")
    assert recipe.teacher.min_gain_over_majority_pts == 5.0
    assert (
        load_recipe(
            REPO / "recipes" / "smoke.yaml", [f"teacher.{CHECK}=null"]
        ).teacher.min_gain_over_majority_pts
        is None
    )
    for bad in ("-1", "101", "true"):
        with pytest.raises(RecipeError, match=CHECK):
            load_recipe(REPO / "recipes" / "smoke.yaml", [f"teacher.{CHECK}={bad}"])


# ----------------------------------------------------------------------------------------------------------
# The check


def test_a_teacher_at_chance_is_refused_with_a_hint() -> None:
    # The user's case: 3 classes, validation accuracy 0.333, the majority class 0.340.
    with pytest.raises(StageError) as caught:
        judge_teacher(spec(), finetuned(0.333, early_stopped=True), labels([34, 33, 33]), lambda _: None)
    error = caught.value
    assert error.exit_code == 1
    assert error.message == (
        "the teacher learned nothing useful: validation accuracy 0.333, the majority class alone scores 0.340 "
        "(this check asks for at least 0.390)"
    )
    assert error.hint is not None
    assert "early_stopping_patience" in error.hint and "learning_rate" in error.hint
    assert f"teacher.{CHECK}: null" in error.hint


def test_a_teacher_that_only_answers_the_majority_class_is_refused() -> None:
    with pytest.raises(StageError, match="learned nothing useful"):
        judge_teacher(spec(), finetuned(0.6), labels([60, 20, 20]), lambda _: None)


@pytest.mark.parametrize(
    ("accuracy", "counts"),
    [
        (0.928, [1900, 1900, 1900, 1900]),  # ag_news: 4 balanced classes
        (0.90, [100] + [20] * 150),  # clinc150: 150 intents of 20 rows plus 100 out-of-scope
        (0.30, [25, 25, 25, 25]),  # exactly the default margin over 0.25
        (0.99, [97, 3]),  # very imbalanced: 2 points over the majority is most of what is left
    ],
)
def test_a_teacher_that_learned_something_passes(accuracy: float, counts: list[int]) -> None:
    judge_teacher(spec(), finetuned(accuracy), labels(counts), lambda _: None)


def test_the_margin_is_capped_at_half_the_gap_to_100_percent() -> None:
    assert required_accuracy(0.25, 5) == pytest.approx(0.30)
    assert required_accuracy(0.97, 5) == pytest.approx(0.985)
    with pytest.raises(StageError):
        judge_teacher(spec(), finetuned(0.98), labels([97, 3]), lambda _: None)


def test_a_nan_accuracy_is_refused() -> None:
    with pytest.raises(StageError):
        judge_teacher(spec(), finetuned(math.nan), labels([1, 1]), lambda _: None)


@pytest.mark.parametrize("off", [None, 0])
def test_null_or_zero_turns_the_check_off(off: float | None) -> None:
    judge_teacher(spec(**{CHECK: off}), finetuned(0.2), labels([60, 20, 20]), lambda _: None)


def test_a_teacher_used_as_is_without_a_validation_accuracy_is_not_checked() -> None:
    lines: list[str] = []
    judge_teacher(spec(), {"finetuned": False, "params": 10}, labels([60, 20, 20]), lines.append)
    assert lines == []


def test_the_log_names_the_validation_accuracy_and_an_early_stop() -> None:
    lines: list[str] = []
    metrics = finetuned(0.91, early_stopped=True, steps=120, max_steps=300, epochs_run=1.2)
    judge_teacher(spec(), metrics, labels([50, 50]), lines.append)
    assert lines == [
        "teacher: validation accuracy 0.9100 (the majority class alone: 0.5000); "
        "early stopping ended training at step 120 of 300 (epoch 1.2)"
    ]
    lines.clear()
    judge_teacher(spec(), finetuned(0.91, early_stopped=False), labels([50, 50]), lines.append)
    assert lines == [
        "teacher: validation accuracy 0.9100 (the majority class alone: 0.5000) after 3.0 epoch(s)"
    ]


def test_majority_rate() -> None:
    assert majority_rate(labels([3, 1])) == 0.75
    assert majority_rate([]) == 0.0


# ----------------------------------------------------------------------------------------------------------
# End to end: a tiny teacher that cannot learn, through the real CLI, then reused from the cache


def write_unlearnable_data(folder: Path) -> None:
    """Labels unrelated to the texts, 60% of them 'a'; every validation text is the same sentence, so any
    model answers one class there and scores at most the majority rate (0.6)."""
    folder.mkdir(parents=True)
    names = ["a", "a", "a", "b", "c"]
    words = ["river", "engine", "garden", "market", "planet", "window", "violin"]
    rows = {
        "train": [(f"row {i} {words[i % 7]} {words[(i * 3) % 7]}", names[i % 5]) for i in range(60)],
        "validation": [("the same sentence every time", names[i % 5]) for i in range(20)],
        "test": [(f"test {words[i % 7]}", names[i % 5]) for i in range(10)],
    }
    for split, items in rows.items():
        text = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in items)
        (folder / f"{split}.jsonl").write_text(text)
    (folder / "labels.txt").write_text("a\nb\nc\n")


UNLEARNABLE_RECIPE = """\
name: unlearnable
seed: 7
data: {path: data, max_length: 16}
teacher:
  config: {model_type: bert, num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64}
  tokenizer: {vocab_size: 100}
  finetune: {max_steps: 1, batch_size: 32, learning_rate: 0.001}
student:
  init: layers
  layers: [1]
distill: {epochs: 1, batch_size: 32}
benchmark: {threads: 1, latency_samples: 5, warmup: 1}
"""


@pytest.fixture(scope="module")
def refused_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("unlearnable")
    write_unlearnable_data(root / "data")
    recipe = root / "unlearnable.yaml"
    recipe.write_text(UNLEARNABLE_RECIPE)
    run_dir = root / "run"
    result = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "compress", str(recipe), "--output-dir", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    return recipe, run_dir, result


@pytest.mark.slow
def test_the_cli_stops_with_exit_1_before_distillation(refused_run) -> None:
    _, run_dir, result = refused_run
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    # One answer for every (identical) validation text: 0.6 for class a, 0.2 for b or c.
    assert re.fullmatch(
        r"error: the teacher learned nothing useful: validation accuracy 0\.[62]00, "
        r"the majority class alone scores 0\.600 \(this check asks for at least 0\.650\)",
        errors[0],
    ), errors[0]
    hints = [line for line in result.stderr.splitlines() if line.startswith("  hint:")]
    assert len(hints) == 1 and f"teacher.{CHECK}: null" in hints[0]
    assert re.search(
        r"teacher: validation accuracy 0\.[62]000 \(the majority class alone: 0\.6000\)", result.stderr
    )
    assert "Traceback" not in result.stderr
    # The teacher is kept (so turning the check off reuses it); distillation never started.
    assert (run_dir / "teacher" / "stage.json").is_file()
    assert not (run_dir / "distill").exists() and not list(run_dir.glob(".distill*"))


@pytest.mark.slow
def test_a_cached_bad_teacher_is_refused_again(refused_run) -> None:
    from edgekd.pipeline import compress

    recipe, run_dir, _ = refused_run
    lines: list[str] = []
    with pytest.raises(StageError, match="learned nothing useful"):
        compress(recipe, output_dir=run_dir, log=lines.append)
    assert "[teacher] cached, skipped" in lines


class ReportOnly(StageBase):
    """Stands in for distillation and everything after it: proves the run went past the teacher."""

    name = "next"
    folder = "report"
    needs: tuple[str, ...] = ("teacher",)

    def params(self, recipe: Any) -> dict[str, Any]:
        return {}

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        (out_dir / "report.json").write_text('{"passed": true}')
        return StageResult()


@pytest.mark.slow
def test_turning_the_check_off_reuses_the_teacher_and_goes_on(refused_run, monkeypatch) -> None:
    import edgekd.pipeline as pipeline

    recipe, run_dir, _ = refused_run
    monkeypatch.setattr(pipeline, "stages", lambda recipe=None: [TeacherStage(), ReportOnly()])
    lines: list[str] = []
    report = pipeline.compress(
        recipe, overrides=[f"teacher.{CHECK}=null"], output_dir=run_dir, log=lines.append
    )
    assert report["passed"] is True
    assert "[teacher] cached, skipped" in lines and "[next] done" in " ".join(lines)


def test_an_early_stop_is_recorded_logged_and_named_in_the_hint(tmp_path: Path) -> None:
    from edgekd.data import load_splits
    from edgekd.stages.runner import run_stage

    write_unlearnable_data(tmp_path / "data")
    (tmp_path / "r.yaml").write_text(UNLEARNABLE_RECIPE)
    # Too small a learning rate to flip any prediction: the validation accuracy never improves, so patience 1
    # ends training at the second of six evaluations.
    overrides = [
        "teacher.finetune.max_steps=null",
        "teacher.finetune={epochs: 3, batch_size: 32, learning_rate: 1.0e-9, early_stopping_patience: 1}",
    ]
    recipe = load_recipe(tmp_path / "r.yaml", overrides)
    _, record, _ = run_stage(TeacherStage(), recipe, tmp_path / "run", {}, log=lambda _: None)
    metrics = record["metrics"]
    assert metrics["early_stopped"] is True
    assert metrics["steps"] < metrics["max_steps"] == 6
    lines: list[str] = []
    with pytest.raises(StageError) as caught:
        judge_teacher(
            recipe.teacher,
            metrics,
            load_splits(recipe.data, recipe.seed).label_ids("validation"),
            lines.append,
        )
    assert f"early stopping ended training at step {metrics['steps']} of 6" in lines[0]
    assert caught.value.hint is not None and "early_stopping_patience" in caught.value.hint
