"""Dataset loading: formats, carving a validation split, and clear errors for bad data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from edgekd.data import load_splits
from edgekd.errors import DataError
from edgekd.recipe.schema import DataSpec


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


ROWS = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(40)]


def test_reads_the_toy_folder(toy_data: Path) -> None:
    splits = load_splits(DataSpec(path=str(toy_data)))
    assert splits.labels == ["food", "sports", "tech", "weather"]
    assert splits.counts() == {"train": 480, "validation": 96, "test": 160}
    assert not splits.validation_carved


def test_csv_gz_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in ROWS)
    (tmp_path / "test.csv").write_text(
        "sentence,y\n" + "".join(f"hello {i},{'ab'[i % 2]}\n" for i in range(6))
    )
    pq.write_table(pa.Table.from_pylist([{"sentence": "x", "y": "a"}]), tmp_path / "validation.parquet")
    # the three files use different column names on purpose: columns are per recipe, so this must fail clearly
    with pytest.raises(DataError, match="has no column 'text'"):
        load_splits(DataSpec(path=str(tmp_path)))
    (tmp_path / "train.jsonl.gz").unlink()
    (tmp_path / "train.csv").write_text("sentence,y\n" + "".join(f"t {i},{'ab'[i % 2]}\n" for i in range(20)))
    splits = load_splits(DataSpec(path=str(tmp_path), text_column="sentence", label_column="y"))
    assert splits.counts() == {"train": 20, "validation": 1, "test": 6}


def test_carved_validation_is_reproducible_and_stratified(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:4])
    spec = DataSpec(path=str(tmp_path), validation_fraction=0.2)
    a, b = load_splits(spec, seed=1), load_splits(spec, seed=1)
    assert a.validation == b.validation and a.validation_carved
    assert sorted(a.label_ids("validation")) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert not set(a.texts("validation")) & set(a.texts("train"))


def test_limits_cap_rows(toy_data: Path) -> None:
    spec = DataSpec(path=str(toy_data), limits={"train": 10, "test": 5})
    assert load_splits(spec).counts() == {"train": 10, "validation": 96, "test": 5}


@pytest.mark.parametrize(
    "train, test, message",
    [
        (None, ROWS, "no train split"),
        (ROWS, None, "no test split"),
        ([], ROWS, "has no rows"),
        ([{"text": "", "label": "a"}], ROWS, "empty or non-text"),
        ([{"text": 5, "label": "a"}], ROWS, "empty or non-text"),
        (ROWS, [{"text": "x", "label": "zzz"}], "not in the label list"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, train, test, message: str) -> None:
    if train is not None:
        write_jsonl(tmp_path / "train.jsonl", train)
    if test is not None:
        write_jsonl(tmp_path / "test.jsonl", test)
    with pytest.raises(DataError, match=message):
        load_splits(DataSpec(path=str(tmp_path), labels=["a", "b"]))


def test_non_utf8_bytes(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "a"}\n')
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    with pytest.raises(DataError, match="not UTF-8"):
        load_splits(DataSpec(path=str(tmp_path)))


def test_missing_folder() -> None:
    with pytest.raises(DataError, match="data folder not found"):
        load_splits(DataSpec(path="/nonexistent/folder"))


def test_measuring_models_needs_only_a_test_split(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", ROWS[:6])
    splits = load_splits(DataSpec(path=str(tmp_path)), model_labels=["b", "a"])
    assert splits.labels == ["b", "a"]  # the model's class order, which its logits follow
    assert splits.counts() == {"train": 0, "validation": 0, "test": 6}
    assert splits.label_ids("test")[:2] == [1, 0]
    with pytest.raises(DataError, match="no train split"):
        load_splits(DataSpec(path=str(tmp_path)))
    with pytest.raises(DataError, match="not in the label list"):
        load_splits(DataSpec(path=str(tmp_path)), model_labels=["a", "c"])
