"""report.html: every chart is in the page, the page is self-contained, and a real browser renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekd.report.html import nice_ticks, pareto_front, render_report_html, write_report_html

CHARTS = ("chart-pareto", "chart-size", "chart-latency-dist", "chart-seq-latency")
TRAINING_CHARTS = ("chart-training-teacher", "chart-training-distill", "chart-eval-accuracy")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
}
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
    screenshot = tmp_path / "report.png"
    subprocess.run([*command, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=120)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
