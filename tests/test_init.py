"""`edgekd init`: a commented recipe from the user's own data, a single data file as data.path, and the smoke
example shipped in the wheel (`edgekd init --example smoke`)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgekd.cli.app import main
from edgekd.cli.scaffold import choose_max_length, init_recipe, inspect_data, words_percentile
from edgekd.data import load_splits
from edgekd.errors import DataError, InputError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import DataSpec

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "recipes" / "data" / "toy_topics"
TINY_SIX_LAYERS = {
    "model_type": "bert",
    "num_hidden_layers": 6,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def toy_rows() -> list[dict[str, str]]:
    return [
        json.loads(line)
        for split in ("train", "validation", "test")
        for line in (TOY / f"{split}.jsonl").read_text().splitlines()
    ]


def write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def toy_csv(path: Path) -> Path:
    """The toy topics as one CSV with columns an exporter might give them: an id, the text, the class."""
    rows = [[i, row["text"], row["label"]] for i, row in enumerate(toy_rows())]
    return write_csv(path, ["id", "review", "topic"], rows)


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 with one error and one hint line, and return stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("error: ") == 1 and err.count("hint: ") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def assets_root(tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path, tiny_tokenizer) -> Path:
    """A folder with models/mpnet-base and models/minilm-l6 as `edgekd assets` lays them out, holding tiny
    random BERTs (the student one with MiniLM-L6's six layers, so layers 1, 3, 5 exist)."""
    import torch

    from edgekd.models import build_from_config

    root = tmp_path_factory.mktemp("assets_root")
    shutil.copytree(tiny_classifier_dir, root / "models" / "mpnet-base")
    torch.manual_seed(0)
    student = build_from_config(TINY_SIX_LAYERS, ["a", "b"], vocab_size=len(tiny_tokenizer))
    student.save_pretrained(root / "models" / "minilm-l6")
    tiny_tokenizer.save_pretrained(root / "models" / "minilm-l6")
    return root


# ----------------------------------------------------------------------------------------------------------
# init on a folder and on a single file


def test_init_on_a_data_folder_writes_a_recipe_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "recipes" / "mine.yaml"
    assert main(["init", "--data", str(TOY), "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    recipe = load_recipe(output)
    assert recipe.name == "toy_topics"
    assert Path(recipe.data.path or "") == TOY.resolve()
    assert (recipe.data.text_column, recipe.data.label_column) == ("text", "label")
    assert recipe.data.max_length == 32  # toy texts are short
    assert recipe.student.init == "layers" and recipe.student.layers == [1, 3, 5]
    gates = recipe.gates
    assert (gates.max_accuracy_drop_pts, gates.min_speedup_p50, gates.min_compression) == (1.0, 10, 10)
    # No models/ next to the recipe: the Hub ids, with the offline way in a comment.
    assert recipe.teacher.model == "sentence-transformers/all-mpnet-base-v2"
    text = output.read_text()
    assert "edgekd assets" in text and "4 classes (from labels.txt)" in text


def test_init_on_a_single_csv_detects_columns_and_validates(
    tmp_path: Path, assets_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = toy_csv(assets_root / "my reviews.csv")
    output = assets_root / "recipes" / "reviews.yaml"
    assert main(["init", "--data", str(data), "--output", str(output), "--force"]) == 0
    recipe = load_recipe(output)
    assert recipe.name == "my_reviews"
    assert Path(recipe.data.path or "") == data.resolve()
    assert (recipe.data.text_column, recipe.data.label_column) == ("review", "topic")
    # models/ one folder up: the recipe points at the offline copies, relative to itself.
    text = output.read_text()
    assert "model: ../models/mpnet-base" in text and "model: ../models/minilm-l6" in text
    capsys.readouterr()
    code = main(["validate", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # 184 rows in each of 4 classes: 37 held out for test, 15 of the rest for validation.
    assert "train 528, validation 60, test 148 rows, 4 classes" in " ".join(captured.out.split())


def test_columns_without_telling_names_are_detected_by_their_values(tmp_path: Path) -> None:
    rows = [
        {"id": i, "body": f"{row['text']} and more words", "tag": row["label"], "lang": f"l{i % 40}"}
        for i, row in enumerate(toy_rows()[:200])
    ]
    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = inspect_data(data)
    assert summary.text_column == "body"  # longest texts ('lang' is text-like but short)
    assert summary.label_column == "tag"  # fewest distinct values (4 against 40 and 200 ids)
    assert summary.single_file and summary.rows == 200
    assert sorted(summary.classes) == ["food", "sports", "tech", "weather"]


def test_the_text_and_label_columns_can_be_named(tmp_path: Path) -> None:
    data = toy_csv(tmp_path / "d.csv")
    output = init_recipe(data, tmp_path / "r.yaml", text_column="review", label_column="id")
    assert load_recipe(output).data.label_column == "id"
    with pytest.raises(DataError, match="no column 'reveiw'") as exc:
        init_recipe(data, tmp_path / "r2.yaml", text_column="reveiw")
    assert exc.value.hint == "did you mean 'review'?"


def test_a_folder_with_one_data_file_uses_that_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    toy_csv(tmp_path / "data" / "export.csv")
    recipe = load_recipe(init_recipe(tmp_path / "data", tmp_path / "recipe.yaml"))
    assert recipe.name == "export"
    assert Path(recipe.data.path or "") == (tmp_path / "data" / "export.csv").resolve()


@pytest.mark.parametrize(
    ("words", "expected"),
    [(0, 32), (24, 32), (25, 64), (49, 64), (50, 128), (98, 128), (99, 256), (2000, 256)],
)
def test_max_length_is_the_95th_percentile_of_words_times_1_3_rounded_up(words: int, expected: int) -> None:
    assert choose_max_length(words) == expected


def test_words_percentile_is_the_nearest_rank() -> None:
    texts = ["w " * n for n in range(1, 101)]  # 1..100 words
    assert words_percentile(texts) == 95
    assert words_percentile(["one"]) == 1
    assert words_percentile([]) == 0


# ----------------------------------------------------------------------------------------------------------
# Refusals: exit 2, one error line, one hint line, nothing written


def test_an_existing_output_is_kept_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "recipe.yaml"
    output.write_text("mine\n")
    err = refusal(["init", "--data", str(TOY), "--output", str(output)], capsys)
    assert "already exists" in err and "--force" in err
    assert output.read_text() == "mine\n"
    assert main(["init", "--data", str(TOY), "--output", str(output), "--force"]) == 0
    assert load_recipe(output).name == "toy_topics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no partial file left behind


def test_a_folder_without_data_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("no data here\n")
    err = refusal(["init", "--data", str(tmp_path), "--output", str(tmp_path / "r.yaml")], capsys)
    assert "no data files" in err
    assert not (tmp_path / "r.yaml").exists()


def test_a_folder_with_train_but_no_test_names_the_single_file_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(TOY / "train.jsonl", tmp_path / "train.jsonl")
    err = refusal(["init", "--data", str(tmp_path), "--output", str(tmp_path / "r.yaml")], capsys)
    assert "no test file" in err and f"--data {tmp_path / 'train.jsonl'}" in err


def test_a_file_without_a_text_column_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(
        tmp_path / "numbers.csv", ["id", "score", "label"], [[i, i * 0.5, i % 2] for i in range(20)]
    )
    err = refusal(["init", "--data", str(data), "--output", str(tmp_path / "r.yaml")], capsys)
    assert "no column of texts" in err and "--text-column" in err


def test_a_single_class_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(
        tmp_path / "one.csv", ["text", "label"], [[f"text number {i}", "spam"] for i in range(20)]
    )
    err = refusal(["init", "--data", str(data), "--output", str(tmp_path / "r.yaml")], capsys)
    assert "1 class(es)" in err and "at least 2" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["init"], "pass either --data or --example"),
        (["init", "--data", "x.csv", "--example", "smoke"], "pass either --data or --example"),
        (["init", "--example", "smok"], "unknown example 'smok'"),
        (["init", "--data", "/nonexistent/data.csv"], "data not found"),
        (["init", "--example", "smoke", "--name", "../escape"], "not a usable run name"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert message in refusal(argv, capsys)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------
# A single file as data.path


def test_a_single_file_is_split_into_a_stratified_test_and_validation(tmp_path: Path) -> None:
    rows = [[f"{row['text']} (row {i})", row["label"]] for i, row in enumerate(toy_rows())]
    data = write_csv(tmp_path / "all.csv", ["text", "label"], rows)
    spec = DataSpec(path=str(data))
    splits = load_splits(spec, seed=7)
    # 184 rows in each of 4 classes: round(184 * 0.2) = 37 held out for test, 15 of the rest for validation.
    assert splits.counts() == {"train": 528, "validation": 60, "test": 148}
    assert [splits.label_ids("test").count(i) for i in range(4)] == [37] * 4
    assert splits.validation_carved
    every = sorted(splits.train + splits.validation + splits.test)
    assert len(set(every)) == len(every) == len(rows)  # a partition of the file's rows
    again = load_splits(spec, seed=7)
    assert again.test == splits.test and again.validation == splits.validation  # seeded
    assert set(load_splits(spec, seed=8).test) != set(splits.test)


def test_a_single_file_too_small_for_a_test_split_is_refused(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "tiny.csv", ["text", "label"], [["a b", "x"], ["c d", "y"], ["e f", "x"]])
    with pytest.raises(DataError, match="too few rows to hold out a test split"):
        load_splits(DataSpec(path=str(data)))


def test_a_single_file_of_an_unknown_type_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.xlsx"
    data.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"data\.path is a file edgekd cannot read") as exc:
        load_splits(DataSpec(path=str(data)))
    assert ".csv" in (exc.value.hint or "")


# ----------------------------------------------------------------------------------------------------------
# The shipped example


def test_init_example_smoke_copies_the_recipe_and_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--example", "smoke"]) == 0
    recipe = load_recipe(tmp_path / "smoke.yaml")
    assert recipe.name == "smoke"
    assert Path(recipe.data.path or "") == (tmp_path / "data" / "toy_topics").resolve()
    for source in TOY.iterdir():
        assert (tmp_path / "data" / "toy_topics" / source.name).read_bytes() == source.read_bytes()
    capsys.readouterr()
    assert "already exists" in refusal(["init", "--example", "smoke"], capsys)
    assert main(["init", "--example", "smoke", "--output", "other/mine.yaml", "--name", "mine"]) == 0
    assert load_recipe(tmp_path / "other" / "mine.yaml").name == "mine"


def test_an_output_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        init_recipe(TOY, tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Packaging: the example and its data are in the wheel


def test_pyproject_lists_every_package() -> None:
    from setuptools import find_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(REPO), include=["edgekd", "edgekd.*"]))
    listed = set(config["packages"])
    assert found == {p for p in listed if not p.startswith("edgekd.examples")}, (
        "add new packages to pyproject"
    )
    examples = Path(config["package-dir"]["edgekd.examples"])
    assert (REPO / examples / "smoke.yaml").is_file()


def test_the_wheel_ships_the_smoke_example(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: building in the checkout would race other builds for build/
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "edgekd", source / "edgekd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "recipes", source / "recipes")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "-w",
            str(tmp_path / "dist"),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("edgekd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "edgekd/examples/smoke.yaml" in names
    assert {f"edgekd/examples/data/toy_topics/{p.name}" for p in TOY.iterdir()} <= names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "edgekd").rglob("*.py")}
    assert modules <= names
    assert not any(
        n.startswith("edgekd/examples/") and "ag_news" in n for n in names
    )  # only the smoke example
