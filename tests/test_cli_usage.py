"""The console script on usage errors and Ctrl-C: exit codes a script can trust, one `error:` and one `hint:` line.

Usage errors are the first thing a new user meets (a typo in an option), so they go through the installed
`edgekd` script itself, in a subprocess, exactly as a shell runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "edgekd"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300
    )


def assert_refused_with_a_hint(result: subprocess.CompletedProcess[str]) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    assert sum(line.startswith("  hint: ") for line in lines) == 1, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["compress", "--bogus", "x"],  # unknown option
        ["bogus"],  # unknown command
        [],  # no arguments at all
        ["compress"],  # missing argument
        ["predict", "somewhere", "--threads", "0", "text"],  # bad value
        ["benchmark", "somewhere", "--samples", "many", "--data", "x"],  # not a number
        ["validate", str(SMOKE), "--set"],  # option without its value
        ["compare", "a.json"],  # one of two arguments
    ],
    ids=[
        "unknown-option",
        "unknown-command",
        "no-arguments",
        "missing-argument",
        "bad-value",
        "not-a-number",
        "option-without-value",
        "missing-second-argument",
    ],
)
def test_usage_errors_exit_2_with_an_error_and_a_hint(args: list[str]) -> None:
    assert CONSOLE_SCRIPT.is_file(), "the package's console script is not installed"
    result = run_script(*args)
    assert_refused_with_a_hint(result)


def test_the_hint_of_a_usage_error_points_at_the_commands_help() -> None:
    result = run_script("compress", "--bogus", "x")
    assert "--bogus" in result.stderr
    assert "edgekd compress --help" in result.stderr


def test_version_and_help_still_exit_0() -> None:
    assert run_script("--version").returncode == 0
    assert run_script("compress", "--help").returncode == 0


def interrupt_when(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, timeout_s: float = 300
) -> int:
    """Send SIGINT (what Ctrl-C sends to the foreground process group) once `ready()` is true."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"ended (exit {process.returncode}) before it was ready:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"not ready within {timeout_s}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    return process.wait(timeout=120)


def start_script(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(
            [str(CONSOLE_SCRIPT), *args],
            cwd=REPO,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_ctrl_c_during_compress_exits_130_and_says_how_to_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "compress.log"
    process = start_script(["compress", str(SMOKE), "--output-dir", str(run_dir)], log)
    code = interrupt_when(process, (run_dir / ".teacher.partial").exists, log)
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]
    assert "Traceback" not in text
    assert "run the same command again to resume" in text
    assert not (run_dir / "teacher" / "stage.json").exists(), "an interrupted stage must not look finished"


def test_ctrl_c_during_benchmark_exits_130(tmp_path: Path, tiny_classifier_dir: Path, toy_data: Path) -> None:
    out_dir = tmp_path / "bench"
    log = tmp_path / "benchmark.log"
    args = ["benchmark", str(tiny_classifier_dir), "--data", str(toy_data), "--output-dir", str(out_dir)]
    process = start_script([*args, "--samples", "100000"], log)
    code = interrupt_when(process, lambda: "batch-1 requests" in log.read_text(errors="replace"), log)
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]
    assert "Traceback" not in text
    assert "interrupted" in text
