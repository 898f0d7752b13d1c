"""Interrupted runs: a real `edgekd compress` killed with SIGKILL resumes where it stopped.

One run folder, three processes of the same command:

1. killed while the teacher is fine-tuning, once it has saved a checkpoint;
2. resumes the teacher from that checkpoint, finishes it, and is killed while distilling (after a checkpoint);
3. skips the finished teacher, resumes distillation from its checkpoint and completes the chain.

Stage-runner corner cases (a run killed during the final rename, a half-written checkpoint) are tested on
small fake stages and folders, without training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgekd.recipe.load import load_recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import (
    INVOCATION_FILE,
    is_complete_checkpoint,
    last_checkpoint,
    run_stage,
    start_invocation,
)

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
# Short, with several checkpoints per stage: on 160 train rows (5 steps per epoch) the teacher evaluates and
# saves every 2 steps, distillation once per epoch (every 5 steps); so each stage can be killed after its first
# checkpoint while it still has steps to go.
SETTINGS = [
    "data.limits.train=160",
    "data.limits.validation=32",
    "data.limits.test=40",
    "teacher.finetune.max_steps=6",
    # Six steps teach the teacher nothing; the run must go on past it to be killed in distillation.
    "teacher.min_gain_over_majority_pts=null",
    "distill.epochs=40",
    "distill.max_steps=15",
    "benchmark.latency_samples=5",
    "benchmark.warmup=1",
]
POLL_TIMEOUT_S = 300


def compress_command(run_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "edgekd.cli", "compress", str(SMOKE), "--output-dir", str(run_dir)]
    for setting in SETTINGS:
        command += ["--set", setting]
    return command


def start(run_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(
            compress_command(run_dir),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_after_checkpoint(process: subprocess.Popen[bytes], checkpoints: Path) -> Path:
    """SIGKILL the process group as soon as `checkpoints` holds a complete Trainer checkpoint."""
    pattern = f"{checkpoints.name}/checkpoint-*"
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        found = [path for path in sorted(checkpoints.glob("checkpoint-*")) if is_complete_checkpoint(path)]
        if found:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return found[0]
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {pattern} appeared")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"no {pattern} within {POLL_TIMEOUT_S}s")


@pytest.mark.e2e
def test_killed_runs_resume_from_their_checkpoints(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    first = start(run_dir, tmp_path / "1.log")
    kill_after_checkpoint(first, run_dir / ".teacher.partial" / "checkpoints")
    assert first.returncode == -signal.SIGKILL
    assert not (run_dir / "teacher" / "stage.json").exists(), "a killed stage must not look finished"

    second = start(run_dir, tmp_path / "2.log")
    kill_after_checkpoint(second, run_dir / ".distill.partial" / "checkpoints")
    log2 = (tmp_path / "2.log").read_text(errors="replace")
    assert "resuming training from checkpoint-" in log2, log2[-3000:]
    teacher = json.loads((run_dir / "teacher" / "stage.json").read_text())
    assert teacher["metrics"]["finetuned"]
    assert teacher["carried_over_s"] > 0, "the killed invocation's work up to its checkpoint counts"
    assert not (run_dir / "distill" / "stage.json").exists()

    third = subprocess.run(compress_command(run_dir), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[teacher] cached, skipped" in third.stderr
    assert "resuming training from checkpoint-" in third.stderr
    assert (run_dir / "report" / "report.json").is_file()
    assert not list(run_dir.glob(".*.partial")), "partial folders must be gone after a finished run"
    distill = json.loads((run_dir / "distill" / "stage.json").read_text())
    assert distill["metrics"]["epochs_run"] == pytest.approx(3.0)  # 15 steps of 5: the whole run, no more


# ----------------------------------------------------------------------------------------------------------
# Stage runner corner cases, on a fake stage


class CountingStage(StageBase):
    """Writes one file; counts how often it really ran."""

    name = "fake"
    folder = "fake"
    needs: tuple[str, ...] = ()

    def __init__(self, content: str = "v1") -> None:
        self.content = content
        self.runs = 0

    def params(self, recipe: Any) -> dict[str, Any]:
        return {"content": self.content}

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        self.runs += 1
        (out_dir / "artifact.txt").write_text(self.content)
        return StageResult(metrics={"content": self.content})


@pytest.fixture(scope="module")
def recipe() -> Any:
    return load_recipe(SMOKE)


def test_a_run_killed_during_the_final_rename_is_finished_not_redone(tmp_path: Path, recipe: Any) -> None:
    stage = CountingStage("v1")
    key, _, _ = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    # The state a kill between the two renames of the swap leaves: the finished folder parked at .fake.old,
    # the new complete folder still at .fake.partial.
    os.replace(tmp_path / "fake", tmp_path / ".fake.old")
    os.replace(tmp_path / ".fake.old", tmp_path / ".fake.partial")
    logs: list[str] = []
    again, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=logs.append)
    assert (again, skipped, stage.runs) == (key, True, 1)
    assert (tmp_path / "fake" / "artifact.txt").read_text() == "v1"
    assert any("finishing the interrupted run" in line for line in logs)
    assert not (tmp_path / ".fake.partial").exists()


def test_a_parked_previous_folder_is_restored(tmp_path: Path, recipe: Any) -> None:
    run_stage(CountingStage("v1"), recipe, tmp_path, {}, log=lambda _: None)
    os.replace(tmp_path / "fake", tmp_path / ".fake.old")  # killed right after parking the old folder
    stage = CountingStage("v1")
    _, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    assert skipped and stage.runs == 0
    assert not (tmp_path / ".fake.old").exists()


def test_a_stale_partial_of_another_key_is_cleared_and_force_starts_over(tmp_path: Path, recipe: Any) -> None:
    partial = tmp_path / ".fake.partial"
    partial.mkdir()
    (partial / ".key").write_text("some-other-key")
    (partial / "leftover.txt").write_text("x")
    run_stage(CountingStage("v2"), recipe, tmp_path, {}, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["artifact.txt", "stage.json"]
    assert "key" not in json.loads((tmp_path / "fake" / "stage.json").read_text())["files"]


def test_only_complete_checkpoints_are_resumed_from(tmp_path: Path) -> None:
    def checkpoint(step: int, files: tuple[str, ...]) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
        return folder

    complete = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
    checkpoint(5, complete)
    good = checkpoint(10, complete)
    half = checkpoint(15, ("model.safetensors",))  # killed while saving
    torn = checkpoint(20, complete)
    (torn / "trainer_state.json").write_text('{"global_st')  # killed while writing the state
    assert last_checkpoint(tmp_path) == str(good)
    assert not half.exists() and not torn.exists(), "incomplete checkpoints are removed"
    assert last_checkpoint(tmp_path / "missing") is None


def test_carried_over_time_counts_work_up_to_each_last_file_not_the_idle_gaps(tmp_path: Path) -> None:
    partial = tmp_path / ".fake.partial"
    partial.mkdir()
    assert start_invocation(partial) == 0.0  # a fresh folder
    now = time.time()
    # invocation 1 started 1000 s ago and wrote its last checkpoint 900 s ago (100 s of work), then died;
    # invocation 2 started 300 s ago and wrote its last checkpoint 250 s ago (50 s more), then died.
    (partial / INVOCATION_FILE).write_text(json.dumps({"started": now - 1000, "carried_s": 0.0}))
    checkpoint = partial / "checkpoint-1"
    checkpoint.write_text("x")
    os.utime(checkpoint, (now - 900, now - 900))
    assert start_invocation(partial) == pytest.approx(100.0, abs=1.0)
    (partial / INVOCATION_FILE).write_text(json.dumps({"started": now - 300, "carried_s": 100.0}))
    os.utime(checkpoint, (now - 250, now - 250))
    assert start_invocation(partial) == pytest.approx(150.0, abs=1.0)


def test_a_finished_stage_keeps_no_bookkeeping_files(tmp_path: Path, recipe: Any) -> None:
    _, record, _ = run_stage(CountingStage("v1"), recipe, tmp_path, {}, log=lambda _: None)
    assert record["carried_over_s"] == 0.0
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["artifact.txt", "stage.json"]


# ----------------------------------------------------------------------------------------------------------
# The shipped folder's record is kept beside it (`ships = True`, the quantize stage)


class ShippedStage(CountingStage):
    ships = True


def test_a_shipped_folders_record_is_kept_beside_it_and_reused(tmp_path: Path, recipe: Any) -> None:
    stage = ShippedStage("v1")
    key, record, _ = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["artifact.txt"]
    beside = json.loads((tmp_path / "fake.stage.json").read_text())
    assert beside == json.loads(json.dumps(record, default=str)) and beside["key"] == key
    # A file added to the folder later (the benchmark's model card) is no damage.
    (tmp_path / "fake" / "README.md").write_text("card")
    again, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    assert (again, skipped, stage.runs) == (key, True, 1)
    (tmp_path / "fake" / "artifact.txt").write_text("v2")  # damaged: the record beside still catches it
    _, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    assert not skipped and stage.runs == 2


def test_a_run_folder_from_before_keeps_being_reused_and_its_record_moves_out(
    tmp_path: Path, recipe: Any
) -> None:
    key, _, _ = run_stage(CountingStage("v1"), recipe, tmp_path, {}, log=lambda _: None)  # record inside
    (tmp_path / "fake.stage.json").write_text(json.dumps({"key": "an-older-run"}))  # a stale one beside
    stage = ShippedStage("v1")
    again, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    assert (again, skipped, stage.runs) == (key, True, 0), "the record inside wins: same key, reused"
    assert not (tmp_path / "fake" / "stage.json").exists()
    assert json.loads((tmp_path / "fake.stage.json").read_text())["key"] == key


def test_a_record_beside_a_deleted_folder_is_not_reused(tmp_path: Path, recipe: Any) -> None:
    stage = ShippedStage("v1")
    run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    shutil.rmtree(tmp_path / "fake")
    _, _, skipped = run_stage(stage, recipe, tmp_path, {}, log=lambda _: None)
    assert not skipped and (tmp_path / "fake" / "artifact.txt").is_file()
