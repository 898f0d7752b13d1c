"""The distill stage: reproducibility, intermediate losses, unlabelled text, and refusing what cannot work.

Training runs use the tiny classifier from conftest as a ready-made teacher (the teacher stage then only copies
it), except the reproducibility test, which fine-tunes the smoke recipe's teacher as `edgekd compress` would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.data import load_splits
from edgekd.errors import DataError, InputError, RecipeError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.stages.distill.stage import DistillStage, preflight
from edgekd.stages.runner import run_stage
from edgekd.stages.teacher import TeacherStage

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
HF_MODEL = {
    f"model/{f}"
    for f in (
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    )
}

TINY_RECIPE = """
name: tiny
seed: 3
data: {{path: {data}, max_length: 32}}
teacher: {{model: {teacher}}}
student: {{init: layers, layers: [1]}}
distill: {{epochs: 1, batch_size: 32, learning_rate: 0.003}}
"""


def tiny_recipe(tmp_path: Path, toy_data: Path, teacher: Path, overrides: list[str] | None = None) -> Recipe:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(data=toy_data, teacher=teacher))
    return load_recipe(path, overrides)


def run_teacher_and_distill(recipe: Recipe, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    key, _, _ = run_stage(TeacherStage(), recipe, run_dir, {})
    _, record, _ = run_stage(DistillStage(), recipe, run_dir, {"teacher": key})
    return record


def student_logits(model_dir: Path, texts: list[str]):
    import torch

    from edgekd.models import load_classifier, load_tokenizer

    model, tokenizer = load_classifier(str(model_dir)).eval(), load_tokenizer(str(model_dir))
    with torch.inference_mode():
        return model(
            **tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        ).logits


# ----------------------------------------------------------------------------------------------------------
# Reproducibility


@pytest.mark.slow
def test_same_recipe_and_seed_give_the_same_student_to_the_example(tmp_path: Path) -> None:
    """The smoke distill run twice (separate run folders, separate caches) predicts identically."""
    import torch

    recipe = load_recipe(SMOKE, ["teacher.finetune.epochs=2"])
    first = run_teacher_and_distill(recipe, tmp_path / "a")
    # Same teacher for the second run, but everything the distill stage makes is made again (cache included).
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "teacher", tmp_path / "b" / "teacher")
    second = run_teacher_and_distill(recipe, tmp_path / "b")
    assert not list((tmp_path / "b" / "cache").glob("*.partial*"))
    texts = load_splits(recipe.data, recipe.seed).texts("test")
    a = student_logits(tmp_path / "a" / "distill" / "model", texts)
    b = student_logits(tmp_path / "b" / "distill" / "model", texts)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.equal(a, b)
    assert first["metrics"]["validation_accuracy"] == second["metrics"]["validation_accuracy"]


# ----------------------------------------------------------------------------------------------------------
# Intermediate losses and unlabelled text


def test_intermediate_losses_train_a_narrower_student_and_save_no_projection(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path
) -> None:
    from safetensors import safe_open

    # A fresh student half as wide, with one head instead of two: projection and head-averaged attention KL.
    student = "{model_type: bert, num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 1, intermediate_size: 32, max_position_embeddings: 64}"
    recipe = tiny_recipe(
        tmp_path,
        toy_data,
        tiny_classifier_dir,
        [
            "student.init=config",
            "student.layers=null",
            f"student.config={student}",
            "distill.losses.hidden.weight=1.0",
            "distill.losses.hidden.embeddings=true",
            "distill.losses.attention.weight=0.5",
            "distill.max_steps=8",  # the loss parts are logged every 7 steps here
        ],
    )
    record = run_teacher_and_distill(recipe, tmp_path / "run")
    info = record["metrics"]["intermediate"]
    assert info["projection"] is True
    assert info["hidden_pairs"] == [[0, 0], [1, 2]]  # embeddings, then student layer 0 <-> teacher layer 1
    assert info["attention_pairs"] == [[0, 1]]
    assert info["teacher_forward_seconds"] > 0
    history = json.loads((tmp_path / "run" / "distill" / "log_history.json").read_text())
    logged = {k for entry in history for k in entry}
    assert {"ce_loss", "kd_loss", "hidden_loss", "attention_loss"} <= logged
    assert set(record["files"]) == {"log_history.json", *HF_MODEL}
    with safe_open(str(tmp_path / "run" / "distill" / "model" / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if "projection" in k]  # noqa: SIM118 - safe_open has no __iter__
    config = json.loads((tmp_path / "run" / "distill" / "model" / "config.json").read_text())
    assert config["hidden_size"] == 16


def test_unlabelled_text_is_labelled_by_the_teacher_and_cached(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "a.txt").write_text("a new market report\n\nrain tomorrow in the north\n")
    (extra / "b.jsonl").write_text(json.dumps({"body": "the team won the final"}) + "\n")
    overrides = [
        f"distill.unlabeled.path={extra}",
        "distill.unlabeled.text_column=body",
        "distill.max_steps=3",
    ]
    record = run_teacher_and_distill(
        tiny_recipe(tmp_path, toy_data, tiny_classifier_dir, overrides), tmp_path / "r"
    )
    assert record["metrics"]["unlabeled_rows"] == 3
    assert (
        record["metrics"]["train_rows"] == 480
    )  # the labelled rows only (the toy data has a validation file)
    assert len(list((tmp_path / "r" / "cache").glob("teacher_logits-unlabeled-*.npy"))) == 1


# ----------------------------------------------------------------------------------------------------------
# Refusals: one clear error before any training


def check(recipe: Recipe) -> None:
    preflight(recipe, load_splits(recipe.data, recipe.seed))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["distill.losses.hidden.weight=1", "distill.losses.hidden.layer_map=[5]"],
            "layer_map [5] out of range",
        ),
        (["distill.losses.attention.weight=1", "distill.losses.attention.layer_map=[0, 1]"], "has 2 entries"),
        (["student.layers=[0, 4]"], "student.layers [4] out of range"),
        (
            [
                "student.init=config",
                "student.layers=null",
                "student.config={model_type: bert, num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 1}",
                "distill.losses.hidden.weight=1",
                "distill.losses.hidden.projection=none",
            ],
            "width 16 differs from the teacher's 32",
        ),
    ],
)
def test_impossible_layer_and_width_combinations_are_refused(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(tiny_recipe(tmp_path, toy_data, tiny_classifier_dir, overrides))


def test_attention_transfer_refuses_a_student_that_tokenizes_differently(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path
) -> None:
    overrides = [
        "student.init=config",
        "student.layers=null",
        "student.config={model_type: bert, num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2}",
        "student.tokenizer={vocab_size: 60}",  # a much smaller WordPiece vocabulary splits words differently
        "distill.losses.attention.weight=1",
    ]
    with pytest.raises(InputError) as err:
        check(tiny_recipe(tmp_path, toy_data, tiny_classifier_dir, overrides))
    assert "train example 0" in str(err.value) and "tokenizes differently" in str(err.value)


def test_same_tokens_with_other_ids_are_accepted() -> None:
    """MPNet-style vocabularies: the same token strings at other ids (and <s> for [CLS]) are compatible."""
    from edgekd.stages.distill.intermediate import teacher_ids_for_student_tokens

    class Offset:
        """A tokenizer whose ids are the wrapped one's + 1 and whose specials are spelled differently."""

        def __init__(self, inner) -> None:
            self.inner = inner
            for role in ("cls", "sep", "pad", "unk", "mask"):
                setattr(self, f"{role}_token_id", getattr(inner, f"{role}_token_id") + 1)

        def __call__(self, texts, **kw):
            return {"input_ids": [[i + 1 for i in ids] for ids in self.inner(texts, **kw)["input_ids"]]}

        def convert_ids_to_tokens(self, ids):
            tokens = self.inner.convert_ids_to_tokens([i - 1 for i in ids])
            return [{"[CLS]": "<s>", "[SEP]": "</s>"}.get(t, t) for t in tokens]

    from edgekd.models import build_tokenizer
    from edgekd.recipe.schema import TokenizerBuild

    texts = ["markets rallied today", "the striker scored twice"]
    tok = build_tokenizer(TokenizerBuild(vocab_size=100), texts * 3)
    ids = teacher_ids_for_student_tokens(tok, Offset(tok), texts, 16, "train")
    assert ids == tok(texts)["input_ids"]


def test_unlabelled_file_problems_are_data_errors(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="has no text rows"):
        check(tiny_recipe(tmp_path, toy_data, tiny_classifier_dir, [f"distill.unlabeled.path={empty}"]))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="row 1 has no column 'text'"):
        check(tiny_recipe(tmp_path, toy_data, tiny_classifier_dir, [f"distill.unlabeled.path={wrong}"]))


def test_search_range_with_min_above_max_is_a_recipe_error(tmp_path: Path, toy_data: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["distill.search.temperature=[8, 1]", "distill.search.epochs=[1, 3]"])
    assert err.value.problems == ["distill.search.temperature: range [min, max] has min 8.0 > max 1.0"]


def test_cli_refuses_an_empty_unlabelled_file_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekd.cli",
            "compress",
            str(SMOKE),
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            f"distill.unlabeled.path={empty}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "distill.unlabeled" in result.stderr and "no text rows" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_distill_throughput_benchmark_runs_and_writes_its_result(tmp_path):
    out = tmp_path / "throughput.json"
    script = REPO / "benchmarks" / "distill_throughput.py"
    args = ["--tiny", "--rows", "48", "--validation-rows", "16", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["settings"]["assets"] == "tiny" and result["settings"]["train_rows"] == 48
    assert result["edgekd_samples_per_s"] > 0 and result["naive_samples_per_s"] > 0
    # speed-up = naive time / edgekd time = edgekd rate / naive rate (the rates keep more digits than the times)
    ratio = result["edgekd_samples_per_s"] / result["naive_samples_per_s"]
    assert result["speedup"] == pytest.approx(ratio, abs=0.01 + 0.02 * ratio)
