"""Resource errors: a full disk or a folder that cannot be written is one clear line (exit 1, with the folder
to fix in the hint), and the previous finished artifact stays intact.

Tests run as root, where chmod does not deny writes, so the failures are injected with monkeypatch at each
point a stage writes: inside the stage (saving the model), the stage.json record, and both renames of the
swap into place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edgekd.stages.runner
from edgekd.cli.app import main
from edgekd.errors import ResourceError, resource_error
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.stages.runner import run_stage
from edgekd.stages.teacher import TeacherStage

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
TINY = [
    "data.limits.train=40",
    "data.limits.validation=8",
    "data.limits.test=8",
    "teacher.finetune.max_steps=2",
    "teacher.tokenizer.vocab_size=100",
]
DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
DENIED = PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe(SMOKE, TINY)


@pytest.fixture(scope="module")
def finished_run(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_dir.mkdir()
    run_stage(TeacherStage(), recipe, run_dir, {}, log=lambda _: None)
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fail_save(exc: BaseException) -> Callable[[pytest.MonkeyPatch], None]:
    """Inside the stage: writing the model weights fails."""

    def inject(monkeypatch: pytest.MonkeyPatch) -> None:
        def save_pretrained(*args: Any, **kwargs: Any) -> None:
            raise exc

        monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", save_pretrained)

    return inject


def fail_stage_json(exc: BaseException) -> Callable[[pytest.MonkeyPatch], None]:
    def inject(monkeypatch: pytest.MonkeyPatch) -> None:
        def write_json(path: Path, obj: Any) -> None:
            raise exc

        monkeypatch.setattr(edgekd.stages.runner, "write_json", write_json)

    return inject


def fail_rename(exc: BaseException, source_name: str) -> Callable[[pytest.MonkeyPatch], None]:
    """The swap into place: rename `source_name` (the finished folder when parking it, or the partial
    folder when moving it into place) fails; other renames work."""

    def inject(monkeypatch: pytest.MonkeyPatch) -> None:
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            if Path(src).name == source_name:
                raise exc
            real_replace(src, dst, **kwargs)

        monkeypatch.setattr(edgekd.stages.runner.os, "replace", replace)

    return inject


FAILURES = {
    "disk full saving the model": (fail_save(DISK_FULL), "no space left", "free disk space in"),
    "safetensors-style wrapped error": (
        fail_save(RuntimeError("Error while serializing: IoError: No space left on device (os error 28)")),
        "no space left",
        "free disk space in",
    ),
    "permission denied on stage.json": (
        fail_stage_json(DENIED),
        "permission denied while writing the teacher stage",
        "check the permissions",
    ),
    "disk full parking the old folder": (
        fail_rename(DISK_FULL, "teacher"),
        "no space left",
        "free disk space",
    ),
    "read-only moving the new folder in": (
        fail_rename(OSError(errno.EROFS, os.strerror(errno.EROFS)), ".teacher.partial"),
        "read-only file system while writing the teacher stage",
        "check the permissions",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_write_is_a_resource_error_and_keeps_the_finished_folder(
    case: str, recipe: Recipe, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject, message, hint = FAILURES[case]
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir / "teacher")
    inject(monkeypatch)
    with pytest.raises(ResourceError) as caught:
        run_stage(TeacherStage(), recipe, run_dir, {}, force=True, log=lambda _: None)
    error = caught.value
    assert message in error.message and "\n" not in error.message
    assert error.hint and hint in error.hint and str(run_dir) in error.hint
    assert error.exit_code == 1
    assert snapshot(run_dir / "teacher") == before, "the previous finished folder must stay as it was"
    leftovers = {p.name for p in run_dir.iterdir()} - {"teacher"}
    assert not leftovers, f"nothing half-written may stay behind: {leftovers}"


def test_the_cli_prints_one_line_and_a_hint_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(self: Any, ctx: Any, out_dir: Path) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "model" / "model.safetensors"))

    monkeypatch.setattr(TeacherStage, "run", run)
    run_dir = tmp_path / "run"
    code = main(["compress", str(SMOKE), "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith(("error:", "  hint:"))]
    assert errors == [
        "error: no space left on the device while running the teacher stage",
        f"  hint: free disk space in {run_dir}, then run the same command again to resume",
    ]
    assert "Traceback" not in err
    assert not (run_dir / ".teacher.partial").exists()


def test_an_unwritable_run_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "write_text", write_text)
    code = main(["compress", str(SMOKE), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "error: permission denied while writing recipe.resolved.yaml and env.json" in err
    assert f"hint: check the permissions of {tmp_path / 'run'}" in err


def test_other_os_errors_are_not_mistaken_for_resource_errors(tmp_path: Path) -> None:
    assert resource_error(FileNotFoundError(errno.ENOENT, "No such file"), tmp_path, "x") is None
    assert resource_error(ValueError("bad value"), tmp_path, "x") is None
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = DISK_FULL
    assert isinstance(resource_error(wrapped, tmp_path, "x"), ResourceError)


def test_a_finished_teacher_survives_and_is_reused(finished_run: Path, recipe: Recipe) -> None:
    """The module's finished run is still valid and cached (the injected failures ran on copies)."""
    record = json.loads((finished_run / "teacher" / "stage.json").read_text())
    _, _, skipped = run_stage(TeacherStage(), recipe, finished_run, {}, log=lambda _: None)
    assert skipped and record["metrics"]["finetuned"]
