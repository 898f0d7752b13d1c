"""report.md: the human-readable sign-off page rendered from report.json (and the terminal summary rows)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekd.report.gates import (
    CANDIDATE,
    GATE_COLUMNS,
    MB,
    REFERENCE,
    RUN_TO_RUN_DRIFT,
    gate_cells,
    verdict_summary,
)
from edgekd.report.schema import BudgetPrune, Environment, Report, as_report


def summary_rows(report: Report | Mapping[str, Any]) -> list[list[str]]:
    """Rows for the terminal summary: variant, accuracy, size MB, p50 ms, p90 ms, speed-up, compression."""
    rows = []
    for v in as_report(report).variants:
        latency = v.latency_ms
        rows.append(
            [
                v.name,
                _num(v.accuracy, 4),
                _num(_mb(v.size_bytes), 2),
                _num(latency.p50 if latency else None, 3),
                _num(latency.p90 if latency else None, 3),
                _times(v.speedup_p50),
                _times(v.compression),
            ]
        )
    return rows


def write_report_md(report: Report | Mapping[str, Any], path: str | Path) -> None:
    """Write the sign-off page: verdict, setup, variants table, gates with PASS/FAIL, per-class F1, notes."""
    report = as_report(report)
    sections = [
        _verdict_section(report),
        _setup_section(report),
        _variants_section(report),
        _gates_section(report),
        _signed_files_section(report),
        _out_of_scope_section(report),
        _stage_times_section(report),
        _student_budget_section(report),
        _sequence_length_section(report),
        _throughput_section(report),
        _per_class_section(report),
        _notes_section(report),
    ]
    text = "\n\n".join(s for s in sections if s).rstrip() + "\n"
    Path(path).write_text(text, encoding="utf-8")


def _verdict_section(report: Report) -> str:
    headline, detail = verdict_summary(report)
    verdict = f"**Verdict: {headline}**: {detail}"
    created = report.created_utc or ""
    lines = [
        f"# edgekd sign-off report: {report.recipe or ''}",
        "",
        verdict,
        "",
        f"edgekd {_or(report.edgekd_version)}" + (f", generated {created}" if created else ""),
    ]
    judged_by = reference_report_line(report)
    return "\n".join(lines + (["", judged_by] if judged_by else []))


def reference_report_line(report: Report) -> str | None:
    """A device run's (`edgekd benchmark --reference`) one line on the report it was judged against."""
    ref = report.reference_report
    if ref is None:
        return None
    made = ", ".join(
        part
        for part in (
            f"recipe `{ref.recipe}`" if ref.recipe else "",
            f"generated {ref.created_utc}" if ref.created_utc else "",
            f"measured on {ref.machine}" if ref.machine else "",
        )
        if part
    )
    return (
        f"**Judged against the reference report** `{ref.path}` (sha256 `{ref.sha256[:16]}`; {made}): the "
        f"`{ref.reference}` row is copied from it, not measured here, and the gates are its gates; speed-up "
        f"and compression divide its `{ref.reference}` figures by this machine's."
    )


def _setup_section(report: Report) -> str:
    return "\n".join(["## Setup", "", *(f"- {item}" for item in setup_items(report))])


def setup_items(report: Report) -> list[str]:
    """The machine and the measuring setup, one item per line (report.md and report.html list the same)."""
    env = report.environment
    cpu = env.cpu
    flags = [name for name, present in cpu.flags.items() if present]
    libs = ", ".join(f"{name} {version}" for name, version in env.versions.items() if version)
    bench = report.benchmark
    load = env.load_average
    load_after = env.load_average_after
    threads = env.threads
    items = [
        f"CPU: {_or(cpu.model)}; {_or(cpu.logical_cores)} logical cores, "
        f"{_or(cpu.usable_cores)} usable; flags: {', '.join(flags) or 'none of note'}",
        *machine_lines(env),
        f"Libraries: {libs or '?'}",
        f"Python {_or(env.python)} on {_or(env.platform)}",
        f"Load average (1/5/15 min) before: {', '.join(map(str, load)) if load else '?'}; "
        f"after: {', '.join(map(str, load_after)) if load_after else '?'}",
    ]
    others = env.other_processes_cores
    if others:
        items.append(
            f"Cores used by other processes: {_or(others.at_start)} in the second before the benchmark, "
            f"{_or(others.during)} on average during it"
        )
    if threads:
        items.append(
            f"Threads: {threads.latency_threads} for latency, "
            f"{threads.accuracy_threads or threads.latency_threads} for accuracy, "
            f"{threads.throughput_threads} for throughput; inter-op {threads.inter_op_threads}; "
            "ONNX Runtime spin-waiting off; worker environment "
            + ", ".join(f"{k}={v}" for k, v in threads.worker_env.items())
        )
    if bench.model_fields_set or bench.model_extra:
        items += [
            f"Threads per model: {bench.threads} (intra-op; inter-op 1; a process per variant)",
            f"Latency: batch 1, {bench.latency_samples} test texts drawn with seed "
            f"{bench.seed}, after {bench.warmup} warm-up requests, in "
            f"{bench.interleaved_rounds or 1} interleaved round(s) of {_or(bench.round_size)} "
            "requests (every model serves each round in turn, order rotated per round)",
            f"Accuracy: all {bench.test_texts} test texts, batch {bench.batch_size}, "
            f"max_length {bench.max_length}",
        ]
    return items


def machine_lines(env: Environment) -> list[str]:
    """What report.md and report.html say about the CPU and the host beyond its model name and cores:
    identification numbers, clocks, caches, RAM, virtualization and OS, leaving out what is unknown."""
    cpu = env.cpu
    if cpu.family is not None:
        identity = (
            f"{cpu.vendor or 'x86'} family {cpu.family} model {_or(cpu.model_number)} "
            f"stepping {_or(cpu.stepping)}"
        )
    elif cpu.implementer or cpu.part:
        identity = (
            f"{cpu.vendor or 'Arm'} implementer {_or(cpu.implementer)} part {_or(cpu.part)} "
            f"variant {_or(cpu.variant)} revision {_or(cpu.revision)}"
        )
    else:
        identity = cpu.vendor or ""
    clocks = ", ".join(
        f"{name} {mhz / 1000:.2f} GHz" for name, mhz in (("base", cpu.base_mhz), ("max", cpu.max_mhz)) if mhz
    )
    caches = ", ".join(f"{name} {_kib(kib)}" for name, kib in (cpu.caches_kib or {}).items())
    details = [
        identity,
        clocks,
        f"governor {cpu.governor}" if cpu.governor else "",
        f"caches {caches}" if caches else "",
    ]
    lines = [f"CPU details: {'; '.join(d for d in details if d)}"] if any(details) else []
    host = [f"{env.memory_total_mb / 1000:.1f} GB RAM" if env.memory_total_mb else ""]
    virt = env.virtualization
    if virt:
        named = " ".join(x for x in (virt.hypervisor, virt.sys_vendor, virt.product_name) if x)
        kind = {True: "virtual machine", False: "no hypervisor flag", None: ""}[virt.guest]
        host.append(f"{kind or 'machine'}: {named}" if named else kind)
    system = env.os
    if system:
        kernel = f"{system.system or 'kernel'} {system.kernel}" if system.kernel else ""
        host.append(", ".join(x for x in (system.distro, kernel) if x))
    if any(host):
        lines.append(f"Host: {'; '.join(h for h in host if h)}")
    return lines


def _kib(kib: int) -> str:
    return f"{kib / 1024:g} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"


def _variants_section(report: Report) -> str:
    reference = report.reference or REFERENCE
    header = [
        "variant",
        "format",
        "accuracy",
        f"Δ acc vs {reference} pts (95% CI)",
        "macro-F1",
        f"agreement w/ {reference}",
        "size MB",
        "compression",
        "params",
        "p50 ms (95% CI)",
        "p90 ms",
        "p99 ms",
        "e2e p50 ms",
        "tokenize p50 ms",
        "speed-up p50",
        "peak RSS MB",
    ]
    rows = []
    for v in report.variants:
        latency = v.latency_ms
        diff = v.accuracy_diff_vs_reference_pts
        rows.append(
            [
                f"`{v.name}`",
                v.format or "",
                _num(v.accuracy, 4),
                _with_ci(diff.diff, diff.ci95, 2, signed=True) if diff else "–",
                _num(v.macro_f1, 4),
                _num(v.agreement_with_reference, 4),
                _num(_mb(v.size_bytes), 2),
                _times(v.compression),
                f"{v.params:,}" if v.params is not None else "–",
                _with_ci(latency.p50, latency.p50_ci95, 3) if latency else "–",
                _num(latency.p90 if latency else None, 3),
                _num(latency.p99 if latency else None, 3),
                _num(v.latency_e2e_ms.p50 if v.latency_e2e_ms else None, 3),
                _num(v.tokenize_ms.p50 if v.tokenize_ms else None, 3),
                _times(v.speedup_p50),
                _num(v.peak_rss_mb, 1),
            ]
        )
    return "## Variants\n\n" + _table(header, rows)


GATES_NOTE = (
    "A verdict is INCONCLUSIVE when the value's 95% interval straddles the limit: the same files could "
    "pass or fail on another run; measure again with the suggested batch-1 requests per model. Timing "
    f"intervals reach at least {RUN_TO_RUN_DRIFT:.0%} either side of the value (run-to-run drift): "
    "a timing value that close to "
    "its limit stays inconclusive at any count. Accuracy and size against a fixed limit are judged on the "
    "value (a fixed test set gives the same value on every run); their interval, where shown, is for "
    "information."
)


def _gates_section(report: Report) -> str:
    gates = report.gates
    title = f"## Gates ({report.candidate or CANDIDATE} vs {report.reference or REFERENCE})"
    if not gates:
        return f"{title}\n\nNo gates are set in the recipe."
    rows = []
    for g in gates:
        name, limit, value, ci, verdict, how = gate_cells(g)
        # FAIL in bold, INCONCLUSIVE in italics: neither reads as a PASS at a glance.
        shown = {"fail": f"**{verdict}**", "inconclusive": f"_{verdict}_"}.get(g.verdict, verdict)
        rows.append([f"`{name}`", limit, value, ci, shown, how])
    return f"{title}\n\n" + _table(GATE_COLUMNS, rows) + "\n\n" + GATES_NOTE


def _sequence_length_section(report: Report) -> str:
    by_length = {v.name: v.latency_by_length_ms for v in report.variants if v.latency_by_length_ms}
    if not by_length:
        return ""
    lengths = sorted({row.tokens for rows in by_length.values() for row in rows})
    header = ["tokens", *(f"p50 ms `{name}`" for name in by_length)]
    rows = []
    for length in lengths:
        cells = []
        for measured in by_length.values():
            row = next((r for r in measured if r.tokens == length), None)
            cells.append(_num(row.p50, 3) if row else "–")
        rows.append([str(length), *cells])
    note = "Batch 1, token-exact inputs, capped at each model's position embeddings."
    return "## Latency by sequence length\n\n" + note + "\n\n" + _table(header, rows)


def _throughput_section(report: Report) -> str:
    rates = {v.name: v.throughput_texts_per_s for v in report.variants if v.throughput_texts_per_s}
    if not rates:
        return ""
    batch_sizes = sorted({b for by_batch in rates.values() for b in by_batch}, key=int)
    header = ["variant", "threads", *(f"batch {b} texts/s" for b in batch_sizes), "peak RSS MB"]
    rows = [
        [
            f"`{v.name}`",
            str(v.throughput_threads) if v.throughput_threads is not None else "–",
            *(_num(rates[v.name].get(b), 1) for b in batch_sizes),
            _num(v.peak_rss_throughput_mb, 1),
        ]
        for v in report.variants
        if v.name in rates
    ]
    note = "Tokenization included, test texts in arrival order (padded to the longest of each batch)."
    return "## Throughput\n\n" + note + "\n\n" + _table(header, rows)


def _out_of_scope_section(report: Report) -> str:
    variants = [v for v in report.variants if v.out_of_scope_scored]
    if not variants:
        return ""
    rows = [[f"`{v.name}`", _num(v.in_scope_accuracy, 4), _num(v.out_of_scope_recall, 4)] for v in variants]
    note = "In-scope accuracy: test rows of every other class. Out-of-scope recall: out-of-scope rows caught."
    return (
        "## Out of scope\n\n"
        + note
        + "\n\n"
        + _table(["variant", "in-scope accuracy", "out-of-scope recall"], rows)
    )


def _stage_times_section(report: Report) -> str:
    times = report.stage_times or []
    if not times:
        return ""
    total = sum(t.wall_time_s for t in times)
    rows = [
        [
            f"`{t.stage}`" + (f" (resumed: {t.carried_over_s:.1f} s before)" if t.carried_over_s else ""),
            f"{t.wall_time_s:.1f}",
            f"{t.wall_time_s / total:.0%}" if total else "–",
        ]
        for t in times
    ]
    rows.append(["**total**", f"{total:.1f} ({total / 60:.1f} min)", "100%"])
    note = (
        "Wall time of each stage when it ran (a cached stage keeps the time of the run that made it; a stage "
        "resumed after an interruption adds its earlier invocations' work up to their last checkpoint); "
        "the benchmark's own time is in `stage.json` next to this report."
    )
    return "## Where the time went\n\n" + note + "\n\n" + _table(["stage", "seconds", "share"], rows)


def _signed_files_section(report: Report) -> str:
    """The candidate's files with their sha256: the bytes this verdict is about."""
    candidate = report.variant(report.candidate) if report.candidate else None
    if candidate is None or not candidate.files:
        return ""
    rows = [[f"`{f.path}`", f"{f.bytes:,}", f"`{f.sha256}`"] for f in candidate.files]
    where = f" ({candidate.folder})" if candidate.folder else ""
    return f"## Files of `{candidate.name}`{where}\n\n" + _table(["file", "bytes", "sha256"], rows)


def _student_budget_section(report: Report) -> str:
    budget = report.student_budget
    if not budget:
        return ""
    rows = [
        [
            ("**" if i == budget.chosen else "") + f"layers {c.layers}" + _prune_text(c.prune),
            _num(c.int8_p50_ms, 2),
            _times(c.predicted_speedup_p50),
        ]
        for i, c in enumerate(budget.candidates)
    ]
    note = (
        f"`student.budget` timed each candidate (INT8, batch 1, {budget.threads} thread(s), "
        f"{budget.texts} validation texts) against the teacher ({_num(budget.teacher_p50_ms, 1)} ms) "
        f"before distilling and chose the first to reach {_times(budget.needed_speedup)} (in bold). "
        f"Predicted speed-up {_times(budget.predicted_speedup_p50)}; measured by this benchmark "
        f"{_times(budget.measured_speedup_p50)}."
    )
    return (
        "## Student size chosen for the speed gate\n\n"
        + note
        + "\n\n"
        + _table(["candidate", "INT8 p50 ms", "predicted speed-up"], rows)
    )


def _prune_text(prune: BudgetPrune | None) -> str:
    if not prune:
        return ""
    return f", FFN {prune.ffn_keep:g}, heads {prune.heads_keep:g}"


def _per_class_section(report: Report) -> str:
    scored = {v.name: v.per_class for v in report.variants if v.per_class}
    if not scored:
        return ""
    first = next(iter(scored.values()))
    header = ["class", "support", *(f"F1 `{name}`" for name in scored)]
    rows = []
    for label, scores in first.items():
        cells = [_num(s.f1 if (s := per_class.get(label)) else None, 3) for per_class in scored.values()]
        rows.append([str(label), str(scores.support), *cells])
    return "## Per-class F1\n\n" + _table(header, rows)


READING_NOTES = (
    "**Latency** (`p50/p90/p99 ms`) is the model call alone, one request at a time, timed per request "
    "with `time.perf_counter_ns`; **tokenize** is the tokenizer alone and **e2e** the sum of both. "
    "The p50 CI is a bootstrap 95% interval of the median.",
    "**Speed-up** and **compression** are the reference's p50 latency and size divided by the variant's.",
    "**Size** counts the files a deployment ships (weights, config, tokenizer); MB = 10^6 bytes. "
    "**Params** are read from file headers (ONNX: stored initializers, quantized ones included).",
    "**Δ acc** is the variant's accuracy minus the reference's on the same test texts, with a paired "
    "bootstrap 95% interval; **agreement** is the share of texts where both predict the same class.",
    "**Peak RSS** is the worker process's peak resident memory after loading the model and serving the "
    "batch-1 requests; it includes the runtime itself (torch + transformers for PyTorch variants).",
)
"""The "How to read this" bullets (markdown: **bold** and `code`), shared with report.html."""


def _notes_section(report: Report) -> str:
    lines = ["## How to read this", "", *(f"- {note}" for note in READING_NOTES)]
    warnings = report.warnings
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in warnings)]
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _mb(size_bytes: Any) -> float | None:
    return size_bytes / MB if isinstance(size_bytes, int | float) else None


def _num(value: Any, digits: int) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def _times(value: Any) -> str:
    text = _num(value, 2)
    return text if text == "–" else f"{text}x"


def _or(value: Any) -> str:
    """A value for the page, '?' where the report does not have it."""
    return "?" if value is None else str(value)


def _with_ci(value: Any, ci: Any, digits: int, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if isinstance(ci, list | tuple) and len(ci) == 2:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text
