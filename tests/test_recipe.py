"""Recipe loading: every shipped recipe validates; every problem is reported at once, with its field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.errors import RecipeError
from edgekd.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


MINIMAL = """
name: t
data: {path: %s}
teacher: {model: some/teacher}
student: {model: some/student}
"""


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name


def test_there_are_recipes() -> None:
    assert {p.name for p in RECIPES} >= {"smoke.yaml", "quickstart.yaml"}


def test_unknown_key_names_the_closest_valid_one(tmp_path: Path, toy_data: Path) -> None:
    path = write(tmp_path, MINIMAL % toy_data + "distill: {epocs: 3}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "distill.epocs: unknown field; did you mean 'epochs'?" in err.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path, toy_data: Path) -> None:
    text = MINIMAL % toy_data + "distill: {alpha: 2, epochs: -1}\nbenchmark: {threads: zero}\nextra: 1\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    fields = [p.split(":")[0] for p in err.value.problems]
    assert set(fields) == {"distill.alpha", "distill.epochs", "benchmark.threads", "extra"}


def test_missing_required_sections(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: x\n"))
    assert {p.split(":")[0] for p in err.value.problems} == {"data", "teacher", "student"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the recipe is empty"),
        ("name: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "a recipe is a mapping"),
    ],
)
def test_not_a_recipe(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert expected in str(err.value)


def test_name_cannot_escape_the_run_root(tmp_path: Path, toy_data: Path) -> None:
    text = (MINIMAL % toy_data).replace("name: t", "name: ../../etc")
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert err.value.problems[0].startswith("name:")


def test_overrides_apply_before_validation(tmp_path: Path, toy_data: Path) -> None:
    path = write(tmp_path, MINIMAL % toy_data)
    recipe = load_recipe(path, ["distill.epochs=1", "student.init=layers", "student.layers=[0, 2]"])
    assert recipe.distill.epochs == 1
    assert recipe.student.layers == [0, 2]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["distill.alpha=7", "nonsense"])
    assert "expected KEY=VALUE" in str(err.value)


def test_student_init_must_match_its_fields(tmp_path: Path, toy_data: Path) -> None:
    text = (MINIMAL % toy_data).replace("student: {model: some/student}", "student: {init: layers}")
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert "needs 'layers'" in str(err.value)


def test_relative_paths_resolve_against_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    recipe = load_recipe(write(tmp_path, MINIMAL % "d"))
    assert recipe.data.path == str((tmp_path / "d").resolve())
    assert recipe.teacher.model == "some/teacher"  # not a local folder: kept as a Hub id


def test_data_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    (root / "mydata").mkdir(parents=True)
    monkeypatch.setenv("EDGEKD_DATA_ROOT", str(root))
    recipe = load_recipe(write(tmp_path, MINIMAL % "mydata"))
    assert recipe.data.path == str((root / "mydata").resolve())
