"""The benchmark worker, the benchmark stage's report, the gates, sizes and environment info.

Speed is never asserted: only that every number is there, has the right type and the right relations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgekd.artifact import folder_size, model_files, param_count, param_count_onnx, param_count_safetensors
from edgekd.bench.measure import THROUGHPUT_ROUNDS, lengths_for, measure_models, round_order, round_slices
from edgekd.bench.spec import HarnessSettings, MeasuredModel
from edgekd.bench.worker import WorkerProcess
from edgekd.errors import InputError, StageError
from edgekd.recipe.schema import GatesSpec, Recipe
from edgekd.report.gates import GATES_BY_NAME, evaluate_gates
from edgekd.report.markdown import summary_rows, write_report_md
from edgekd.stages.benchmark import BenchmarkStage, check_threads, latency_sample_indices
from edgekd.stages.runner import read_stage_json, run_stage

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def test_texts(toy_data) -> list[str]:
    lines = (toy_data / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory, test_texts) -> Path:
    path = tmp_path_factory.mktemp("bench_inputs") / "texts.json"
    path.write_text(json.dumps({"texts": test_texts, "latency_texts": test_texts[:8]}))
    return path


# ----------------------------------------------------------------------------------------------------------
# Worker protocol


def test_onnx_worker_answers_every_command_and_stays_torch_free(int8_dir, test_texts, toy_labels):
    with WorkerProcess("int8", int8_dir, "onnx", threads=1, max_length=MAX_LENGTH) as worker:
        ready = worker.wait_ready()
        assert ready["labels"] == toy_labels and ready["torch_imported"] is False
        assert ready["max_positions"] == 64 and ready["effective_threads"] == 1
        assert worker.request({"cmd": "warmup", "texts": test_texts[:3]})["n"] == 3
        latency = worker.request({"cmd": "latency", "texts": test_texts[:5]})
        assert all(len(latency[k]) == 5 for k in ("tokenize_ms", "model_ms", "e2e_ms"))
        for tok, model, e2e in zip(
            latency["tokenize_ms"], latency["model_ms"], latency["e2e_ms"], strict=True
        ):
            assert e2e == pytest.approx(tok + model) and model > 0
        fixed = worker.request(
            {"cmd": "fixed_length", "text": " ".join(test_texts), "length": 16, "repeats": 4}
        )
        assert fixed["tokens"] == 16 and len(fixed["model_ms"]) == 4
        predicted = worker.request({"cmd": "predict", "texts": test_texts, "batch_size": 16, "threads": 2})
        assert len(predicted["predictions"]) == len(test_texts) and predicted["threads"] == 2
        rates = worker.request(
            {"cmd": "throughput", "texts": test_texts[:16], "batch_sizes": [8], "threads": 1}
        )
        assert set(rates["texts_per_s"]) == {"8"} and rates["texts_per_s"]["8"] > 0
        assert rates["peak_rss_mb"] >= latency["rss_mb"] > 0
        with pytest.raises(StageError, match="unknown command"):
            worker.request({"cmd": "dance"})
        assert worker.request({"cmd": "status"})["ok"] is True  # an error answer does not end the worker


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
    assert backend.encode_fixed("short", 12)["input_ids"].shape == (1, 12)  # padded up to the exact length


def test_onnx_backend_is_the_runtime_classifier_and_predicts_its_labels(int8_dir, test_texts, toy_labels):
    """The latency the benchmark signs is that of the code users deploy: edgekd.runtime.Classifier."""
    from edgekd.bench.worker import OnnxBackend, predict_all
    from edgekd.runtime import Classifier

    backend = OnnxBackend(int8_dir, threads=1, max_length=MAX_LENGTH)
    assert isinstance(backend.classifier, Classifier)
    deployed = Classifier.load(int8_dir, threads=1)
    assert backend.classifier.max_length == deployed.max_length == MAX_LENGTH
    assert backend.labels == deployed.labels == toy_labels
    for name in (
        "intra_op_num_threads",
        "inter_op_num_threads",
        "execution_mode",
        "graph_optimization_level",
    ):
        assert getattr(backend.classifier.session.get_session_options(), name) == getattr(
            deployed.session.get_session_options(), name
        ), name
    expected = [p.label for p in deployed.predict(test_texts, batch_size=16)]
    assert [toy_labels[i] for i in predict_all(backend, test_texts, batch_size=16)] == expected
    batch = test_texts[:4]
    for name, array in backend.encode(batch).items():
        assert array.tolist() == deployed.encode(batch)[name].tolist(), name
    backend.set_threads(2)
    assert isinstance(backend.classifier, Classifier) and backend.effective_threads() == 2
    assert [toy_labels[i] for i in predict_all(backend, test_texts, batch_size=16)] == expected
    with WorkerProcess("int8", int8_dir, "onnx", threads=1, max_length=MAX_LENGTH) as worker:
        assert worker.wait_ready()["labels"] == toy_labels
        predicted = worker.request({"cmd": "predict", "texts": test_texts, "batch_size": 16})["predictions"]
    assert [toy_labels[i] for i in predicted] == expected


def test_worker_that_cannot_load_reports_its_error(tmp_path):
    worker = WorkerProcess("broken", tmp_path, "onnx", threads=1, max_length=8)
    try:
        with pytest.raises(StageError, match="broken"):
            worker.wait_ready()
    finally:
        worker.close()


class FakeWorker:
    """Records every command into a shared journal and answers like a worker would."""

    def __init__(self, model: MeasuredModel, journal: list[tuple[str, dict]]) -> None:
        self.name = model.name
        self.journal = journal

    def wait_ready(self) -> dict:
        return {"labels": ["a", "b"], "max_positions": 64 if self.name == "small" else 512}

    def request(self, command: dict) -> dict:
        self.journal.append((self.name, command))
        answer: dict = {"ok": True, "peak_rss_mb": 1.0, "rss_mb": 1.0}
        if command["cmd"] == "latency":
            n = len(command["texts"])
            answer.update(tokenize_ms=[0.1] * n, model_ms=[1.0] * n, e2e_ms=[1.1] * n)
        elif command["cmd"] == "fixed_length":
            answer.update(tokens=command["length"], model_ms=[1.0] * command["repeats"])
        elif command["cmd"] == "predict":
            answer.update(predictions=[0] * len(command["texts"]), seconds=0.1)
        elif command["cmd"] == "throughput":
            answer.update(
                texts_per_s={str(b): 10.0 for b in command["batch_sizes"]}, threads=command["threads"]
            )
        return answer

    def close(self) -> None:
        self.journal.append((self.name, {"cmd": "closed"}))


def test_latency_is_measured_in_interleaved_rotated_rounds():
    journal: list[tuple[str, dict]] = []
    models = [MeasuredModel(n, Path(n), "onnx") for n in ("ref", "mid", "small")]
    settings = HarnessSettings(
        latency_samples=7, warmup=2, round_size=3, seq_lengths=(16, 128), seq_samples=2
    )
    texts = [f"text {i}" for i in range(7)]
    measured = measure_models(
        models,
        texts,
        texts,
        settings,
        log=lambda _: None,
        worker_factory=lambda m, *_: FakeWorker(m, journal),
    )
    latency = [(name, cmd["texts"]) for name, cmd in journal if cmd["cmd"] == "latency"]
    # 3 rounds (3 + 3 + 1 requests), each served by every model in an order rotated by one per round.
    assert [name for name, _ in latency] == [
        "ref",
        "mid",
        "small",
        "mid",
        "small",
        "ref",
        "small",
        "ref",
        "mid",
    ]
    for start in (0, 3, 6):
        assert latency[start][1] == latency[start + 1][1] == latency[start + 2][1]
    assert [texts for _, texts in latency[::3]] == [texts[0:3], texts[3:6], texts[6:7]]
    assert all(
        m.model_ms == [1.0] * 7 and m.round_of_request == [0, 0, 0, 1, 1, 1, 2] for m in measured.values()
    )
    # Sequence lengths are capped per model: the small one measures 64 instead of 128.
    assert sorted(measured["small"].by_length_ms) == [16, 64] and sorted(measured["ref"].by_length_ms) == [
        16,
        128,
    ]
    fixed = [(name, cmd["length"]) for name, cmd in journal if cmd["cmd"] == "fixed_length"]
    assert fixed[:3] == [("ref", 16), ("mid", 16), ("small", 16)]
    throughput = [cmd for _, cmd in journal if cmd["cmd"] == "throughput"]
    assert len(throughput) == 3 * THROUGHPUT_ROUNDS and throughput[0]["batch_sizes"] == [8, 32]
    # The accuracy pass uses every core like throughput (predictions do not depend on threads); latency used 1.
    predict = [cmd for _, cmd in journal if cmd["cmd"] == "predict"]
    assert len(predict) == 3 and {cmd["threads"] for cmd in predict} == {throughput[0]["threads"]}
    assert all(m.accuracy_pass_threads == throughput[0]["threads"] for m in measured.values())
    assert [name for name, cmd in journal if cmd["cmd"] == "closed"] == ["small", "mid", "ref"]


def test_round_order_rotates_and_round_slices_cover_every_request():
    assert [round_order(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    assert round_slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert lengths_for((16, 64, 128, 256), 100) == [16, 64, 100]
    assert lengths_for((16, 64), None) == [16, 64]


# ----------------------------------------------------------------------------------------------------------
# Stage


def _recipe(toy_data: Path, **gates: float) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "bench-test",
            "seed": 3,
            "data": {"path": str(toy_data), "max_length": MAX_LENGTH},
            "teacher": {"config": {"model_type": "bert"}, "tokenizer": {"vocab_size": 300}},
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
        max_latency_p99_ms=1e9,
        max_peak_rss_mb=1e9,
        max_load_s=1e9,
        min_throughput_texts_per_s=1e-9,
    )
    logs: list[str] = []
    keys = {"teacher": "t", "distill": "d", "quantize": "q"}
    for stage, tag in (("teacher", "ce"), ("distill", "kd")):
        (run / stage / "log_history.json").write_text(json.dumps(_log_history(tag)))
    run_stage(BenchmarkStage(), recipe, run, keys, log=logs.append)
    assert any("student-int8-onnx" in line for line in logs)
    return run


def _log_history(tag: str) -> list[dict]:
    """A Trainer log_history as the teacher and distill stages save it (training and eval entries)."""
    entries: list[dict] = []
    for step in range(1, 7):
        entries.append({"loss": 2.0 / step, f"{tag}_loss": 1.5 / step, "epoch": step / 3, "step": step})
        if step % 3 == 0:
            entries.append(
                {"eval_loss": 1.8 / step, "eval_accuracy": 0.3 + step / 20, "epoch": step / 3, "step": step}
            )
    return entries


@pytest.mark.slow
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


# The keys report.json had before it was written through edgekd.report.schema.Report: consumers and the
# committed reports depend on them, so the typed writer must give back every one (and add only schema_version).
KEYS_BEFORE_THE_SCHEMA = {
    "report": {
        "recipe",
        "edgekd_version",
        "created_utc",
        "environment",
        "benchmark",
        "reference",
        "candidate",
    }
    | {"variants", "gates", "passed", "warnings"},
    "environment": {"cpu", "memory_total_mb", "versions", "python", "python_implementation", "platform"}
    | {"machine", "load_average", "thread_env", "other_processes_cores", "load_average_after", "threads"},
    "cpu": {"model", "logical_cores", "physical_cores", "usable_cores", "cgroup_cpu_quota", "flags"},
    "threads": {"latency_threads", "accuracy_threads", "throughput_threads", "effective_threads"}
    | {"inter_op_threads", "onnxruntime", "worker_env"},
    "benchmark": {"threads", "latency_samples", "warmup", "batch_size", "seed", "max_length", "test_texts"}
    | {"interleaved_rounds", "round_size", "seq_lengths", "seq_samples", "throughput_batch_sizes"}
    | {"latency_definition"},
    "variant": {"name", "format", "accuracy", "macro_f1", "per_class", "size_bytes", "size_mb", "params"}
    | {"latency_ms", "latency_box_ms", "latency_e2e_ms", "tokenize_ms", "latency_by_length_ms"}
    | {"throughput_texts_per_s", "throughput_threads", "throughput_per_s", "accuracy_pass_threads"}
    | {"peak_rss_mb", "peak_rss_accuracy_pass_mb", "peak_rss_throughput_mb", "rss_after_load_mb", "load_s"}
    | {"threads", "effective_threads", "max_positions", "torch_imported", "raw", "folder"}
    | {"agreement_with_reference", "accuracy_diff_vs_reference_pts", "speedup_p50", "speedup_e2e_p50"}
    | {"compression", "params_ratio"},
    "latency_ms": {"p50", "p90", "p99", "mean", "n", "p50_ci95"},
    "gate": {
        "name",
        "limit",
        "value",
        "passed",
        "comparison",
        "unit",
        "candidate",
        "reference",
        "description",
    },
}


# Optional keys added since (within the same schema version: nothing changed meaning or went away).
ADDED_SINCE = {
    "variant": {"files", "accuracy_ci95", "throughput_range_texts_per_s", "paired_diffs", "source"},
    "benchmark": {"test_texts_sha256", "out_of_scope_label"},
    "latency_ms": {"p90_ci95", "p99_ci95"},
    "gate": {"verdict", "ci95", "ci95_from", "rule", "suggested_samples"},
    "environment": {"virtualization", "os"},
    "cpu": {"vendor", "family", "model_number", "stepping", "implementer", "part", "variant", "revision"}
    | {"base_mhz", "max_mhz", "governor", "caches_kib"},
}


@pytest.mark.slow
def test_the_typed_report_keeps_every_key_and_declares_every_one_it_writes(benchmarked_run):
    from edgekd.report.schema import SCHEMA_VERSION, Report, undeclared_keys

    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    env = report["environment"]
    written = {
        "report": set(report) - {"schema_version"},
        "environment": set(env),
        "cpu": set(env["cpu"]),
        "threads": set(env["threads"]),
        "benchmark": set(report["benchmark"]),
        "latency_ms": set(report["variants"][0]["latency_ms"]),
        "gate": set(report["gates"][0]),
    }
    assert written == {
        key: keys | ADDED_SINCE.get(key, set())
        for key, keys in KEYS_BEFORE_THE_SCHEMA.items()
        if key != "variant"
    }
    for v in report["variants"]:
        assert set(v) == KEYS_BEFORE_THE_SCHEMA["variant"] | ADDED_SINCE["variant"], v["name"]
    # The writer produces declared fields only, at every depth; reading the file back keeps every value.
    typed = Report.model_validate(report)
    assert undeclared_keys(typed) == []
    assert typed.to_json() == report


@pytest.mark.slow
def test_the_report_names_every_measured_file_with_its_sha256(benchmarked_run):
    import hashlib

    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    shipped = next(v for v in report["variants"] if v["name"] == "student-int8-onnx")
    folder = benchmarked_run / "quantize"
    assert "model.onnx" in {f["path"] for f in shipped["files"]}
    for f in shipped["files"]:
        data = (folder / f["path"]).read_bytes()
        assert (f["bytes"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert sum(f["bytes"] for f in shipped["files"]) == shipped["size_bytes"]  # the files the size counts
    teacher = report["variants"][0]
    assert any(f["path"].endswith(".safetensors") for f in teacher["files"])
    page = (benchmarked_run / "report" / "report.md").read_text()
    assert "## Files of `student-int8-onnx`" in page and shipped["files"][0]["sha256"] in page


@pytest.mark.slow
def test_benchmark_stage_adds_lengths_throughput_and_environment(benchmarked_run):
    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    env = report["environment"]
    assert len(env["load_average"]) == 3 and len(env["load_average_after"]) == 3
    assert env["threads"]["latency_threads"] == 1 and env["threads"]["throughput_threads"] >= 1
    assert env["threads"]["accuracy_threads"] == env["threads"]["throughput_threads"]
    markdown = (benchmarked_run / "report" / "report.md").read_text()
    assert f"- Threads: 1 for latency, {env['threads']['accuracy_threads']} for accuracy, " in markdown
    assert env["threads"]["onnxruntime"]["allow_spinning"] is False
    for v in report["variants"]:
        # The tiny models have 64 positions: 128 and 256 are capped to 64.
        assert [row["tokens"] for row in v["latency_by_length_ms"]] == [16, 64]
        assert all(row["n"] == 30 and row["p50"] > 0 for row in v["latency_by_length_ms"])
        assert set(v["throughput_texts_per_s"]) == {"8", "32"}
        assert all(rate > 0 for rate in v["throughput_texts_per_s"].values())
        assert v["peak_rss_throughput_mb"] >= v["peak_rss_mb"] > 0
        box = v["latency_box_ms"]
        assert box["min"] <= box["p25"] <= box["p50"] == v["latency_ms"]["p50"] <= box["p75"] <= box["max"]
        raw = json.loads((benchmarked_run / "report" / v["raw"]).read_text())
        assert len(raw["model_ms"]) == len(raw["round_of_request"]) == 10
    text = (benchmarked_run / "report" / "report.md").read_text()
    assert "## Latency by sequence length" in text and "## Throughput" in text and "after:" in text


@pytest.mark.slow
def test_benchmark_stage_writes_report_html_with_every_chart(benchmarked_run):
    page = (benchmarked_run / "report" / "report.html").read_text()
    for chart in ("chart-pareto", "chart-size", "chart-latency-dist", "chart-seq-latency"):
        assert f"<svg id='{chart}'" in page
    # The fixture wrote teacher and distill training logs: their curves are drawn too.
    for chart in ("chart-training-teacher", "chart-training-distill", "chart-eval-accuracy"):
        assert f"<svg id='{chart}'" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


@pytest.mark.slow
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


@pytest.mark.slow
def test_benchmark_stage_reports_a_failed_gate_without_raising(benchmarked_run):
    report = json.loads((benchmarked_run / "report" / "report.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert list(gates) == [
        "max_accuracy_drop_pts",
        "max_latency_p90_ms",
        "max_size_mb",
        "min_speedup_p50",
        "min_accuracy",
        "max_latency_p99_ms",
        "max_peak_rss_mb",
        "max_load_s",
        "min_throughput_texts_per_s",
    ]
    assert gates["max_load_s"]["value"] > 0 and gates["min_throughput_texts_per_s"]["value"] > 0
    assert gates["max_size_mb"]["passed"] is False
    assert gates["max_size_mb"]["value"] == pytest.approx(report["variants"][2]["size_bytes"] / 1e6)
    assert all(g["passed"] for name, g in gates.items() if name != "max_size_mb")
    assert report["passed"] is False
    stage = read_stage_json(benchmarked_run / "report")
    assert stage is not None and stage["metrics"]["passed"] is False
    assert stage["metrics"]["report"] == "report.json"


@pytest.mark.slow
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
        "peak_rss_mb": size_mb * 2,
        "load_s": size_mb / 100,
        "throughput_texts_per_s": {"8": 1000 / p50, "32": 2000 / p50},
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
    by_name = {g.name: g for g in gates}
    assert list(by_name) == [
        "max_accuracy_drop_pts",
        "max_latency_p90_ms",
        "min_speedup_p50",
        "min_compression",
    ]
    # A drop of exactly the limit passes, although 0.90 - 0.88 is not exactly 0.02 in floating point.
    assert by_name["max_accuracy_drop_pts"].value == pytest.approx(2.0)
    assert by_name["max_accuracy_drop_pts"].passed is True
    assert by_name["max_latency_p90_ms"].value == pytest.approx(6.0)
    assert by_name["max_latency_p90_ms"].passed is False
    assert by_name["min_speedup_p50"].value == pytest.approx(5.0) and by_name["min_speedup_p50"].passed
    assert by_name["min_compression"].value == pytest.approx(16.0)
    assert by_name["min_compression"].passed is False


def test_sign_off_gates_on_tail_latency_memory_load_time_and_throughput():
    limits = {
        "max_latency_p99_ms": 9.0,
        "max_peak_rss_mb": 40.0,
        "max_load_s": 0.2,
        "min_throughput_texts_per_s": 600,
    }
    gates = {g.name: g for g in evaluate_gates(HAND_MADE, limits)}
    assert list(gates) == list(limits)  # in the order of GATE_RULES
    # the candidate: p99 6.0 * 1.5 = 9.0 ms (a limit is inclusive), 50 MB peak RSS, 0.25 s to load, and
    # 2000 / 4.0 = 500 texts/s at its largest batch size (32; 250 at batch 8 is not what the gate reads)
    assert (gates["max_latency_p99_ms"].value, gates["max_latency_p99_ms"].passed) == (
        pytest.approx(9.0),
        True,
    )
    assert (gates["max_peak_rss_mb"].value, gates["max_peak_rss_mb"].passed) == (pytest.approx(50.0), False)
    assert (gates["max_load_s"].value, gates["max_load_s"].passed) == (pytest.approx(0.25), False)
    throughput = gates["min_throughput_texts_per_s"]
    assert (throughput.value, throughput.passed, throughput.unit) == (pytest.approx(500.0), False, "texts/s")
    without = [{k: v for k, v in variant.items() if k != "load_s"} for variant in HAND_MADE]
    with pytest.raises(ValueError, match="has no load_s"):
        evaluate_gates(without, {"max_load_s": 1.0})


def test_the_later_gates_stay_out_of_the_benchmark_key_until_set():
    from edgekd.recipe.load import load_recipe
    from edgekd.stages.benchmark import LATER_GATES

    smoke = Path(__file__).resolve().parent.parent / "recipes" / "smoke.yaml"
    plain = BenchmarkStage().params(load_recipe(smoke))["gates"]
    assert not set(LATER_GATES) & set(plain)
    gated = BenchmarkStage().params(load_recipe(smoke, ["gates.max_load_s=2"]))["gates"]
    assert gated["max_load_s"] == 2 and set(gated) - set(plain) == {"max_load_s"}


def test_gates_size_and_accuracy_limits():
    gates = evaluate_gates(HAND_MADE, {"max_size_mb": 25.0, "min_accuracy": 0.9})
    assert [(g.name, g.passed) for g in gates] == [("max_size_mb", True), ("min_accuracy", False)]
    assert gates[0].comparison == "<=" and gates[1].comparison == ">="


def test_every_recipe_gate_has_a_rule_and_is_evaluated():
    numeric = [name for name in GatesSpec.model_fields if name != "beat_optimum_baseline"]
    assert set(numeric) == set(GATES_BY_NAME)
    every = GatesSpec(**{name: 1.0 for name in numeric})
    scored = [{**v, "in_scope_accuracy": 0.95, "out_of_scope_recall": 0.6} for v in HAND_MADE]
    assert [g.name for g in evaluate_gates(scored, every)] == numeric


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
        "import json, sys; from edgekd.bench.envinfo import environment; env = environment(); "
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


# ----------------------------------------------------------------------------------------------------------
# `edgekd benchmark` and `edgekd compare` through the real command line


def edgekd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekd.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_classifier_dir, onnx_dir, int8_dir, toy_data):
    """A failing-gate run (PyTorch vs a bare ONNX folder) and a passing one (two ONNX folders)."""
    root = tmp_path_factory.mktemp("cli")
    bare = root / "bare-int8"  # an ONNX folder edgekd did not write: labels from config.json id2label
    shutil.copytree(int8_dir, bare)
    (bare / "edgekd.json").unlink()
    common = ["--data", str(toy_data), "--samples", "6", "--warmup", "1", "--max-length", str(MAX_LENGTH)]
    failing = edgekd_cli(
        *("benchmark", str(tiny_classifier_dir), str(bare), "--names", "teacher,int8", *common),
        *(
            "--output-dir",
            str(root / "fail"),
            "--gate",
            "max_size_mb=0.000001",
            "--gate",
            "min_speedup_p50=1e-3",
        ),
    )
    # A hardware team's folder may hold only test texts: the reference model then names the classes.
    test_only = root / "test-only"
    test_only.mkdir()
    shutil.copy(toy_data / "test.jsonl", test_only / "test.jsonl")
    test_only_args = [*common[2:], "--data", str(test_only)]
    passing = edgekd_cli(
        *("benchmark", str(onnx_dir), str(bare), *test_only_args, "--output-dir", str(root / "pass")),
        *("--gate", "max_accuracy_drop_pts=100"),
    )
    return root, failing, passing


@pytest.mark.slow
def test_benchmark_command_exits_3_on_a_failed_gate_and_writes_the_reports(cli_runs):
    root, failing, _ = cli_runs
    assert failing.returncode == 3, failing.stderr[-3000:]
    assert "gate(s) failed: max_size_mb" in failing.stderr and "Traceback" not in failing.stderr
    assert "report.html" in failing.stdout
    report = json.loads((root / "fail" / "report.json").read_text())
    assert [(v["name"], v["format"]) for v in report["variants"]] == [
        ("teacher", "pytorch"),
        ("int8", "onnx"),
    ]
    assert (report["reference"], report["candidate"]) == ("teacher", "int8")
    assert [(g["name"], g["passed"]) for g in report["gates"]] == [
        ("max_size_mb", False),
        ("min_speedup_p50", True),
    ]
    # .lock: `edgekd benchmark` holds a lock on its report folder, as compress does on its run folder.
    assert {p.name for p in (root / "fail").iterdir()} == {
        "report.json",
        "report.md",
        "report.html",
        "raw",
        ".lock",
    }


@pytest.mark.slow
def test_benchmark_command_exits_0_when_every_gate_passes(cli_runs):
    root, _, passing = cli_runs
    assert passing.returncode == 0, passing.stderr[-3000:]
    report = json.loads((root / "pass" / "report.json").read_text())
    assert [v["format"] for v in report["variants"]] == ["onnx", "onnx"]
    assert report["variants"][1]["name"] == "bare-int8" and report["passed"] is True
    assert report["benchmark"]["test_texts"] == 160  # from a folder with no train split
    assert all(v["torch_imported"] is False for v in report["variants"])


@pytest.mark.slow
def test_compare_command_prints_per_variant_and_environment_differences(cli_runs):
    root, _, _ = cli_runs
    result = edgekd_cli("compare", str(root / "fail"), str(root / "pass" / "report.json"))
    assert result.returncode == 0, result.stderr
    # No shared names, as many models: matched by position.
    for text in (
        "teacher / onnx_fp32",
        "int8 / bare-int8",
        "accuracy",
        "p50 ms",
        "p90 ms",
        "size MB",
        "speed-up",
    ):
        assert text in result.stdout
    assert "environment" in result.stdout


def _relabelled_data(root: Path, toy_data: Path) -> Path:
    """The toy data with every class renamed, so no model trained on the original labels matches it."""
    folder = root / "relabelled"
    folder.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        rows = [json.loads(line) for line in (toy_data / name).read_text().splitlines()]
        (folder / name).write_text("".join(json.dumps({**r, "label": "x" + r["label"]}) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_a_model", "is neither a PyTorch model folder"),
        ("labels", "predicts classes the dataset does not have"),
        ("threads", "threads is 999"),
        ("zero_samples", "latency samples must be at least 1"),
    ],
)
def test_benchmark_command_rejects_bad_input_with_exit_2(case, message, tmp_path, int8_dir, toy_data):
    data, models, extra = toy_data, [str(int8_dir)], []
    if case == "not_a_model":
        (tmp_path / "notes.txt").write_text("not a model")
        models = [str(tmp_path)]
    elif case == "labels":
        data = _relabelled_data(tmp_path, toy_data)
    elif case == "threads":
        extra = ["--threads", "999"]
    else:
        extra = ["--samples", "0"]
    result = edgekd_cli(
        "benchmark", *models, "--data", str(data), "--output-dir", str(tmp_path / "out"), *extra
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[0].startswith("error:")
    assert not (tmp_path / "out").exists()


def test_out_of_scope_scores_split_accuracy_and_recall():
    import numpy as np

    from edgekd.bench.records import check_out_of_scope_label, out_of_scope_scores
    from edgekd.errors import DataError

    # class 2 is "out of scope": 3 in-scope rows (2 right), 2 out-of-scope rows (1 caught)
    gold = [0, 1, 1, 2, 2]
    predicted = np.asarray([0, 1, 2, 2, 0])
    assert out_of_scope_scores(gold, predicted, oos=2) == {
        "in_scope_accuracy": pytest.approx(2 / 3),
        "out_of_scope_recall": pytest.approx(0.5),
    }
    assert out_of_scope_scores([0, 1], np.asarray([0, 0]), oos=2)["out_of_scope_recall"] is None
    assert check_out_of_scope_label("oos", ["a", "oos"]) == 1
    assert check_out_of_scope_label(None, ["a"]) is None
    with pytest.raises(DataError, match="not one of the dataset's 2 classes"):
        check_out_of_scope_label("none", ["a", "oos"])


def test_report_md_has_an_out_of_scope_section_only_when_measured(tmp_path):
    plain = {"variants": HAND_MADE, "gates": []}
    with_oos = {
        "variants": [dict(v, in_scope_accuracy=0.9, out_of_scope_recall=0.625) for v in HAND_MADE],
        "gates": [],
    }
    write_report_md(plain, tmp_path / "plain.md")
    write_report_md(with_oos, tmp_path / "oos.md")
    assert "## Out of scope" not in (tmp_path / "plain.md").read_text()
    text = (tmp_path / "oos.md").read_text()
    assert "## Out of scope" in text and "0.6250" in text


def test_stage_times_come_from_each_upstream_stage_record_in_chain_order():
    from edgekd.stages.benchmark import upstream_stage_times

    upstream: dict[str, dict[str, Any]] = {
        # the teacher was resumed: 60 s of its work came from the invocation that was interrupted
        "teacher": {"wall_time_s": 10.5, "carried_over_s": 60.0},
        "distill": {"metrics": {}},  # a record without a time (hand-edited) is left out
        "export": {"wall_time_s": 1.25},
        "quantize": {"wall_time_s": 3.0},
    }
    assert upstream_stage_times(upstream) == [
        {"stage": "teacher", "wall_time_s": 70.5, "carried_over_s": 60.0},
        {"stage": "export", "wall_time_s": 1.25},
        {"stage": "quantize", "wall_time_s": 3.0},
    ]


def test_report_md_says_where_the_time_went(tmp_path):
    report = {
        "variants": HAND_MADE,
        "gates": [],
        "stage_times": [
            {"stage": "teacher", "wall_time_s": 90.0, "carried_over_s": 40.0},
            {"stage": "distill", "wall_time_s": 30.0},
        ],
    }
    write_report_md(report, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "## Where the time went" in text
    assert "| `teacher` (resumed: 40.0 s before) | 90.0 | 75% |" in text and "120.0 (2.0 min)" in text
    assert "| `distill` | 30.0 | 25% |" in text
