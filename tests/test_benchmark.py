"""The benchmark worker, the benchmark stage's report, the gates, sizes and environment info.

Speed is never asserted: only that every number is there, has the right type and the right relations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.bench.worker import run_worker, worker_env
from edgekd.errors import InputError
from edgekd.recipe import GatesSpec, Recipe
from edgekd.report import evaluate_gates, summary_rows, write_report_md
from edgekd.size import folder_size, model_files, param_count, param_count_onnx, param_count_safetensors
from edgekd.stage import read_stage_json, run_stage
from edgekd.stages.benchmark import BenchmarkStage, check_threads, latency_sample_indices

MAX_LENGTH = 32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="module")
def test_texts(toy_data) -> list[str]:
    lines = (toy_data / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory, test_texts) -> Path:
    path = tmp_path_factory.mktemp("bench_inputs") / "texts.json"
    path.write_text(json.dumps({"texts": test_texts, "latency_texts": test_texts[:8]}))
    return path


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_classifier_dir, toy_labels) -> Path:
    """The tiny classifier exported to ONNX (fp32), laid out as the quantize stage lays out its folder."""
    from optimum.exporters.onnx import main_export

    folder = tmp_path_factory.mktemp("onnx_fp32")
    main_export(str(tiny_classifier_dir), output=folder, task="text-classification", do_validation=False)
    _complete_onnx_folder(folder, tiny_classifier_dir, toy_labels)
    return folder


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, onnx_dir, tiny_classifier_dir, toy_labels) -> Path:
    """The same model after dynamic INT8 quantization, as <run>/quantize/ holds it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("onnx_int8")
    quantize_dynamic(onnx_dir / "model.onnx", folder / "model.onnx", weight_type=QuantType.QInt8)
    shutil.copy(onnx_dir / "config.json", folder / "config.json")
    _complete_onnx_folder(folder, tiny_classifier_dir, toy_labels)
    return folder


def _complete_onnx_folder(folder: Path, source: Path, labels: list[str]) -> None:
    for name in TOKENIZER_FILES:
        if not (folder / name).exists():
            shutil.copy(source / name, folder / name)
    (folder / "edgekd.json").write_text(json.dumps({"labels": labels, "max_length": MAX_LENGTH}))


@pytest.fixture(scope="module")
def pytorch_result(tmp_path_factory, tiny_classifier_dir, texts_file) -> dict:
    out = tmp_path_factory.mktemp("pytorch_result") / "result.json"
    return run_worker(
        tiny_classifier_dir,
        "pytorch",
        texts_file,
        out,
        threads=1,
        warmup=2,
        batch_size=16,
        max_length=MAX_LENGTH,
    )


# ----------------------------------------------------------------------------------------------------------
# Worker


def _check_worker_result(result: dict, n_texts: int, n_requests: int, labels: list[str]) -> None:
    assert result["labels"] == labels
    assert len(result["predictions"]) == n_texts
    assert all(0 <= p < len(labels) for p in result["predictions"])
    for key in ("tokenize_ms", "model_ms", "e2e_ms"):
        assert len(result[key]) == n_requests
        assert all(v > 0 for v in result[key])
    for tok, model, e2e in zip(result["tokenize_ms"], result["model_ms"], result["e2e_ms"], strict=True):
        assert e2e == pytest.approx(tok + model)
    assert result["peak_rss_mb"] > 0
    assert result["peak_rss_accuracy_pass_mb"] >= result["peak_rss_mb"]
    assert result["effective_threads"] == 1


def test_pytorch_worker_runs_in_its_own_process(pytorch_result, test_texts, toy_labels):
    _check_worker_result(pytorch_result, len(test_texts), 8, toy_labels)
    assert pytorch_result["format"] == "pytorch"
    assert pytorch_result["max_length"] == MAX_LENGTH


def test_onnx_worker_cli_stays_torch_free_and_agrees_with_pytorch(
    tmp_path, onnx_dir, texts_file, test_texts, toy_labels, pytorch_result
):
    out = tmp_path / "onnx.json"
    command = [sys.executable, "-m", "edgekd.bench.worker", "--model", str(onnx_dir), "--format", "onnx"]
    command += ["--texts", str(texts_file), "--threads", "1", "--warmup", "2", "--out", str(out)]
    done = subprocess.run(command, env=worker_env(1), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    _check_worker_result(result, len(test_texts), 8, toy_labels)
    assert result["torch_imported"] is False
    # The worker's own memory, not that of this torch-holding parent it was forked from.
    assert result["peak_rss_mb"] < 0.6 * pytorch_result["peak_rss_mb"]
    assert result["max_length"] == MAX_LENGTH  # read from edgekd.json
    # Same weights, same tokenization: the fp32 graph predicts what PyTorch predicts.
    same = sum(a == b for a, b in zip(result["predictions"], pytorch_result["predictions"], strict=True))
    assert same >= 0.98 * len(test_texts)


def test_onnx_tokenization_matches_the_hugging_face_tokenizer(onnx_dir, test_texts):
    from transformers import AutoTokenizer

    from edgekd.bench.worker import OnnxBackend

    backend = OnnxBackend(onnx_dir, threads=1, max_length=8)
    reference = AutoTokenizer.from_pretrained(onnx_dir)
    batch = [*test_texts[:5], "short"]
    ours = backend.encode(batch)
    theirs = reference(batch, padding=True, truncation=True, max_length=8, return_tensors="np")
    for name in ours:
        assert ours[name].tolist() == theirs[name].tolist(), name
    single = backend.encode(["a much longer text that certainly needs truncation to eight tokens"])
    assert single["input_ids"].shape == (1, 8)


def test_worker_reports_a_failure_with_its_stderr(tmp_path, texts_file):
    from edgekd.errors import StageError

    with pytest.raises(StageError, match="failed"):
        run_worker(
            tmp_path,
            "onnx",
            texts_file,
            tmp_path / "out.json",
            threads=1,
            warmup=0,
            batch_size=8,
            max_length=8,
        )


# ----------------------------------------------------------------------------------------------------------
# Stage


def _recipe(toy_data: Path, **gates: float) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "bench-test",
            "seed": 3,
            "data": {"path": str(toy_data), "max_length": MAX_LENGTH},
            "teacher": {"config": {"model_type": "bert"}},
            "student": {"init": "layers", "layers": [0]},
            "benchmark": {"threads": 1, "latency_samples": 10, "warmup": 2, "batch_size": 32},
            "gates": gates,
        }
    )


@pytest.fixture(scope="module")
def benchmarked_run(tmp_path_factory, tiny_classifier_dir, int8_dir, toy_data) -> Path:
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_classifier_dir, run / "teacher" / "model")
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    shutil.copytree(int8_dir, run / "quantize")
    recipe = _recipe(
        toy_data,
        max_accuracy_drop_pts=100,
        max_latency_p90_ms=1e9,
        max_size_mb=1e-6,  # fails: no model fits in one byte
        min_speedup_p50=1e-9,
        min_accuracy=0.0,
    )
    logs: list[str] = []
    keys = {"teacher": "t", "distill": "d", "quantize": "q"}
    run_stage(BenchmarkStage(), recipe, run, keys, log=logs.append)
    assert any("student-int8-onnx" in line for line in logs)
    return run


def test_benchmark_stage_report_follows_the_contract(benchmarked_run, test_texts):
    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    assert isinstance(report["recipe"], str) and report["recipe"] == "bench-test"
    assert isinstance(report["edgekd_version"], str)
    assert isinstance(report["environment"], dict) and "cpu" in report["environment"]
    assert isinstance(report["passed"], bool)
    assert [v["name"] for v in report["variants"]] == ["teacher", "student", "student-int8-onnx"]
    assert [v["format"] for v in report["variants"]] == ["pytorch", "pytorch", "onnx"]
    for v in report["variants"]:
        assert isinstance(v["accuracy"], float) and 0.0 <= v["accuracy"] <= 1.0
        assert isinstance(v["size_bytes"], int) and v["size_bytes"] > 0
        assert isinstance(v["params"], int) and v["params"] > 0
        latency = v["latency_ms"]
        assert all(isinstance(latency[k], float) for k in ("p50", "p90", "p99"))
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert latency["n"] == 10
        for extra in ("macro_f1", "agreement_with_reference", "speedup_p50", "compression", "peak_rss_mb"):
            assert isinstance(v[extra], float), extra
        assert set(v["accuracy_diff_vs_reference_pts"]) == {"diff", "ci95"}
        assert v["latency_ms"]["p50_ci95"][0] <= v["latency_ms"]["p50"] <= v["latency_ms"]["p50_ci95"][1]
        assert {"p50", "p90", "p99"} <= set(v["tokenize_ms"]) and {"p50"} <= set(v["latency_e2e_ms"])
        assert (benchmarked_run / "report" / v["raw"]).is_file()
    for g in report["gates"]:
        assert isinstance(g["name"], str) and isinstance(g["passed"], bool)
        assert isinstance(g["limit"], float) and isinstance(g["value"], float)
    assert report["benchmark"]["test_texts"] == len(test_texts)


def test_benchmark_stage_compares_with_the_teacher(benchmarked_run):
    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    teacher, student, int8 = report["variants"]
    assert teacher["speedup_p50"] == 1.0 and teacher["compression"] == 1.0
    assert teacher["agreement_with_reference"] == 1.0
    assert teacher["accuracy_diff_vs_reference_pts"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    # The student is a copy of the teacher here: same predictions, same size, same parameter count.
    assert student["accuracy"] == teacher["accuracy"] and student["agreement_with_reference"] == 1.0
    assert student["params"] == teacher["params"] and student["compression"] == 1.0
    assert int8["torch_imported"] is False and teacher["torch_imported"] is True
    assert int8["peak_rss_mb"] < 0.6 * teacher["peak_rss_mb"]


def test_benchmark_stage_reports_a_failed_gate_without_raising(benchmarked_run):
    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert list(gates) == [
        "max_accuracy_drop_pts",
        "max_latency_p90_ms",
        "max_size_mb",
        "min_speedup_p50",
        "min_accuracy",
    ]
    assert gates["max_size_mb"]["passed"] is False
    assert gates["max_size_mb"]["value"] == pytest.approx(report["variants"][2]["size_bytes"] / 1e6)
    assert all(g["passed"] for name, g in gates.items() if name != "max_size_mb")
    assert report["passed"] is False
    stage = read_stage_json(benchmarked_run / "report")
    assert stage is not None and stage["metrics"]["passed"] is False
    assert stage["metrics"]["report"] == "report.json"


def test_benchmark_stage_writes_a_readable_sign_off_page(benchmarked_run):
    text = (benchmarked_run / "report" / "report.md").read_text()
    assert "Verdict: FAIL" in text
    assert "| variant | format | accuracy |" in text
    for name in ("`teacher`", "`student`", "`student-int8-onnx`"):
        assert name in text
    assert "**FAIL**" in text and "PASS" in text
    assert "Threads per model: 1" in text


def test_benchmark_stage_refuses_more_threads_than_cores():
    with pytest.raises(InputError, match="threads"):
        check_threads(10_000)


def test_latency_samples_are_seeded_and_drawn_from_the_test_texts():
    first = latency_sample_indices(50, 10, seed=1)
    assert first == latency_sample_indices(50, 10, seed=1)
    assert len(set(first)) == 10 and all(0 <= i < 50 for i in first)
    assert len(latency_sample_indices(3, 10, seed=1)) == 10  # more requests than texts: texts are reused
    with pytest.raises(InputError):
        latency_sample_indices(50, 0, seed=1)


# ----------------------------------------------------------------------------------------------------------
# Gates and rendering on hand-made variants


def _variant(name: str, accuracy: float, size_mb: float, p50: float, p90: float) -> dict:
    return {
        "name": name,
        "format": "onnx" if "onnx" in name else "pytorch",
        "accuracy": accuracy,
        "size_bytes": int(size_mb * 1e6),
        "params": 1000,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p90 * 1.5},
    }


HAND_MADE = [
    _variant("teacher", 0.90, 400.0, 20.0, 30.0),
    _variant("student", 0.89, 100.0, 8.0, 12.0),
    _variant("student-int8-onnx", 0.88, 25.0, 4.0, 6.0),
]


def test_gates_pass_and_fail_on_hand_made_variants():
    gates = evaluate_gates(
        HAND_MADE,
        GatesSpec(
            max_accuracy_drop_pts=2.0, max_latency_p90_ms=5.0, min_speedup_p50=3.0, min_compression=20.0
        ),
    )
    by_name = {g["name"]: g for g in gates}
    assert list(by_name) == [
        "max_accuracy_drop_pts",
        "max_latency_p90_ms",
        "min_speedup_p50",
        "min_compression",
    ]
    # A drop of exactly the limit passes, although 0.90 - 0.88 is not exactly 0.02 in floating point.
    assert by_name["max_accuracy_drop_pts"]["value"] == pytest.approx(2.0)
    assert by_name["max_accuracy_drop_pts"]["passed"] is True
    assert by_name["max_latency_p90_ms"] == pytest.approx({**by_name["max_latency_p90_ms"], "value": 6.0})
    assert by_name["max_latency_p90_ms"]["passed"] is False
    assert by_name["min_speedup_p50"]["value"] == pytest.approx(5.0) and by_name["min_speedup_p50"]["passed"]
    assert by_name["min_compression"]["value"] == pytest.approx(16.0)
    assert by_name["min_compression"]["passed"] is False


def test_gates_size_and_accuracy_limits():
    gates = evaluate_gates(HAND_MADE, {"max_size_mb": 25.0, "min_accuracy": 0.9})
    assert [(g["name"], g["passed"]) for g in gates] == [("max_size_mb", True), ("min_accuracy", False)]
    assert gates[0]["comparison"] == "<=" and gates[1]["comparison"] == ">="


def test_no_gates_set_means_nothing_checked():
    assert evaluate_gates(HAND_MADE, GatesSpec()) == []


def test_gates_need_both_variants_and_known_names():
    with pytest.raises(ValueError, match="student-int8-onnx"):
        evaluate_gates(HAND_MADE[:2], GatesSpec(min_accuracy=0.5))
    with pytest.raises(ValueError, match="unknown gate"):
        evaluate_gates(HAND_MADE, {"max_params": 3})


def test_summary_rows_and_markdown_from_a_hand_made_report(tmp_path):
    variants = [dict(v, speedup_p50=20.0 / v["latency_ms"]["p50"]) for v in HAND_MADE]
    gates = evaluate_gates(variants, GatesSpec(min_speedup_p50=4.0))
    report = {"recipe": "hand", "edgekd_version": "0", "variants": variants, "gates": gates, "passed": True}
    rows = summary_rows(report)
    assert len(rows) == 3 and all(len(row) == 7 for row in rows)
    assert rows[2][:3] == ["student-int8-onnx", "0.8800", "25.00"]
    assert rows[2][5] == "5.00x"
    path = tmp_path / "report.md"
    write_report_md(report, path)
    text = path.read_text()
    assert "Verdict: PASS" in text and "`min_speedup_p50`" in text and "| PASS |" in text


# ----------------------------------------------------------------------------------------------------------
# Sizes, parameter counts, environment


def test_folder_size_counts_model_files_only(tmp_path, tiny_classifier_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_classifier_dir, folder)
    before = folder_size(folder, onnx=False)
    (folder / "stage.json").write_text("{}" * 1000)
    (folder / "train.log").write_text("x" * 1000)
    assert folder_size(folder, onnx=False) == before
    expected = sum(p.stat().st_size for p in folder.iterdir() if p.name not in ("stage.json", "train.log"))
    assert before == expected
    with pytest.raises(InputError):
        folder_size(tmp_path, onnx=False)


def test_onnx_size_includes_external_data(tmp_path, onnx_dir):
    import onnx

    folder = tmp_path / "external"
    shutil.copytree(onnx_dir, folder)
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx_data")
    assert folder / "model.onnx_data" in model_files(folder, onnx=True)
    assert folder_size(folder, onnx=True) > (folder / "model.onnx").stat().st_size + 100_000
    assert param_count_onnx(folder / "model.onnx") == param_count_onnx(onnx_dir / "model.onnx")


def test_param_counts_without_loading_models(tiny_classifier_dir, onnx_dir, int8_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    assert param_count_safetensors(tiny_classifier_dir) == sum(p.numel() for p in model.parameters())
    fp32 = param_count(onnx_dir, onnx=True)
    # Exporters store equal tensors once (random LayerNorm weights are all equal): at most the PyTorch count.
    assert (
        0.9 * param_count(tiny_classifier_dir, onnx=False)
        < fp32
        <= param_count(tiny_classifier_dir, onnx=False)
    )
    # INT8 weights count as parameters; their scales and zero points do not.
    assert param_count(int8_dir, onnx=True) == fp32


def test_environment_is_torch_free_and_complete():
    code = (
        "import json, sys; from edgekd.envinfo import environment; env = environment(); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'env': env}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result["torch"] is False
    env = result["env"]
    assert env["cpu"]["logical_cores"] >= 1
    assert set(env["cpu"]["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}
    assert {"torch", "transformers", "onnxruntime", "optimum", "numpy", "edgekd"} <= set(env["versions"])
    assert env["python"].count(".") == 2
