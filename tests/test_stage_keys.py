"""Stage cache keys follow file content: a re-copied data folder (new mtimes) keeps them, a changed byte does not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from recipe_history import SMOKE_CHAIN_KEYS

from edgekd.recipe.load import load_recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import fingerprint_path, run_stage

REPO = Path(__file__).resolve().parent.parent


class DataReadingStage(StageBase):
    """A stage whose output depends on a data folder, as the teacher's does."""

    name = "reader"
    folder = "reader"
    needs: tuple[str, ...] = ()

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runs = 0

    def params(self, recipe: Any) -> dict[str, Any]:
        return {"data_files": fingerprint_path(str(self.data_dir))}

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        self.runs += 1
        (out_dir / "rows.txt").write_text((self.data_dir / "train.jsonl").read_text())
        return StageResult(metrics={})


def write_data(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text(text)
    (folder / "labels.txt").write_text("a\nb\n")


@pytest.fixture(scope="module")
def recipe() -> Any:
    return load_recipe(REPO / "recipes" / "smoke.yaml")


def test_a_recopied_data_folder_keeps_the_cache(tmp_path: Path, recipe: Any) -> None:
    data = tmp_path / "data"
    write_data(data, '{"text": "x", "label": "a"}\n')
    first = DataReadingStage(data)
    key, _, _ = run_stage(first, recipe, tmp_path / "run", {}, log=lambda _: None)
    # The same files copied in again: every mtime changes, no byte does.
    shutil.rmtree(data)
    write_data(data, '{"text": "x", "label": "a"}\n')
    os.utime(data / "train.jsonl", ns=(1, 1))
    again = DataReadingStage(data)
    same_key, _, skipped = run_stage(again, recipe, tmp_path / "run", {}, log=lambda _: None)
    assert (same_key, skipped, again.runs) == (key, True, 0)


def test_changed_data_reruns_the_stage(tmp_path: Path, recipe: Any) -> None:
    data = tmp_path / "data"
    write_data(data, '{"text": "x", "label": "a"}\n')
    key, _, _ = run_stage(DataReadingStage(data), recipe, tmp_path / "run", {}, log=lambda _: None)
    write_data(data, '{"text": "y", "label": "a"}\n')  # same size, one byte differs
    changed = DataReadingStage(data)
    new_key, _, skipped = run_stage(changed, recipe, tmp_path / "run", {}, log=lambda _: None)
    assert new_key != key and not skipped and changed.runs == 1
    assert (tmp_path / "run" / "reader" / "rows.txt").read_text().startswith('{"text": "y"')


def test_a_hub_id_or_missing_path_is_its_own_identity() -> None:
    assert (
        fingerprint_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert fingerprint_path(None) is None


def relative_to_repo(obj: Any) -> Any:
    """`obj` with every absolute path under the checkout written as `<repo>/...`."""
    if isinstance(obj, dict):
        return {k: relative_to_repo(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [relative_to_repo(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(f"{REPO}/"):
        return "<repo>/" + obj.removeprefix(f"{REPO}/")
    return obj


class CheckoutIndependent(StageBase):
    """A stage whose params are the wrapped stage's with checkout paths made relative (keyed by the real formula)."""

    def __init__(self, stage: Any) -> None:
        self.stage, self.name, self.folder, self.needs = stage, stage.name, stage.folder, stage.needs

    def params(self, recipe: Any) -> dict[str, Any]:
        return relative_to_repo(self.stage.params(recipe))

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        raise AssertionError("only keyed here, never run")


def test_every_stage_key_of_the_smoke_chain_is_unchanged(recipe: Any) -> None:
    from edgekd.pipeline import stages
    from edgekd.stages.runner import stage_key

    keys: dict[str, str] = {}
    for stage in stages(recipe):
        keys[stage.name] = stage_key(CheckoutIndependent(stage), recipe, {n: keys[n] for n in stage.needs})
    assert keys == SMOKE_CHAIN_KEYS
