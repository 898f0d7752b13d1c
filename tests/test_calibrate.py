"""The calibrate stage: the out-of-scope offset rules, the folded bias, the refusals and the chain's wiring."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import DataError, RecipeError
from edgekd.pipeline import stages
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageContext
from edgekd.stages.calibrate import (
    CalibrateStage,
    choose_offset,
    margins,
    offset_for_accuracy,
    offset_for_recall,
    scores,
    shifted,
)

REPO = Path(__file__).resolve().parent.parent
OOS = 2  # "tech" in the toy data: any class can play the "none of the others" one


def smoke(*overrides: str) -> Recipe:
    return load_recipe(REPO / "recipes" / "smoke.yaml", list(overrides))


# ----------------------------------------------------------------------------------------------------------
# Choosing the offset


def test_margins_are_the_best_other_logit_minus_the_out_of_scope_one():
    logits = np.array([[1.0, 3.0, 2.0], [0.0, 0.5, 4.0]])
    assert margins(logits, OOS).tolist() == [1.0, -3.5]


def test_the_recall_rule_flags_as_many_out_of_scope_texts_as_asked():
    rng = np.random.default_rng(0)
    oos_margins = rng.normal(1.0, 2.0, size=101)
    for recall in (0.0, 0.3, 0.64, 1.0):
        offset = offset_for_recall(oos_margins, recall)
        assert (oos_margins <= offset).sum() == int(np.ceil(recall * 101 - 1e-9))
    # a student that already flags more than asked gets a negative offset
    assert offset_for_recall(np.array([-3.0, -2.0, -1.0, 5.0]), 0.5) < 0


def test_the_teacher_rule_matches_the_teachers_out_of_scope_recall():
    rng = np.random.default_rng(1)
    gold = np.array([OOS] * 40 + [0] * 30 + [1] * 30)
    teacher = np.eye(3)[gold] * 5.0
    teacher[:10, OOS] = -5.0  # the teacher misses 10 of the 40 out-of-scope texts: recall 0.75
    student = rng.normal(size=(100, 3))
    student[np.arange(100), gold] += 1.0
    offset = choose_offset(student, teacher, gold, OOS, "teacher_recall")
    after = scores(shifted(student, OOS, offset).argmax(axis=1), gold, OOS)
    assert after.out_of_scope_recall == pytest.approx(0.75)
    assert choose_offset(student, teacher, gold, OOS, "off") == 0.0


def test_the_accuracy_sweep_agrees_with_trying_every_offset():
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (400, 6))
    gold = rng.integers(0, 6, 400)
    margin = margins(logits, OOS)
    best = offset_for_accuracy(logits, gold, OOS, margin)
    tried = sorted(np.unique(np.concatenate([[0.0], margin + 1e-4, margin - 1e-4])), key=abs)
    right = [(shifted(logits, OOS, b).argmax(axis=1) == gold).sum() for b in tried]
    assert best == tried[int(np.argmax(right))]


def test_the_agreement_rule_finds_the_offset_that_agrees_most_with_the_teacher():
    rng = np.random.default_rng(4)
    gold = rng.integers(0, 3, size=300)
    teacher = np.eye(3)[gold] * 4.0 + rng.normal(size=(300, 3))
    student = teacher + rng.normal(0.0, 1.5, size=(300, 3))
    student[:, OOS] -= 2.0  # a student that flags too few texts
    offset = choose_offset(student, teacher, gold, OOS, "teacher_agreement")
    answers = teacher.argmax(axis=1)

    def agreement(b: float) -> float:
        return float((shifted(student, OOS, b).argmax(axis=1) == answers).mean())

    assert offset > 0
    assert all(agreement(offset) >= agreement(other) for other in np.linspace(-4, 6, 101))
    # the labels play no part: only the teacher's answers do
    assert choose_offset(student, teacher, rng.permutation(gold), OOS, "teacher_agreement") == offset


def test_the_accuracy_rule_finds_the_best_offset():
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3))
    logits[np.arange(200), gold] += 0.8
    logits[:, OOS] -= 1.5  # an under-confident out-of-scope class
    best = offset_for_accuracy(logits, gold, OOS, margins(logits, OOS))
    accuracy = (shifted(logits, OOS, best).argmax(axis=1) == gold).mean()
    for other in np.linspace(-3, 3, 61):
        assert accuracy >= (shifted(logits, OOS, other).argmax(axis=1) == gold).mean()
    assert best > 0


# ----------------------------------------------------------------------------------------------------------
# The stage


@pytest.fixture(scope="module")
def calibrated(tiny_classifier_dir, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("calibrate_run")
    for stage in ("teacher", "distill"):
        shutil.copytree(tiny_classifier_dir, run / stage / "model")
    out = run / "calibrate"
    out.mkdir()
    recipe = smoke("calibrate.out_of_scope=teacher_recall", "benchmark.out_of_scope_label=tech")
    inputs = {"teacher": run / "teacher", "distill": run / "distill"}
    result = CalibrateStage().run(StageContext(recipe, run, inputs, lambda m: None), out)
    return run, result.metrics


def test_the_stage_changes_one_bias_by_the_offset_and_nothing_else(calibrated, toy_texts):
    from edgekd.stages.distill.labelling import torch_teacher_logits

    run, metrics = calibrated
    before = torch_teacher_logits(run / "distill" / "model", toy_texts[:32], 32)
    after = torch_teacher_logits(run / "calibrate" / "model", toy_texts[:32], 32)
    np.testing.assert_allclose(
        after - before, shifted(np.zeros_like(before), OOS, metrics["offset"]), atol=1e-4
    )
    # the tiny teacher and student are one model: calibrated to itself, the offset moves nothing that counts
    assert metrics["after"]["out_of_scope_recall"] == pytest.approx(metrics["teacher"]["out_of_scope_recall"])
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= {
        p.name for p in (run / "calibrate" / "model").iterdir()
    }


def test_calibrating_needs_the_out_of_scope_class_and_its_validation_texts():
    from edgekd.data import load_splits
    from edgekd.pipeline import preflight

    with pytest.raises(RecipeError, match=r"calibrate\.out_of_scope needs the out-of-scope class"):
        preflight(REPO / "recipes" / "smoke.yaml", ["calibrate.out_of_scope=teacher_recall"])
    recipe = smoke("calibrate.out_of_scope=teacher_recall", "benchmark.out_of_scope_label=tech")
    splits = load_splits(recipe.data, recipe.seed)
    CalibrateStage().preflight(recipe, splits)  # the toy validation split has "tech" rows
    splits.validation = [row for row in splits.validation if row[1] != OOS]
    with pytest.raises(DataError, match="the validation split has none"):
        CalibrateStage().preflight(recipe, splits)


def test_the_chain_reads_the_calibrated_model_only_when_asked():
    plain = [(s.name, s.needs) for s in stages(smoke())]
    assert "calibrate" not in [name for name, _ in plain]
    chain = stages(smoke("calibrate.out_of_scope=accuracy", "benchmark.out_of_scope_label=tech"))
    needs = {s.name: s.needs for s in chain}
    assert needs["calibrate"] == ("teacher", "distill") and needs["export"] == ("calibrate",)
    pruned = stages(
        smoke(
            "calibrate.out_of_scope=accuracy", "benchmark.out_of_scope_label=tech", "prune_vocab.enabled=true"
        )
    )
    needs = {s.name: s.needs for s in pruned}
    assert needs["prune_vocab"] == ("calibrate",) and needs["export"] == ("prune_vocab",)
