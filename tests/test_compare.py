"""`edgekd compare`: per-model changes and environment differences between two reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from edgekd.errors import InputError
from edgekd.report.compare import compare_reports, environment_changes, print_comparison, resolve_report


def _report(p50: float, onnxruntime: str, threads: int, flags: dict[str, bool]) -> dict:
    variants = [
        {
            "name": "teacher",
            "accuracy": 0.9,
            "size_bytes": 400_000_000,
            "latency_ms": {"p50": 20.0, "p90": 30.0},
            "speedup_p50": 1.0,
        },
        {
            "name": "student-int8-onnx",
            "accuracy": 0.88,
            "size_bytes": 25_000_000,
            "latency_ms": {"p50": p50, "p90": p50 * 1.5},
            "speedup_p50": 20.0 / p50,
        },
    ]
    env = {
        "cpu": {"model": "Some CPU", "usable_cores": 2, "flags": flags},
        "versions": {"onnxruntime": onnxruntime, "numpy": "2.0"},
        "python": "3.11.9",
    }
    return {"recipe": "r", "variants": variants, "environment": env, "benchmark": {"threads": threads}}


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "a" / "report"
    b = tmp_path / "b"
    a.mkdir(parents=True)
    b.mkdir()
    (a / "report.json").write_text(json.dumps(_report(4.0, "1.30.0", 1, {"avx2": True, "avx512f": False})))
    (b / "report.json").write_text(json.dumps(_report(5.0, "1.31.1", 2, {"avx2": True, "avx512f": True})))
    return tmp_path / "a", b / "report.json"


def test_compare_reports_matches_models_by_name_and_computes_deltas(two_runs):
    comparison = compare_reports(*two_runs)
    assert comparison.path_a.name == "report.json" and comparison.only_in_a == comparison.only_in_b == []
    changes = {(c.variant, c.metric): c for c in comparison.metrics}
    p50 = changes[("student-int8-onnx", "p50 ms")]
    assert (p50.a, p50.b, p50.delta) == (4.0, 5.0, 1.0) and p50.relative == pytest.approx(0.25)
    assert changes[("teacher", "accuracy")].delta == 0.0
    assert changes[("student-int8-onnx", "size MB")].a == 25.0
    assert changes[("student-int8-onnx", "speed-up p50")].b == pytest.approx(4.0)


def test_environment_differences_name_libraries_flags_and_threads(two_runs):
    comparison = compare_reports(*two_runs)
    keys = {c.key: (c.a, c.b) for c in comparison.environment}
    assert keys == {
        "cpu.flags": ("avx2", "avx2,avx512f"),
        "benchmark.threads": ("1", "2"),
        "version.onnxruntime": ("1.30.0", "1.31.1"),
    }
    same = _report(4.0, "1.31.1", 1, {})
    assert environment_changes(same, same) == []


def test_print_comparison_renders_both_tables(two_runs):
    console = Console(record=True, width=140)
    print_comparison(compare_reports(*two_runs), console)
    text = console.export_text()
    for expected in ("student-int8-onnx", "p50 ms", "+1.000", "+25.0%", "version.onnxruntime", "1.31.1"):
        assert expected in text


def test_missing_report_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"no report\.json"):
        resolve_report(tmp_path)


def test_a_value_of_the_wrong_type_is_an_input_error_naming_it(tmp_path):
    report = _report(4.0, "1.30.0", 1, {})
    report["variants"][1]["latency_ms"] = "fast"
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match=r"variants\.1\.latency_ms"):
        compare_reports(tmp_path, tmp_path)


def test_reports_of_other_threads_machines_recipes_or_test_sets_are_said_not_comparable(tmp_path):
    a, b, same = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "same.json"
    report_a = _report(4.0, "1.30.0", 1, {"avx2": True})
    a.write_text(json.dumps({**report_a, "benchmark": {"threads": 1, "test_texts": 7600}}))
    other = {**_report(4.0, "1.30.0", 2, {"avx2": True, "avx512f": True}), "recipe": "quickstart"}
    b.write_text(json.dumps({**other, "benchmark": {"threads": 2, "test_texts": 2000}}))
    same.write_text(json.dumps({**report_a, "benchmark": {"threads": 1, "test_texts": 7600}}))
    comparison = compare_reports(a, b)
    assert comparison.not_comparable == [
        "recipe: r vs quickstart",
        "test texts: 7600 vs 2000",
        "latency threads: 1 vs 2",
        "CPU flags: avx2 vs avx2,avx512f",
    ]
    assert compare_reports(a, same).not_comparable == []
    console = Console(record=True, width=120)
    print_comparison(comparison, console)
    text = console.export_text()
    assert text.index("NOT COMPARABLE") < text.index("per model")  # said before the deltas, which still show
    assert "latency threads: 1 vs 2" in text and "student-int8-onnx" in text
