"""report.json's typed models (edgekd/report/schema.py): committed and older reports load, a round trip loses
nothing, and the committed JSON Schema is the one `Report` generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from repo_scripts import load_script

from edgekd.report.schema import SCHEMA_VERSION, Report, Variant, undeclared_keys

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO / "benchmarks" / "results").glob("*/report.json"))


def missing_from(original: Any, written: Any, where: str = "") -> list[str]:
    """Keys and values of `original` that `written` lacks or changed (keys `written` adds are fine)."""
    if isinstance(original, dict):
        if not isinstance(written, dict):
            return [where]
        return [
            problem
            for key, value in original.items()
            for problem in (
                [f"{where}.{key}"]
                if key not in written
                else missing_from(value, written[key], f"{where}.{key}")
            )
        ]
    if isinstance(original, list):
        if not isinstance(written, list) or len(written) != len(original):
            return [where]
        return [
            p
            for i, (a, b) in enumerate(zip(original, written, strict=True))
            for p in missing_from(a, b, f"{where}[{i}]")
        ]
    return [] if original == written and type(original) is type(written) else [where]


def test_there_are_committed_reports() -> None:
    assert len(COMMITTED) >= 3


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_every_committed_report_loads_and_round_trips(path: Path) -> None:
    original = json.loads(path.read_text())
    report = Report.model_validate(original)
    # a report written before the field existed reads as version 0
    assert (
        report.schema_version == original.get("schema_version", 0) and report.schema_version <= SCHEMA_VERSION
    )
    assert report.variants and all(v.latency_ms and v.latency_ms.p50 > 0 for v in report.variants)
    assert undeclared_keys(report) == []  # every key they hold is declared
    assert missing_from(original, report.to_json()) == []


def test_unknown_keys_survive_a_round_trip() -> None:
    original = {
        "schema_version": 1,
        "future_section": {"a": [1, 2]},
        "environment": {"cpu": {"model": "x", "new_flag_source": "y"}},
        "variants": [{"name": "teacher", "latency_ms": {"p50": 1.0, "p999": 9.0}, "npu_ms": 3.0}],
    }
    written = Report.model_validate(original).to_json()
    assert missing_from(original, written) == []
    assert written["variants"][0]["npu_ms"] == 3.0


def test_a_report_without_a_version_reads_as_version_0_and_a_new_one_is_version_1() -> None:
    assert Report.model_validate({"variants": []}).schema_version == 0
    assert SCHEMA_VERSION == 1


def test_optional_sections_are_left_out_when_absent_and_out_of_scope_scores_when_unset() -> None:
    written = Report(variants=[Variant(name="a")]).to_json()
    assert "stage_times" not in written and "student_budget" not in written
    variant = written["variants"][0]
    assert "in_scope_accuracy" not in variant and "out_of_scope_recall" not in variant
    assert variant["accuracy"] is None  # a declared number that is unknown is written as null
    scored = Variant(name="a", in_scope_accuracy=0.9, out_of_scope_recall=None)
    assert scored.model_dump(mode="json")["out_of_scope_recall"] is None
    assert scored.out_of_scope_scored and not Variant(name="a").out_of_scope_scored


def test_an_infinite_ratio_is_written_as_json_did() -> None:
    gate = {"name": "min_compression", "limit": 1.0, "value": float("inf"), "passed": True}
    assert json.dumps(Report.model_validate({"gates": [gate]}).to_json()["gates"][0]["value"]) == "Infinity"


def test_a_variant_needs_a_name() -> None:
    with pytest.raises(ValidationError):
        Report.model_validate({"variants": [{"accuracy": 0.9}]})


def test_the_committed_json_schema_is_current() -> None:
    script = load_script("scripts/report_schema.py")
    assert script.SCHEMA_FILE.read_text(encoding="utf-8") == script.render(), (
        "docs/report.schema.json is stale: run python scripts/report_schema.py"
    )
    assert script.main(["--check"]) == 0
    schema = json.loads(script.SCHEMA_FILE.read_text())
    assert "schema_version" in schema["required"] and "variants" in schema["required"]
    assert "out_of_scope_recall" not in schema["$defs"]["Variant"]["required"]
    assert "stage_times" not in schema["required"]
