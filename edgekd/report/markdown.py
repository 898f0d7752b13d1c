"""report.md: the human-readable sign-off page rendered from report.json (and the terminal summary rows)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekd.report.gates import CANDIDATE, MB, REFERENCE


def summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows for the terminal summary: variant, accuracy, size MB, p50 ms, p90 ms, speed-up, compression."""
    rows = []
    for v in report.get("variants", []):
        latency = v.get("latency_ms", {})
        rows.append(
            [
                str(v["name"]),
                _num(v.get("accuracy"), 4),
                _num(_mb(v.get("size_bytes")), 2),
                _num(latency.get("p50"), 3),
                _num(latency.get("p90"), 3),
                _times(v.get("speedup_p50")),
                _times(v.get("compression")),
            ]
        )
    return rows


def write_report_md(report: Mapping[str, Any], path: str | Path) -> None:
    """Write the sign-off page: verdict, setup, variants table, gates with PASS/FAIL, per-class F1, notes."""
    sections = [
        _verdict_section(report),
        _setup_section(report),
        _variants_section(report),
        _gates_section(report),
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


def _verdict_section(report: Mapping[str, Any]) -> str:
    gates = report.get("gates", [])
    failed = [g["name"] for g in gates if not g["passed"]]
    if not gates:
        verdict = "**Verdict: PASS** (no gates set: nothing was checked)"
    elif failed:
        verdict = f"**Verdict: FAIL**: {len(failed)} of {len(gates)} gates failed ({', '.join(failed)})"
    else:
        verdict = f"**Verdict: PASS**: all {len(gates)} gates passed"
    created = report.get("created_utc", "")
    lines = [
        f"# edgekd sign-off report: {report.get('recipe', '')}",
        "",
        verdict,
        "",
        f"edgekd {report.get('edgekd_version', '?')}" + (f", generated {created}" if created else ""),
    ]
    return "\n".join(lines)


def _setup_section(report: Mapping[str, Any]) -> str:
    env = report.get("environment", {})
    cpu = env.get("cpu", {})
    flags = [name for name, present in (cpu.get("flags") or {}).items() if present]
    versions = env.get("versions", {})
    libs = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    bench = report.get("benchmark", {})
    load = env.get("load_average")
    load_after = env.get("load_average_after")
    threads = env.get("threads") or {}
    lines = [
        "## Setup",
        "",
        f"- CPU: {cpu.get('model', '?')}; {cpu.get('logical_cores', '?')} logical cores, "
        f"{cpu.get('usable_cores', '?')} usable; flags: {', '.join(flags) or 'none of note'}",
        f"- Libraries: {libs or '?'}",
        f"- Python {env.get('python', '?')} on {env.get('platform', '?')}",
        f"- Load average (1/5/15 min) before: {', '.join(map(str, load)) if load else '?'}; "
        f"after: {', '.join(map(str, load_after)) if load_after else '?'}",
    ]
    others = env.get("other_processes_cores")
    if others:
        lines.append(
            f"- Cores used by other processes: {others.get('at_start', '?')} in the second before the benchmark, "
            f"{others.get('during', '?')} on average during it"
        )
    if threads:
        lines.append(
            f"- Threads: {threads.get('latency_threads')} for latency, "
            f"{threads.get('accuracy_threads') or threads.get('latency_threads')} for accuracy, "
            f"{threads.get('throughput_threads')} for throughput; inter-op {threads.get('inter_op_threads')}; "
            "ONNX Runtime spin-waiting off; worker environment "
            + ", ".join(f"{k}={v}" for k, v in (threads.get("worker_env") or {}).items())
        )
    if bench:
        lines += [
            f"- **Threads per model: {bench.get('threads')}** (intra-op; inter-op 1; a process per variant)",
            f"- Latency: batch 1, {bench.get('latency_samples')} test texts drawn with seed "
            f"{bench.get('seed')}, after {bench.get('warmup')} warm-up requests, in "
            f"{bench.get('interleaved_rounds', 1)} interleaved round(s) of {bench.get('round_size', '?')} "
            "requests (every model serves each round in turn, order rotated per round)",
            f"- Accuracy: all {bench.get('test_texts')} test texts, batch {bench.get('batch_size')}, "
            f"max_length {bench.get('max_length')}",
        ]
    return "\n".join(lines)


def _variants_section(report: Mapping[str, Any]) -> str:
    reference = report.get("reference", REFERENCE)
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
    for v in report.get("variants", []):
        latency = v.get("latency_ms", {})
        diff = v.get("accuracy_diff_vs_reference_pts") or {}
        rows.append(
            [
                f"`{v['name']}`",
                str(v.get("format", "")),
                _num(v.get("accuracy"), 4),
                _with_ci(diff.get("diff"), diff.get("ci95"), 2, signed=True),
                _num(v.get("macro_f1"), 4),
                _num(v.get("agreement_with_reference"), 4),
                _num(_mb(v.get("size_bytes")), 2),
                _times(v.get("compression")),
                f"{v['params']:,}" if isinstance(v.get("params"), int) else "–",
                _with_ci(latency.get("p50"), latency.get("p50_ci95"), 3),
                _num(latency.get("p90"), 3),
                _num(latency.get("p99"), 3),
                _num((v.get("latency_e2e_ms") or {}).get("p50"), 3),
                _num((v.get("tokenize_ms") or {}).get("p50"), 3),
                _times(v.get("speedup_p50")),
                _num(v.get("peak_rss_mb"), 1),
            ]
        )
    return "## Variants\n\n" + _table(header, rows)


def _gates_section(report: Mapping[str, Any]) -> str:
    gates = report.get("gates", [])
    title = f"## Gates ({report.get('candidate', CANDIDATE)} vs {report.get('reference', REFERENCE)})"
    if not gates:
        return f"{title}\n\nNo gates are set in the recipe."
    rows = [
        [
            f"`{g['name']}`",
            f"{g.get('comparison', '')} {g['limit']:.4g} {g.get('unit', '')}".strip(),
            f"{g['value']:.4g} {g.get('unit', '')}".strip(),
            "PASS" if g["passed"] else "**FAIL**",
            str(g.get("description", "")),
        ]
        for g in gates
    ]
    return f"{title}\n\n" + _table(["gate", "limit", "value", "result", "measured as"], rows)


def _sequence_length_section(report: Mapping[str, Any]) -> str:
    variants = [v for v in report.get("variants", []) if v.get("latency_by_length_ms")]
    if not variants:
        return ""
    lengths = sorted({row["tokens"] for v in variants for row in v["latency_by_length_ms"]})
    header = ["tokens", *(f"p50 ms `{v['name']}`" for v in variants)]
    rows = []
    for length in lengths:
        cells = []
        for v in variants:
            row = next((r for r in v["latency_by_length_ms"] if r["tokens"] == length), None)
            cells.append(_num(row["p50"], 3) if row else "–")
        rows.append([str(length), *cells])
    note = "Batch 1, token-exact inputs, capped at each model's position embeddings."
    return "## Latency by sequence length\n\n" + note + "\n\n" + _table(header, rows)


def _throughput_section(report: Mapping[str, Any]) -> str:
    variants = [v for v in report.get("variants", []) if v.get("throughput_texts_per_s")]
    if not variants:
        return ""
    batch_sizes = sorted({b for v in variants for b in v["throughput_texts_per_s"]}, key=int)
    header = ["variant", "threads", *(f"batch {b} texts/s" for b in batch_sizes), "peak RSS MB"]
    rows = [
        [
            f"`{v['name']}`",
            str(v.get("throughput_threads", "–")),
            *(_num(v["throughput_texts_per_s"].get(b), 1) for b in batch_sizes),
            _num(v.get("peak_rss_throughput_mb"), 1),
        ]
        for v in variants
    ]
    note = "Tokenization included, test texts in arrival order (padded to the longest of each batch)."
    return "## Throughput\n\n" + note + "\n\n" + _table(header, rows)


def _out_of_scope_section(report: Mapping[str, Any]) -> str:
    variants = [v for v in report.get("variants", []) if "out_of_scope_recall" in v]
    if not variants:
        return ""
    rows = [
        [f"`{v['name']}`", _num(v.get("in_scope_accuracy"), 4), _num(v.get("out_of_scope_recall"), 4)]
        for v in variants
    ]
    note = "In-scope accuracy: test rows of every other class. Out-of-scope recall: out-of-scope rows caught."
    return (
        "## Out of scope\n\n"
        + note
        + "\n\n"
        + _table(["variant", "in-scope accuracy", "out-of-scope recall"], rows)
    )


def _stage_times_section(report: Mapping[str, Any]) -> str:
    times = report.get("stage_times") or []
    if not times:
        return ""
    total = sum(t["wall_time_s"] for t in times)
    rows = [
        [
            f"`{t['stage']}`"
            + (f" (resumed: {t['carried_over_s']:.1f} s before)" if t.get("carried_over_s") else ""),
            f"{t['wall_time_s']:.1f}",
            f"{t['wall_time_s'] / total:.0%}" if total else "–",
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


def _student_budget_section(report: Mapping[str, Any]) -> str:
    budget = report.get("student_budget")
    if not budget:
        return ""
    rows = [
        [
            ("**" if i == budget["chosen"] else "") + f"layers {c['layers']}" + _prune_text(c.get("prune")),
            _num(c.get("int8_p50_ms"), 2),
            _times(c.get("predicted_speedup_p50")),
        ]
        for i, c in enumerate(budget.get("candidates", []))
    ]
    note = (
        f"`student.budget` timed each candidate (INT8, batch 1, {budget.get('threads')} thread(s), "
        f"{budget.get('texts')} validation texts) against the teacher ({_num(budget.get('teacher_p50_ms'), 1)} ms) "
        f"before distilling and chose the first to reach {_times(budget.get('needed_speedup'))} (in bold). "
        f"Predicted speed-up {_times(budget.get('predicted_speedup_p50'))}; measured by this benchmark "
        f"{_times(budget.get('measured_speedup_p50'))}."
    )
    return (
        "## Student size chosen for the speed gate\n\n"
        + note
        + "\n\n"
        + _table(["candidate", "INT8 p50 ms", "predicted speed-up"], rows)
    )


def _prune_text(prune: Mapping[str, Any] | None) -> str:
    if not prune:
        return ""
    return f", FFN {prune.get('ffn_keep'):g}, heads {prune.get('heads_keep'):g}"


def _per_class_section(report: Mapping[str, Any]) -> str:
    variants = [v for v in report.get("variants", []) if v.get("per_class")]
    if not variants:
        return ""
    labels = list(variants[0]["per_class"])
    header = ["class", "support", *(f"F1 `{v['name']}`" for v in variants)]
    rows = []
    for label in labels:
        support = variants[0]["per_class"][label].get("support")
        cells = [_num(v["per_class"].get(label, {}).get("f1"), 3) for v in variants]
        rows.append([str(label), str(support), *cells])
    return "## Per-class F1\n\n" + _table(header, rows)


def _notes_section(report: Mapping[str, Any]) -> str:
    lines = [
        "## How to read this",
        "",
        "- **Latency** (`p50/p90/p99 ms`) is the model call alone, one request at a time, timed per request "
        "with `time.perf_counter_ns`; **tokenize** is the tokenizer alone and **e2e** the sum of both. "
        "The p50 CI is a bootstrap 95% interval of the median.",
        "- **Speed-up** and **compression** are the reference's p50 latency and size divided by the "
        "variant's.",
        "- **Size** counts the files a deployment ships (weights, config, tokenizer); MB = 10^6 bytes. "
        "**Params** are read from file headers (ONNX: stored initializers, quantized ones included).",
        "- **Δ acc** is the variant's accuracy minus the reference's on the same test texts, with a paired "
        "bootstrap 95% interval; **agreement** is the share of texts where both predict the same class.",
        "- **Peak RSS** is the worker process's peak resident memory after loading the model and serving the "
        "batch-1 requests; it includes the runtime itself (torch + transformers for PyTorch variants).",
    ]
    warnings = report.get("warnings") or []
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


def _with_ci(value: Any, ci: Any, digits: int, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if isinstance(ci, list | tuple) and len(ci) == 2:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text
