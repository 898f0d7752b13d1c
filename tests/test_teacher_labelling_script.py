"""benchmarks/teacher_labelling.py: the results file names the teacher folder wherever it lies."""

from __future__ import annotations

from pathlib import Path

from repo_scripts import load_script

REPO = Path(__file__).resolve().parent.parent


def test_a_teacher_inside_the_checkout_is_named_relative_to_it() -> None:
    script = load_script("benchmarks/teacher_labelling.py")
    assert script.display_path(REPO / "models" / "mpnet-base") == "models/mpnet-base"


def test_a_teacher_outside_the_checkout_is_named_as_given(tmp_path: Path) -> None:
    # A worktree run reads the main checkout's models/: the script wrote nothing when this raised.
    teacher = tmp_path / "mpnet-base"
    assert load_script("benchmarks/teacher_labelling.py").display_path(teacher) == str(teacher)
