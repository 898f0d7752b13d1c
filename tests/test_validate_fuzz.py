"""`edgekd validate` on generated recipes: whatever a recipe holds, validate answers 0 (valid) or 2 (one
`error:` line and one `hint:` line), never a traceback.

Recipes are the shipped ones (recipes/*.yaml) made runnable anywhere (the toy data and a tiny classifier folder
stand in for the data root and models/), then mutated: keys dropped or misspelt, values of the wrong type,
numbers out of range, unknown keys, architecture-config fields, duplicate YAML keys.

Profiles: `fast` (default, 500 recipes, well under a minute) and `nightly` (HYPOTHESIS_PROFILE=nightly).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.cli.app import main

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))
TOY_LABELS = ["food", "sports", "tech", "weather"]

settings.register_profile(
    "fast",
    max_examples=500,
    deadline=None,  # 2 shared cores: timing varies, and speed is not the property under test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "nightly",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# Names a mutation may use as keys: real recipe fields and architecture fields, so typos land near them.
NAMES = [
    "name", "seed", "data", "path", "max_length", "limits", "labels", "teacher", "student", "model", "config",
    "tokenizer", "vocab_size", "init", "layers", "trust_remote_code", "allow_pickle", "distill", "epochs",
    "alpha", "temperature", "learning_rate", "losses", "hidden", "attention", "weight", "layer_map", "export",
    "opset", "quantize", "op_types", "benchmark", "threads", "out_of_scope_label", "gates", "prune_vocab",
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "pad_token_id", "hidden_dropout_prob", "layer_norm_eps", "num_labels",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([0, -1, 1, 13, 14, 2**31, 10**12, 10**19]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "yes", "true", "1e-4", "teacher", "layers", "config", "bert", "oos", "../nowhere"]),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(NAMES), children, max_size=3)
    ),
    max_leaves=8,
)


def runnable_here(recipe: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """A shipped recipe pointed at the toy data and a tiny classifier folder, so it validates anywhere."""
    recipe["data"]["path"] = str(REPO / "recipes" / "data" / "toy_topics")
    for section in ("teacher", "student"):
        if recipe[section].get("model") not in (None, "teacher"):
            recipe[section]["model"] = str(model_dir)
    if recipe.get("benchmark", {}).get("out_of_scope_label"):
        recipe["benchmark"]["out_of_scope_label"] = TOY_LABELS[-1]
    return recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    """A classifier folder as validate sees one (config and tokenizer; no weights are read), with the six
    layers the shipped recipes pick from."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("six_layer_classifier")
    BertConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(TOY_LABELS)),
        label2id={name: i for i, name in enumerate(TOY_LABELS)},
        architectures=["BertForSequenceClassification"],
    ).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_recipes(model_dir: Path) -> list[dict[str, Any]]:
    return [runnable_here(yaml.safe_load(path.read_text()), model_dir) for path in SHIPPED]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed") / "recipe.yaml"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a nested mapping (lists are leaves)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, child in node.items():
            found.append((*prefix, key))
            found += _paths(child, (*prefix, key))
    return found


def _parent(recipe: dict[str, Any], path: tuple[Any, ...]) -> dict[Any, Any]:
    node: Any = recipe
    for key in path[:-1]:
        node = node[key]
    return node


def _typo(draw: st.DrawFn, key: str) -> str:
    kind = draw(st.sampled_from(["drop", "double", "swap", "upper", "insert"]))
    i = draw(st.integers(0, max(len(key) - 1, 0)))
    if kind == "drop":
        return key[:i] + key[i + 1 :]
    if kind == "double":
        return key[: i + 1] + key[i:]
    if kind == "swap" and len(key) > 1:
        i = min(i, len(key) - 2)
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if kind == "upper":
        return key.upper()
    return key[:i] + draw(st.sampled_from("aeinrst_")) + key[i:]


def _out_of_range(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return draw(values)
    return draw(st.sampled_from([-value, 0, value * 1000, -1, 10**9, value + 0.5, 1e-9]))


SLIPS = [*":[{]\t'\"&*!|>%@`#,\x00", "- ", "\n  "]
MUTATIONS = ["drop", "wrong_type", "typo", "out_of_range", "add", "architecture", "setting"]
# Well-typed values that only the preflight can judge (this machine's cores, the data's labels, the exporter).
SETTINGS = {
    "benchmark.threads": st.integers(1, 256),
    "benchmark.out_of_scope_label": st.sampled_from([*TOY_LABELS, "oos", "Food", "sport"]),
    "export.opset": st.integers(11, 21),
    "data.max_length": st.sampled_from([8, 32, 512, 513, 4096]),
    "student.layers": st.lists(st.integers(0, 8), min_size=1, max_size=4, unique=True),
    "quantize.op_types": st.lists(st.sampled_from(["MatMul", "Gather", "Matmul", "Conv2d"]), max_size=3),
}
# A tiny BERT as smoke.yaml builds it: the architecture mutations start from here and change one field.
FRESH_CONFIG = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
CONFIG_FIELDS = [
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "vocab_size", "pad_token_id", "hidden_dropout_prob", "layer_norm_eps",
    "hidden_act", "type_vocab_size", "num_labels", "is_decoder", "dim", "n_heads",
]  # fmt: skip
config_values = st.one_of(
    scalars,
    st.sampled_from(["bert", "distilbert", "roberta", "bret", "gelu", "1e-12", "1.0e-12"]),
    st.sampled_from([0, 1, 2, 3, 30, 32, 62, 64, 300, 514, 10**6]),
)


def _mutate_architecture(draw: st.DrawFn, recipe: dict[str, Any]) -> None:
    """Give the teacher or the student a fresh architecture (as smoke.yaml does), one field changed or
    misspelt."""
    config = dict(FRESH_CONFIG)
    field = draw(st.sampled_from(CONFIG_FIELDS))
    value = draw(config_values)
    config[_typo(draw, field) if draw(st.booleans()) else field] = value
    if draw(st.booleans()):
        recipe["teacher"] = {"config": config, "tokenizer": {"vocab_size": 300}}
        student = recipe.get("student")
        if not isinstance(student, dict) or student.get("model") not in (None, "teacher"):
            recipe["student"] = {"init": "layers", "layers": [1]}
    else:
        recipe["student"] = {"init": "config", "config": config}


@st.composite
def mutated_recipes(draw: st.DrawFn, bases: list[dict[str, Any]]) -> str:
    """YAML text of a shipped recipe after 1-3 mutations (sometimes with a key given twice)."""
    recipe = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(bases))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(recipe)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(recipe, path), path[-1]
        action = draw(st.sampled_from(MUTATIONS))
        if action == "drop":
            del parent[key]
        elif action == "wrong_type":
            parent[key] = draw(values)
        elif action == "typo" and isinstance(key, str):
            parent[_typo(draw, key)] = parent.pop(key)
        elif action == "out_of_range":
            parent[key] = _out_of_range(draw, parent[key])
        elif action == "add":
            parent[draw(st.sampled_from(NAMES))] = draw(values)
        elif action == "architecture":
            _mutate_architecture(draw, recipe)
        elif action == "setting":
            field, choices = draw(st.sampled_from(sorted(SETTINGS.items())))
            section = recipe.setdefault(field.split(".")[0], {})
            if isinstance(section, dict):
                section[field.split(".")[1]] = draw(choices)
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    extra = draw(st.integers(0, 19))
    if extra < 2 and recipe:  # a key given twice
        key = draw(st.sampled_from(sorted(map(str, recipe))))
        text += f"{key}: {yaml.safe_dump(draw(scalars)).splitlines()[0]}\n"
    elif extra < 4:  # a slip of the keyboard: YAML syntax, or a value read as another type
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(SLIPS)) + text[i:]
    return text


def validate(path: Path) -> tuple[int, str]:
    """`edgekd validate PATH` in this process: its exit code and everything it printed."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["validate", str(path)])
    return code, out.getvalue() + err.getvalue()


def check_answer(code: int, output: str) -> None:
    assert "Traceback" not in output, output
    assert code in (0, 2), f"exit {code}:\n{output}"
    if code == 2:
        assert len(re.findall(r"^error: \S", output, re.M)) == 1, output
        assert len(re.findall(r"^\s*hint: \S", output, re.M)) == 1, output


def test_every_shipped_recipe_made_runnable_here_is_valid(
    base_recipes: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The starting points are valid, so every refusal below is caused by a mutation."""
    for recipe in base_recipes:
        path = tmp_path / f"{recipe['name']}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        code, output = validate(path)
        assert code == 0, output


@pytest.mark.slow  # `make nightly` runs it with many more examples
@given(data=st.data())
@PROFILE
def test_validate_answers_0_or_2_with_a_hint(
    data: st.DataObject, base_recipes: list[dict[str, Any]], recipe_file: Path
) -> None:
    recipe_file.write_text(data.draw(mutated_recipes(base_recipes)), encoding="utf-8")
    check_answer(*validate(recipe_file))
