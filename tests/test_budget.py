"""`student.budget`: the student's shape chosen for the speed gate on this machine. A fake latency table picks
the expected candidate; the recipe refuses budgets that cannot work; real measurements on a tiny model cover the
export and quantize path of pruned candidates; `compress` distils the chosen shape and the report sets the
predicted speed-up beside the measured one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

import edgekd.stages.distill.budget as budget
from edgekd.errors import RecipeError
from edgekd.pipeline import compress
from edgekd.recipe.load import load_recipe
from edgekd.stages.benchmark import CANDIDATE
from edgekd.stages.distill.stage import DistillStage
from edgekd.stages.runner import stable_hash

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
TWO_CANDIDATES = (
    "student.budget={candidates: [{layers: [0, 1]}, "
    "{layers: [1], prune: {ffn_keep: 0.5, heads_keep: 0.5}}], margin: 1.0, texts: 10}"
)
BUDGET = ["student.layers=null", TWO_CANDIDATES, "gates.min_speedup_p50=2"]


@pytest.mark.parametrize(
    ("candidate_ms", "needed", "expected"),
    [
        ([30.0, 20.0, 10.0], 5.0, (1, True)),  # 100/30 = 3.3x is short; 100/20 = 5x is the first to reach 5x
        ([10.0, 5.0], 5.0, (0, True)),  # the best candidate fits: the faster one is not taken
        ([40.0, 25.0, 30.0], 5.0, (1, False)),  # none fits: the fastest, flagged
    ],
)
def test_the_first_candidate_that_clears_the_gate_is_chosen(
    candidate_ms: list[float], needed: float, expected: tuple[int, bool]
) -> None:
    assert budget.choose_candidate(candidate_ms, 100.0, needed) == expected


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ([TWO_CANDIDATES, "gates.min_speedup_p50=2"], "remove them, or remove 'budget'"),  # layers still set
        (["student.layers=null", TWO_CANDIDATES], "set that gate"),
        (["student.init=pretrained", "student.model=teacher", *BUDGET], "needs init 'layers'"),
        ([*BUDGET, "distill.losses={hidden: {weight: 1.0}}"], "does not combine with distill.losses"),
        (["student.layers=null", "gates.min_speedup_p50=2", "student.budget={candidates: []}"], "at least 1"),
        (
            [
                "student.layers=null",
                "gates.min_speedup_p50=2",
                "student.budget={candidates: [{layers: [1, 1]}]}",
            ],
            "distinct",
        ),
    ],
)
def test_budgets_that_cannot_work_are_refused(overrides: list[str], problem: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, overrides)
    assert problem in "\n".join(err.value.problems)


def test_the_distill_key_is_unchanged_without_a_budget_and_follows_it() -> None:
    plain = load_recipe(SMOKE)
    assert "budget" not in DistillStage().params(plain)["student"]
    with_budget = load_recipe(SMOKE, BUDGET)
    other_margin = load_recipe(SMOKE, [*BUDGET, "student.budget.margin=1.5"])
    keys = {stable_hash(DistillStage().params(r)) for r in (plain, with_budget, other_margin)}
    assert len(keys) == 3


def test_real_measurements_time_the_teacher_and_each_pruned_candidate(
    tiny_classifier_dir: Path, toy_labels: list[str], toy_texts: list[str]
) -> None:
    recipe = load_recipe(SMOKE, BUDGET)
    logged: list[str] = []
    shape, record = budget.choose_student_shape(
        recipe, tiny_classifier_dir, toy_labels, toy_texts, logged.append
    )
    assert record["teacher_p50_ms"] > 0 and record["texts"] == 10
    assert [c["layers"] for c in record["candidates"]] == [[0, 1], [1]]
    assert all(c["int8_p50_ms"] > 0 for c in record["candidates"])
    assert shape == recipe.student.budget.candidates[record["chosen"]]  # type: ignore[union-attr]
    assert record["predicted_speedup_p50"] == record["candidates"][record["chosen"]]["predicted_speedup_p50"]
    assert any("student budget: layers [1], FFN kept 0.5, heads kept 0.5" in line for line in logged)


@pytest.mark.e2e
def test_compress_distils_the_chosen_shape_and_reports_predicted_against_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fake table: teacher 10 ms; two layers 8 ms (1.25x, short of 2x), one pruned layer 2 ms (5x): chosen."""
    fake_ms = {(0, 1): 8.0, (1,): 2.0}

    def candidate_ms(
        recipe: Any, teacher_dir: Path, labels: Any, shape: Any, texts: Any, work: Path
    ) -> float:
        return fake_ms[tuple(shape.layers)]

    monkeypatch.setattr(budget, "teacher_latency_ms", lambda *args: 10.0)
    monkeypatch.setattr(budget, "candidate_latency_ms", candidate_ms)
    run_dir = tmp_path / "run"
    overrides = [*BUDGET, "teacher.finetune.epochs=2", "distill.epochs=1"]
    report = compress(SMOKE, overrides, output_dir=run_dir, log=lambda message: None)

    record = json.loads((run_dir / "distill" / "stage.json").read_text())["metrics"]["budget"]
    assert (record["chosen"], record["fits"], record["needed_speedup"]) == (1, True, 2.0)
    assert [c["predicted_speedup_p50"] for c in record["candidates"]] == [1.25, 5.0]
    config = json.loads((run_dir / "distill" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["intermediate_size"] == 64
    assert len(config["pruned_heads"]["0"]) == 2
    measured = next(v for v in report["variants"] if v["name"] == CANDIDATE)["speedup_p50"]
    assert report["student_budget"]["predicted_speedup_p50"] == 5.0
    assert report["student_budget"]["measured_speedup_p50"] == measured
    markdown = (run_dir / "report" / "report.md").read_text()
    assert (
        "## Student size chosen for the speed gate" in markdown
        and "**layers [1], FFN 0.5, heads 0.5" in markdown
    )


def test_a_resumed_distill_keeps_the_shape_chosen_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first invocation wrote its choice into the stage's working folder; the resumed one must not time
    again (the machine may now choose another shape than the checkpoints have)."""
    from types import SimpleNamespace

    from edgekd.stages.distill.stage import student_within_budget

    def must_not_measure(*args: Any) -> None:
        raise AssertionError("the budget was measured again on resume")

    monkeypatch.setattr(budget, "choose_student_shape", must_not_measure)
    recipe = load_recipe(SMOKE, BUDGET)
    record_path = tmp_path / "budget.json"
    record_path.write_text(json.dumps({"chosen": 0, "predicted_speedup_p50": 3.0}))
    logged: list[str] = []
    chosen, record = student_within_budget(
        recipe,
        tmp_path,
        cast(Any, SimpleNamespace()),  # the splits are not read when the record is reused
        cast(Any, SimpleNamespace(log=logged.append)),
        record_path,
    )
    assert chosen.student.layers == [0, 1] and chosen.student.prune is None
    assert record == {"chosen": 0, "predicted_speedup_p50": 3.0}
    assert "resuming with the shape chosen before" in logged[0]
