"""Everything a run would refuse is refused before its first stage, and `edgekd validate` refuses the same.

Issue 14, items 5, 6 and 11: machine-dependent settings (latency threads, the out-of-scope label, the ONNX
opset), architecture configs (typos, impossible values), missing folders, duplicate YAML keys, lax types, and
a hint on every recipe error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from edgekd.cli.app import main
from edgekd.errors import DataError, InputError, RecipeError
from edgekd.pipeline import compress, preflight
from edgekd.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
SMOKE_TEXT = SMOKE.read_text()


def validate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def refused(overrides: list[str], recipe: Path = SMOKE) -> list[str]:
    """The problems the preflight finds in `recipe` with `overrides`."""
    with pytest.raises(RecipeError) as err:
        preflight(recipe, overrides)
    assert err.value.hint, "every recipe error says what to change"
    return err.value.problems


def folder_teacher(folder: Path) -> list[str]:
    """Overrides that make smoke.yaml's teacher the classifier in `folder` instead of a fresh config."""
    return ["teacher.config=null", "teacher.tokenizer=null", f"teacher.model={folder}"]


# ----------------------------------------------------------------------------------------------------------
# Item 5: refused before the first stage, not after hours of training


def test_more_latency_threads_than_cores_is_refused_before_any_stage(tmp_path: Path) -> None:
    too_many = (os.cpu_count() or 1) + 1
    run_dir = tmp_path / "run"
    with pytest.raises(RecipeError) as err:
        compress(SMOKE, overrides=[f"benchmark.threads={too_many}"], output_dir=run_dir)
    [problem] = err.value.problems
    assert problem.startswith(f"benchmark.threads: threads is {too_many} but this machine gives this process")
    assert not run_dir.exists(), "refused before the run folder (and any stage) exists"


@pytest.mark.parametrize(
    ("override", "field", "typo", "meant"),
    [
        ("benchmark.out_of_scope_label=sport", "benchmark.out_of_scope_label", "sport", "sports"),
        (
            "distill.augment={class_factors: {wether: 3}}",
            "distill.augment.class_factors",
            "wether",
            "weather",
        ),
    ],
)
def test_an_unknown_class_name_is_refused_before_any_stage(
    tmp_path: Path, override: str, field: str, typo: str, meant: str
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(RecipeError) as err:
        compress(SMOKE, overrides=[override], output_dir=run_dir)
    [problem] = err.value.problems
    assert problem.startswith(f"{field}: '{typo}' is not one of the dataset's 4 classes")
    assert f"did you mean '{meant}'?" in problem
    assert not run_dir.exists()


def test_a_known_out_of_scope_label_passes() -> None:
    recipe, _ = preflight(SMOKE, ["benchmark.out_of_scope_label=weather"])
    assert recipe.benchmark.out_of_scope_label == "weather"


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_opsets_the_exporter_cannot_use_are_refused_with_exit_2(
    opset: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = validate([str(SMOKE), "--set", f"export.opset={opset}"], capsys)
    assert code == 2
    assert "export.opset: Input should be greater than or equal to 14" in output
    assert "hint:" in output


def test_opset_14_is_accepted() -> None:
    assert load_recipe(SMOKE, ["export.opset=14"]).export.opset == 14


def test_a_misspelt_quantizer_op_type_is_refused_before_any_stage() -> None:
    [problem] = refused(["quantize.op_types=[Matmul, Gather]"])
    assert "quantize.op_types: 'Matmul'" in problem and "did you mean 'MatMul'?" in problem


def test_vocabulary_pruning_of_a_bpe_tokenizer_is_refused_before_any_stage(
    tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    student = tmp_path / "bpe_student"
    student.mkdir()
    shutil.copy(tiny_classifier_dir / "config.json", student / "config.json")
    (student / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    overrides = ["prune_vocab.enabled=true", "student.init=pretrained", "student.layers=null"]
    [problem] = refused([*overrides, f"student.model={student}"])
    assert problem.startswith("prune_vocab.enabled: vocabulary pruning supports WordPiece tokenizers only")
    assert "is BPE" in problem


# ----------------------------------------------------------------------------------------------------------
# Item 6: architecture configs checked against transformers' config classes


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        ("num_hiden_layers", "num_hidden_layers"),
        ("intee_size", "intermediate_size"),
        ("HIDDEN_SIZE", "hidden_size"),
    ],
)
def test_architecture_typos_name_the_field_meant(typo: str, suggestion: str) -> None:
    [problem] = refused([f"teacher.config.{typo}=64"])
    assert problem == f"teacher.config.{typo}: unknown bert config field; did you mean '{suggestion}'?"


def test_an_unknown_model_type_names_the_closest() -> None:
    [problem] = refused(["teacher.config.model_type=bret"])
    assert problem.startswith("teacher.config.model_type: unknown model type 'bret'")
    assert "did you mean 'bert'?" in problem


def test_fields_of_another_architecture_list_the_right_names() -> None:
    problems = refused(["teacher.config.model_type=distilbert"])  # smoke's BERT names are not DistilBERT's
    assert "teacher.config.num_hidden_layers" not in " ".join(problems), (
        "mapped by DistilBERT's attribute_map"
    )
    [problem] = problems
    assert problem.startswith("teacher.config.intermediate_size: unknown distilbert config field")
    assert "hidden_dim" in problem


@pytest.mark.parametrize(
    "override, expected",
    [
        ("teacher.config.hidden_size=-64", "teacher.config.hidden_size: must be at least 1, got -64"),
        ("teacher.config.num_attention_heads=0", "teacher.config.num_attention_heads: must be at least 1, got 0"),
        ("teacher.config.max_position_embeddings=16", "teacher.config.max_position_embeddings: the model takes at most 16 tokens"),
        ("teacher.config.vocab_size=10", "teacher.config.vocab_size: 10 is smaller than the tokenizer's vocabulary"),
        ("teacher.config.hidden_size=62", "teacher.config: hidden_size 62 is not divisible by num_attention_heads 4"),
        ("teacher.config.hidden_size=64.5", "teacher.config.hidden_size: needs a whole number, got 64.5"),
        ("teacher.config.hidden_dropout_prob=1.5", "teacher.config.hidden_dropout_prob: is a probability"),
        ("teacher.config.layer_norm_eps=1e-12", "(YAML reads 1e-12 as text: write 1.0e-12)"),
        ("teacher.config.is_decoder=1", "teacher.config.is_decoder: needs true or false, got 1"),
        ("teacher.config.num_labels=3", "teacher.config.num_labels: remove it"),
        ("teacher.config.pad_token_id=5000", "teacher.config.pad_token_id: 5000 is not an id of the 300-token"),
    ],
)  # fmt: skip
def test_impossible_architecture_values_are_refused_before_any_stage(override: str, expected: str) -> None:
    [problem] = refused([override])
    assert expected in problem


def test_a_roberta_config_counts_the_padding_offset_in_its_positions() -> None:
    problems = refused(["teacher.config.model_type=roberta", "teacher.config.max_position_embeddings=33"])
    assert any("at most 31 tokens" in p and "padding offset" in p for p in problems)
    preflight(SMOKE, ["teacher.config.model_type=roberta", "teacher.config.max_position_embeddings=34"])


def test_a_fresh_student_is_checked_against_the_teachers_tokenizer() -> None:
    student = "{model_type: bert, hidden_size: 32, num_attention_heads: 2, vocab_size: 100}"
    overrides = ["student.init=config", "student.layers=null", f"student.config={student}"]
    [problem] = refused(overrides)
    assert problem.startswith("student.config.vocab_size: 100 is smaller than the tokenizer's vocabulary")


def test_every_architecture_problem_is_reported_at_once() -> None:
    problems = refused(["teacher.config.hidden_size=-1", "teacher.config.num_hiden_layers=2"])
    assert {p.split(":")[0] for p in problems} == {
        "teacher.config.hidden_size",
        "teacher.config.num_hiden_layers",
    }


def test_a_sound_architecture_with_explicit_sizes_passes() -> None:
    overrides = [
        "teacher.config.vocab_size=400",
        "teacher.config.max_position_embeddings=64",
        "teacher.config.hidden_dropout_prob=0.2",
        "teacher.config.layer_norm_eps=1.0e-6",
    ]
    recipe, _ = preflight(SMOKE, overrides)
    assert recipe.teacher.config is not None and recipe.teacher.config["vocab_size"] == 400


def test_a_model_folder_with_too_few_positions_for_max_length(tiny_classifier_dir: Path) -> None:
    [problem] = refused([*folder_teacher(tiny_classifier_dir), "data.max_length=128"])
    assert problem.startswith("data.max_length: 128 is more than teacher.model takes: at most 64 tokens")


def test_a_fresh_teacher_needs_a_tokenizer() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["teacher.tokenizer=null"])
    assert "a teacher built from 'config' needs a 'tokenizer'" in err.value.problems[0]


# ----------------------------------------------------------------------------------------------------------
# Item 11: validate runs the same pre-run checks as compress, and writes nothing


def test_validate_refuses_a_missing_data_folder(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = validate([str(SMOKE), "--set", "data.path=./no_such_data"], capsys)
    assert code == 2 and "no_such_data" in output
    assert re.search(r"^\s*hint: \S", output, re.M)


def test_validate_refuses_a_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = validate([str(SMOKE), *_set(folder_teacher(tmp_path / "gone"))], capsys)
    assert code == 2
    assert f"teacher.model: folder not found: {tmp_path / 'gone'}" in output
    assert re.search(r"^\s*hint: \S", output, re.M)


def test_validate_refuses_what_only_the_distill_preflight_knew(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = validate([str(SMOKE), "--set", "student.layers=[5]"], capsys)  # the teacher has 2 layers
    assert code == 2 and "student.layers [5] out of range" in output


def test_validate_refuses_a_teacher_with_another_label_order(
    tiny_classifier_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [*folder_teacher(tiny_classifier_dir), "data.labels=[sports, food, tech, weather]"]
    with pytest.raises(DataError, match="label order differs"):
        preflight(SMOKE, overrides)
    code, output = validate([str(SMOKE), *_set(overrides)], capsys)
    assert code == 2 and "hint: set data.labels:" in output


def test_validate_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = validate([str(SMOKE)], capsys)
    assert code == 0 and "recipe 'smoke' is valid" in output
    assert list(tmp_path.iterdir()) == [], "no run folder, no cache"


def test_compress_and_validate_share_one_preflight(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="out of range"):
        compress(SMOKE, overrides=["student.layers=[5]"], output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _set(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


# ----------------------------------------------------------------------------------------------------------
# Item 11: duplicate keys and lax types


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "recipe.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_a_key_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SMOKE_TEXT + "distill:\n  epochs: 1\n"  # smoke.yaml has a distill section already
    code, output = validate([str(write(tmp_path, text))], capsys)
    assert code == 2
    assert "the key 'distill' is given twice (first at line" in output
    assert re.search(r"^\s*hint: \S", output, re.M)


def test_a_key_given_twice_inside_a_section_is_refused(tmp_path: Path) -> None:
    text = SMOKE_TEXT.replace("  epochs: 3\n", "  epochs: 3\n  epochs: 5\n")
    with pytest.raises(RecipeError, match="the key 'epochs' is given twice"):
        load_recipe(write(tmp_path, text))


def test_merge_keys_may_still_override(tmp_path: Path) -> None:
    """A `<<` merge followed by the same key is YAML's way to override, not a duplicate."""
    text = SMOKE_TEXT.replace("  config: {model_type", "  config: &arch {model_type").replace(
        "student:\n  init: layers\n  layers: [1]\n",
        "student:\n  init: config\n  config: {<<: *arch, hidden_size: 32}\n",
    )
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.student.config is not None
    assert recipe.student.config["hidden_size"] == 32 and recipe.student.config["num_hidden_layers"] == 2


@pytest.mark.parametrize(
    "override, field",
    [
        ("benchmark.threads=true", "benchmark.threads"),
        ("distill.epochs=true", "distill.epochs"),
        ("student.layers=[true]", "student.layers.0"),
        ("teacher.trust_remote_code='yes'", "teacher.trust_remote_code"),
        ("teacher.allow_pickle=1", "teacher.allow_pickle"),
        ("prune_vocab.enabled='true'", "prune_vocab.enabled"),
    ],
)
def test_no_boolean_becomes_a_number_and_no_text_or_number_becomes_a_boolean(
    override: str, field: str
) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, [override])
    assert [p.split(":")[0] for p in err.value.problems] == [field]


def test_numbers_keep_their_lax_forms_and_their_dumped_types() -> None:
    """`1e-4` is text to PyYAML; it must still be a learning rate. An int epoch count still dumps as a float,
    so cache keys computed from `model_dump()` do not move."""
    recipe = load_recipe(SMOKE, ["distill.learning_rate=1e-4", "distill.epochs=3", "benchmark.threads=1"])
    assert recipe.distill.learning_rate == pytest.approx(1e-4)
    dumped = recipe.model_dump(mode="json")
    assert type(dumped["distill"]["epochs"]) is float and dumped["distill"]["epochs"] == 3.0
    assert type(dumped["benchmark"]["threads"]) is int
    assert type(dumped["teacher"]["trust_remote_code"]) is bool


# ----------------------------------------------------------------------------------------------------------
# Every recipe error has a hint


@pytest.mark.parametrize(
    "content",
    [
        "name: [unclosed\n",
        "- a\n- b\n",
        "just text\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
        "",
        "a: " + "[" * 40 + "]" * 40 + "\n",
        "seed: 2024-13-45\n",
        "name: x\n\tdata: y\n",
    ],
    ids=["syntax", "list", "scalar", "binary", "empty", "deep", "bad-date", "tab"],
)
def test_every_recipe_error_has_a_hint(
    tmp_path: Path, content: str | bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.hint
    code, output = validate([str(path)], capsys)
    assert code == 2 and "Traceback" not in output
    assert len(re.findall(r"^\s*hint: \S", output, re.M)) == 1


def test_a_file_too_large_to_be_a_recipe_has_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "# padding\n" * 30_000)
    with pytest.raises(RecipeError, match="larger than") as err:
        load_recipe(path)
    assert err.value.hint and "recipes/smoke.yaml" in err.value.hint
