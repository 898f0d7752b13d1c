"""The hardware team's flow: `edgekd benchmark SHIPPED --reference report.json --data TEST` on a device.

The device has the base install only (numpy, onnxruntime, tokenizers: no torch, transformers, onnx or pyarrow).
What is checked: ONNX graphs are read without `onnx`, the reference report's figures, gates and settings judge
the folder, other test texts are refused, a changed folder is named, and the whole flow runs in a fresh venv
made with `pip install` of the package and its base dependencies only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.artifact import external_data_files, param_count_onnx
from edgekd.artifact.onnx_graph import MalformedGraph, read_graph
from edgekd.bench.reference import digest_of_test_texts, load_reference
from edgekd.errors import DataError, InputError
from edgekd.report.schema import Report

REPO = Path(__file__).resolve().parents[1]
FAST = ["--samples", "20", "--warmup", "2"]
BASE_INSTALL_FORBIDS = ("torch", "transformers", "onnx", "pyarrow", "optimum", "datasets")


# ----------------------------------------------------------------------------------------------------------
# ONNX graphs without the onnx package


def test_the_graph_reader_agrees_with_onnx_on_float_and_int8_graphs(onnx_dir, int8_dir):
    import onnx

    for path in (onnx_dir / "model.onnx", int8_dir / "model.onnx"):
        model = onnx.load(str(path), load_external_data=False)
        graph = read_graph(path)
        assert [(t.name, t.dims, t.data_type) for t in graph.initializers] == [
            (t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer
        ]
        assert [(n.op_type, n.inputs) for n in graph.nodes] == [
            (n.op_type, tuple(n.input)) for n in model.graph.node
        ]


def test_the_graph_reader_finds_external_data(tmp_path, onnx_dir):
    import onnx

    model = onnx.load(str(onnx_dir / "model.onnx"))
    onnx.save(
        model,
        str(tmp_path / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert external_data_files(tmp_path / "model.onnx") == ["weights.bin"]
    assert param_count_onnx(tmp_path / "model.onnx") == param_count_onnx(onnx_dir / "model.onnx") > 0


@pytest.mark.parametrize(
    "content",
    [b"", b"\x3a\xff\xff\xff\xff\x0f", b"\x0b not protobuf at all", b"\x3a\x05\x2a\x10abc"],
    ids=["empty", "length-past-end", "group-wire-type", "truncated-initializer"],
)
def test_a_damaged_graph_is_one_clear_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(MalformedGraph):
        read_graph(path)
    with pytest.raises(InputError, match="cannot read the ONNX graph"):
        param_count_onnx(path)


# ----------------------------------------------------------------------------------------------------------
# The reference report


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_classifier_dir, int8_dir, toy_data) -> Path:
    """The build machine's report: the tiny PyTorch teacher against the shipped INT8 folder, with gates."""
    out = tmp_path_factory.mktemp("reference") / "report"
    result = _edgekd(
        "benchmark",
        str(tiny_classifier_dir),
        str(int8_dir),
        "--names",
        "teacher,student-int8-onnx",
        "--data",
        str(toy_data),
        "--gate",
        "max_accuracy_drop_pts=100",
        "--gate",
        "min_compression=1.0",
        "--gate",
        "max_load_s=600",
        "--output-dir",
        str(out),
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_the_reference_report_records_its_test_texts(reference_run, toy_data):
    report = Report.model_validate_json((reference_run / "report.json").read_bytes())
    rows = [json.loads(line) for line in (toy_data / "test.jsonl").read_text().splitlines() if line.strip()]
    labels = (toy_data / "labels.txt").read_text().split()
    digest = digest_of_test_texts([r["text"] for r in rows], [labels.index(r["label"]) for r in rows])
    assert report.benchmark.test_texts_sha256 == digest
    assert report.benchmark.test_texts == len(rows)


def test_a_device_run_is_judged_against_the_reference(reference_run, int8_dir, toy_data, tmp_path):
    out = tmp_path / "device"
    result = _edgekd(
        "benchmark", str(int8_dir), "--reference", str(reference_run), "--data", str(toy_data / "test.jsonl"),
        "--output-dir", str(out), *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _check_device_report(out, reference_run, int8_dir)


def _check_device_report(out: Path, reference_run: Path, int8_dir: Path) -> None:
    reference = load_reference(reference_run)
    report = Report.model_validate_json((out / "report.json").read_bytes())
    teacher, shipped = report.variants
    assert teacher.name == "teacher" and teacher.source and "reference report" in teacher.source
    assert teacher.accuracy == reference.variant.accuracy  # copied, not measured here
    assert shipped.name == "student-int8-onnx" and shipped.source is None and shipped.torch_imported is False
    assert report.reference == "teacher" and report.candidate == "student-int8-onnx"
    assert teacher.latency_ms and shipped.latency_ms and teacher.size_bytes and shipped.size_bytes
    assert teacher.accuracy is not None and shipped.accuracy is not None
    assert shipped.speedup_p50 == pytest.approx(teacher.latency_ms.p50 / shipped.latency_ms.p50)
    assert shipped.compression == pytest.approx(teacher.size_bytes / shipped.size_bytes)
    assert [g.name for g in report.gates] == [g.name for g in reference.report.gates]
    assert report.gates[0].value == pytest.approx((teacher.accuracy - shipped.accuracy) * 100)
    assert report.reference_report is not None and report.reference_report.sha256 == reference.sha256
    assert report.benchmark.max_length == 32  # the folder's edgekd.json, not the CLI's old 128
    assert report.benchmark.threads == reference.report.benchmark.threads
    assert not [w for w in report.warnings if "signed" in w]  # the same files the reference signed
    assert "Judged against the reference report" in (out / "report.md").read_text()
    assert "Judged against the reference report" in (out / "report.html").read_text()


def test_other_test_texts_are_refused_before_anything_is_measured(
    reference_run, int8_dir, toy_data, tmp_path
):
    other = tmp_path / "other"
    other.mkdir()
    lines = (toy_data / "test.jsonl").read_text().splitlines()
    (other / "test.jsonl").write_text("\n".join(lines[1:]) + "\n")
    out = tmp_path / "device"
    result = _edgekd(
        "benchmark", str(int8_dir), "--reference", str(reference_run / "report.json"), "--data", str(other),
        "--output-dir", str(out), *FAST,
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: the test texts differ from those the reference report was measured on" in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "report.json").exists()


def test_a_folder_other_than_the_signed_one_is_named_in_a_warning(
    reference_run, int8_dir, toy_data, tmp_path
):
    changed = tmp_path / "changed"
    shutil.copytree(int8_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "note": "edited on the device"}))
    out = tmp_path / "device"
    result = _edgekd(
        "benchmark", str(changed), "--reference", str(reference_run), "--data", str(toy_data),
        "--output-dir", str(out), *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = Report.model_validate_json((out / "report.json").read_bytes()).warnings
    assert any("not the one the reference report signed: config.json" in w for w in warnings)


# ----------------------------------------------------------------------------------------------------------
# A fresh venv with the base install only


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A venv holding edgekd and its base dependencies only, installed by pip from a wheel of this checkout
    (the wheel is built with the dev venv's setuptools: a build-isolation setup would fetch setuptools again)."""
    root = tmp_path_factory.mktemp("base_venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
         str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, capture_output=True)
    venv_python = root / "venv" / "bin" / "python"
    wheel = next((root / "dist").glob("edgekd-*.whl"))
    install = subprocess.run(
        [str(venv_python), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True
    )
    if install.returncode != 0:
        pytest.fail(f"pip install of the base package failed:\n{install.stderr[-2000:]}")
    return venv_python


@pytest.mark.slow
def test_the_device_flow_runs_with_the_base_install_only(
    base_venv, reference_run, int8_dir, toy_data, tmp_path
):
    absent = subprocess.run(
        [str(base_venv), "-c", "import importlib.util as u, sys; "
         f"print([m for m in {BASE_INSTALL_FORBIDS!r} if u.find_spec(m)])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert absent.stdout.strip() == "[]", f"the base install pulled in {absent.stdout}"
    out = tmp_path / "device"
    # Run the command in-process so that what it imported can be listed afterwards.
    script = (
        "import sys\n"
        "from edgekd.cli.app import main\n"
        f"sys.argv = ['edgekd', 'benchmark', {str(int8_dir)!r}, '--reference', {str(reference_run)!r}, "
        f"'--data', {str(toy_data / 'test.jsonl')!r}, '--output-dir', {str(out)!r}, *{FAST!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
        f"print('imported:', sorted(m for m in {BASE_INSTALL_FORBIDS!r} if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(base_venv), "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode in (0, 3), result.stderr
    assert "imported: []" in result.stdout
    _check_device_report(out, reference_run, int8_dir)


def test_parquet_without_pyarrow_is_one_clear_error(tmp_path, monkeypatch):
    from edgekd.data import read_records

    (tmp_path / "test.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on a device: the import fails
    with pytest.raises(DataError, match="pyarrow") as problem:
        read_records(tmp_path / "test.parquet")
    assert "jsonl" in (problem.value.hint or "")


def _edgekd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekd.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )
