"""Bad data: every way a dataset can be unusable is one clear line, exit code 2, before any training.

Data that works but makes the numbers less meaningful (a class without test rows, test texts copied from
train) runs, with one warning each.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from edgekd.cli.app import main
from edgekd.data import load_splits
from edgekd.errors import DataError
from edgekd.pipeline import run_lock
from edgekd.recipe.schema import DataSpec

REPO = Path(__file__).resolve().parent.parent
SMOKE_TEXT = (REPO / "recipes" / "smoke.yaml").read_text()
LABELS = "a\nb\n"


def rows(n: int, labels: str = "ab", prefix: str = "text") -> list[dict[str, object]]:
    return [{"text": f"{prefix} number {i}", "label": labels[i % len(labels)]} for i in range(n)]


def jsonl(records: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


TRAIN = jsonl(rows(40))
TEST = jsonl(rows(10, prefix="held-out"))

# name -> (files of the data folder, what the error must say)
BAD_DATA: dict[str, tuple[dict[str, bytes], str]] = {
    "no train split": ({"test.jsonl": TEST}, "no train split"),
    "no test split": ({"train.jsonl": TRAIN}, "no test split"),
    "empty file": ({"train.jsonl": b"", "test.jsonl": TEST}, "has no rows"),
    "blank lines only": ({"train.jsonl": b"\n \n", "test.jsonl": TEST}, "has no rows"),
    "empty text": (
        {"train.jsonl": TRAIN + jsonl([{"text": " ", "label": "a"}]), "test.jsonl": TEST},
        "row 41",
    ),
    "number as text": ({"train.jsonl": jsonl([{"text": 5, "label": "a"}]), "test.jsonl": TEST}, "non-text"),
    "null text": ({"train.jsonl": TRAIN, "test.jsonl": jsonl([{"text": None, "label": "a"}])}, "non-text"),
    "list as text": ({"train.jsonl": jsonl([{"text": ["x"], "label": "a"}]), "test.jsonl": TEST}, "non-text"),
    "missing column": ({"train.jsonl": jsonl([{"txt": "x", "label": "a"}]), "test.jsonl": TEST}, "no column"),
    "row not an object": ({"train.jsonl": b"[1, 2]\n", "test.jsonl": TEST}, "not an object"),
    "bad json": ({"train.jsonl": b'{"text": \n', "test.jsonl": TEST}, "line 1 is not valid JSON"),
    "label not in labels.txt": (
        {"train.jsonl": TRAIN, "test.jsonl": jsonl(rows(4, "abc")), "labels.txt": LABELS.encode()},
        "labels that are not in the label list: 'c' (1 rows)",
    ),
    "class without train rows": (
        {"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"a\nb\nc\n"},
        "1 class(es) have no train rows: 'c'",
    ),
    "one class": ({"train.jsonl": jsonl(rows(10, "a")), "test.jsonl": TEST}, "at least 2 classes"),
    "non-UTF-8 text": (
        {"train.jsonl": TRAIN + b'{"text": "caf\xe9", "label": "a"}\n', "test.jsonl": TEST},
        "not UTF-8",
    ),
    "non-UTF-8 labels.txt": (
        {"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"a\n\xff\n"},
        "not UTF-8",
    ),
    "empty labels.txt": ({"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"\n"}, "no class names"),
    "duplicate labels": ({"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"a\nb\na\n"}, "duplicate"),
    "corrupt gzip": ({"train.jsonl.gz": b"\x1f\x8b\x08\x00garbage", "test.jsonl": TEST}, "cannot read"),
    "truncated gzip": ({"train.jsonl.gz": gzip.compress(TRAIN)[:30], "test.jsonl": TEST}, "cannot read"),
    "not parquet": ({"train.parquet": b"not a parquet file", "test.jsonl": TEST}, "cannot read"),
}


def make_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def recipe_for(tmp_path: Path, data_dir: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SMOKE_TEXT.replace("path: data/toy_topics", f"path: {data_dir}"))
    return recipe


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_clear_error(tmp_path: Path, case: str) -> None:
    files, message = BAD_DATA[case]
    folder = make_folder(tmp_path / "data", files)
    with pytest.raises(DataError) as caught:
        load_splits(DataSpec(path=str(folder)))
    assert message in str(caught.value)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    "case", ["no test split", "class without train rows", "non-UTF-8 text", "corrupt gzip"]
)
def test_the_cli_stops_before_creating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    files, message = BAD_DATA[case]
    recipe = recipe_for(tmp_path, make_folder(tmp_path / "data", files))
    run_dir = tmp_path / "run"
    code = main(["compress", str(recipe), "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("error: ")
    assert not run_dir.exists(), "bad data must stop the run before the run folder (or any stage) exists"


def test_teacher_with_other_labels_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_classifier_dir: Path
) -> None:
    """The tiny classifier knows food/sports/tech/weather; this data has classes a and b."""
    folder = make_folder(tmp_path / "data", {"train.jsonl": TRAIN, "test.jsonl": TEST})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\ndata: {{path: {folder}, max_length: 32}}\nteacher: {{model: {tiny_classifier_dir}}}\n"
        "student: {init: layers, layers: [0]}\n"
    )
    run_dir = tmp_path / "run"
    code = main(["compress", str(recipe), "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "classifies other labels than the dataset" in err
    assert "dataset only: ['a', 'b']" in err
    assert not (run_dir / "teacher").exists() and not (run_dir / ".teacher.partial").exists()
    assert not list(run_dir.glob(".*.partial")) and not (run_dir / "cache").exists()


def test_class_without_test_rows_and_overlap_are_warnings(tmp_path: Path) -> None:
    train = rows(30, "abc")
    test = rows(6, "ab", prefix="held-out") + train[:4]  # 4 exact copies of train texts; no 'c' row... yet
    test = [r for r in test if r["label"] != "c"]
    folder = make_folder(tmp_path / "data", {"train.jsonl": jsonl(train), "test.jsonl": jsonl(test)})
    splits = load_splits(DataSpec(path=str(folder)))
    copies = sum(1 for r in test if r in train)
    assert len(splits.warnings) == 2
    assert "1 class(es) have no test rows, so the report does not measure them: 'c'" in splits.warnings[0]
    assert f"{copies} of {len(test)} test texts also appear in train" in splits.warnings[1]


def test_clean_data_has_no_warnings(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data", {"train.jsonl": TRAIN, "test.jsonl": TEST})
    assert load_splits(DataSpec(path=str(folder))).warnings == []


def test_warnings_are_logged_once_by_compress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = rows(30, "abc")
    folder = make_folder(tmp_path / "data", {"train.jsonl": jsonl(train), "test.jsonl": jsonl(train[:2])})
    recipe = recipe_for(tmp_path, folder)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir):  # stops the run right after the checks, before any stage
        code = main(["compress", str(recipe), "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("warning: 1 class(es) have no test rows") == 1
    assert err.count("warning: 2 of 2 test texts also appear in train") == 1
