"""What the terminal shows during long work: labelled progress with counts and ETA, on stderr.

On a terminal a rich progress bar redraws in place; in a log file (nohup, CI) the same facts come as a plain
line every tenth of the work, so a log read hours later still says how far a run got and how fast it went.
Training replaces the Trainer's own output (raw `{'loss': ...}` dicts on stdout and an unlabelled bar) with one
bar per training run and one line per evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")
LINES_PER_TASK = 10  # without a terminal: one line per tenth of the work

_console = Console(stderr=True, soft_wrap=True)


def say(message: str) -> None:
    """One log line on stderr, as the CLI's own lines look (`edgekd ...`)."""
    _console.print(Text("edgekd ", style="dim") + Text(message), highlight=False)


def format_duration(seconds: float) -> str:
    """4s, 3m 05s, 2h 04m: short enough for a progress line."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


class TaskProgress:
    """Progress of one counted task (`label`: what, `unit`: of what), as a bar or as periodic log lines."""

    def __init__(self, label: str, total: int, unit: str, console: Console | None = None) -> None:
        self.label = label
        self.total = max(0, total)
        self.unit = unit
        self.done = 0
        self.detail = ""
        self._console = console or _console
        self._start = time.monotonic()
        self._next_line = self._line_step()
        self._bar: Progress | None = None
        if self._console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self._console,
                transient=False,
            )
            self._task = self._bar.add_task(label, total=self.total, detail="")
            self._bar.start()

    def _line_step(self) -> int:
        return max(1, math.ceil(self.total / LINES_PER_TASK))

    def advance_to(self, done: int, detail: str = "") -> None:
        """Record that `done` of `total` are finished; `detail` is shown next to the count (e.g. the loss)."""
        self.done = min(done, self.total) if self.total else done
        self.detail = detail or self.detail
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, detail=self.detail)
        elif self.done >= self._next_line and self.done < self.total:
            self._next_line = (self.done // self._line_step() + 1) * self._line_step()
            self.log(self.status_line())

    def status_line(self) -> str:
        elapsed = time.monotonic() - self._start
        share = self.done / self.total if self.total else 1.0
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit} ({share:.0%})"]
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            parts.append(f"eta {format_duration((self.total - self.done) / rate)}")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)

    def log(self, message: str) -> None:
        """A line above the bar (or in the log): an evaluation, a note."""
        if self._bar is not None:
            self._bar.console.print(Text(message), highlight=False)
        else:
            say(message)

    def close(self) -> float:
        """Stop the bar; returns the seconds the task took."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        return time.monotonic() - self._start


def track(items: Iterable[T], total: int, label: str, unit: str) -> Iterator[T]:
    """Iterate `items` (`total` of them) with a labelled progress display; a summary line at the end."""
    progress = TaskProgress(label, total, unit)
    try:
        for done, item in enumerate(items, start=1):
            yield item
            progress.advance_to(done)
    finally:
        seconds = progress.close()
    say(f"{label}: {progress.done}/{total} {unit} in {format_duration(seconds)}")


def training_progress_callback(label: str) -> Any:
    """A `transformers.TrainerCallback` that shows training as `label` (e.g. "teacher fine-tuning").

    One bar over the optimizer steps with the latest training loss, one line per evaluation with the validation
    accuracy (and the best so far), and a closing line that says whether early stopping ended the run.
    """
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.progress: TaskProgress | None = None
            self.best: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.progress = TaskProgress(label, int(state.max_steps), "steps")
                self.progress.advance_to(int(state.global_step))  # a resumed run starts where it stopped

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress is not None:
                self.progress.advance_to(int(state.global_step))

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if self.progress is not None and logs and "loss" in logs:
                self.progress.detail = f"loss {float(logs['loss']):.4f}"

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
        ) -> None:
            if self.progress is None or not metrics or "eval_accuracy" not in metrics:
                return
            accuracy = float(metrics["eval_accuracy"])
            self.best = accuracy if self.best is None else max(self.best, accuracy)
            self.progress.log(
                f"{label}: step {state.global_step}/{state.max_steps}, epoch {float(state.epoch or 0):.2f}: "
                f"validation accuracy {accuracy:.4f} (best {self.best:.4f}), "
                f"loss {float(metrics.get('eval_loss', math.nan)):.4f}"
            )

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress is None:
                return
            seconds = self.progress.close()
            self.progress = None
            stopped_early = state.global_step < state.max_steps
            ending = (
                f"stopped early at step {state.global_step} of {state.max_steps} (no validation gain)"
                if stopped_early
                else f"{state.global_step} steps"
            )
            best = f", best validation accuracy {self.best:.4f}" if self.best is not None else ""
            say(f"{label}: {ending} in {format_duration(seconds)}{best}")

    return TrainingProgress()


def show_training_progress(trainer: Any, label: str) -> None:
    """Replace the Trainer's default output (dicts printed to stdout, an unlabelled tqdm bar) with ours."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(training_progress_callback(label))
