"""The charts of report.html, drawn as inline SVG: no JavaScript, no plotting library, no network.

Each chart is an `<svg>` with a stable id and a `<title>`, which is what tests and screen readers find. Every
point and box carries a text label on the page (not only a hover title), so a printed or forwarded page
still says which model is which. Latency axes are logarithmic: a 170 ms teacher and 2-5 ms students stay
apart instead of collapsing into one blob next to zero.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekd.report.schema import Variant

WIDTH, HEIGHT = 640, 340
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 150, 36, 50
# Colour-blind-safe palette (Okabe-Ito), one colour per model or curve.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
LOSS_KEYS = ("loss", "ce_loss", "kd_loss", "eval_loss")
LOG_SCALE = " (log scale)"
_CHAR_PX = 6.2  # width of a character at font-size 11, for keeping labels apart
_LABEL_PX = 13  # height of a label line


@dataclass(frozen=True)
class Series:
    """One line or set of points in a chart."""

    name: str
    points: list[tuple[float, float]]
    color: str


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
    """Accuracy against p50 latency (log axis), one labelled dot per model, with the Pareto front as a line."""
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
    labels = {name: f"{_short(name, 22)} {_tick(x)} ms" for name, (x, _) in measured}
    return line_chart(
        "chart-pareto",
        "Accuracy vs p50 latency (Pareto front)",
        series,
        "p50 latency, ms (batch 1)",
        "accuracy, %",
        lines_for={"Pareto front"},
        include_zero_x=True,
        log_x=True,
        point_labels=labels,
    )


def size_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """Horizontal bars: deployed size in MB per model."""
    items = [(v.name, v.size_bytes / 1e6) for v in variants if v.size_bytes is not None]
    if not items:
        return ""
    return bar_chart("chart-size", "Size on disk, MB", items, colors, "MB")


def latency_box_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """One horizontal box per model from its latency box statistics, on a log axis."""
    boxes = [(v.name, v.latency_box_ms.model_dump()) for v in variants if v.latency_box_ms is not None]
    if not boxes:
        return ""
    return box_chart("chart-latency-dist", "Latency distribution, ms (batch 1)", boxes, colors)


def sequence_length_chart(variants: Sequence[Variant], colors: Mapping[str, str]) -> str:
    """p50 latency (log axis) against input length in tokens, one line per model, named at its end."""
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
        log_y=True,
        end_labels=True,
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
# Scales


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


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis covering [lo, hi] (both > 0): 1-2-5 steps over up to three decades, powers of
    ten beyond, the first at or below lo and the last at or above hi."""
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return [1.0, 10.0]
    hi = max(hi, lo)
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    last = max(last, first + 1)
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    candidates = [round(m * 10.0**e, 12) for e in range(first, last + 1) for m in steps]
    below = [t for t in candidates if t <= lo * (1 + 1e-9)]
    above = [t for t in candidates if t >= hi * (1 - 1e-9)]
    start, stop = max(below), min(above)
    if stop <= start:
        stop = next(t for t in candidates if t > start)
    return [t for t in candidates if start <= t <= stop]


def _linear(lo: float, hi: float, out_lo: float, out_hi: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _logarithmic(lo: float, hi: float, out_lo: float, out_hi: float) -> Callable[[float], float]:
    to_log = _linear(math.log10(lo), math.log10(hi), out_lo, out_hi)
    return lambda v: to_log(math.log10(max(v, lo * 1e-3)))


def _scale(
    values: Sequence[float], out_lo: float, out_hi: float, log: bool, include_zero: bool = False
) -> tuple[list[float], Callable[[float], float]]:
    """Ticks and a value -> pixel function for one axis; log only when every value is positive."""
    if log and min(values) > 0:
        ticks = log_ticks(min(values), max(values))
        return ticks, _logarithmic(ticks[0], ticks[-1], out_lo, out_hi)
    ticks = nice_ticks(0.0 if include_zero else min(values), max(values))
    return ticks, _linear(ticks[0], ticks[-1], out_lo, out_hi)


# ----------------------------------------------------------------------------------------------------------
# Chart primitives


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
            f"<text class='tick' x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11'>{_tick(t)}</text>"
        )
    for t in x_ticks:
        x = sx(t)
        parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{bottom}' stroke='#f2f2f2'/>")
        parts.append(
            f"<text class='tick' x='{x:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='11'>{_tick(t)}</text>"
        )
    parts.append(
        f"<text class='axis-label' x='{(left + right) / 2:.0f}' y='{HEIGHT - 12}' text-anchor='middle' "
        f"font-size='12'>{_esc(x_label)}</text>"
    )
    parts.append(
        f"<text class='axis-label' transform='translate(16 {(top + bottom) / 2:.0f}) rotate(-90)' "
        f"text-anchor='middle' font-size='12'>{_esc(y_label)}</text>"
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


def place_labels(
    anchors: Sequence[tuple[float, float, str]], left: float, right: float
) -> list[tuple[float, float, str, str]]:
    """(x, y, text-anchor, text) for labels beside points at (x, y): right of the point, or left of it where
    the text would run past `right`, moved down (or up at the bottom) until no two overlap."""
    placed: list[tuple[float, float, str, str]] = []
    boxes: list[tuple[float, float, float]] = []  # x from, x to, baseline y
    for x, y, text in sorted(anchors, key=lambda a: a[1]):
        width = len(text) * _CHAR_PX
        start, anchor = (x + 7, "start") if x + 7 + width <= right else (x - 7, "end")
        lo, hi = (start, start + width) if anchor == "start" else (start - width, start)
        lo, hi = max(lo, left), min(hi, right)
        baseline = y + 4
        while any(lo < b_hi and b_lo < hi and abs(baseline - b_y) < _LABEL_PX for b_lo, b_hi, b_y in boxes):
            baseline += _LABEL_PX
        boxes.append((lo, hi, baseline))
        placed.append((start, baseline, anchor, text))
    return placed


def _labels(anchors: Sequence[tuple[float, float, str]], color_of: Mapping[str, str]) -> list[str]:
    left, _, right, _ = _plot_box()
    return [
        f"<text class='point-label' x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' font-size='11' "
        f"fill='{color_of.get(text, '#333')}'>{_esc(text)}</text>"
        for x, y, anchor, text in place_labels(anchors, left, right + MARGIN_RIGHT - 4)
    ]


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    lines_for: set[str] | None = None,
    include_zero_x: bool = False,
    log_x: bool = False,
    log_y: bool = False,
    point_labels: Mapping[str, str] | None = None,
    end_labels: bool = False,
) -> str:
    """Points of every series, joined by a line for the series named in `lines_for`, with axes and legend.

    Args:
        log_x: Logarithmic x axis (when every x is positive; else linear). The axis label says so.
        log_y: The same for the y axis.
        point_labels: Text written beside the points of the series of that name.
        end_labels: Write each series' name beside its last point.
    """
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        return ""
    left, top, right, bottom = _plot_box()
    log_x, log_y = log_x and min(xs) > 0, log_y and min(ys) > 0
    x_ticks, sx = _scale(xs, left, right, log_x, include_zero=include_zero_x)
    if log_y:
        y_ticks, sy = _scale(ys, bottom, top, log=True)
    else:
        y_pad = (max(ys) - min(ys)) * 0.08 or abs(max(ys)) * 0.05 or 1.0
        # Latencies, losses and accuracies are never negative: the axis must not suggest they could be.
        y_low = max(0.0, min(ys) - y_pad) if min(ys) >= 0 else min(ys) - y_pad
        y_ticks = nice_ticks(y_low, max(ys) + y_pad)
        sy = _linear(y_ticks[0], y_ticks[-1], bottom, top)
    x_label += LOG_SCALE if log_x else ""
    y_label += LOG_SCALE if log_y else ""
    parts = _frame(chart_id, title) + _axes(x_ticks, y_ticks, x_label, y_label, sx, sy)
    anchors: list[tuple[float, float, str]] = []
    color_of: dict[str, str] = {}
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
        text = (point_labels or {}).get(s.name) or (_short(s.name, 18) if end_labels else None)
        if text and coords:
            anchors.append((*coords[-1], text))
            color_of[text] = s.color
    parts += _labels(anchors, color_of)
    if not anchors:  # labelled points and lines name themselves; a legend would cover their labels
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
            f"<text class='tick' x='{x:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='11'>{_tick(t)}</text>"
        )
    return parts


def box_chart(
    chart_id: str, title: str, boxes: Sequence[tuple[str, Mapping[str, float]]], colors: Mapping[str, str]
) -> str:
    """Horizontal box plots (p25..p75 box, p50 line, p5..p95 whiskers, min/max dots) on one shared axis,
    logarithmic when every value is positive, with each box's p50 written beside it."""
    left, top, right, bottom = _plot_box()
    right = WIDTH - 40
    left = 150
    values = [float(v) for _, stats in boxes for v in stats.values()]
    log = min(values) > 0
    ticks, sx = _scale(values, left, right, log=log, include_zero=True)
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
            f"<text class='point-label' x='{sx(stats['p50']):.1f}' y='{mid - half - 3:.1f}' text-anchor='middle' "
            f"font-size='11' fill='{color}'>p50 {_tick(float(stats['p50']))} ms</text>"
        )
    axis = "ms" + (LOG_SCALE if log else "")
    parts.append(
        f"<text class='axis-label' x='{(left + right) / 2:.0f}' y='{HEIGHT - 12}' text-anchor='middle' "
        f"font-size='12'>{axis}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tick(value: float) -> str:
    return f"{value:.4g}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
