"""Numerical checks: a NaN or infinite loss stops training at once with the step number, and an ONNX export
that does not reproduce the PyTorch logits fails with the measured differences. Each is one error line and a
non-zero exit through the CLI, without a traceback.

The losses are made NaN with monkeypatch: the recipe schema rightly refuses learning rates large enough to
blow up training on its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgekd.cli.app import main

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
TINY = [
    "data.limits.train=64",
    "data.limits.validation=16",
    "data.limits.test=16",
    "teacher.finetune.max_steps=2",
    # Two steps teach the teacher nothing; these tests need the run to go on past it.
    "teacher.min_gain_over_majority_pts=null",
    "distill.max_steps=2",
    "benchmark.latency_samples=5",
]


def cli_args(run_dir: Path, *extra: str) -> list[str]:
    args = ["compress", str(SMOKE), "--output-dir", str(run_dir)]
    for setting in [*TINY, *extra]:
        args += ["--set", setting]
    return args


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run folder for the tests that need a trained teacher: whichever runs first trains it."""
    return tmp_path_factory.mktemp("numerics") / "run"


def error_lines(err: str) -> list[str]:
    """The CLI's error lines. A progress bar the failure interrupted may share the terminal line, so the
    error is taken from where it starts."""
    return [line[line.index("error: ") :] for line in re.split(r"[\r\n]", err) if "error: " in line]


def test_nan_loss_in_teacher_fine_tuning_stops_with_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import Trainer

    real_compute_loss = Trainer.compute_loss

    def nan_from_step_2(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_compute_loss(self, *args, **kwargs)
        if self.state.global_step < 1:
            return result
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    monkeypatch.setattr(Trainer, "compute_loss", nan_from_step_2)
    run_dir = tmp_path / "run"
    code = main(cli_args(run_dir, "teacher.finetune.max_steps=5"))
    err = capsys.readouterr().err
    assert code == 1
    assert error_lines(err) == ["error: the fine-tuning loss became nan at training step 2"]
    assert "hint: lower teacher.finetune.learning_rate" in err
    assert "Traceback" not in err
    assert not (run_dir / "teacher").exists() and not (run_dir / ".teacher.partial").exists()


def test_nan_loss_in_distillation_stops_with_the_step(
    shared_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import edgekd.stages.distill.trainer as distill

    real_loss = distill.distillation_loss

    def nan_loss(*args: Any, **kwargs: Any) -> Any:
        loss = real_loss(*args, **kwargs)
        return loss._replace(total=loss.total * float("inf") * 0)  # inf * 0 = nan, keeps the graph

    monkeypatch.setattr(distill, "distillation_loss", nan_loss)
    code = main(cli_args(shared_run))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = error_lines(err)
    # Counted from 1 like the teacher's message: the NaN comes at the very first step.
    assert line == "error: the distillation loss became nan at training step 1", line
    assert "hint: lower distill.learning_rate" in err
    assert (run_dir_teacher := shared_run / "teacher" / "stage.json").is_file(), run_dir_teacher
    assert not (shared_run / "distill").exists() and not (shared_run / ".distill.partial").exists()


@pytest.mark.slow
def test_onnx_parity_breach_fails_the_export_with_the_measured_difference(shared_run: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", *cli_args(shared_run, "export.atol=1e-15")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    measured = re.search(r"max abs diff (\d\.\d{3}e[-+]\d+) \(tolerance export\.atol = 1\.0e-15\)", line)
    assert measured, line
    assert 1e-15 < float(measured.group(1)) < 1e-2  # a real float32 rounding gap, far over the tolerance
    assert "argmax agreement" in line
    assert "hint: check the model for ops that export differently, or raise export.atol" in result.stderr
    assert (shared_run / "distill" / "stage.json").is_file()
    assert not (shared_run / "export").exists() and not (shared_run / ".export.partial").exists()
