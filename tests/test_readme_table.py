"""The README's results table is generated from the committed reports and must agree with them."""

from __future__ import annotations

import json
from pathlib import Path

from repo_scripts import load_script

REPO = Path(__file__).resolve().parent.parent


def test_readme_table_matches_the_committed_reports() -> None:
    script = load_script("scripts/readme_table.py")
    readme = (REPO / "README.md").read_text()
    assert script.updated_readme(readme, script.render_table(script.report_paths())) == readme


def test_render_table_from_a_report(tmp_path: Path) -> None:
    script = load_script("scripts/readme_table.py")
    variant = {"name": "teacher", "format": "pytorch", "accuracy": 0.9, "size_bytes": 4_000_000}
    report = {
        "variants": [
            {**variant, "latency_ms": {"p50": 10.0, "p90": 12.0}},
            {**variant, "name": "s", "size_bytes": 1_000_000, "latency_ms": {"p50": 2.0, "p90": 3.0}},
        ]
    }
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "report.json").write_text(json.dumps(report))
    table = script.render_table([tmp_path / "x" / "report.json"])
    assert "| x | s | pytorch | 90.00% | 1.0 | 2.00 | 3.00 | 5.0x | 4.0x |" in table


def test_runs_with_an_out_of_scope_class_get_their_own_table(tmp_path: Path) -> None:
    script = load_script("scripts/readme_table.py")
    variant = {"name": "teacher", "format": "pytorch", "accuracy": 0.9, "size_bytes": 4_000_000}
    scored = {"in_scope_accuracy": 0.95, "out_of_scope_recall": 0.5, "latency_ms": {"p50": 10.0, "p90": 12.0}}
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "report.json").write_text(
        json.dumps({"variants": [{**variant, "latency_ms": {"p50": 10.0, "p90": 12.0}}]})
    )
    (tmp_path / "oos").mkdir()
    (tmp_path / "oos" / "report.json").write_text(json.dumps({"variants": [{**variant, **scored}]}))
    table = script.render_table([tmp_path / "oos" / "report.json", tmp_path / "plain" / "report.json"])
    assert "| oos | teacher | 90.00% | 95.00% | 50.00% |" in table
    assert "| plain | teacher | 90.00% |" not in table  # the plain run has no out-of-scope row
    assert "out-of-scope recall" not in script.render_table([tmp_path / "plain" / "report.json"])


def test_each_run_names_the_machine_it_was_measured_on(tmp_path: Path) -> None:
    script = load_script("scripts/readme_table.py")
    variant = {"name": "teacher", "format": "pytorch", "accuracy": 0.9, "size_bytes": 4_000_000}
    variant["latency_ms"] = {"p50": 10.0, "p90": 12.0}
    cpu = {
        "model": "AMD EPYC",
        "logical_cores": 2,
        "flags": {"avx2": True, "avx512_vnni": True, "amx_int8": False},
    }
    (tmp_path / "vnni").mkdir()
    (tmp_path / "vnni" / "report.json").write_text(
        json.dumps({"variants": [variant], "environment": {"cpu": cpu}})
    )
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "report.json").write_text(json.dumps({"variants": [variant]}))
    table = script.render_table([tmp_path / "unknown" / "report.json", tmp_path / "vnni" / "report.json"])
    assert "| vnni | AMD EPYC | 2 | avx2, avx512_vnni |" in table
    assert "| unknown | AMD EPYC" not in table
