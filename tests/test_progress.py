"""What long work shows: labelled progress lines with counts and ETA, evaluations, early stops; no raw dicts."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from edgekd import progress
from edgekd.progress import TaskProgress, format_duration, track, training_progress_callback


def capture(monkeypatch) -> io.StringIO:
    """Route edgekd.progress's stderr console into a buffer that is not a terminal (log-file mode)."""
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=buffer, force_terminal=False, width=200))
    return buffer


def test_durations_read_as_people_write_them() -> None:
    assert format_duration(4.2) == "4s"
    assert format_duration(185) == "3m 05s"
    assert format_duration(7440) == "2h 04m"


def test_a_log_file_gets_a_line_per_tenth_of_the_work_then_a_summary(monkeypatch) -> None:
    buffer = capture(monkeypatch)
    assert list(track(range(50), 50, "teacher logits (train)", "batches")) == list(range(50))
    lines = buffer.getvalue().splitlines()
    progress_lines = [line for line in lines if "(" in line and "%)" in line]
    assert len(progress_lines) == 9  # 10%..90%; the summary replaces 100%
    assert progress_lines[0].startswith("edgekd teacher logits (train): 5/50 batches (10%)")
    assert "eta" in progress_lines[0]
    assert lines[-1].startswith("edgekd teacher logits (train): 50/50 batches in ")


def test_a_terminal_gets_a_bar_with_counts(monkeypatch) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    task = TaskProgress("student distillation", 4, "steps", console=console)
    task.advance_to(2, "loss 0.5000")
    task.close()
    assert "student distillation" in buffer.getvalue()
    assert "2/4" in buffer.getvalue()


def trainer_state(step: int, max_steps: int, epoch: float = 0.5) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=max_steps, epoch=epoch, is_world_process_zero=True)


def test_training_shows_evaluations_the_best_accuracy_and_an_early_stop(monkeypatch) -> None:
    buffer = capture(monkeypatch)
    callback = training_progress_callback("teacher fine-tuning")
    callback.on_train_begin(None, trainer_state(0, 100), None)
    for step in range(1, 41):
        callback.on_step_end(None, trainer_state(step, 100), None)
        callback.on_log(None, trainer_state(step, 100), None, logs={"loss": 1.0 / step})
    callback.on_evaluate(None, trainer_state(20, 100), None, metrics={"eval_accuracy": 0.9, "eval_loss": 0.3})
    callback.on_evaluate(None, trainer_state(40, 100), None, metrics={"eval_accuracy": 0.8, "eval_loss": 0.4})
    callback.on_train_end(None, trainer_state(40, 100), None)
    text = buffer.getvalue()
    assert "teacher fine-tuning: 10/100 steps (10%)" in text
    assert "validation accuracy 0.8000 (best 0.9000)" in text
    assert "stopped early at step 40 of 100" in text
    assert "best validation accuracy 0.9000" in text
    assert "{'loss'" not in text


def test_other_processes_of_a_distributed_run_stay_quiet(monkeypatch) -> None:
    buffer = capture(monkeypatch)
    callback = training_progress_callback("teacher fine-tuning")
    state = trainer_state(0, 10)
    state.is_world_process_zero = False
    callback.on_train_begin(None, state, None)
    callback.on_step_end(None, trainer_state(5, 10), None)
    callback.on_train_end(None, trainer_state(10, 10), None)
    assert buffer.getvalue() == ""
