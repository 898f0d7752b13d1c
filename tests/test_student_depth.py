"""benchmarks/student_depth.py: INT8 latency and size by encoder depth, on a tiny model and the toy data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_each_depth_is_exported_quantized_and_timed(
    tmp_path: Path, tiny_classifier_dir: Path, toy_data: Path
) -> None:
    out = tmp_path / "depth.json"
    args = ["--data", str(toy_data), "--depths", "1", "2", "--texts", "8", "--rounds", "1"]
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "student_depth.py"),
            str(tiny_classifier_dir),
            *args,
            "--teacher-p50-ms",
            "100",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    one, two = result["depths"]
    assert (one["depth"], two["depth"], result["texts"]) == (1, 2, 8)
    assert one["int8_p50_ms"] > 0 and two["int8_p50_ms"] > 0
    assert one["int8_onnx_mb"] < two["int8_onnx_mb"], "a layer was dropped, so the file must shrink"
    # p50 is stored rounded to the microsecond, so the ratio is compared to within that rounding
    assert one["speedup_vs_teacher"] == pytest.approx(100 / one["int8_p50_ms"], rel=0.01, abs=0.1)
