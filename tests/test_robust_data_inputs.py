"""Data files as people have them: Excel CSVs, very long texts, JSON arrays and broken emoji load; a file that
cannot be used is refused with exactly one `error:` line naming the file and row, one `hint:` line and exit 2,
never a traceback.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from edgekd.cli.app import main
from edgekd.data import load_splits
from edgekd.pipeline import run_lock
from edgekd.recipe.schema import DataSpec, TokenizerBuild

REPO = Path(__file__).resolve().parent.parent
SMOKE_TEXT = (REPO / "recipes" / "smoke.yaml").read_text()
RECORDS = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(40)]
DEEP = "[" * 100_000 + "]" * 100_000


def jsonl(records: Sequence[Mapping[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def csv_bytes(records: Sequence[Mapping[str, object]]) -> bytes:
    return ("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in records)).encode()


TRAIN, TEST = jsonl(RECORDS), jsonl([{"text": f"held-out {i}", "label": "ab"[i % 2]} for i in range(8)])


def make_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def recipe_for(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = make_folder(tmp_path / "data", files)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SMOKE_TEXT.replace("path: data/toy_topics", f"path: {folder}"))
    return recipe


def loaded(tmp_path: Path, files: dict[str, bytes]) -> list[tuple[str, int]]:
    splits = load_splits(DataSpec(path=str(make_folder(tmp_path, files))))
    assert splits.warnings == []
    return sorted(splits.train + splits.validation)


# name -> (files of the data folder, what the error line must say)
REFUSED: dict[str, tuple[dict[str, bytes], str]] = {
    "JSONL line nested very deep": (
        {"train.jsonl": TRAIN + b'{"text": "x", "label": ' + DEEP.encode() + b"}\n", "test.jsonl": TEST},
        "train.jsonl: line 41 is nested too deeply",
    ),
    "JSON array nested very deep": ({"train.json": DEEP.encode(), "test.jsonl": TEST}, "nested too deeply"),
    "short CSV row": (
        {"train.csv": csv_bytes(RECORDS) + b"a row without its label\n", "test.jsonl": TEST},
        "train.csv: row 41 has 1 of 2 fields (no 'label')",
    ),
    "unterminated CSV quote": (
        {"train.csv": csv_bytes(RECORDS) + b'"an open quote,a\n', "test.jsonl": TEST},
        "train.csv: row 41 has 1 of 2 fields",
    ),
    "null label": (
        {"train.jsonl": TRAIN + jsonl([{"text": "x", "label": None}]), "test.jsonl": TEST},
        "train.jsonl: row 41 has no single class in 'label': None",
    ),
    "list label": (
        {"train.jsonl": TRAIN, "test.jsonl": TEST + jsonl([{"text": "x", "label": ["a", "b"]}])},
        "test.jsonl: row 9 has no single class in 'label': a JSON array",
    ),
    "bad JSON line": ({"train.jsonl": b'{"text": \n', "test.jsonl": TEST}, "line 1 is not valid JSON"),
    "bad JSON array": ({"train.json": b'[{"text": "x",\n', "test.jsonl": TEST}, "the file is not valid JSON"),
    "row not an object": ({"train.jsonl": b"[1, 2]\n", "test.jsonl": TEST}, "row 1 is not an object"),
    "missing column": ({"train.jsonl": jsonl([{"txt": "x", "label": "a"}]), "test.jsonl": TEST}, "no column"),
    "empty text": (
        {"train.jsonl": TRAIN + jsonl([{"text": " ", "label": "a"}]), "test.jsonl": TEST},
        "row 41",
    ),
    "empty file": ({"train.jsonl": b"", "test.jsonl": TEST}, "has no rows"),
    "not UTF-8": (
        {"train.jsonl": TRAIN + b'{"text": "caf\xe9", "label": "a"}\n', "test.jsonl": TEST},
        "UTF-8",
    ),
    "duplicate labels": ({"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"a\nb\na\n"}, "duplicate"),
    "empty labels.txt": ({"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"\n"}, "no class names"),
    "unknown label": (
        {"train.jsonl": TRAIN, "test.jsonl": TEST, "labels.txt": b"a\nc\n"},
        "not in the label list",
    ),
    "corrupt gzip": ({"train.jsonl.gz": b"\x1f\x8b\x08\x00garbage", "test.jsonl": TEST}, "cannot read"),
    "truncated gzip": ({"train.jsonl.gz": gzip.compress(TRAIN)[:30], "test.jsonl": TEST}, "cannot read"),
    "not parquet": ({"train.parquet": b"not a parquet file", "test.jsonl": TEST}, "cannot read"),
    "one class": ({"train.jsonl": jsonl(RECORDS[::2]), "test.jsonl": TEST}, "at least 2 classes"),
    "no test split": ({"train.jsonl": TRAIN}, "no test split"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_data_refusal_is_one_error_line_and_one_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    files, message = REFUSED[case]
    code = main(["compress", str(recipe_for(tmp_path, files)), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("error: ") and message in lines[0], err
    assert lines[1].startswith("  hint: ") and len(lines[1]) > len("  hint: "), err


def test_excel_csv_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    plain = loaded(tmp_path / "plain", {"train.csv": csv_bytes(RECORDS), "test.jsonl": TEST})
    files = {"train.csv": bom + csv_bytes(RECORDS), "test.jsonl": bom + TEST, "labels.txt": bom + b"a\nb\n"}
    assert loaded(tmp_path / "bom", files) == plain


def test_a_csv_field_longer_than_pythons_default_limit_loads_as_from_jsonl(tmp_path: Path) -> None:
    records = [*RECORDS, {"text": "long " + "x" * 200_000, "label": "a"}]
    from_csv = loaded(tmp_path / "csv", {"train.csv": csv_bytes(records), "test.jsonl": TEST})
    from_jsonl = loaded(tmp_path / "jsonl", {"train.jsonl": jsonl(records), "test.jsonl": TEST})
    assert from_csv == from_jsonl
    assert max(len(text) for text, _ in from_csv) == 200_005


def test_a_json_file_with_an_array_of_objects_loads(tmp_path: Path) -> None:
    from_jsonl = loaded(tmp_path / "jsonl", {"train.jsonl": TRAIN, "test.jsonl": TEST})
    array = json.dumps(RECORDS, indent=2).encode()
    assert loaded(tmp_path / "array", {"train.json": array, "test.jsonl": TEST}) == from_jsonl
    # a .json file with one object per line keeps working
    assert loaded(tmp_path / "lines", {"train.json": TRAIN, "test.jsonl": TEST}) == from_jsonl


def test_lone_surrogates_are_replaced_and_counted_once(tmp_path: Path) -> None:
    broken = [{"text": "broken \ud800 emoji", "label": "a"}, {"text": "fine \U0001f600 emoji", "label": "b"}]
    files = {
        "train.jsonl": TRAIN + jsonl(broken),
        "test.json": json.dumps([{"text": "x \udfff", "label": "b"}, {"text": "y", "label": "a"}]).encode(),
    }
    splits = load_splits(DataSpec(path=str(make_folder(tmp_path, files))))
    texts = splits.texts("train") + splits.texts("validation") + splits.texts("test")
    for text in texts:
        text.encode("utf-8")  # what the tokenizer does; a lone surrogate raises UnicodeEncodeError
    assert "broken \ufffd emoji" in texts and "x \ufffd" in texts
    assert "fine \U0001f600 emoji" in texts, "a valid surrogate pair (an emoji) is kept"
    assert splits.warnings == [
        "2 row(s) held lone UTF-16 surrogates (such as \\ud800), which no tokenizer can encode; "
        "replaced them with U+FFFD (test.json: 1, train.jsonl: 1)"
    ]


def test_unlabeled_texts_with_lone_surrogates_are_encodable(tmp_path: Path) -> None:
    from edgekd.stages.distill.unlabeled import read_unlabeled_file

    path = tmp_path / "extra.jsonl"
    path.write_bytes(jsonl([{"text": "lone \ud800 half"}]))
    assert read_unlabeled_file(path, "text") == ["lone \ufffd half"]


def test_compress_warns_once_about_lone_surrogates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = jsonl([{"text": f"broken \ud800 {i}", "label": "ab"[i % 2]} for i in range(3)])
    recipe = recipe_for(tmp_path, {"train.jsonl": TRAIN + broken, "test.jsonl": TEST})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir):  # stops the run right after the checks, before any stage
        main(["compress", str(recipe), "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert err.count("warning: 3 row(s) held lone UTF-16 surrogates") == 1, err


def test_tokenizer_training_caps_each_word(toy_texts: list[str]) -> None:
    """Without a cap the trainer works on the whole word (its time grows with the square of the length: a 1 MB
    word took 800 s) and learns pieces that WordPiece can never use (it encodes such a word as [UNK])."""
    from edgekd.models import MAX_WORD_CHARS, build_tokenizer

    tokenizer = build_tokenizer(TokenizerBuild(vocab_size=200), [*toy_texts, "x" * 5000])
    longest = max(len(token.removeprefix("##")) for token in tokenizer.get_vocab())
    assert longest <= MAX_WORD_CHARS
    assert tokenizer.tokenize("the weather")  # ordinary words are still learnt
