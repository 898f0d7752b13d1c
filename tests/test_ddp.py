"""Two CPU processes (torchrun, gloo) run the smoke recipe: teacher and distill train with DDP, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"

# Every test here reads the one torchrun `compress` of the smoke recipe.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local port: other test sessions may run at the same time
        "--nproc_per_node",
        "2",
        "-m",
        "edgekd.cli",
        "compress",
        str(SMOKE),
        "--output-dir",
        str(run_dir),
        "--set",
        "teacher.finetune.epochs=2",
        # Two epochs of a tiny teacher split over two processes sometimes stay at chance (0.25): this test is
        # about the processes, not the teacher, so the learned-nothing check is off here.
        "--set",
        "teacher.min_gain_over_majority_pts=null",
        "--set",
        "distill.epochs=1",
        "--set",
        "benchmark.latency_samples=5",
        "--set",
        "benchmark.warmup=1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    return run_dir, result


def test_two_processes_run_the_recipe_to_the_end(ddp_run) -> None:
    run_dir, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "report" / "report.json").is_file()
    assert not list(run_dir.glob(".*.partial")) and not list(run_dir.glob(".*.old"))
    assert result.stdout.count("edgekd report") == 1, "only rank 0 prints the summary table"


def test_distill_trained_in_two_processes_and_wrote_its_files_once(ddp_run) -> None:
    run_dir, _ = ddp_run
    record = json.loads((run_dir / "distill" / "stage.json").read_text())
    assert record["metrics"]["world_size"] == 2
    assert 0.0 <= record["metrics"]["validation_accuracy"] <= 1.0
    files = {str(p.relative_to(run_dir / "distill")) for p in (run_dir / "distill").rglob("*") if p.is_file()}
    assert files == {"stage.json", *record["files"]}
    assert {"log_history.json", "model/model.safetensors", "model/config.json"} <= files
    assert len(list((run_dir / "cache").glob("teacher_logits-*.npy"))) == 2  # train + validation, once each
    assert not list((run_dir / "cache").glob("*.partial*"))


def test_one_process_reports_progress(ddp_run) -> None:
    _, result = ddp_run
    assert result.stderr.count("distilling into the student") == 1
    assert "2 processes" in result.stderr
