"""report.html: every chart is in the page, the page is self-contained, and a real browser renders it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgekd.report.charts import log_ticks, place_labels
from edgekd.report.html import nice_ticks, pareto_front, render_report_html, write_report_html
from edgekd.report.markdown import write_report_md

CHARTS = ("chart-pareto", "chart-size", "chart-latency-dist", "chart-seq-latency")
TRAINING_CHARTS = ("chart-training-teacher", "chart-training-distill", "chart-eval-accuracy")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parent.parent
# Real reports (read, never written): a 100-170 ms teacher beside 2-15 ms students, warnings, out-of-scope scores.
COMMITTED = sorted((REPO / "benchmarks" / "results").glob("*/report.json"))


def _variant(name: str, accuracy: float, size_mb: float, p50: float) -> dict:
    box = {
        "min": p50 * 0.8,
        "p5": p50 * 0.85,
        "p25": p50 * 0.95,
        "p50": p50,
        "p75": p50 * 1.1,
        "p95": p50 * 1.4,
        "max": p50 * 2,
    }
    return {
        "name": name,
        "format": "onnx" if "onnx" in name else "pytorch",
        "accuracy": accuracy,
        "size_bytes": int(size_mb * 1e6),
        "latency_ms": {"p50": p50, "p90": p50 * 1.3, "p99": p50 * 1.8},
        "latency_box_ms": box,
        "latency_by_length_ms": [{"tokens": t, "p50": p50 * t / 64} for t in (16, 64, 128, 256)],
        "speedup_p50": 20.0 / p50,
        "compression": 400 / size_mb,
    }


REPORT = {
    "recipe": "html <test>",
    "reference": "teacher",
    "candidate": "student-int8-onnx",
    "variants": [
        _variant("teacher", 0.90, 400, 20.0),
        _variant("student", 0.86, 100, 8.0),  # dominated: slower and less accurate than the INT8 model
        _variant("student-int8-onnx", 0.88, 25, 4.0),
    ],
    "gates": [{"name": "max_size_mb", "limit": 30.0, "value": 25.0, "passed": True, "unit": "MB"}],
    "environment": {"cpu": {"model": "Test CPU"}},
    "benchmark": {"threads": 1},
    "warnings": ["the machine was busy <load 3.1>"],
    "stage_times": [{"stage": "teacher", "wall_time_s": 30.0}, {"stage": "distill", "wall_time_s": 10.0}],
    "student_budget": {
        "teacher_p50_ms": 20.0,
        "threads": 1,
        "texts": 50,
        "needed_speedup": 4.0,
        "candidates": [{"layers": [0, 11], "int8_p50_ms": 4.0, "predicted_speedup_p50": 5.0}],
        "chosen": 0,
        "measured_speedup_p50": 5.0,
    },
}
_CANDIDATE: dict[str, Any] = REPORT["variants"][2]  # type: ignore[index]
_CANDIDATE["files"] = [{"path": "model.onnx", "bytes": 25_000_000, "sha256": "ab" * 32}]
_CANDIDATE["folder"] = "quantize"
LOGS = {
    stage: [
        {"loss": 2.0 / s, "ce_loss": 1.0 / s, "kd_loss": 0.5 / s, "step": s, "epoch": s / 4}
        for s in range(1, 9)
    ]
    + [{"eval_accuracy": 0.5 + e / 10, "eval_loss": 1.0 / e, "epoch": e, "step": 4 * e} for e in (1, 2)]
    for stage in ("teacher", "distill")
}


def test_pareto_front_keeps_the_models_nothing_beats():
    points = [(20.0, 90.0), (8.0, 86.0), (4.0, 88.0), (4.0, 88.0)]
    assert pareto_front(points) == [2, 3, 0]
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 9.3) == [0, 2, 4, 6, 8, 10]
    ticks = nice_ticks(0.37, 0.41)
    assert ticks[0] <= 0.37 and ticks[-1] >= 0.41 and len(ticks) <= 8
    assert nice_ticks(5, 5)[0] <= 5 <= nice_ticks(5, 5)[-1]


def test_page_has_every_chart_and_needs_nothing_from_outside():
    page = render_report_html(REPORT, LOGS)
    for chart in CHARTS + TRAINING_CHARTS:
        assert re.search(rf"<svg id='{chart}'[^>]*>\s*<title>[^<]+</title>", page), chart
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "html &lt;test&gt;" in page  # names are escaped
    assert "data-series='kd_loss'" in page and "data-series='ce_loss'" in page
    # The Pareto line joins the INT8 model and the teacher, not the dominated student.
    assert page.count("data-series='Pareto front'") == 1


def test_page_without_training_logs_or_lengths_leaves_those_charts_out():
    bare = {
        **REPORT,
        "variants": [{k: v for k, v in _variant("m", 0.5, 1, 1).items() if k != "latency_by_length_ms"}],
    }
    page = render_report_html(bare, {})
    assert "chart-pareto" in page and "chart-seq-latency" not in page and "chart-training" not in page


def test_a_page_with_no_gates_is_not_a_green_pass():
    page = render_report_html({**REPORT, "gates": [], "passed": True}, {})
    assert "NO GATES SET: nothing was checked" in page
    assert "verdict pass" not in page  # a forwarded page must not look signed off


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders_every_chart(tmp_path: Path):
    page = tmp_path / "report.html"
    write_report_html(REPORT, page, LOGS)
    command = [
        str(CHROMIUM),
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,2400",
    ]
    dom = subprocess.run(
        [*command, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for chart in CHARTS + TRAINING_CHARTS:
        assert re.search(rf'<svg id="{chart}"[^>]*>\s*<title>[^<]+</title>', dom), chart
    # What the browser built: a viewport, no script, log axes with labelled points, the warnings on top.
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in dom
    assert "<script" not in dom.lower()
    assert "(log scale)" in dom and 'class="point-label"' in dom
    assert dom.index('class="warnings"') < dom.index("<h2>Variants</h2>") < dom.index("<h2>Gates")
    assert "@media print" in dom and "break-inside: avoid" in dom
    screenshot = tmp_path / "report.png"
    subprocess.run([*command, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=120)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    # The page prints (the print CSS keeps each chart with its caption).
    pdf = tmp_path / "report.pdf"
    subprocess.run([*command, f"--print-to-pdf={pdf}", page.as_uri()], capture_output=True, timeout=120)
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")


def _headings(page: str) -> list[str]:
    """The text of a page's h1/h2 headings, or of report.md's # and ## lines, as a reader sees it: markup
    removed, without the parenthesised details (names of the models compared, a folder)."""
    if page.lstrip().startswith("<"):
        found = [
            html.unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<h[12][^>]*>(.*?)</h[12]>", page)
        ]
    else:
        found = [
            line.lstrip("#").strip().replace("`", "") for line in page.splitlines() if line.startswith("#")
        ]
    return [h.split(" (")[0].split(": ")[0] for h in found]


def test_log_ticks_cover_a_teacher_and_its_students_in_round_steps():
    assert log_ticks(1.7, 170.0) == [1, 2, 5, 10, 20, 50, 100, 200]
    assert log_ticks(3.0, 4.0) == [2, 5]
    wide = log_ticks(0.05, 900.0)
    assert wide == [0.01, 0.1, 1, 10, 100, 1000]  # over three decades: powers of ten only
    assert log_ticks(0.0, 5.0) == [1.0, 10.0]  # no log of zero


def test_labels_of_points_at_the_same_place_do_not_overlap():
    placed = place_labels(
        [(100.0, 200.0, "student-int8-onnx 3.3 ms"), (101.0, 200.5, "optimum-int8 3.4 ms")], 0, 600
    )
    (_, y1, *_), (_, y2, *_) = placed
    assert abs(y1 - y2) >= 12
    # near the right edge a label goes left of its point
    assert place_labels([(590.0, 50.0, "teacher 170 ms")], 0, 600)[0][2] == "end"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_the_page_carries_everything_report_md_has(path: Path, tmp_path: Path):
    report = json.loads(path.read_text())
    page = render_report_html(report, {})
    write_report_md(report, tmp_path / "report.md")
    markdown = (tmp_path / "report.md").read_text()
    html_headings = set(_headings(page))
    missing = [h for h in _headings(markdown) if h not in html_headings]
    assert not missing, f"report.md sections without an HTML counterpart: {missing}"
    # one self-contained page, readable on a phone or an 800 px screen, printable
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert "<script" not in page.lower() and "src=" not in page and "<link" not in page
    css = page[page.index("<style>") : page.index("</style>")]
    assert "overflow-x: auto" in css
    print_css = css[css.index("@media print") :]
    assert re.search(r"figure[^{]*\{[^}]*break-inside: avoid", print_css)
    # latency on log axes, with every model named on the chart itself, not only in a hover title
    pareto = _first(r"<svg id='chart-pareto'.*?</svg>", page)
    assert "p50 latency, ms (batch 1) (log scale)" in pareto
    boxes = _first(r"<svg id='chart-latency-dist'.*?</svg>", page)
    assert "ms (log scale)" in boxes
    labels = re.findall(r"<text class='point-label'[^>]*>([^<]+)</text>", pareto)
    for v in report["variants"]:
        assert any(label.startswith(v["name"]) for label in labels), v["name"]
        # the p50 with its 95% interval, as report.md shows it
        p50, (lo, hi) = v["latency_ms"]["p50"], v["latency_ms"]["p50_ci95"]
        assert f"{p50:.3f} [{lo:.3f}, {hi:.3f}]" in page
    # warnings sit with the verdict at the top, before the tables
    if report["warnings"]:
        assert page.index(html.escape(report["warnings"][0])) < page.index("<h2>Variants</h2>")
        assert page.index("class='warnings'") < page.index("<h2>Gates")


def test_out_of_scope_files_stage_times_and_budget_are_on_the_page():
    clinc = json.loads((REPO / "benchmarks" / "results" / "clinc150" / "report.json").read_text())
    page = render_report_html(clinc, {})
    assert "<h2>Out of scope</h2>" in page and "in-scope accuracy" in page and "0.6410" in page
    page = render_report_html(REPORT, {})
    assert "<h2>Files of <code>student-int8-onnx</code> (quantize)</h2>" in page and "ab" * 32 in page
    assert "<h2>Where the time went</h2>" in page and "40.0 (0.7 min)" in page
    assert "<h2>Student size chosen for the speed gate</h2>" in page and "layers [0, 11] (chosen)" in page
    assert page.index("the machine was busy &lt;load 3.1&gt;") < page.index("<h2>Variants</h2>")
    assert "<b>Latency</b>" in page and "<code>time.perf_counter_ns</code>" in page  # How to read this


def _first(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, pattern
    return found.group(0)
