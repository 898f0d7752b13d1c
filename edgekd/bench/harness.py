"""The sign-off harness: measure any list of model folders the same way and write the report files.

Both `edgekd benchmark DIR ...` and the pipeline's benchmark stage call `benchmark_folders`, so a number in a
run's report and a number from the command line come from one code path.

How the measurements are taken:

* One persistent worker process per model (edgekd.bench.worker), started side by side and driven by JSON-line
  commands, each with the same thread budget (ONNX Runtime spin-waiting off, inter-op 1).
* Batch-1 latency over a seeded sample of the test texts, in interleaved rounds: every round hands the same
  chunk of requests to each worker in turn, in an order rotated per round, so machine drift hits every model
  alike.
* Latency against sequence length on token-exact inputs (16, 64, 128, 256 tokens, capped at what the model's
  position embeddings allow), interleaved the same way.
* The accuracy pass over the whole test split, then throughput (texts/s) at larger batch sizes, both on every
  core: predictions do not depend on the thread count, and on a 2-core machine the teacher's single-thread pass
  over 7,600 texts alone took 19 minutes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from edgekd.bench.envinfo import cpu_snapshot, environment, load_average, other_processes_cores
from edgekd.bench.inputs import (
    busy_after_warnings,
    check_labels,
    check_model_folder,
    check_names,
    check_settings,
    latency_sample_indices,
    max_length_warnings,
    other_processes_cores_now,
    setup_warnings,
    target_warnings,
    thread_settings,
)
from edgekd.bench.measure import measure_models, raw_record
from edgekd.bench.records import build_report, check_out_of_scope_label, describe, variant_records
from edgekd.bench.reference import (
    Reference,
    check_test_texts,
    digest_of_test_texts,
    file_warnings,
    gates_from_reference,
    with_reference_variant,
)
from edgekd.bench.spec import HarnessSettings, MeasuredModel, Measurements
from edgekd.errors import (
    InputError,
    ResourceError,
    RunLockedError,
    resource_error,
)
from edgekd.recipe.schema import DataSpec, GatesSpec
from edgekd.report.gates import SCOPE_GATES
from edgekd.report.markdown import write_report_md
from edgekd.report.schema import Report, StageTime, StudentBudget
from edgekd.stages.runner import acquire_or_refuse, write_json

# What a report folder holds; files of a previous report there are removed before a new one is written.
REPORT_FILES = ("report.json", "report.md", "report.html")
RAW_DIR = "raw"
LOCK_FILE = ".lock"


# ----------------------------------------------------------------------------------------------------------
# Entry point


def benchmark_folders(
    models: Sequence[MeasuredModel],
    data: DataSpec,
    out_dir: Path,
    settings: HarnessSettings = HarnessSettings(),
    gates: GatesSpec = GatesSpec(),
    *,
    title: str = "benchmark",
    candidate: str | None = None,
    training_logs: Mapping[str, Path] | None = None,
    relative_to: Path | None = None,
    stage_times: Sequence[Mapping[str, Any]] = (),
    student_budget: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    lock: bool = False,
    reference: Reference | None = None,
) -> Report:
    """Measure every model, compare each with the first, judge the candidate and write the report files.

    Everything that can be checked is checked before the first measurement: settings, the report folder,
    every model folder (ONNX graphs are loaded once and must give one output per class name) and the labels.

    Args:
        models: The folders to measure; the first is the reference.
        data: The dataset (its test split is measured); `settings.max_length` is the truncation used.
        out_dir: Where report.json, report.md, report.html and raw/<name>.json go (created if needed).
        settings: How to measure.
        gates: Limits the candidate must meet against the reference.
        title: The report's title (a recipe name, for a pipeline run).
        candidate: Name of the model the gates judge (default: the last one).
        training_logs: Stage name -> Trainer log_history.json, plotted in report.html when the file exists.
        relative_to: Model folders are shown relative to this folder in the report (when inside it).
        stage_times: For a pipeline run, the wall time of each stage before the benchmark (where the time went).
        student_budget: For a pipeline run with `student.budget`, the distill stage's record of the shapes it
            timed; the report sets its predicted speed-up beside the candidate's measured one.
        log: Where progress lines go.
        lock: Hold a lock on `out_dir` (its .lock file) from before the first measurement to the last file
            written, so that two benchmarks cannot mix their files in one folder (`edgekd benchmark`; a
            pipeline run holds the run folder's lock instead).
        reference: A device run's reference report (`edgekd benchmark --reference`): its reference variant
            heads the report instead of `models[0]`, and the test texts must be the ones it was measured on.

    Returns:
        The report (`Report.to_json()` is the content of report.json).

    Raises:
        InputError, DataError: A folder is not a model, the labels do not match, a setting is impossible, or
            the test texts are not the reference report's.
        RunLockedError: Another benchmark is writing into `out_dir` (with `lock`).
        ResourceError: `out_dir` cannot be written.
        StageError: A worker failed.
    """
    check_settings(settings, len(models))
    check_names([m.name for m in models] + ([reference.variant.name] if reference else []))
    candidate = candidate or models[-1].name
    if candidate not in {m.name for m in models}:
        raise InputError(
            f"the candidate {candidate!r} is not one of the measured models",
            hint=f"name one of: {', '.join(m.name for m in models)}",
        )
    check_output_dir(out_dir)
    labels = {model.name: check_model_folder(model.folder, model.format) for model in models}
    from edgekd.data import load_splits

    # Measuring finished models needs no train split; the reference model then names the classes.
    splits = load_splits(data, settings.seed, model_labels=labels[models[0].name])
    texts, gold = splits.texts("test"), splits.label_ids("test")
    digest = digest_of_test_texts(texts, gold)
    early_warnings = []
    if reference:
        early_warnings += check_test_texts(reference, digest, len(texts))
        gates, gate_warnings = gates_from_reference(reference, gates, [m.name for m in models])
        early_warnings += gate_warnings
    oos = check_out_of_scope_label(settings.out_of_scope_label, splits.labels)
    for model in models:
        check_labels(labels[model.name], splits.labels, model.name)
    check_scope_gates(gates, oos)
    latency_idx = latency_sample_indices(len(texts), settings.latency_samples, settings.seed)
    with report_folder_lock(out_dir) if lock else nullcontext():
        return _measure_and_report(
            models,
            out_dir,
            settings,
            gates,
            title=title,
            candidate=candidate,
            texts=texts,
            gold=gold,
            labels=splits.labels,
            latency_texts=[texts[i] for i in latency_idx],
            oos=oos,
            training_logs=training_logs or {},
            relative_to=relative_to,
            stage_times=stage_times,
            student_budget=student_budget,
            log=log,
            texts_digest=digest,
            reference=reference,
            early_warnings=early_warnings,
        )


def check_scope_gates(gates: GatesSpec, out_of_scope: int | None) -> None:
    """The in-scope / out-of-scope gates need the out-of-scope class.

    Raises:
        InputError: Such a gate is set without an out-of-scope label.
    """
    unscored = [name for name in SCOPE_GATES if getattr(gates, name) is not None and out_of_scope is None]
    if unscored:
        raise InputError(
            f"the gate {unscored[0]} needs the out-of-scope class",
            hint="name it with --out-of-scope-label (benchmark.out_of_scope_label in a recipe)",
        )


def _measure_and_report(
    models: Sequence[MeasuredModel],
    out_dir: Path,
    settings: HarnessSettings,
    gates: GatesSpec,
    *,
    title: str,
    candidate: str,
    texts: list[str],
    gold: list[int],
    labels: list[str],
    latency_texts: list[str],
    oos: int | None,
    training_logs: Mapping[str, Path],
    relative_to: Path | None,
    stage_times: Sequence[Mapping[str, Any]],
    student_budget: Mapping[str, Any] | None,
    log: Callable[[str], None],
    texts_digest: str,
    reference: Reference | None,
    early_warnings: list[str],
) -> Report:
    """The measuring and writing half of `benchmark_folders`, on inputs that were checked."""
    # Taken before the workers start, so they show what else the machine was doing.
    env = environment()
    env["other_processes_cores"] = {"at_start": other_processes_cores_now()}
    warnings = early_warnings + setup_warnings(env, settings.threads, len(texts), settings.latency_samples)
    warnings += [w for m in models if m.format == "onnx" for w in max_length_warnings(m, settings.max_length)]
    warnings += [w for m in models if m.format == "onnx" for w in target_warnings(m, env)]

    start = cpu_snapshot()
    measured = measure_models(models, texts, latency_texts, settings, log)
    env["other_processes_cores"]["during"] = other_processes_cores(start, cpu_snapshot())
    env["load_average_after"] = load_average()
    env["threads"] = thread_settings(settings, measured)
    warnings += busy_after_warnings(env)

    variants = variant_records(models, measured, gold, labels, relative_to, oos)
    if reference:
        variants = with_reference_variant(reference, variants)
        warnings += file_warnings(reference, next(v for v in variants if v.name == candidate))
    for record in variants:
        log(f"  {describe(record)}" + (" (from the reference report)" if record.source else ""))
    report = build_report(
        title, env, variants, settings, gates, len(texts), warnings, variants[0].name, candidate
    )
    report.benchmark.test_texts_sha256 = texts_digest
    if reference:
        report.reference_report = reference.describe()
    if stage_times:
        report.stage_times = [StageTime.model_validate(dict(t)) for t in stage_times]
    if student_budget:
        measured_speedup = next(v.speedup_p50 for v in variants if v.name == candidate)
        report.student_budget = StudentBudget.model_validate(
            {**student_budget, "measured_speedup_p50": measured_speedup}
        )
    write_report_files(report, measured, out_dir, training_logs)
    for warning in warnings:
        log(f"  warning: {warning}")
    return report


def write_report_files(
    report: Report,
    measured: Mapping[str, Measurements],
    out_dir: Path,
    training_logs: Mapping[str, Path],
) -> None:
    """report.json, report.md, report.html and raw/<name>.json (per-request latencies and predictions).

    The files of a previous report in `out_dir` are removed first, so that raw/ holds only this report's
    models; report.json is written last, so a folder with a report.json holds a whole report.

    Raises:
        ResourceError: The disk is full or the folder cannot be written.
        InputError: Another failure to write in `out_dir`.
    """
    from edgekd.report.html import read_training_logs, write_report_html

    with writing_report(out_dir):
        clear_previous_report(out_dir)
        raw_dir = out_dir / RAW_DIR
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name, result in measured.items():
            write_json(raw_dir / f"{name}.json", raw_record(result))
        write_report_md(report, out_dir / "report.md")
        write_report_html(report, out_dir / "report.html", read_training_logs(training_logs))
        write_json(out_dir / "report.json", report.to_json())


def clear_previous_report(out_dir: Path) -> None:
    """Remove the files an earlier report left in `out_dir` (only files a report writes; nothing else)."""
    for name in REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    raw_dir = out_dir / RAW_DIR
    if raw_dir.is_dir():
        for path in raw_dir.glob("*.json"):
            path.unlink()


@contextmanager
def writing_report(out_dir: Path, doing: str = "writing the benchmark report") -> Iterator[None]:
    """An OSError while writing in `out_dir` as one line: ResourceError (disk full, not writable), else
    InputError about the folder."""
    try:
        yield
    except OSError as exc:
        problem = resource_error(exc, out_dir, doing) or InputError(
            f"{doing} in {out_dir} failed: {exc.strerror or exc}",
            hint="choose another report folder with --output-dir",
        )
        raise problem from None


@contextmanager
def report_folder_lock(out_dir: Path) -> Iterator[None]:
    """Create `out_dir` and hold its lock: one benchmark per report folder, refused before it measures.

    Raises:
        RunLockedError: Another process holds the lock.
    """
    busy = RunLockedError(
        f"another edgekd benchmark is writing its report into {out_dir}",
        hint="wait for it to finish, or pass another folder with --output-dir",
    )
    with writing_report(out_dir, "creating the report folder and its lock"):
        out_dir.mkdir(parents=True, exist_ok=True)
        folder_lock = acquire_or_refuse(out_dir / LOCK_FILE, busy)
    try:
        yield
    finally:
        folder_lock.release()


def check_output_dir(out_dir: Path) -> None:
    """Refuse a report folder that cannot take the report, before anything is measured.

    Raises:
        InputError: `out_dir` (or a folder above it) is a file, or a name the report writes is taken by
            something of the other kind (a folder called report.json, a file called raw).
        ResourceError: The folder (or the nearest existing folder above it) cannot be written.
    """
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        where = "is a file" if existing == out_dir else f"is inside {existing}, which is a file"
        raise InputError(
            f"the report folder {out_dir} {where}", hint="pass a folder (new or existing) with --output-dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResourceError(
            f"{os.strerror(errno.EACCES).lower()}: the report folder {out_dir} cannot be written",
            hint=f"check the permissions of {existing}, or pass another folder with --output-dir",
        )
    if existing != out_dir:
        return
    taken = [out_dir / name for name in REPORT_FILES if (out_dir / name).is_dir()]
    if (out_dir / RAW_DIR).exists() and not (out_dir / RAW_DIR).is_dir():
        taken.append(out_dir / RAW_DIR)
    if taken:
        raise InputError(
            f"the report folder {out_dir} holds {taken[0].name} of the wrong kind "
            "(a folder where the report writes a file, or a file where it writes a folder)",
            hint=f"remove {taken[0]}, or pass another folder with --output-dir",
        )


# ----------------------------------------------------------------------------------------------------------
# Measuring


# ----------------------------------------------------------------------------------------------------------
# Inputs


# ----------------------------------------------------------------------------------------------------------
# Numbers


# ----------------------------------------------------------------------------------------------------------
# Command-line inputs (`edgekd benchmark`)
