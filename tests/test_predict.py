"""`edgekd predict`: torch-free, label and score per text, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edgekd.recipe.load import load_recipe
from edgekd.runtime import Classifier
from edgekd.stages.base import StageContext
from edgekd.stages.export import ExportStage

REPO = Path(__file__).resolve().parent.parent
LONG_TEXT = " ".join(["the striker scored again in the second half"] * 10)
# Runs the CLI with the training stack made unimportable: `sys.modules[name] = None` makes `import name` fail.
BLOCKED_CLI = """
import sys
for name in ("torch", "transformers", "optimum", "onnx", "datasets", "neural_compressor"):
    sys.modules[name] = None
from edgekd.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def folder(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("predict_run")
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    (run / "export").mkdir()
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", ["export.parity_samples=8"])
    ExportStage().run(StageContext(recipe, run, {"distill": run / "distill"}, lambda m: None), run / "export")
    return run / "export"


def predict(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, "predict", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed


def test_predict_prints_label_and_score_per_text_without_torch(folder, toy_texts):
    texts = toy_texts[:5]
    result = predict(str(folder), *texts, "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    expected = Classifier.load(folder, threads=1).predict(texts)
    assert [line.split("\t")[0] for line in lines] == [p.label for p in expected]
    assert [float(line.split("\t")[1]) for line in lines] == pytest.approx(
        [p.score for p in expected], abs=1e-4
    )


def test_json_output_with_a_file_and_batches(folder, toy_texts, tmp_path):
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join([toy_texts[0], "", "   ", toy_texts[1]]) + "\n", encoding="utf-8")
    result = predict(str(folder), "--file", str(texts_file), "--json", "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["text"] for row in rows] == [toy_texts[0], toy_texts[1]]  # blank lines are skipped
    for row in rows:
        assert set(row) == {"text", "label", "score", "scores"}
        assert row["scores"][row["label"]] == row["score"] == max(row["scores"].values())


def test_long_texts_are_truncated_with_one_note_and_empty_text_is_classified(folder):
    result = predict(str(folder), LONG_TEXT, LONG_TEXT, "")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip("\n").splitlines()) == 3
    assert result.stderr.count("truncated") == 1
    assert "max_length=32" in result.stderr
    assert "1 empty text(s)" in result.stderr


def test_stdin_is_read_with_a_dash(folder):
    result = predict(str(folder), "--file", "-", stdin=b"the striker scored\nrain tomorrow\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_tokenizer", "has no tokenizer.json"),
        ("no_labels", "names no classes"),
        ("tokenizer_too_big", "the tokenizer does not belong to this model"),
        ("not_utf8", "is not UTF-8 text"),
        ("no_texts", "no texts to classify"),
        ("missing_folder", "model folder not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(folder, tmp_path, breakage, message):
    broken = shutil.copytree(folder, tmp_path / "broken")
    args = [str(broken), "some text"]
    if breakage == "no_tokenizer":
        (broken / "tokenizer.json").unlink()
    elif breakage == "no_labels":
        (broken / "edgekd.json").unlink()
        config = json.loads((broken / "config.json").read_text())
        del config["id2label"]
        (broken / "config.json").write_text(json.dumps(config))
    elif breakage == "tokenizer_too_big":
        config = json.loads((broken / "config.json").read_text())
        config["vocab_size"] = 50  # as if the model had been vocabulary-pruned and the tokenizer not
        (broken / "config.json").write_text(json.dumps(config))
    elif breakage == "not_utf8":
        (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
        args = [str(broken), "--file", str(tmp_path / "latin1.txt")]
    elif breakage == "no_texts":
        args = [str(broken)]
    else:
        args = [str(tmp_path / "nowhere"), "text"]
    result = predict(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


def test_predict_module_imports_no_training_stack():
    script = (
        "import sys, edgekd.cli.app, edgekd.cli.predict; "
        "print(sorted(m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert completed.stdout.strip() == "[]", completed.stderr


def test_runtime_warning_is_not_repeated_in_process(folder):
    classifier = Classifier.load(folder, threads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier.predict([LONG_TEXT, LONG_TEXT])
    assert len(caught) == 1
