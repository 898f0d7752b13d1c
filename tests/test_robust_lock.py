"""Concurrent runs: one edgekd process per run folder; a second one gets exit 2 and a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.errors import RunLockedError
from edgekd.pipeline import run_lock

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"


def test_a_second_process_on_the_same_folder_gets_exit_2(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir):
        assert (run_dir / ".lock").read_text() == str(os.getpid())  # who holds it, for a curious user
        result = subprocess.run(
            [sys.executable, "-m", "edgekd.cli", "compress", str(SMOKE), "--output-dir", str(run_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: another edgekd process is running in {run_dir}" in result.stderr
    assert "hint: wait for it to finish, or use --output-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "the locked-out process wrote nothing"


def test_the_lock_is_released_after_the_run_and_after_an_error(tmp_path: Path) -> None:
    with run_lock(tmp_path), pytest.raises(RunLockedError), run_lock(tmp_path):
        pass  # a second holder, even in the same process (flock is per open file), is refused
    with pytest.raises(ValueError), run_lock(tmp_path):
        raise ValueError("a failing run")
    with run_lock(tmp_path):
        pass  # free again
