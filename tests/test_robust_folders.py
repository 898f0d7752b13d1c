"""Bad model folders, report folders, reports and arguments for `edgekd benchmark`, `predict` and `compare`.

Every refusal is exit 2 (1 for a folder that cannot be written, as for `compress`), one `error:` line and one
`hint:` line, no traceback; and `benchmark` refuses before it measures anything (no worker is started).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekd.cli.app import main
from edgekd.recipe.load import load_recipe
from edgekd.stages.base import StageContext
from edgekd.stages.export import ExportStage

REPO = Path(__file__).resolve().parent.parent
TOY_DATA = REPO / "recipes" / "data" / "toy_topics"
MEASURING = "benchmark: loading"  # the harness's first line once workers start
FAST = ["--samples", "4", "--warmup", "0", "--max-length", "32"]


@pytest.fixture(scope="module")
def export_dir(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export folder (model.onnx, tokenizer, edgekd.json with 4 labels, config.json)."""
    run = tmp_path_factory.mktemp("folders_run")
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    (run / "export").mkdir()
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", ["export.parity_samples=8"])
    ExportStage().run(StageContext(recipe, run, {"distill": run / "distill"}, lambda m: None), run / "export")
    return run / "export"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, message: str, exit_code: int = 2) -> None:
    assert "Traceback" not in err, err
    assert code == exit_code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    hints = [line for line in err.splitlines() if line.startswith("  hint:")]
    assert len(errors) == 1 and message in errors[0], err
    assert len(hints) == 1 and len(hints[0]) > len("  hint: "), err


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def write_graph(path: Path, first_input: str = "input_ids") -> None:
    """A valid ONNX graph: int64 `input_ids` -> (batch, 7) `logits` whose argmax is always class 0.

    With `first_input="pixel_values"` it takes a float image instead (not a text classifier).
    """
    from onnx import TensorProto, helper, numpy_helper

    kind = TensorProto.INT64 if first_input == "input_ids" else TensorProto.FLOAT
    weights = np.arange(7, 0, -1, dtype=np.float32).reshape(1, 7) * 1e-3  # class 0 always wins
    nodes = [
        helper.make_node("Cast", [first_input], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["as_float", "axes"], ["summed"], keepdims=1),
        helper.make_node("MatMul", ["summed", "weights"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(weights, "weights"),
    ]
    save_graph(path, nodes, initializers, helper.make_tensor_value_info(first_input, kind, ["b", "s"]), 7)


def write_symbolic_graph(path: Path) -> None:
    """A valid ONNX graph whose 7 all-zero outputs (argmax: class 0) have a symbolic class dimension.

    Shape inference cannot size a slice of a tensor of unknown length, so only a real output shows the 7:
    the graph that `edgekd benchmark` scored at accuracy 0.25 against 4 labels without a word.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["input_ids"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["as_float", "zero"], ["zeros"]),
        helper.make_node("Concat", ["zeros"] * 7, ["wide"], axis=1),
        helper.make_node("Slice", ["wide", "starts", "ends", "axes"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        *(numpy_helper.from_array(np.array([v], dtype=np.int64), n) for n, v in (("starts", 0), ("ends", 7))),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    text = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    save_graph(path, nodes, initializers, text, "classes")


def save_graph(path: Path, nodes: list, initializers: list, graph_input: Any, classes: int | str) -> None:
    import onnx
    from onnx import TensorProto, helper

    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", classes])
    graph = helper.make_graph(nodes, "seven_outputs", [graph_input], [logits], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


# ----------------------------------------------------------------------------------------------------------
# `edgekd benchmark` on bad model folders: exit 2 before any worker starts


def break_onnx_folder(folder: Path, breakage: str) -> None:
    model = folder / "model.onnx"
    if breakage == "truncated model.onnx":
        model.write_bytes(model.read_bytes()[:5000])
    elif breakage == "corrupt model.onnx":
        model.write_bytes(b"this is not a protobuf at all")
    elif breakage == "empty model.onnx":
        model.write_bytes(b"")
    elif breakage == "bad tokenizer.json":
        (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    elif breakage == "config.json is a list":
        (folder / "edgekd.json").unlink()
        (folder / "config.json").write_text("[1, 2]")
    elif breakage == "id2label keys not integers":
        (folder / "edgekd.json").unlink()
        edit_json(folder / "config.json", lambda c: c.update(id2label={k: k for k in ("a", "b", "c", "d")}))
    elif breakage == "fewer labels than outputs":
        edit_json(folder / "edgekd.json", lambda m: m.update(labels=m["labels"][:2]))
    elif breakage == "not a text classifier":
        write_graph(model, first_input="pixel_values")
    elif breakage == "7 outputs, 4 labels":
        write_graph(model)
    elif breakage == "7 symbolic outputs, 4 labels":
        write_symbolic_graph(model)
    else:
        raise AssertionError(breakage)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("truncated model.onnx", "ONNX Runtime cannot load"),
        ("corrupt model.onnx", "ONNX Runtime cannot load"),
        ("empty model.onnx", "ONNX Runtime cannot load"),
        ("bad tokenizer.json", "cannot read"),
        ("config.json is a list", "config.json is not a JSON object"),
        ("id2label keys not integers", "id2label key 'a' is not a class id"),
        ("fewer labels than outputs", "but the folder names 2 classes"),
        ("not a text classifier", "is not a text classifier"),
        ("7 outputs, 4 labels", "but the folder names 4 classes"),
        # The class dimension is symbolic: only a real output shows it (this one was scored 0.25 silently).
        ("7 symbolic outputs, 4 labels", "returned 'logits' with shape [1, 7]"),
    ],
)
def test_benchmark_refuses_a_bad_onnx_folder_before_measuring(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str, message: str
) -> None:
    folder = shutil.copytree(export_dir, tmp_path / "model")
    break_onnx_folder(folder, breakage)
    out_dir = tmp_path / "report"
    code, _, err = run_cli(
        capsys, "benchmark", str(folder), "--data", str(TOY_DATA), "--output-dir", str(out_dir), *FAST
    )
    assert_refused(code, err, message)
    assert MEASURING not in err
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("config.json is a list", "config.json is not a JSON object"),
        ("id2label keys not integers", "id2label key 'x' is not a class id"),
        ("truncated weights", "cannot read the weights"),
    ],
)
def test_benchmark_refuses_a_bad_pytorch_folder_before_measuring(
    tiny_classifier_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    message: str,
) -> None:
    folder = shutil.copytree(tiny_classifier_dir, tmp_path / "model")
    if breakage == "config.json is a list":
        (folder / "config.json").write_text('["bert"]')
    elif breakage == "id2label keys not integers":
        edit_json(folder / "config.json", lambda c: c.update(id2label={"x": "food", "y": "tech"}))
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:3000])
    code, _, err = run_cli(
        capsys, "benchmark", str(folder), "--data", str(TOY_DATA), "--output-dir", str(tmp_path / "r"), *FAST
    )
    assert_refused(code, err, message)
    assert MEASURING not in err


# ----------------------------------------------------------------------------------------------------------
# `edgekd benchmark --output-dir`: checked first, locked, and cleared of a previous report


def test_an_output_dir_that_is_a_file_is_refused_before_measuring(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    for out_dir in (taken, taken / "report"):
        code, _, err = run_cli(
            capsys, "benchmark", str(export_dir), "--data", str(TOY_DATA), "--output-dir", str(out_dir), *FAST
        )
        assert_refused(code, err, "is a file" if out_dir == taken else "which is a file")
        assert MEASURING not in err
    assert taken.read_text() == "mine"


def test_a_read_only_output_dir_is_refused_before_measuring(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "read-only"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    # Tests run as root, where the mode denies nothing: the check is told what a normal user would be.
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) == out_dir and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    try:
        code, _, err = run_cli(
            capsys, "benchmark", str(export_dir), "--data", str(TOY_DATA), "--output-dir", str(out_dir), *FAST
        )
    finally:
        out_dir.chmod(0o755)
    # A folder that cannot be written is the machine's state, not a bad input: exit 1, as for compress.
    assert_refused(code, err, f"the report folder {out_dir} cannot be written", exit_code=1)
    assert MEASURING not in err
    assert list(out_dir.iterdir()) == []


def test_a_second_benchmark_into_a_locked_folder_is_refused(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from filelock import FileLock

    out_dir = tmp_path / "report"
    out_dir.mkdir()
    with FileLock(str(out_dir / ".lock")):  # as the first `edgekd benchmark` holds it while it measures
        code, _, err = run_cli(
            capsys, "benchmark", str(export_dir), "--data", str(TOY_DATA), "--output-dir", str(out_dir), *FAST
        )
    assert_refused(code, err, f"another edgekd benchmark is writing its report into {out_dir}")
    assert MEASURING not in err
    assert sorted(p.name for p in out_dir.iterdir()) == [".lock"]


def test_a_benchmark_replaces_the_previous_report_in_its_folder(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "report"
    (out_dir / "raw").mkdir(parents=True)
    (out_dir / "raw" / "teacher.json").write_text("{}")  # a model of an earlier benchmark into this folder
    (out_dir / "report.md").write_text("stale report")
    (out_dir / "notes.txt").write_text("the user's own file")
    code, _, err = run_cli(
        capsys,
        "benchmark",
        str(export_dir),
        "--names",
        "int8",
        "--data",
        str(TOY_DATA),
        "--output-dir",
        str(out_dir),
        *FAST,
    )
    assert code == 0, err
    assert sorted(p.name for p in (out_dir / "raw").iterdir()) == ["int8.json"]
    assert "stale report" not in (out_dir / "report.md").read_text()
    assert [v["name"] for v in json.loads((out_dir / "report.json").read_text())["variants"]] == ["int8"]
    assert (out_dir / "notes.txt").read_text() == "the user's own file"


# ----------------------------------------------------------------------------------------------------------
# `edgekd benchmark` argument errors carry a hint


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--names", "a,b"], "--names gives 2 name(s) for 1 folder(s)"),
        (["--samples", "0"], "latency samples must be at least 1"),
        (["--samples", "10000000000"], "latency samples must be at most"),
        (["--warmup", "-1"], "warm-up requests must be at least 0"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--seed", "-1"], "the seed must be from 0"),
        (["--candidate", "nobody"], "the candidate 'nobody' is not one of the measured models"),
        (["--gate", "min_accuracy=2"], "--gate min_accuracy"),
        (["--max-length", "4"], "--max-length"),
        (["--data", "/nonexistent/data"], "data folder not found"),
    ],
)
def test_benchmark_argument_errors_have_a_hint(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["benchmark", str(export_dir), "--output-dir", str(tmp_path / "r"), *FAST]
    if "--data" not in args:
        base += ["--data", str(TOY_DATA)]
    code, _, err = run_cli(capsys, *base, *args)
    assert_refused(code, err, message)
    assert MEASURING not in err


# ----------------------------------------------------------------------------------------------------------
# `edgekd predict`


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("max_length 2**70", "sets max_length to 1180591620717411303424"),
        ("max_length true", "sets max_length to true"),
        ("pad_token_id 2**70", "sets pad_token_id 1180591620717411303424"),
        ("7 symbolic outputs, 4 labels", "returned 'logits' with shape [1, 7]"),
    ],
)
def test_predict_refuses_a_bad_folder(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str, message: str
) -> None:
    folder = shutil.copytree(export_dir, tmp_path / "model")
    if breakage == "max_length 2**70":
        edit_json(folder / "edgekd.json", lambda m: m.update(max_length=2**70))
    elif breakage == "max_length true":  # was read as 1 token: every text cut to [CLS]
        edit_json(folder / "edgekd.json", lambda m: m.update(max_length=True))
    elif breakage == "pad_token_id 2**70":
        (folder / "tokenizer_config.json").unlink()  # so config.json's pad_token_id is the one used
        (folder / "special_tokens_map.json").unlink()
        edit_json(folder / "config.json", lambda c: c.update(pad_token_id=2**70))
    else:
        write_symbolic_graph(folder / "model.onnx")
    code, out, err = run_cli(capsys, "predict", str(folder), "the striker scored twice")
    assert_refused(code, err, message)
    assert out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "100000"], "--threads must be a whole number from 1 to"),  # hung creating threads
        (["--threads", "0"], "--threads must be a whole number from 1 to"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--file", "/nonexistent/texts.txt"], "cannot read /nonexistent/texts.txt"),
    ],
)
def test_predict_argument_errors_have_a_hint(export_dir: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "predict", str(export_dir), "some text", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert_refused(result.returncode, result.stderr, message)


def test_predict_refuses_an_argument_that_is_not_utf8(export_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "predict", str(export_dir), "fine", b"caf\xe9 au lait"],
        capture_output=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    err = result.stderr.decode("utf-8", errors="replace")
    assert_refused(result.returncode, err, "text argument 2 is not valid Unicode text")
    assert result.stdout == b""


# ----------------------------------------------------------------------------------------------------------
# `edgekd compare` on malformed reports


def write_report(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"variants": [1, 2]}, "variants[0] is not a model's record"),
        ({"variants": [{"accuracy": 0.9}]}, "variants[0] is not a model's record"),
        ({"variants": {"name": "a"}}, "is not an edgekd report"),
        ([1, 2], "is not an edgekd report"),
        ('{"variants": [', "cannot read"),
    ],
)
def test_compare_refuses_a_malformed_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, message: str
) -> None:
    good = write_report(tmp_path / "good.json", {"variants": [{"name": "a", "accuracy": 0.9}]})
    bad = write_report(tmp_path / "bad.json", content)
    code, _, err = run_cli(capsys, "compare", str(good), str(bad))
    assert_refused(code, err, message)


def test_compare_refuses_oddly_typed_fields_naming_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # report.json is read through its typed schema: a hand-edited value of the wrong type is named, not guessed at.
    odd = {
        "variants": [{"name": "a[/b]", "latency_ms": [1, 2], "size_bytes": 10**400, "accuracy": "high"}],
        "environment": {"cpu": ["x"], "versions": [1], "threads": 3, "thread_env": None},
        "benchmark": "fast",
    }
    good = write_report(tmp_path / "good.json", {"variants": [{"name": "a[/b]", "accuracy": 0.5}]})
    bad = write_report(tmp_path / "odd.json", odd)
    code, _out, err = run_cli(capsys, "compare", str(good), str(bad))
    assert code == 2 and "Traceback" not in err, err
    lines = [line.strip() for line in err.strip().splitlines()]
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), err
    assert "odd.json is not an edgekd report:" in lines[0]
