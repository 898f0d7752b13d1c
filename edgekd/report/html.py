"""report.html: the sign-off report as one self-contained page, with charts drawn as inline SVG.

No network, no JavaScript, no plotting library: every chart is a few dozen SVG elements written here, so the
page opens anywhere (an air-gapped device, a CI artifact viewer) and adds no dependency. Each chart is an
`<svg>` with a stable id and a `<title>`, which is what tests and screen readers find.

Charts: accuracy against p50 latency with the Pareto front, size per model, latency distribution per model
(box plots), latency against sequence length, and, when the run folder has them, the teacher's and the
distillation's training curves (loss terms against step, eval accuracy against epoch).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.report.schema import Gate, Report, Variant, as_report

WIDTH, HEIGHT = 640, 340
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 150, 36, 50
# Colour-blind-safe palette (Okabe-Ito), one colour per model or curve.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
LOSS_KEYS = ("loss", "ce_loss", "kd_loss", "eval_loss")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1360px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.15em; margin-top: 28px; }
.verdict { font-size: 1.2em; font-weight: 600; padding: 8px 12px; border-radius: 6px; display: inline-block; }
.pass { background: #e3f4e8; color: #17622f; } .fail { background: #fbe4e2; color: #9b1c13; }
.unchecked { background: #eeeeee; color: #333333; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child, td:last-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #e4e4e4; border-radius: 6px; padding: 6px; background: #fff; }
figcaption { font-size: 0.82em; color: #555; max-width: 620px; padding: 2px 6px; }
svg text { font-family: system-ui, sans-serif; }
.muted { color: #666; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class Series:
    """One line or set of points in a chart."""

    name: str
    points: list[tuple[float, float]]
    color: str


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
        _figure(sequence_length_chart(variants, colors), "Batch-1 p50 latency on token-exact inputs."),
    ]
    charts += [_figure(chart, caption) for chart, caption in training_charts(training_logs)]
    title = f"edgekd sign-off report: {report.recipe or ''}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        _verdict_html(report),
        f"<p class='muted'>edgekd {_esc(_or(report.edgekd_version, '?'))}, generated "
        f"{_esc(_or(report.created_utc, '?'))}; reference <b>{_esc(_or(report.reference, ''))}</b>, "
        f"candidate <b>{_esc(_or(report.candidate, ''))}</b></p>",
        "<h2>Models</h2>",
        _variants_table(variants),
        "<h2>Gates</h2>",
        _gates_table(report.gates),
        "<h2>Charts</h2>",
        "<div class='charts'>" + "".join(c for c in charts if c) + "</div>",
        "<h2>Setup</h2>",
        _setup_html(report),
    ]
    warnings = report.warnings
    if warnings:
        body += ["<h2>Warnings</h2>", "<ul>" + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>"]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------------
# Charts


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower x and higher y are better), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy >= y) and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def pareto_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """Accuracy against p50 latency, one dot per model, with the Pareto front as a line."""
    measured = [
        (v.name, (float(v.latency_ms.p50), float(v.accuracy) * 100))
        for v in variants
        if v.latency_ms is not None and v.accuracy is not None
        if _is_num(v.latency_ms.p50) and _is_num(v.accuracy)
    ]
    if not measured:
        return ""
    points = [point for _, point in measured]
    front = [points[i] for i in pareto_front(points)]
    series = [Series("Pareto front", front, "#999999")] if len(front) > 1 else []
    series += [Series(name, [point], colors[name]) for name, point in measured]
    return line_chart(
        "chart-pareto",
        "Accuracy vs p50 latency (Pareto front)",
        series,
        "p50 latency, ms (batch 1)",
        "accuracy, %",
        lines_for={"Pareto front"},
        include_zero_x=True,
    )


def size_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """Horizontal bars: deployed size in MB per model."""
    items = [(v.name, v.size_bytes / 1e6) for v in variants if v.size_bytes is not None]
    if not items:
        return ""
    return bar_chart("chart-size", "Size on disk, MB", items, colors, "MB")


def latency_box_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """One horizontal box per model from its latency box statistics."""
    boxes = [(v.name, v.latency_box_ms.model_dump()) for v in variants if v.latency_box_ms is not None]
    if not boxes:
        return ""
    return box_chart("chart-latency-dist", "Latency distribution, ms (batch 1)", boxes, colors)


def sequence_length_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """p50 latency against input length in tokens, one line per model."""
    series = [
        Series(v.name, [(float(r.tokens), float(r.p50)) for r in v.latency_by_length_ms], colors[v.name])
        for v in variants
        if v.latency_by_length_ms
    ]
    if not series:
        return ""
    return line_chart(
        "chart-seq-latency",
        "p50 latency vs sequence length",
        series,
        "sequence length, tokens",
        "p50 latency, ms",
        lines_for={s.name for s in series},
        include_zero_x=True,
    )


def training_charts(logs: Mapping[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """(svg, caption) for each stage's loss curves, then one chart of eval accuracy per epoch for all stages."""
    charts = []
    for stage, entries in logs.items():
        series = []
        for j, key in enumerate(LOSS_KEYS):
            points = [
                (float(e["step"]), float(e[key]))
                for e in entries
                if _is_num(e.get(key)) and _is_num(e.get("step"))
            ]
            if points:
                series.append(Series(key, points, PALETTE[j % len(PALETTE)]))  # same colour per term
        if series:
            svg = line_chart(
                f"chart-training-{stage}",
                f"{stage}: training losses vs step",
                series,
                "step",
                "loss",
                lines_for={s.name for s in series},
            )
            charts.append((svg, f"From {stage}/log_history.json (Hugging Face Trainer logs)."))
    accuracy = [
        Series(stage, points, PALETTE[i % len(PALETTE)])
        for i, (stage, entries) in enumerate(logs.items())
        if (
            points := [
                (float(e["epoch"]), float(e["eval_accuracy"]) * 100)
                for e in entries
                if _is_num(e.get("eval_accuracy")) and _is_num(e.get("epoch"))
            ]
        )
    ]
    if accuracy:
        svg = line_chart(
            "chart-eval-accuracy",
            "Validation accuracy vs epoch",
            accuracy,
            "epoch",
            "accuracy, %",
            lines_for={s.name for s in accuracy},
        )
        charts.append((svg, "eval_accuracy of each training stage on the validation split."))
    return charts


# ----------------------------------------------------------------------------------------------------------
# Chart primitives


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _frame(chart_id: str, title: str) -> list[str]:
    return [
        f"<svg id='{_esc(chart_id)}' class='chart' xmlns='http://www.w3.org/2000/svg' role='img' "
        f"width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}'>",
        f"<title>{_esc(title)}</title>",
        f"<rect width='{WIDTH}' height='{HEIGHT}' fill='white'/>",
        f"<text x='{WIDTH / 2:.0f}' y='20' text-anchor='middle' font-size='14' font-weight='600'>{_esc(title)}</text>",
    ]


def _plot_box() -> tuple[float, float, float, float]:
    """Left, top, right, bottom of the plotting area."""
    return MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM


def _axes(
    x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str, sx: Any, sy: Any
) -> list[str]:
    left, top, right, bottom = _plot_box()
    parts = [
        f"<rect x='{left}' y='{top}' width='{right - left}' height='{bottom - top}' fill='none' stroke='#bbb'/>"
    ]
    for t in y_ticks:
        y = sy(t)
        parts.append(f"<line x1='{left}' x2='{right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>")
        parts.append(
            f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11'>{_tick(t)}</text>"
        )
    for t in x_ticks:
        x = sx(t)
        parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{bottom}' stroke='#f2f2f2'/>")
        parts.append(
            f"<text x='{x:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='11'>{_tick(t)}</text>"
        )
    parts.append(
        f"<text x='{(left + right) / 2:.0f}' y='{HEIGHT - 12}' text-anchor='middle' font-size='12'>{_esc(x_label)}</text>"
    )
    parts.append(
        f"<text transform='translate(16 {(top + bottom) / 2:.0f}) rotate(-90)' text-anchor='middle' "
        f"font-size='12'>{_esc(y_label)}</text>"
    )
    return parts


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    _, top, right, _ = _plot_box()
    parts = []
    for i, (name, color) in enumerate(entries):
        y = top + 8 + i * 18
        parts.append(f"<rect x='{right + 12}' y='{y - 8}' width='12' height='12' fill='{color}'/>")
        parts.append(f"<text x='{right + 30}' y='{y + 2}' font-size='11'>{_esc(_short(name, 18))}</text>")
    return parts


def _linear(lo: float, hi: float, out_lo: float, out_hi: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    lines_for: set[str] | None = None,
    include_zero_x: bool = False,
) -> str:
    """Points of every series, joined by a line for the series named in `lines_for`, with axes and legend."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        return ""
    x_ticks = nice_ticks(0.0 if include_zero_x else min(xs), max(xs))
    y_pad = (max(ys) - min(ys)) * 0.08 or abs(max(ys)) * 0.05 or 1.0
    # Latencies, losses and accuracies are never negative: the axis must not suggest they could be.
    y_low = max(0.0, min(ys) - y_pad) if min(ys) >= 0 else min(ys) - y_pad
    y_ticks = nice_ticks(y_low, max(ys) + y_pad)
    left, top, right, bottom = _plot_box()
    sx = _linear(x_ticks[0], x_ticks[-1], left, right)
    sy = _linear(y_ticks[0], y_ticks[-1], bottom, top)
    parts = _frame(chart_id, title) + _axes(x_ticks, y_ticks, x_label, y_label, sx, sy)
    for s in series:
        coords = [(sx(x), sy(y)) for x, y in s.points]
        label = _esc(s.name)
        if lines_for and s.name in lines_for and len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(
                f"<polyline class='series' data-series='{label}' points='{path}' fill='none' "
                f"stroke='{s.color}' stroke-width='2'><title>{label}</title></polyline>"
            )
        if len(coords) <= 40:
            for (x, y), (vx, vy) in zip(coords, s.points, strict=True):
                parts.append(
                    f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{s.color}'>"
                    f"<title>{label}: {_tick(vx)}, {_tick(vy)}</title></circle>"
                )
    parts += _legend([(s.name, s.color) for s in series])
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    chart_id: str, title: str, items: Sequence[tuple[str, float]], colors: Mapping[str, str], unit: str
) -> str:
    """Horizontal bars from zero, labelled with their values."""
    left, top, right, bottom = _plot_box()
    right = WIDTH - 70  # no legend: the names are on the axis
    left = 150
    ticks = nice_ticks(0.0, max(value for _, value in items) or 1.0)
    sx = _linear(0.0, ticks[-1], left, right)
    band = (bottom - top) / len(items)
    parts = _frame(chart_id, title)
    parts += _x_grid(ticks, sx, top, bottom)
    for i, (name, value) in enumerate(items):
        y = top + i * band + band * 0.2
        height = band * 0.6
        parts.append(
            f"<rect class='bar' x='{left}' y='{y:.1f}' width='{max(1.0, sx(value) - left):.1f}' height='{height:.1f}' "
            f"fill='{colors.get(name, PALETTE[0])}'><title>{_esc(name)}: {value:.3f} {unit}</title></rect>"
        )
        parts.append(
            f"<text x='{left - 6}' y='{y + height / 2 + 4:.1f}' text-anchor='end' font-size='11'>"
            f"{_esc(_short(name, 22))}</text>"
        )
        parts.append(
            f"<text x='{sx(value) + 4:.1f}' y='{y + height / 2 + 4:.1f}' font-size='11'>{value:.2f} {unit}</text>"
        )
    parts.append(
        f"<text x='{(left + right) / 2:.0f}' y='{HEIGHT - 12}' text-anchor='middle' font-size='12'>{unit}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _x_grid(ticks: Sequence[float], sx: Callable[[float], float], top: float, bottom: float) -> list[str]:
    """Vertical grid lines with their labels under the plot, one per tick."""
    parts = []
    for t in ticks:
        x = sx(t)
        parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{bottom}' stroke='#eee'/>")
        parts.append(
            f"<text x='{x:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='11'>{_tick(t)}</text>"
        )
    return parts


def box_chart(
    chart_id: str, title: str, boxes: Sequence[tuple[str, Mapping[str, float]]], colors: Mapping[str, str]
) -> str:
    """Horizontal box plots (p25..p75 box, p50 line, p5..p95 whiskers, min/max dots) on one shared axis."""
    left, top, right, bottom = _plot_box()
    right = WIDTH - 40
    left = 150
    ticks = nice_ticks(0.0, max(float(stats["max"]) for _, stats in boxes))
    sx = _linear(0.0, ticks[-1], left, right)
    band = (bottom - top) / len(boxes)
    parts = _frame(chart_id, title)
    parts += _x_grid(ticks, sx, top, bottom)
    for i, (name, stats) in enumerate(boxes):
        mid = top + (i + 0.5) * band
        half = min(14.0, band * 0.3)
        color = colors.get(name, PALETTE[0])
        tip = ", ".join(f"{k} {float(v):.3f}" for k, v in stats.items())
        parts.append(f"<g class='box' data-series='{_esc(name)}'><title>{_esc(name)}: {tip} ms</title>")
        parts.append(
            f"<line x1='{sx(stats['p5']):.1f}' x2='{sx(stats['p95']):.1f}' y1='{mid:.1f}' y2='{mid:.1f}' "
            f"stroke='{color}' stroke-width='1.5'/>"
        )
        parts.append(
            f"<rect x='{sx(stats['p25']):.1f}' y='{mid - half:.1f}' width='{max(1.0, sx(stats['p75']) - sx(stats['p25'])):.1f}' "
            f"height='{2 * half:.1f}' fill='{color}' fill-opacity='0.35' stroke='{color}'/>"
        )
        parts.append(
            f"<line x1='{sx(stats['p50']):.1f}' x2='{sx(stats['p50']):.1f}' y1='{mid - half:.1f}' "
            f"y2='{mid + half:.1f}' stroke='{color}' stroke-width='3'/>"
        )
        for key in ("min", "max"):
            parts.append(f"<circle cx='{sx(stats[key]):.1f}' cy='{mid:.1f}' r='2.5' fill='{color}'/>")
        parts.append("</g>")
        parts.append(
            f"<text x='{left - 6}' y='{mid + 4:.1f}' text-anchor='end' font-size='11'>{_esc(_short(name, 22))}</text>"
        )
    parts.append(
        f"<text x='{(left + right) / 2:.0f}' y='{HEIGHT - 12}' text-anchor='middle' font-size='12'>ms</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Tables and text


def _verdict_html(report: Report) -> str:
    gates = report.gates
    failed = report.failed_gates
    if not gates:
        # Not green: a page forwarded for sign-off must not look signed when nothing was checked.
        return "<p class='verdict unchecked'>NO GATES SET: nothing was checked</p>"
    if failed:
        return f"<p class='verdict fail'>FAIL: {len(failed)} of {len(gates)} gates failed ({_esc(', '.join(failed))})</p>"
    return f"<p class='verdict pass'>PASS: all {len(gates)} gates passed</p>"


def _variants_table(variants: Sequence[Variant]) -> str:
    header = [
        "model",
        "format",
        "accuracy",
        "Δ acc pts",
        "size MB",
        "compression",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "speed-up p50",
        "peak RSS MB",
    ]
    rows = []
    for v in variants:
        latency = v.latency_ms
        diff = v.accuracy_diff_vs_reference_pts.diff if v.accuracy_diff_vs_reference_pts else None
        rows.append(
            [
                v.name,
                v.format or "",
                _fmt(v.accuracy, 4),
                f"{diff:+.2f}" if diff is not None and _is_num(diff) else "–",
                _fmt(v.size_bytes / 1e6 if v.size_bytes is not None else None, 2),
                _fmt(v.compression, 2, "x"),
                _fmt(latency.p50 if latency else None, 3),
                _fmt(latency.p90 if latency else None, 3),
                _fmt(latency.p99 if latency else None, 3),
                _fmt(v.speedup_p50, 2, "x"),
                _fmt(v.peak_rss_mb, 1),
            ]
        )
    return _table(header, rows)


def _gates_table(gates: Sequence[Gate]) -> str:
    if not gates:
        return "<p class='muted'>No gates are set.</p>"
    rows = [
        [
            g.name,
            f"{g.comparison or ''} {g.limit:.4g} {g.unit or ''}",
            f"{g.value:.4g} {g.unit or ''}",
            "PASS" if g.passed else "FAIL",
            g.description or "",
        ]
        for g in gates
    ]
    return _table(["gate", "limit", "value", "result", "measured as"], rows)


def _setup_html(report: Report) -> str:
    env = report.environment
    cpu = env.cpu
    bench = report.benchmark
    versions = ", ".join(f"{k} {v}" for k, v in env.versions.items() if v)
    flags = ", ".join(k for k, v in cpu.flags.items() if v) or "none of note"
    others = env.other_processes_cores
    items = [
        f"CPU: {_or(cpu.model, '?')}; {_or(cpu.usable_cores, '?')} usable cores; flags: {flags}",
        f"Libraries: {versions}",
        f"Load average before: {env.load_average}; after: {env.load_average_after}",
        f"Cores used by other processes: {_or(others.at_start if others else None, '?')} at the start, "
        f"{_or(others.during if others else None, '?')} on average during the benchmark",
        f"Threads: {bench.threads} per model for latency; throughput on "
        f"{env.threads.throughput_threads if env.threads else None}",
        f"Latency: {bench.latency_samples} batch-1 requests per model in {bench.interleaved_rounds} "
        f"interleaved rounds after {bench.warmup} warm-up requests; max_length {bench.max_length}",
    ]
    return "<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in items) + "</ul>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_esc(caption)}</figcaption></figure>" if svg else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _or(value: Any, default: str) -> str:
    return default if value is None else str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, digits: int, suffix: str = "") -> str:
    return f"{value:.{digits}f}{suffix}" if _is_num(value) else "–"


def _tick(value: float) -> str:
    return f"{value:.4g}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
