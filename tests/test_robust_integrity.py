"""Work and files that survive the wrong second: kills between saving a model and deleting its checkpoints, a
disk that fills up during a checkpoint, truncated cache and stage files, and a run folder inside the data.

Kills are simulated by raising a `BaseException` from a monkeypatched hook (nothing in edgekd catches it, as
nothing survives a SIGKILL); the resumed run must continue from the checkpoint, which is checked by counting the
optimizer steps it takes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekd.stages.runner
import edgekd.training
from edgekd.errors import ResourceError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.distill.stage import DistillStage, cached_teacher_logits
from edgekd.stages.runner import (
    RUN_FOLDER_MARKER,
    fingerprint_path,
    fingerprints_leaving_out,
    is_complete_checkpoint,
    run_stage,
    stage_key,
    stage_resource_error,
)
from edgekd.stages.teacher import TeacherStage

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
# 40 rows in batches of 32: 2 steps per epoch. The teacher evaluates and saves after every step
# (evals_per_epoch 2), distillation after every epoch.
TINY = [
    "data.limits.train=40",
    "data.limits.validation=8",
    "data.limits.test=8",
    "teacher.finetune.max_steps=2",
    "teacher.tokenizer.vocab_size=100",
]
TEACHER_STEPS = 2
DISTILL_RECIPE = """
name: tiny
seed: 3
data: {{path: {data}, max_length: 32, limits: {{train: 40, validation: 8, test: 8}}}}
teacher: {{model: {teacher}}}
student: {{init: layers, layers: [1]}}
distill: {{epochs: 1, max_steps: 2, batch_size: 32, learning_rate: 0.003}}
"""


class Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` in edgekd stops it."""


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe(SMOKE, TINY)


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the optimizer steps every Trainer takes while the test runs."""
    from transformers import Trainer

    taken: list[int] = []
    real = Trainer.training_step

    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        taken.append(self.state.global_step)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)
    return taken


def kill_when_saving_the_final_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while the stage writes model/ (Trainer checkpoints are written by the same method: they pass)."""
    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def save_pretrained(self: Any, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(save_directory).name == "model":
            raise Killed
        return real(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def kill_after_saving_the_final_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between writing model/ and deleting the checkpoints."""

    def remove_checkpoints(checkpoints: Path) -> None:
        raise Killed

    monkeypatch.setattr(edgekd.training, "remove_checkpoints", remove_checkpoints)


KILLS = {
    "during the final save": kill_when_saving_the_final_model,
    "after the final save": kill_after_saving_the_final_model,
}


def complete_checkpoints(partial: Path) -> list[str]:
    return sorted(p.name for p in (partial / "checkpoints").glob("checkpoint-*") if is_complete_checkpoint(p))


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_teacher_killed_around_its_final_save_resumes_from_its_checkpoint(
    kill: str, recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[int]
) -> None:
    with monkeypatch.context() as patch:
        KILLS[kill](patch)
        with pytest.raises(Killed):
            run_stage(TeacherStage(), recipe, tmp_path, {}, log=quiet)
    assert len(steps) == TEACHER_STEPS
    partial = tmp_path / ".teacher.partial"
    assert complete_checkpoints(partial), "the checkpoints must outlive a kill before the model is safe"
    assert not (tmp_path / "teacher").exists()

    steps.clear()
    logs: list[str] = []
    _, record, skipped = run_stage(TeacherStage(), recipe, tmp_path, {}, log=logs.append)
    assert not skipped and record["metrics"]["finetuned"]
    assert any(line.startswith("resuming training from checkpoint-") for line in logs), logs
    assert steps == [], "the resumed run must not train again"
    assert (tmp_path / "teacher" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "teacher" / "checkpoints").exists()
    assert not any(name.startswith("checkpoints/") for name in record["files"])
    assert not partial.exists()


@pytest.fixture
def distill_recipe(tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path) -> Recipe:
    path = tmp_path / "tiny.yaml"
    path.write_text(DISTILL_RECIPE.format(data=toy_data, teacher=tiny_classifier_dir))
    return load_recipe(path)


def test_a_student_killed_during_its_final_save_resumes_from_its_checkpoint(
    distill_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[int]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    teacher_key, _, _ = run_stage(
        TeacherStage(), distill_recipe, run_dir, {}, log=quiet
    )  # a ready classifier
    with monkeypatch.context() as patch:
        kill_when_saving_the_final_model(patch)
        with pytest.raises(Killed):
            run_stage(DistillStage(), distill_recipe, run_dir, {"teacher": teacher_key}, log=quiet)
    assert len(steps) == 2
    assert complete_checkpoints(run_dir / ".distill.partial")

    steps.clear()
    logs: list[str] = []
    _, record, _ = run_stage(
        DistillStage(), distill_recipe, run_dir, {"teacher": teacher_key}, log=logs.append
    )
    assert any(line.startswith("resuming training from checkpoint-") for line in logs), logs
    assert steps == []
    assert (run_dir / "distill" / "model" / "model.safetensors").is_file()
    assert not any(name.startswith("checkpoints/") for name in record["files"])
    assert not (run_dir / "distill" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------
# A full disk during a Trainer checkpoint


def fill_the_disk_at(monkeypatch: pytest.MonkeyPatch, checkpoint: str) -> None:
    """torch.save into `checkpoint` writes to /dev/full: the real error torch raises on a full disk."""
    import torch

    real = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)) and Path(f).parent.name == checkpoint:
            return real(obj, "/dev/full", *args, **kwargs)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill a disk")
def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_checkpoint_and_resumes(
    recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[int]
) -> None:
    with monkeypatch.context() as patch:
        fill_the_disk_at(patch, "checkpoint-2")
        with pytest.raises(ResourceError) as caught:
            run_stage(TeacherStage(), recipe, tmp_path, {}, log=quiet)
    error = caught.value
    assert error.message == "no space left on the device while running the teacher stage"
    assert error.hint and str(tmp_path) in error.hint and "resume" in error.hint
    partial = tmp_path / ".teacher.partial"
    assert complete_checkpoints(partial) == ["checkpoint-1"]
    kept = {p.name for p in partial.iterdir()}
    assert kept <= {"checkpoints", ".key", ".invocation.json"}, "only what a resume needs takes up the space"
    assert [p.name for p in (partial / "checkpoints").iterdir()] == ["checkpoint-1"], "half-written one gone"

    steps.clear()
    logs: list[str] = []
    _, record, _ = run_stage(TeacherStage(), recipe, tmp_path, {}, log=logs.append)
    assert "resuming training from checkpoint-1" in logs
    assert steps == [1], "only the step after the kept checkpoint is trained again"
    assert record["metrics"]["finetuned"]


@pytest.mark.parametrize(
    "message",
    [
        "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598",
        "[enforce fail at inline_container.cc:471] . PytorchStreamWriter failed writing file data/0: "
        "file write failed",
    ],
)
def test_torch_write_failures_are_disk_full_errors(message: str, tmp_path: Path) -> None:
    error = stage_resource_error(RuntimeError(message), tmp_path, "running the teacher stage")
    assert isinstance(error, ResourceError)
    assert error.message.startswith("no space left") and error.hint and str(tmp_path) in error.hint


def test_an_ambiguous_torch_stream_error_is_disk_full_only_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = RuntimeError("basic_ios::clear: iostream error")
    assert stage_resource_error(stream, tmp_path, "x") is None
    assert stage_resource_error(RuntimeError("shape mismatch"), tmp_path, "x") is None
    full = shutil._ntuple_diskusage(total=10 << 30, used=10 << 30, free=4096)  # type: ignore[attr-defined]
    monkeypatch.setattr(edgekd.stages.runner.shutil, "disk_usage", lambda _: full)
    assert isinstance(stage_resource_error(stream, tmp_path, "x"), ResourceError)


def test_a_resource_error_without_a_checkpoint_leaves_nothing(
    recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(self: Any, ctx: Any, out_dir: Path) -> Any:
        (out_dir / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(TeacherStage, "run", run)
    with pytest.raises(ResourceError):
        run_stage(TeacherStage(), recipe, tmp_path, {}, log=quiet)
    assert not (tmp_path / ".teacher.partial").exists()


# ----------------------------------------------------------------------------------------------------------
# The teacher-logit cache


@pytest.fixture
def logits_ctx(tmp_path: Path, distill_recipe: Recipe) -> Iterator[tuple[StageContext, list[str]]]:
    logs: list[str] = []
    yield StageContext(recipe=distill_recipe, run_dir=tmp_path / "run", inputs={}, log=logs.append), logs


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])


@pytest.mark.parametrize("keep", [0, 60, -8], ids=["empty", "header only", "last row cut"])
def test_a_truncated_logit_cache_is_computed_again_with_a_warning(
    keep: int,
    logits_ctx: tuple[StageContext, list[str]],
    tiny_classifier_dir: Path,
    toy_texts: list[str],
) -> None:
    ctx, logs = logits_ctx
    texts = toy_texts[:10]
    first = cached_teacher_logits(tiny_classifier_dir, texts, "train", ctx.recipe, ctx)
    [path] = (ctx.run_dir / "cache").glob("teacher_logits-train-*.npy")
    truncate(path, keep)
    again = cached_teacher_logits(tiny_classifier_dir, texts, "train", ctx.recipe, ctx)
    np.testing.assert_array_equal(again, first)
    assert any(line.startswith("warning: the cached teacher logits") for line in logs), logs
    np.testing.assert_array_equal(np.load(path), first)  # repaired on disk
    assert cached_teacher_logits(tiny_classifier_dir, texts, "train", ctx.recipe, ctx).shape == first.shape
    assert logs[-1].endswith(f"cached ({path.name})")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "no temporary file left"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsync'ed files through /proc")
def test_the_cache_and_stage_files_are_fsynced(
    logits_ctx: tuple[StageContext, list[str]],
    tiny_classifier_dir: Path,
    toy_texts: list[str],
    recipe: Recipe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ctx, _ = logits_ctx
    cached_teacher_logits(tiny_classifier_dir, toy_texts[:4], "train", ctx.recipe, ctx)
    assert any(Path(p).name.startswith("teacher_logits-train-") for p in synced), synced
    synced.clear()
    run_dir = ctx.run_dir
    run_stage(FileStage({"artifact.bin": b"x" * 10}), recipe, run_dir, {}, log=quiet)
    names = {Path(p).name for p in synced}
    assert {"artifact.bin", "stage.json.tmp", run_dir.name} <= names, names


# ----------------------------------------------------------------------------------------------------------
# Finished stages whose files changed under an intact stage.json


class FileStage(StageBase):
    """Writes the given files; counts how often it really ran."""

    name = "fake"
    folder = "fake"
    needs: tuple[str, ...] = ()

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.runs = 0

    def params(self, recipe: Any) -> dict[str, Any]:
        return {"files": sorted(self.files)}

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        self.runs += 1
        for name, data in self.files.items():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes(data)
        return StageResult()


FILES = {
    "model/weights.bin": bytes(range(256)) * 8192,
    "model/config.json": b'{"hidden": 64}',
}  # 2 MiB, small


def damage_big_file(stage_dir: Path) -> None:
    truncate(stage_dir / "model" / "weights.bin", 1000)


def damage_small_file(stage_dir: Path) -> None:
    (stage_dir / "model" / "config.json").write_bytes(b'{"hidden": 32}')  # same size, other bytes


def remove_a_file(stage_dir: Path) -> None:
    (stage_dir / "model" / "config.json").unlink()


DAMAGE = {"truncated": damage_big_file, "edited": damage_small_file, "missing": remove_a_file}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_finished_stage_with_a_damaged_file_runs_again_with_a_warning(
    damage: str, recipe: Recipe, tmp_path: Path
) -> None:
    _, record, _ = run_stage(FileStage(FILES), recipe, tmp_path, {}, log=quiet)
    assert record["file_checks"]["model/weights.bin"]["bytes"] == len(FILES["model/weights.bin"])
    DAMAGE[damage](tmp_path / "fake")
    stage = FileStage(FILES)
    logs: list[str] = []
    _, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=logs.append)
    assert not skipped and stage.runs == 1
    assert any(line.startswith("warning: the cached fake stage is damaged") for line in logs), logs
    assert (tmp_path / "fake" / "model" / "weights.bin").read_bytes() == FILES["model/weights.bin"]
    again = FileStage(FILES)
    assert run_stage(again, recipe, tmp_path, {}, log=quiet)[2] and again.runs == 0


def test_a_large_file_is_checked_by_size_only_on_reuse(recipe: Recipe, tmp_path: Path) -> None:
    """Reusing a 400 MB teacher must not read it: same-size edits of large files are not looked for."""
    run_stage(FileStage(FILES), recipe, tmp_path, {}, log=quiet)
    weights = tmp_path / "fake" / "model" / "weights.bin"
    weights.write_bytes(bytes(len(FILES["model/weights.bin"])))
    stage = FileStage(FILES)
    assert run_stage(stage, recipe, tmp_path, {}, log=quiet)[2] and stage.runs == 0


@pytest.mark.parametrize("fields", [("file_checks",), ("file_checks", "files")])
def test_a_stage_json_from_before_file_checks_is_still_reused(
    fields: tuple[str, ...], recipe: Recipe, tmp_path: Path
) -> None:
    run_stage(FileStage(FILES), recipe, tmp_path, {}, log=quiet)
    path = tmp_path / "fake" / "stage.json"
    record = json.loads(path.read_text())
    for field in fields:
        del record[field]
    path.write_text(json.dumps(record))
    stage = FileStage(FILES)
    assert run_stage(stage, recipe, tmp_path, {}, log=quiet)[2] and stage.runs == 0


def test_a_damaged_interrupted_swap_is_run_again_not_moved_into_place(recipe: Recipe, tmp_path: Path) -> None:
    run_stage(FileStage(FILES), recipe, tmp_path, {}, log=quiet)
    os.replace(
        tmp_path / "fake", tmp_path / ".fake.partial"
    )  # killed before the rename, then a file lost data
    damage_big_file(tmp_path / ".fake.partial")
    stage = FileStage(FILES)
    logs: list[str] = []
    _, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=logs.append)
    assert not skipped and stage.runs == 1
    assert any("is damaged" in line for line in logs), logs
    assert (tmp_path / "fake" / "model" / "weights.bin").read_bytes() == FILES["model/weights.bin"]


# ----------------------------------------------------------------------------------------------------------
# A run folder inside the data folder


class DataReadingStage(StageBase):
    name = "reader"
    folder = "reader"
    needs: tuple[str, ...] = ()

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runs = 0

    def params(self, recipe: Any) -> dict[str, Any]:
        return {"data_files": fingerprint_path(str(self.data_dir))}

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        self.runs += 1
        (out_dir / "rows.txt").write_text((self.data_dir / "train.jsonl").read_text())
        return StageResult()


def legacy_fingerprint(folder: Path) -> list[tuple[str, int, str]]:
    """fingerprint_path as it was before run folders were left out: what existing keys were made from."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [
        (str(p.relative_to(folder)), p.stat().st_size, edgekd.stages.runner.file_digest(p)) for p in files
    ]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "extra").mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"text": "x", "label": "a"}\n')
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "extra" / ".hidden").write_text("kept: not edgekd's")
    return folder


def test_a_run_folder_inside_the_data_folder_is_cached_and_resumed(recipe: Recipe, data: Path) -> None:
    run_dir = data / "runs" / "x"
    first = DataReadingStage(data)
    key, _, _ = run_stage(first, recipe, run_dir, {}, log=quiet)
    (run_dir / RUN_FOLDER_MARKER).write_text("name: x\n")  # what compress writes next to the stages
    again = DataReadingStage(data)
    same, _, skipped = run_stage(again, recipe, run_dir, {}, log=quiet)
    assert (same, skipped, again.runs) == (key, True, 0)

    # an interrupted run's partial folder (inside the data too) is resumed, not cleared
    partial = run_dir / ".reader.partial"
    partial.mkdir()
    (partial / ".key").write_text(key)
    (partial / "checkpoint.bin").write_bytes(b"work")
    logs: list[str] = []
    run_stage(DataReadingStage(data), recipe, run_dir, {}, force=False, log=logs.append)  # cached: untouched
    shutil.rmtree(run_dir / "reader")
    run_stage(DataReadingStage(data), recipe, run_dir, {}, log=logs.append)
    assert any("resuming from the interrupted run" in line for line in logs), logs


def test_the_data_fingerprint_leaves_out_run_folders_only(tmp_path: Path, data: Path) -> None:
    before = fingerprint_path(str(data))
    assert before == legacy_fingerprint(data), "a folder without a run folder keeps its fingerprint"
    other_run = data / "runs" / "other"
    (other_run / "teacher").mkdir(parents=True)
    (other_run / RUN_FOLDER_MARKER).write_text("name: other\n")
    (other_run / "teacher" / "model.bin").write_bytes(b"w" * 100)
    assert fingerprint_path(str(data)) == before
    current = data / "out"  # the run being keyed, before compress wrote anything into it
    (current / ".teacher.partial").mkdir(parents=True)
    (current / ".teacher.partial" / "x").write_text("y")
    with fingerprints_leaving_out(current):
        assert fingerprint_path(str(data)) == before
    assert fingerprint_path(str(data)) != before, "outside run_stage the folder is data like any other"


def test_stage_keys_of_folders_without_a_run_folder_are_unchanged(recipe: Recipe, tmp_path: Path) -> None:
    """A teacher trained before run folders were left out is still reused: same data fingerprint, same key."""
    assert recipe.data.path
    assert fingerprint_path(recipe.data.path) == legacy_fingerprint(Path(recipe.data.path))
    with fingerprints_leaving_out(tmp_path / "run"):
        inside = stage_key(TeacherStage(), recipe, {})
    assert inside == stage_key(TeacherStage(), recipe, {})


def test_a_disk_full_os_error_keeps_checkpoints_too(recipe: Recipe, tmp_path: Path, monkeypatch: Any) -> None:
    """The errno path (safetensors, json) keeps a complete checkpoint as torch's errno-less one does."""

    def run(self: Any, ctx: Any, out_dir: Path) -> Any:
        checkpoint = out_dir / "checkpoints" / "checkpoint-3"
        checkpoint.mkdir(parents=True)
        for name in edgekd.stages.runner.CHECKPOINT_FILES:
            (checkpoint / name).write_text("{}")
        (out_dir / "model").mkdir()
        (out_dir / "model" / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(TeacherStage, "run", run)
    with pytest.raises(ResourceError):
        run_stage(TeacherStage(), recipe, tmp_path, {}, log=quiet)
    partial = tmp_path / ".teacher.partial"
    assert complete_checkpoints(partial) == ["checkpoint-3"]
    assert not (partial / "model").exists()
