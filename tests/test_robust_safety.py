"""Safe loading: nothing in a recipe or a model folder runs code unless the recipe says so explicitly.

* weights: safetensors only; pickled `.bin` weights are refused unless `allow_pickle: true` (then a warning);
* `trust_remote_code` is off unless set, so a model folder's own Python files never run;
* recipes go through `yaml.safe_load`: Python tags are errors and execute nothing;
* a recipe name cannot make edgekd write outside the run root.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from edgekd.cli.app import main
from edgekd.errors import InputError, RecipeError
from edgekd.models import check_weights_are_safe, load_classifier, model_labels
from edgekd.pipeline import run_dir_for
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe, StudentSpec, TeacherSpec

REPO = Path(__file__).resolve().parent.parent
SMOKE_TEXT = (REPO / "recipes" / "smoke.yaml").read_text()


class WritesAMarker:
    """Unpickling this creates a file: the proof that loading a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


@pytest.fixture
def pickled_model_dir(tmp_path: Path, tiny_classifier_dir: Path) -> Path:
    """The tiny classifier with pickled weights only (pytorch_model.bin, no safetensors)."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_classifier_dir, folder)
    model = load_classifier(str(folder))
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, safe_serialization=False)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_pickled_weights_are_refused_by_default(pickled_model_dir: Path) -> None:
    with pytest.raises(InputError, match="only pickled weights"):
        load_classifier(str(pickled_model_dir))


def test_a_malicious_pickle_is_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "marker"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(WritesAMarker(marker)))
    with pytest.raises(InputError, match="set allow_pickle: true"):
        check_weights_are_safe(str(folder), allow_pickle=False)
    assert not marker.exists()


def test_allow_pickle_loads_with_a_warning(pickled_model_dir: Path) -> None:
    with pytest.warns(UserWarning, match="loading pickled weights"):
        model = load_classifier(str(pickled_model_dir), allow_pickle=True)
    assert model.config.num_labels == 4


def test_the_cli_refuses_a_pickled_teacher_before_any_training(
    tmp_path: Path, pickled_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\ndata: {{path: {REPO / 'recipes' / 'data' / 'toy_topics'}, max_length: 32}}\n"
        f"teacher: {{model: {pickled_model_dir}}}\nstudent: {{init: layers, layers: [0]}}\n"
    )
    run_dir = tmp_path / "run"
    code = main(["compress", str(recipe), "--output-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "has only pickled weights (.bin), which can run code when loaded" in err
    assert "hint: convert them to safetensors, or set allow_pickle: true" in err
    assert not (run_dir / "teacher").exists() and not (run_dir / ".teacher.partial").exists()


@pytest.fixture
def remote_code_dir(tmp_path: Path, tiny_classifier_dir: Path) -> tuple[Path, Path]:
    """A model folder whose config asks for its own Python code, which would create a marker file."""
    folder = tmp_path / "remote"
    shutil.copytree(tiny_classifier_dir, folder)
    marker = tmp_path / "remote-code-ran"
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_evil.py").write_text(
        code + "from transformers import BertConfig as EvilConfig\n"
    )
    (folder / "modeling_evil.py").write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="evil",
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_remote_code_is_not_trusted_by_default(remote_code_dir: tuple[Path, Path]) -> None:
    folder, marker = remote_code_dir
    assert TeacherSpec.model_fields["trust_remote_code"].default is False
    assert StudentSpec.model_fields["trust_remote_code"].default is False
    with pytest.raises(InputError, match="cannot read the config"):
        model_labels(str(folder))
    with pytest.raises(InputError, match="cannot load a model"):
        load_classifier(str(folder))
    assert not marker.exists(), "the model folder's own code must not run"


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:pathlib.Path.write_text [{marker}, 'pwned']",
        "!!python/object/new:pathlib.Path [{marker}]",
        "!!python/name:os.system",
        "!!python/object:edgekd.recipe.schema.Recipe {{name: x}}",
    ],
)
def test_python_yaml_tags_are_recipe_errors_and_run_nothing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "marker"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        SMOKE_TEXT.replace("name: smoke", "name: " + tag.format(marker=json.dumps(str(marker))))
    )
    with pytest.raises(RecipeError, match="could not determine a constructor"):
        load_recipe(recipe)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "..", "/etc/x", "a/../../b", "~root", ".hidden", "x\\..\\y"])
def test_a_recipe_name_cannot_leave_the_run_root(tmp_path: Path, name: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SMOKE_TEXT.replace("name: smoke", f"name: {json.dumps(name)}"))
    with pytest.raises(RecipeError, match="name"):
        load_recipe(recipe)


def test_the_run_folder_check_does_not_rely_on_the_schema_alone() -> None:
    unchecked = Recipe.model_construct(name="../escape")  # type: ignore[call-arg]  # validation bypassed
    with pytest.raises(InputError, match="would write outside"):
        run_dir_for(unchecked, None)
