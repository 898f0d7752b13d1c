"""benchmarks/teacher_labelling.py: the results file names the teacher folder wherever it lies."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "teacher_labelling", REPO / "benchmarks" / "teacher_labelling.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_teacher_inside_the_checkout_is_named_relative_to_it() -> None:
    script = load_script()
    assert script.display_path(REPO / "models" / "mpnet-base") == "models/mpnet-base"


def test_a_teacher_outside_the_checkout_is_named_as_given(tmp_path: Path) -> None:
    # A worktree run reads the main checkout's models/: the script wrote nothing when this raised.
    teacher = tmp_path / "mpnet-base"
    assert load_script().display_path(teacher) == str(teacher)
