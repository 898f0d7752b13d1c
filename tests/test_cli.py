"""End to end through the real CLI on recipes/smoke.yaml: exit codes, artifact contract, cache, report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"

# The exact files each stage leaves in its folder (the artifact contract later stages and users rely on).
TOKENIZER_FILES = {"special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
HF_MODEL = {f"model/{f}" for f in {"config.json", "model.safetensors", *TOKENIZER_FILES}}
ONNX_FOLDER = {"model.onnx", "config.json", "edgekd.json", *TOKENIZER_FILES}
EXPECTED_FILES = {
    "teacher": {"stage.json", "log_history.json", *HF_MODEL},
    "distill": {"stage.json", "log_history.json", *HF_MODEL},
    "export": {"stage.json", "parity.json", *ONNX_FOLDER},
    # The folder users ship: the deployment and its model card only (its record is kept beside it).
    "quantize": {"README.md", *ONNX_FOLDER},
}


def stage_record(run_dir: Path, stage: str) -> dict:
    """A stage's stage.json: in its folder, or beside the shipped one (quantize.stage.json)."""
    path = run_dir / f"{stage}.stage.json" if stage == "quantize" else run_dir / stage / "stage.json"
    return json.loads(path.read_text())


def edgekd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekd.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=900,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    return run_dir, edgekd("compress", str(SMOKE), "--output-dir", str(run_dir))


@pytest.mark.e2e
def test_smoke_recipe_exits_0_and_prints_the_summary(smoke_run) -> None:
    _, result = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "student-int8-onnx" in result.stdout
    assert "speed-up" in result.stdout


@pytest.mark.e2e
def test_report_json_follows_the_contract(smoke_run) -> None:
    run_dir, _ = smoke_run
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert {"recipe", "edgekd_version", "environment", "variants", "gates", "passed"} <= set(report)
    assert [v["name"] for v in report["variants"]] == ["teacher", "student", "student-int8-onnx"]
    for variant in report["variants"]:
        assert {"name", "format", "accuracy", "size_bytes", "params", "latency_ms"} <= set(variant)
        assert variant["format"] in ("pytorch", "onnx")
        assert 0.0 <= variant["accuracy"] <= 1.0
        assert variant["size_bytes"] > 0 and variant["params"] > 0
        assert set(variant["latency_ms"]) >= {"p50", "p90", "p99"}
        assert (
            0 < variant["latency_ms"]["p50"] <= variant["latency_ms"]["p90"] <= variant["latency_ms"]["p99"]
        )
    for gate in report["gates"]:
        assert {"name", "limit", "value", "passed"} <= set(gate)
    assert report["passed"] is True
    assert (run_dir / "report" / "report.md").is_file()


@pytest.mark.e2e
def test_each_stage_writes_exactly_its_files(smoke_run) -> None:
    run_dir, _ = smoke_run
    for stage, expected in EXPECTED_FILES.items():
        folder = run_dir / stage
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert files == expected, stage
        record = stage_record(run_dir, stage)
        assert {"key", "params", "inputs", "wall_time_s"} <= set(record)
    assert {p.name for p in run_dir.iterdir()} >= {"recipe.resolved.yaml", "env.json", "report", "cache"}
    assert not list(run_dir.glob(".*.partial")), "a partial stage folder was left behind"


@pytest.mark.e2e
def test_the_shipped_folder_carries_a_model_card_of_its_report(smoke_run) -> None:
    run_dir, _ = smoke_run
    folder = run_dir / "quantize"
    card = (folder / "README.md").read_text()
    report_bytes = (run_dir / "report" / "report.json").read_bytes()
    report = json.loads(report_bytes)
    manifest = json.loads((folder / "edgekd.json").read_text())
    assert f"`report.json` sha256 `{hashlib.sha256(report_bytes).hexdigest()}`" in card
    candidate = next(v for v in report["variants"] if v["name"] == report["candidate"])
    assert f"| Accuracy (test split) | {candidate['accuracy']:.4f} on " in card
    assert f"| Latency p50, batch 1 | {candidate['latency_ms']['p50']:.3f} ms on 1 thread " in card
    assert f"| Speed-up vs teacher (p50) | {candidate['speedup_p50']:.1f}x |" in card
    assert f"| Compression vs teacher (size) | {candidate['compression']:.1f}x |" in card
    assert f"{report['environment']['cpu']['model']}, " in card
    assert "### Gates: PASS" in card
    for gate in report["gates"]:
        assert f"| `{gate['name']}` |" in card
    assert f"| Labels | {len(manifest['labels'])}: {', '.join(manifest['labels'])} |" in card
    assert f"| Max length | {manifest['max_length']} tokens" in card
    # Not a model file: the report's digests and size never count it.
    assert "README.md" not in {f["path"] for f in candidate["files"]}
    # No path of the build machine in what ships; the run's bookkeeping is beside the folder.
    assert manifest["provenance"]["source"] == "distill/model"
    assert str(run_dir) not in "".join(p.read_text(errors="replace") for p in folder.glob("*.json"))
    assert (run_dir / "quantize.stage.json").is_file()


@pytest.mark.e2e
def test_the_model_cards_snippets_run_and_agree(smoke_run, monkeypatch, capsys) -> None:
    run_dir, _ = smoke_run
    card = (run_dir / "quantize" / "README.md").read_text()
    runtime, _optimum, plain = re.findall(r"```python\n(.*?)```", card, re.S)
    monkeypatch.chdir(run_dir)  # the card's paths are relative to the folder above the shipped one
    exec(runtime, {})
    exec(plain, {})
    ours, theirs = capsys.readouterr().out.splitlines()
    label, score = theirs.rsplit(" ", 1)
    assert ours.startswith(f"Prediction(label='{label}', score=")
    assert float(ours.split("score=")[1].split(",")[0]) == pytest.approx(float(score), abs=1e-4)


@pytest.mark.e2e
def test_rerun_skips_finished_stages_and_a_gate_change_reruns_only_the_benchmark(smoke_run) -> None:
    run_dir, _ = smoke_run
    before = {s: stage_record(run_dir, s)["key"] for s in EXPECTED_FILES}
    again = edgekd("compress", str(SMOKE), "--output-dir", str(run_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("cached, skipped") == 5
    created = json.loads((run_dir / "report" / "report.json").read_text())["created_utc"]
    time.sleep(1.1)  # report times have one-second resolution
    measured = edgekd("compress", str(SMOKE), "--output-dir", str(run_dir), "--rebenchmark")
    assert measured.returncode == 0, measured.stderr[-2000:]
    assert measured.stderr.count("cached, skipped") == 4 and "[benchmark] done" in measured.stderr
    assert json.loads((run_dir / "report" / "report.json").read_text())["created_utc"] != created
    failing = edgekd("compress", str(SMOKE), "--output-dir", str(run_dir), "--set", "gates.max_size_mb=0.001")
    assert failing.returncode == 3, failing.stderr[-2000:]
    assert failing.stderr.count("cached, skipped") == 4
    assert "gate(s) failed: max_size_mb" in failing.stderr
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["passed"] is False
    after = {s: stage_record(run_dir, s)["key"] for s in EXPECTED_FILES}
    assert before == after


@pytest.mark.e2e
def test_the_optimum_teacher_joins_a_finished_run_without_retraining(smoke_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    before = {s: stage_record(run_dir, s)["key"] for s in EXPECTED_FILES}
    flagged = edgekd(
        "compress", str(SMOKE), "--output-dir", str(run_dir), "--set", "benchmark.teacher_int8_optimum=true"
    )
    assert flagged.returncode == 0, flagged.stderr[-2000:]
    assert flagged.stderr.count("cached, skipped") == 4  # teacher, distill, export, quantize: keys unchanged
    assert "[teacher_int8_optimum] done" in flagged.stderr
    assert {s: stage_record(run_dir, s)["key"] for s in EXPECTED_FILES} == before
    report = json.loads((run_dir / "report" / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names == ["teacher", "student", "student-int8-onnx", "teacher-int8-optimum"]
    assert "teacher-int8-optimum" in flagged.stdout  # the terminal summary
    assert sorted(p.name for p in (run_dir / "teacher_int8_optimum").glob("*.onnx")) == [
        "model_quantized.onnx"
    ]


def test_bad_recipe_is_one_clear_error_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        SMOKE.read_text().replace("epochs: 3\n  batch_size: 32\n  learning_rate", "epocs: 3\n  lr")
    )
    result = edgekd("compress", str(bad), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "did you mean 'epochs'" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written for a bad recipe"


def test_validate_and_set(tmp_path: Path) -> None:
    ok = edgekd("validate", str(SMOKE), "--set", "distill.epochs=1")
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = edgekd("validate", str(SMOKE), "--set", "distill.alpha=3")
    assert bad.returncode == 2
    assert "distill.alpha" in bad.stderr


def test_missing_recipe_file_exit_2() -> None:
    result = edgekd("compress", "no/such/recipe.yaml")
    assert result.returncode == 2
    assert "recipe file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_env_shows_the_traceback() -> None:
    result = edgekd("validate", "no/such/recipe.yaml", env={"EDGEKD_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr
