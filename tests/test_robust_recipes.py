"""Bad recipes, generated: whatever a recipe file or a `--set` override holds, `load_recipe` either returns a
recipe that later code can hash and dump, or raises `RecipeError`; never any other exception.

The generators cover random keys and types, unicode, huge and non-finite numbers, empty files, bytes that are
not YAML, deep nesting, YAML alias bombs and self-references, Python tags, and mutations of recipes/smoke.yaml
(field values replaced, keys deleted or misspelt, characters inserted or dropped).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.cli.app import main
from edgekd.errors import RecipeError
from edgekd.recipe.load import load_recipe, recipe_to_yaml
from edgekd.recipe.schema import Recipe
from edgekd.stages.runner import stable_hash

REPO = Path(__file__).resolve().parent.parent
SMOKE_TEXT = (REPO / "recipes" / "smoke.yaml").read_text()
SMOKE: dict[str, Any] = yaml.safe_load(SMOKE_TEXT)

PROPERTY = settings(
    max_examples=150,
    deadline=None,  # 2 shared cores: timing varies a lot, and speed is not the property under test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _field_names(model: Any = Recipe) -> set[str]:
    """Every field name anywhere in the schema: generated keys should often be real ones."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for candidate in getattr(field.annotation, "__args__", (field.annotation,)):
            if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                names |= _field_names(candidate)
    return names


FIELDS = sorted(_field_names())
keys = st.one_of(
    st.sampled_from(FIELDS),
    st.text(max_size=12),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**17, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(alphabet=string.printable, max_size=30),
    st.sampled_from(
        ["teacher", "layers", "config", "auto", "bf16", "../x", "..", "/", "~", "~nouser/x", "x" * 300]
    ),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=20,
)
field_paths = st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3).map(".".join)

# Hand-written hostile texts: cheap to parse for a safe loader, dangerous for a careless one.
HOSTILE_TEXTS = [
    "",
    "   \n\n",
    "---\n...\n",
    "~",
    "[]",
    "- a\n- b\n",
    "'just a string'",
    "name: &a [*a]\n",  # a list that contains itself
    "a: &a {b: *a}\nname: x\n",
    "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
    ),  # billion laughs
    "a: " + "[" * 200 + "]" * 200,
    "a: " + "{b: " * 60 + "1" + "}" * 60,
    "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v\n",
    "!!python/object/apply:os.system ['echo pwned']\n",
    "name: !!python/name:os.system\n",
    "name: !!python/object:collections.OrderedDict {}\n",
    "seed: " + "9" * 5000 + "\n",
    "seed: 0x" + "f" * 5000 + "\n",
    "seed: 2024-13-45\n",
    "seed: .inf\nname: x\n",
    "? [a, b]\n: 1\n",
    'name: "\\ud800"\n',
    'name: "a\\0b"\n',
    "\t\tname: x",
    "name: x\nname: y\n",
    "%YAML 9.9\n---\nname: x\n",
    "<<: *undefined\n",
    "<<: [1, 2]\n",
]


def _check_load(path: Path, overrides: list[str] | None = None) -> None:
    """The property: a RecipeError, or a recipe whose later uses (hashing, dumping) work."""
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        str(exc).encode("utf-8", "backslashreplace")  # printable: what the CLI shows
        return
    stable_hash(recipe.model_dump(mode="json"))
    recipe_to_yaml(recipe)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipes") / "recipe.yaml"


@PROPERTY
@given(data=st.dictionaries(keys, values, max_size=8))
def test_random_structures(recipe_file: Path, data: dict[Any, Any]) -> None:
    recipe_file.write_text(_dump(data), encoding="utf-8")
    _check_load(recipe_file)


@st.composite
def mutated_smoke(draw: st.DrawFn) -> dict[str, Any]:
    """recipes/smoke.yaml with a few fields replaced, deleted, misspelt or added, anywhere in the tree."""
    recipe = yaml.safe_load(SMOKE_TEXT)
    for _ in range(draw(st.integers(1, 4))):
        node = recipe
        while isinstance(node, dict) and node and draw(st.booleans()):
            child = node[draw(st.sampled_from(sorted(node, key=str)))]
            if not isinstance(child, dict):
                break
            node = child
        if not isinstance(node, dict) or not node:
            continue
        key = draw(st.sampled_from(sorted(node, key=str)))
        action = draw(st.sampled_from(["replace", "delete", "misspell", "add"]))
        if action == "replace":
            node[key] = draw(values)
        elif action == "delete":
            del node[key]
        elif action == "misspell" and isinstance(key, str) and key:
            i = draw(st.integers(0, len(key) - 1))
            node[key[:i] + key[i + 1 :]] = node.pop(key)
        else:
            node[draw(keys)] = draw(values)
    return recipe


@PROPERTY
@given(data=mutated_smoke())
def test_mutated_smoke_recipe(recipe_file: Path, data: dict[str, Any]) -> None:
    recipe_file.write_text(_dump(data), encoding="utf-8")
    _check_load(recipe_file)


@st.composite
def mangled_text(draw: st.DrawFn) -> bytes:
    """Raw bytes: hostile texts, random bytes, or smoke.yaml with characters inserted and dropped."""
    kind = draw(st.sampled_from(["hostile", "bytes", "text", "edit"]))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE_TEXTS)).encode("utf-8")
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    text = SMOKE_TEXT
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(text)))
        insert = draw(st.text(alphabet=":-[]{}&*!|>#'\"\t\n %@`,?", max_size=3))
        cut = draw(st.integers(0, 3))
        text = text[:i] + insert + text[i + cut :]
    return text.encode("utf-8")


@PROPERTY
@given(raw=mangled_text())
def test_raw_bytes_and_mangled_text(recipe_file: Path, raw: bytes) -> None:
    recipe_file.write_bytes(raw)
    _check_load(recipe_file)


overrides = st.lists(
    st.one_of(
        st.builds(lambda p, v: f"{p}={v}", field_paths, st.text(max_size=20)),
        st.builds(lambda p, v: f"{p}={_dump(v).strip()}", field_paths, values),
        st.sampled_from(HOSTILE_TEXTS).map(lambda t: f"teacher.config={t}"),
        st.text(max_size=30),
    ),
    max_size=4,
)


@PROPERTY
@given(items=overrides)
def test_set_overrides(recipe_file: Path, items: list[str]) -> None:
    recipe_file.write_text(SMOKE_TEXT, encoding="utf-8")
    _check_load(recipe_file, items)


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_hostile_texts_are_recipe_errors(recipe_file: Path, text: str) -> None:
    recipe_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(RecipeError):
        load_recipe(recipe_file)


def test_self_reference_and_alias_bomb_inside_a_free_form_field(tmp_path: Path) -> None:
    """`teacher.config` takes any mapping, so the schema alone would let these through to hashing."""
    for config in ("{model_type: bert, x: &a [*a]}", "{model_type: bert, x: &a [1, 2], y: [*a, *a]}"):
        path = tmp_path / "r.yaml"
        path.write_text(SMOKE_TEXT.replace(SMOKE_TEXT.split("config: ", 1)[1].split("\n", 1)[0], config))
        if "[*a]" in config:
            with pytest.raises(RecipeError, match="refer"):
                load_recipe(path)
        else:
            load_recipe(path)  # ordinary aliases stay legal


def test_every_problem_at_once_with_field_paths_and_hints_exit_2(tmp_path: Path, capsys) -> None:
    bad = SMOKE_TEXT.replace("epochs: 3\n", "epocs: 3\n").replace("alpha: 0.5", "alpha: 7")
    bad = bad.replace("opset: 17", "opset: seventeen").replace("latency_samples: 40", "latency_sample: 40")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    code = main(["validate", str(path), "--set", "seed=-1", "--set", "nonsense"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "6 problem(s)" in err
    for expected in (
        "--set 'nonsense': expected KEY=VALUE",
        "distill.epocs: unknown field; did you mean 'epochs'?",
        "distill.alpha:",
        "export.opset:",
        "benchmark.latency_sample: unknown field; did you mean 'latency_samples'?",
        "seed:",
        "hint: fix the fields above",
    ):
        assert expected in err, expected
