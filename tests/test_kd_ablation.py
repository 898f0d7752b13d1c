"""benchmarks/kd_ablation.py: variants trained on a finished run's teacher and cached logits, scored on
validation, merged into one results file; the recipe's own variant is read from the run, not trained again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from repo_scripts import load_script

from edgekd.pipeline import compress

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
QUICK = ["teacher.finetune.epochs=2", "distill.epochs=1"]


def ablation(run_dir: Path, out: Path, *variants: list[str]) -> subprocess.CompletedProcess[str]:
    args = [arg for variant in variants for arg in ("--variant", *variant)]
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "kd_ablation.py"),
            str(SMOKE),
            "--run-dir",
            str(run_dir),
            *args,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )


@pytest.mark.e2e
def test_variants_reuse_the_teacher_and_merge_into_one_file(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "kd_ablation.json"
    compress(SMOKE, QUICK, output_dir=run_dir, log=lambda message: None)
    teacher_files = sorted(p.name for p in (run_dir / "teacher").iterdir())

    done = ablation(run_dir, out, ["recipe", *QUICK], ["hard-labels", *QUICK, "distill.alpha=1.0"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    entry = result["recipes"]["smoke"]
    recipe_row, hard = entry["rows"]
    assert (recipe_row["name"], hard["name"]) == ("recipe", "hard-labels")
    assert hard["overrides"][-1] == "distill.alpha=1.0"
    main_key = json.loads((run_dir / "distill" / "stage.json").read_text())["key"]
    assert recipe_row["distill_key"] == main_key, "the recipe's own variant is the run's distill stage"
    assert hard["distill_key"] != main_key
    assert not (run_dir / "ablation" / "recipe").exists()
    assert (run_dir / "ablation" / "hard-labels" / "distill" / "model" / "config.json").is_file()
    assert 0 <= hard["validation_accuracy"] <= 1 and 0 <= entry["teacher"]["validation_accuracy"] <= 1
    assert "vs_run_student" not in recipe_row, "the run's own student is what the others are compared with"
    versus = hard["vs_run_student"]
    assert versus["distill_key"] == main_key
    lo, hi = versus["ci95_pts"]
    assert lo <= versus["diff_pts"] <= hi
    assert versus["resolved"] == (lo > 0 or hi < 0)
    assert hard["train_seconds"] > 0 and result["split"] == "validation"
    assert sorted(p.name for p in (run_dir / "teacher").iterdir()) == teacher_files  # no teacher trained

    again = ablation(run_dir, out, ["hard-labels", *QUICK, "distill.alpha=1.0"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "distill cached" in again.stdout
    rows = json.loads(out.read_text())["recipes"]["smoke"]["rows"]
    assert [r["name"] for r in rows] == ["recipe", "hard-labels"], "rows are replaced by name, not repeated"


def test_a_difference_the_validation_split_cannot_see_is_not_resolved() -> None:
    versus = load_script("benchmarks/kd_ablation.py").against_run_student
    gold = [0] * 1000
    baseline = np.zeros(1000, dtype=int)
    baseline[:80] = 1  # the run's student: 92.0%
    four_more = baseline.copy()
    four_more[:22] = 0  # right on 22 rows the run's student gets wrong ...
    four_more[100:118] = 1  # ... wrong on 18 it gets right: 4 rows more, as alpha 0.1 on AG News validation
    close = versus(four_more, baseline, gold, "k")
    assert close["diff_pts"] == 0.4 and not close["resolved"]
    many_more = baseline.copy()
    many_more[:58] = 0
    many_more[100:118] = 1
    clear = versus(many_more, baseline, gold, "k")
    assert clear["diff_pts"] == 4.0 and clear["resolved"] and clear["ci95_pts"][0] > 0


def test_calibrated_rows_score_the_operating_point_that_ships() -> None:
    """With `calibrate.out_of_scope` set, each row also carries the scores after the recipe's calibration (the
    offset chosen on the same validation rows, as the stage does) and the paired in-scope difference there."""
    from edgekd.recipe.load import load_recipe
    from edgekd.stages.calibrate import choose_offset, scores, shifted

    calibrated_scores = load_script("benchmarks/kd_ablation.py").calibrated_scores
    labels = ["business", "sports", "tech", "weather"]
    oos = labels.index("tech")
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 4, size=400)
    teacher = np.eye(4)[gold] * 4.0 + rng.normal(size=(400, 4))
    student = teacher + rng.normal(0.0, 2.0, size=(400, 4))
    student[:, oos] -= 2.0  # flags too few out-of-scope texts before calibration
    worse = student + rng.normal(0.0, 3.0, size=(400, 4))
    overrides = ["benchmark.out_of_scope_label=tech", "calibrate.out_of_scope=teacher_recall"]
    recipe = load_recipe(SMOKE, overrides)

    row = calibrated_scores(recipe, student, teacher, gold.tolist(), labels, baseline_logits=worse)
    offset = choose_offset(student, teacher, gold, oos, "teacher_recall")
    expected = scores(shifted(student, oos, offset).argmax(axis=1), gold, oos)
    assert row["rule"] == "teacher_recall" and row["offset"] == round(offset, 3) and offset > 0
    assert row["out_of_scope_recall"] == round(expected.out_of_scope_recall, 4)
    assert row["out_of_scope_recall"] == round(
        scores(teacher.argmax(axis=1), gold, oos).out_of_scope_recall, 4
    )
    assert row["in_scope_accuracy"] == round(expected.in_scope_accuracy, 4)
    versus = row["in_scope_vs_run_student"]
    lo, hi = versus["ci95_pts"]
    assert lo <= versus["diff_pts"] <= hi and versus["diff_pts"] > 0
    assert "in_scope_vs_run_student" not in calibrated_scores(recipe, student, teacher, gold.tolist(), labels)
    uncalibrated = load_recipe(SMOKE, overrides[:1])
    assert calibrated_scores(uncalibrated, student, teacher, gold.tolist(), labels) is None
