"""report.html: the sign-off report as one self-contained page, with charts drawn as inline SVG.

No network, no JavaScript, no plotting library: every chart is a few dozen SVG elements (edgekd/report/charts.py),
so the page opens anywhere (an air-gapped device, a CI artifact viewer) and adds no dependency. Each chart is an
`<svg>` with a stable id and a `<title>`, which is what tests and screen readers find.

Charts: accuracy against p50 latency with the Pareto front, size per model, latency distribution per model
(box plots), latency against sequence length, and, when the run folder has them, the teacher's and the
distillation's training curves (loss terms against step, eval accuracy against epoch).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekd.report.charts import (
    PALETTE,
    latency_box_chart,
    nice_ticks,
    pareto_chart,
    pareto_front,
    sequence_length_chart,
    size_chart,
    training_charts,
)
from edgekd.report.gates import GATE_COLUMNS, gate_cells, verdict_summary
from edgekd.report.markdown import GATES_NOTE, READING_NOTES, reference_report_line, setup_items
from edgekd.report.schema import Gate, Report, Variant, as_report

__all__ = ["nice_ticks", "pareto_front", "read_training_logs", "render_report_html", "write_report_html"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1360px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.15em; margin-top: 28px; }
.verdict { font-size: 1.2em; font-weight: 600; padding: 8px 12px; border-radius: 6px; display: inline-block; }
.pass { background: #e3f4e8; color: #17622f; } .fail { background: #fbe4e2; color: #9b1c13; }
.unchecked { background: #eeeeee; color: #333333; }
/* A wide table scrolls sideways inside the page (an 800 px screen) instead of running off it. */
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; } td { white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child, td:last-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #e4e4e4; border-radius: 6px; padding: 6px; background: #fff; }
figcaption { font-size: 0.82em; color: #555; max-width: 620px; padding: 2px 6px; }
svg text { font-family: system-ui, sans-serif; }
.muted { color: #666; font-size: 0.9em; }
svg.chart { max-width: 100%; height: auto; }
.warnings { background: #fff6dd; border: 1px solid #e8c65a; border-radius: 6px; padding: 2px 14px; margin: 10px 0; }
.warnings h2 { margin-top: 8px; font-size: 1.05em; }
table.files td:last-child, code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
@media print {
  body { max-width: none; margin: 0; padding: 0; font-size: 10pt; }
  /* A chart never splits from its caption; a heading stays with what follows it. */
  figure, .verdict, .warnings, tr { break-inside: avoid; page-break-inside: avoid; }
  h1, h2 { break-after: avoid; page-break-after: avoid; }
  .charts { display: block; } figure { margin: 0 0 10px; border: none; }
  table { display: table; overflow: visible; font-size: 8pt; } thead { display: table-header-group; }
  .verdict, .warnings, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


# ----------------------------------------------------------------------------------------------------------
# Entry points


def read_training_logs(paths: Mapping[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Trainer `log_history` lists by stage name, for the files that exist and are lists of objects."""
    logs = {}
    for stage, path in paths.items():
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, list):
            logs[stage] = [entry for entry in data if isinstance(entry, dict)]
    return logs


def write_report_html(
    report: Report | Mapping[str, Any],
    path: str | Path,
    training_logs: Mapping[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Write the self-contained report page."""
    Path(path).write_text(render_report_html(report, training_logs or {}), encoding="utf-8")


def render_report_html(
    report: Report | Mapping[str, Any], training_logs: Mapping[str, list[dict[str, Any]]]
) -> str:
    """The page as a string: verdict, tables, then the charts."""
    report = as_report(report)
    variants = report.variants
    colors = {v.name: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    charts = [
        _figure(
            pareto_chart(variants, colors),
            "Higher and further left is better; the line joins the models "
            "no other model beats on both accuracy and p50 latency.",
        ),
        _figure(size_chart(variants, colors), "Every file a deployment ships (weights, config, tokenizer)."),
        _figure(
            latency_box_chart(variants, colors),
            "Batch-1 model-call latency: box = p25..p75, line = p50, whiskers = p5..p95, dots = min and max.",
        ),
        _figure(
            sequence_length_chart(variants, colors),
            "Batch-1 p50 latency on token-exact inputs, capped at each model's position embeddings.",
        ),
    ]
    charts += [_figure(chart, caption) for chart, caption in training_charts(training_logs)]
    title = f"edgekd sign-off report: {report.recipe or ''}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        _verdict_html(report),
        _warnings_html(report.warnings),
        _reference_report_html(report),
        f"<p class='muted'>edgekd {_esc(_or(report.edgekd_version, '?'))}, generated "
        f"{_esc(_or(report.created_utc, '?'))}; reference <b>{_esc(_or(report.reference, ''))}</b>, "
        f"candidate <b>{_esc(_or(report.candidate, ''))}</b></p>",
        "<h2>Variants</h2>",
        _variants_table(variants, report.reference),
        "<h2>Gates</h2>",
        _gates_table(report.gates),
        f"<p class='muted'>{_esc(GATES_NOTE)}</p>" if report.gates else "",
        *_out_of_scope_html(report),
        "<h2>Charts</h2>",
        "<div class='charts'>" + "".join(c for c in charts if c) + "</div>",
        *_throughput_html(report),
        *_sequence_length_html(report),
        *_per_class_html(report),
        "<h2>Setup</h2>",
        _setup_html(report),
        *_signed_files_html(report),
        *_stage_times_html(report),
        *_student_budget_html(report),
        "<h2>How to read this</h2>",
        "<ul>" + "".join(f"<li>{_inline_md(note)}</li>" for note in READING_NOTES) + "</ul>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------------
# Tables and text


# INCONCLUSIVE in amber, neither the green of a pass nor the red of a fail (inline: the page's CSS is shared).
VERDICT_ATTRS = {
    "pass": "class='pass'",
    "fail": "class='fail'",
    "inconclusive": "style='background:#fff1c2;color:#6b4a00'",
}


def _verdict_html(report: Report) -> str:
    # NO GATES SET is not green: a page forwarded for sign-off must not look signed when nothing was checked.
    headline, detail = verdict_summary(report)
    kind = {"PASS": "verdict pass", "FAIL": "verdict fail", "INCONCLUSIVE": "verdict"}.get(
        headline, "verdict unchecked"
    )
    style = f" {VERDICT_ATTRS['inconclusive']}" if headline == "INCONCLUSIVE" else ""
    return f"<p class='{kind}'{style}>{_esc(headline)}: {_esc(detail)}</p>"


def _reference_report_html(report: Report) -> str:
    line = reference_report_line(report)
    return f"<p>{_inline_md(line)}</p>" if line else ""


def _warnings_html(warnings: Sequence[str]) -> str:
    """The warnings, next to the verdict: a busy machine or a wrong max_length changes what the verdict means."""
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return f"<section class='warnings'><h2>Warnings</h2><ul>{items}</ul></section>"


def _variants_table(variants: Sequence[Variant], reference: str | None) -> str:
    reference = reference or "reference"
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
    for v in variants:
        latency = v.latency_ms
        diff = v.accuracy_diff_vs_reference_pts
        rows.append(
            [
                v.name,
                v.format or "",
                _fmt(v.accuracy, 4),
                _with_ci(diff.diff, diff.ci95, 2, signed=True) if diff else "–",
                _fmt(v.macro_f1, 4),
                _fmt(v.agreement_with_reference, 4),
                _fmt(v.size_bytes / 1e6 if v.size_bytes is not None else None, 2),
                _fmt(v.compression, 2, "x"),
                f"{v.params:,}" if v.params is not None else "–",
                _with_ci(latency.p50, latency.p50_ci95, 3) if latency else "–",
                _fmt(latency.p90 if latency else None, 3),
                _fmt(latency.p99 if latency else None, 3),
                _fmt(v.latency_e2e_ms.p50 if v.latency_e2e_ms else None, 3),
                _fmt(v.tokenize_ms.p50 if v.tokenize_ms else None, 3),
                _fmt(v.speedup_p50, 2, "x"),
                _fmt(v.peak_rss_mb, 1),
            ]
        )
    return _table(header, rows)


def _gates_table(gates: Sequence[Gate]) -> str:
    if not gates:
        return "<p class='muted'>No gates are set.</p>"
    verdict_column = GATE_COLUMNS.index("verdict")
    rows = [
        "<tr>"
        + "".join(
            (f"<td {VERDICT_ATTRS.get(g.verdict, '')}>" if i == verdict_column else "<td>")
            + f"{_esc(cell)}</td>"
            for i, cell in enumerate(gate_cells(g))
        )
        + "</tr>"
        for g in gates
    ]
    head = "".join(f"<th>{_esc(h)}</th>" for h in GATE_COLUMNS)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _setup_html(report: Report) -> str:
    return "<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in setup_items(report)) + "</ul>"


def _out_of_scope_html(report: Report) -> list[str]:
    variants = [v for v in report.variants if v.out_of_scope_scored]
    if not variants:
        return []
    rows = [[v.name, _fmt(v.in_scope_accuracy, 4), _fmt(v.out_of_scope_recall, 4)] for v in variants]
    return [
        "<h2>Out of scope</h2>",
        "<p class='muted'>In-scope accuracy: test rows of every other class. Out-of-scope recall: out-of-scope "
        "rows caught.</p>",
        _table(["variant", "in-scope accuracy", "out-of-scope recall"], rows),
    ]


def _throughput_html(report: Report) -> list[str]:
    rates = {v.name: v.throughput_texts_per_s for v in report.variants if v.throughput_texts_per_s}
    if not rates:
        return []
    batch_sizes = sorted({b for by_batch in rates.values() for b in by_batch}, key=int)
    header = ["variant", "threads", *(f"batch {b} texts/s" for b in batch_sizes), "peak RSS MB"]
    rows = [
        [
            v.name,
            _or(v.throughput_threads, "–"),
            *(_fmt(rates[v.name].get(b), 1) for b in batch_sizes),
            _fmt(v.peak_rss_throughput_mb, 1),
        ]
        for v in report.variants
        if v.name in rates
    ]
    note = "Tokenization included, test texts in arrival order (padded to the longest of each batch)."
    return ["<h2>Throughput</h2>", f"<p class='muted'>{note}</p>", _table(header, rows)]


def _sequence_length_html(report: Report) -> list[str]:
    by_length = {v.name: v.latency_by_length_ms for v in report.variants if v.latency_by_length_ms}
    if not by_length:
        return []
    lengths = sorted({row.tokens for rows in by_length.values() for row in rows})
    rows = []
    for length in lengths:
        cells = [
            next((_fmt(r.p50, 3) for r in measured if r.tokens == length), "–")
            for measured in by_length.values()
        ]
        rows.append([str(length), *cells])
    note = "Batch 1, token-exact inputs, capped at each model's position embeddings."
    header = ["tokens", *(f"p50 ms {name}" for name in by_length)]
    return ["<h2>Latency by sequence length</h2>", f"<p class='muted'>{note}</p>", _table(header, rows)]


def _per_class_html(report: Report) -> list[str]:
    scored = {v.name: v.per_class for v in report.variants if v.per_class}
    if not scored:
        return []
    first = next(iter(scored.values()))
    rows = [
        [
            label,
            str(scores.support),
            *(_fmt(s.f1 if (s := pc.get(label)) else None, 3) for pc in scored.values()),
        ]
        for label, scores in first.items()
    ]
    return ["<h2>Per-class F1</h2>", _table(["class", "support", *(f"F1 {name}" for name in scored)], rows)]


def _signed_files_html(report: Report) -> list[str]:
    """The candidate's files with their sha256: the bytes this verdict is about."""
    candidate = report.variant(report.candidate) if report.candidate else None
    if candidate is None or not candidate.files:
        return []
    where = f" ({_esc(candidate.folder)})" if candidate.folder else ""
    rows = [[f.path, f"{f.bytes:,}", f.sha256] for f in candidate.files]
    return [
        f"<h2>Files of <code>{_esc(candidate.name)}</code>{where}</h2>",
        _table(["file", "bytes", "sha256"], rows, cls="files"),
    ]


def _stage_times_html(report: Report) -> list[str]:
    times = report.stage_times or []
    if not times:
        return []
    total = sum(t.wall_time_s for t in times)
    rows = [
        [
            t.stage + (f" (resumed: {t.carried_over_s:.1f} s before)" if t.carried_over_s else ""),
            f"{t.wall_time_s:.1f}",
            f"{t.wall_time_s / total:.0%}" if total else "–",
        ]
        for t in times
    ]
    rows.append(["total", f"{total:.1f} ({total / 60:.1f} min)", "100%"])
    note = (
        "Wall time of each stage when it ran (a cached stage keeps the time of the run that made it; a stage "
        "resumed after an interruption adds its earlier invocations' work up to their last checkpoint); the "
        "benchmark's own time is in stage.json next to this report."
    )
    return [
        "<h2>Where the time went</h2>",
        f"<p class='muted'>{note}</p>",
        _table(["stage", "seconds", "share"], rows),
    ]


def _student_budget_html(report: Report) -> list[str]:
    budget = report.student_budget
    if not budget:
        return []
    rows = []
    for i, c in enumerate(budget.candidates):
        prune = f", FFN {c.prune.ffn_keep:g}, heads {c.prune.heads_keep:g}" if c.prune else ""
        chosen = " (chosen)" if i == budget.chosen else ""
        rows.append(
            [
                f"layers {c.layers}{prune}{chosen}",
                _fmt(c.int8_p50_ms, 2),
                _fmt(c.predicted_speedup_p50, 2, "x"),
            ]
        )
    note = (
        f"student.budget timed each candidate (INT8, batch 1, {budget.threads} thread(s), {budget.texts} "
        f"validation texts) against the teacher ({_fmt(budget.teacher_p50_ms, 1)} ms) before distilling and "
        f"chose the first to reach {_fmt(budget.needed_speedup, 2, 'x')}. Predicted speed-up "
        f"{_fmt(budget.predicted_speedup_p50, 2, 'x')}; measured by this benchmark "
        f"{_fmt(budget.measured_speedup_p50, 2, 'x')}."
    )
    return [
        "<h2>Student size chosen for the speed gate</h2>",
        f"<p class='muted'>{_esc(note)}</p>",
        _table(["candidate", "INT8 p50 ms", "predicted speed-up"], rows),
    ]


def _inline_md(text: str) -> str:
    """report.md's inline markup (**bold**, `code`) as HTML, the rest escaped."""
    escaped = _esc(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _with_ci(value: Any, ci: Any, digits: int, signed: bool = False) -> str:
    if not _is_num(value):
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_is_num(x) for x in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_esc(caption)}</figcaption></figure>" if svg else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    attrs = f" class='{cls}'" if cls else ""
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _or(value: Any, default: str) -> str:
    return default if value is None else str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, digits: int, suffix: str = "") -> str:
    return f"{value:.{digits}f}{suffix}" if _is_num(value) else "–"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
