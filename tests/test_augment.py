"""The augmented transfer set (`distill.augment`): each method is seeded and deterministic, no row repeats
another or an original, neighbours come from the teacher's embeddings, the teacher labels the rows (KD term
only), and the distill stage key is unchanged for every recipe that does not ask for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recipe_history import DISTILL_KEYS, earlier

from edgekd.recipe.load import load_recipe
from edgekd.stages.distill.augment import (
    METHODS,
    augment_texts,
    embedding_neighbours,
    normalised,
    whole_words,
)
from edgekd.stages.distill.stage import DistillStage
from edgekd.stages.runner import stable_hash

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
TEXTS = [
    "heavy rain hit the coast across the valley",
    "strong wind closed the roads this weekend",
    "the striker scored twice and the team won the final",
    "Shares of the chip maker rose after strong results,",
    "the cloud service crashed again in the browser",
    "rain",
    "heavy rain hit the coast across the valley",  # a duplicate original
]
# Words of TEXTS with made-up neighbours, for `neighbours` without a model.
TABLE = {
    "rain": ["snow", "hail"],
    "wind": ["gale"],
    "team": ["club", "side"],
    "shares": ["stocks"],
    "the": ["a", "this", "that", "one"],
    "heavy": ["intense", "severe", "big"],
    "strong": ["fierce", "solid", "mighty"],
}


# sha of DistillStage.params()["distill"] for every committed recipe before `distill.augment` existed: a teacher
# or student trained for hours under these keys must still be found.
def make(methods: list[str], factor: int = 2, seed: int = 0, texts: list[str] = TEXTS):
    return augment_texts(texts, methods, factor, seed, "[MASK]", TABLE)


# ----------------------------------------------------------------------------------------------------------
# Methods


@pytest.mark.parametrize("method", METHODS)
def test_each_method_gives_the_same_texts_for_a_seed_and_others_for_another(method: str) -> None:
    first, again, other = make([method]), make([method]), make([method], seed=1)
    assert first.texts and first.texts == again.texts
    assert other.texts != first.texts


def test_output_does_not_depend_on_python_hash_randomisation() -> None:
    script = (
        "import json; from edgekd.stages.distill.augment import augment_texts; "
        f"print(json.dumps(augment_texts({TEXTS!r}, ['mask', 'delete', 'neighbours'], 3, 5, '<mask>', "
        f"{TABLE!r}).texts))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout
        for hash_seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1] and json.loads(outputs[0])


def test_mask_replaces_words_by_the_mask_token_and_delete_only_drops_words() -> None:
    masked = make(["mask"], factor=1)
    for new in masked.texts:
        assert "[MASK]" in new.split()
    for new in make(["delete"], factor=3).texts:
        source = next(t for t in TEXTS if set(new.split()) <= set(t.split()))
        assert len(new.split()) < len(source.split())


def test_no_row_repeats_another_or_an_original() -> None:
    spaced = [*TEXTS, "heavy  rain hit the coast   across the valley"]  # an original up to whitespace
    made = make(list(METHODS), factor=5, texts=spaced)
    assert len(made.texts) == len(set(made.texts))
    assert not {normalised(t) for t in made.texts} & {normalised(t) for t in spaced}
    assert "" not in made.texts


def test_factor_new_rows_per_row_with_the_methods_taking_turns() -> None:
    long_texts = [" ".join(f"w{i}x{j}" for j in range(12)) for i in range(30)]
    made = augment_texts(long_texts, ["mask", "delete"], 3, 0, "[MASK]")
    assert len(made.texts) == 90  # long, distinct texts: no variant repeats, so exactly factor per row
    assert made.counts() == {"mask": 45, "delete": 45}
    # A one-word text cannot lose a word, and masking it has one variant: factor is an upper bound.
    short = augment_texts(["rain"], ["mask", "delete"], 4, 0, "[MASK]")
    assert short.texts == ["[MASK]"] and short.counts() == {"mask": 1, "delete": 0}


def test_per_row_factors_add_variants_without_changing_the_other_rows() -> None:
    long_texts = [" ".join(f"w{i}x{j}" for j in range(12)) for i in range(6)]
    uniform = augment_texts(long_texts, ["mask", "delete"], 1, 0, "[MASK]")
    boosted = augment_texts(long_texts, ["mask", "delete"], [1, 1, 4, 1, 0, 1], 0, "[MASK]")
    assert len(boosted.texts) == 1 + 1 + 4 + 1 + 0 + 1
    # rows at the shared factor keep their variant; row 2's first variant is its factor-1 variant too
    assert set(uniform.texts) - {uniform.texts[4]} <= set(boosted.texts)
    with pytest.raises(ValueError, match="2 factors for 6 texts"):
        augment_texts(long_texts, ["mask"], [1, 2], 0, "[MASK]")


def test_class_factors_give_a_named_class_its_own_factor() -> None:
    from edgekd.data import load_splits
    from edgekd.stages.distill.stage import row_factors

    recipe = load_recipe(SMOKE, ["distill.augment={factor: 1, class_factors: {sports: 5}}"])
    splits = load_splits(recipe.data, recipe.seed)
    assert recipe.distill.augment is not None
    factors = row_factors(recipe.distill.augment, splits)
    assert isinstance(factors, list) and len(factors) == len(splits.texts("train"))
    sports = splits.labels.index("sports")
    assert {f for f, y in zip(factors, splits.label_ids("train"), strict=True) if y == sports} == {5}
    assert {f for f, y in zip(factors, splits.label_ids("train"), strict=True) if y != sports} == {1}


def test_neighbours_replace_words_with_table_entries_keeping_case_and_punctuation() -> None:
    made = augment_texts(["Rain, then more rain today"], ["neighbours"], 6, 0, "[MASK]", TABLE)
    assert made.texts
    for new in made.texts:
        words = new.split()
        assert words[0] in {"Rain,", "Snow,", "Hail,"} and words[3] in {"rain", "snow", "hail"}
        assert words[1:3] == ["then", "more"] and words[4] == "today"
        assert words[0] != "Rain," or words[3] != "rain"


# ----------------------------------------------------------------------------------------------------------
# Neighbours from the embedding matrix


def test_nearest_neighbours_come_from_the_embedding_and_skip_special_tokens_and_pieces() -> None:
    vocab = {"[PAD]": 0, "[MASK]": 1, "cat": 2, "dog": 3, "car": 4, "##s": 5, "truck": 6, "Cat": 7, "7": 8}
    embeddings = np.array(
        [
            [0.0, 0.0, 1.0],
            [1.0, 0.05, 0.0],  # [MASK]: closest to cat of all, but special
            [1.0, 0.0, 0.0],  # cat
            [0.9, 0.3, 0.0],  # dog: cat's nearest word
            [0.0, 1.0, 0.0],  # car
            [1.0, 0.01, 0.0],  # ##s: a piece, never a neighbour
            [0.1, 0.9, 0.1],  # truck: car's nearest word
            [1.0, 0.0, 0.01],  # Cat: cat in another case, not a neighbour of it
            [1.0, 0.0, 0.0],  # "7": not a word
        ]
    )
    table = embedding_neighbours(embeddings, vocab, ["[PAD]", "[MASK]"], ["the cat chased a car"], k=2)
    assert table == {"cat": ["dog", "truck"], "car": ["truck", "dog"]}
    assert embedding_neighbours(embeddings, vocab, ["[PAD]", "[MASK]"], ["The Cat"], k=1) == {
        "Cat": ["dog"],
        "cat": ["dog"],
    }
    made = augment_texts(["the cat sat"], ["neighbours"], 1, 0, "[MASK]", {"cat": ["dog"]})
    assert made.texts == ["the dog sat"]


def test_sentencepiece_vocabularies_use_their_word_start_marker() -> None:
    vocab = {"<s>": 0, "▁cat": 1, "▁dog": 2, "at": 3, "▁": 4, "▁Dog": 5}
    assert whole_words(vocab, ["<s>"]) == {"cat": 1, "dog": 2, "Dog": 5}


# ----------------------------------------------------------------------------------------------------------
# Recipe and cache key


@pytest.mark.parametrize("name", sorted(DISTILL_KEYS))
def test_distill_key_is_unchanged_without_augment_and_changes_with_it(name: str) -> None:
    assert sorted(p.name for p in (REPO / "recipes").glob("*.yaml")) == sorted(DISTILL_KEYS)
    recipe = load_recipe(REPO / "recipes" / name, earlier(name))
    assert stable_hash(DistillStage().params(recipe)["distill"]) == DISTILL_KEYS[name]
    augmented = load_recipe(REPO / "recipes" / name, [*earlier(name), "distill.augment={factor: 2}"])
    params = DistillStage().params(augmented)["distill"]
    assert params["augment"] == {"factor": 2, "methods": list(METHODS), "seed": None}
    other = load_recipe(REPO / "recipes" / name, [*earlier(name), "distill.augment={factor: 3}"])
    by_class = load_recipe(
        REPO / "recipes" / name, [*earlier(name), "distill.augment={factor: 2, class_factors: {x: 4}}"]
    )
    assert DistillStage().params(by_class)["distill"]["augment"]["class_factors"] == {"x": 4}
    assert len({stable_hash(DistillStage().params(r)) for r in (recipe, augmented, other, by_class)}) == 4


def test_augment_recipe_errors_name_the_field() -> None:
    from edgekd.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["distill.augment={factor: 0, methods: [mask, mask, synonyms]}"])
    problems = "\n".join(err.value.problems)
    assert "distill.augment.factor" in problems and "distill.augment.methods" in problems


# ----------------------------------------------------------------------------------------------------------
# Teacher labels: KD-only rows


def test_augmented_rows_carry_the_teacher_logits_and_no_hard_label(tiny_classifier_dir: Path) -> None:
    from edgekd.data import load_splits
    from edgekd.models import load_tokenizer
    from edgekd.stages.distill.stage import distill_data

    recipe = load_recipe(SMOKE)  # the toy data
    splits = load_splits(recipe.data, recipe.seed)
    n_train, n_val, classes = len(splits.train), len(splits.texts("validation")), len(splits.labels)
    augmented = ["rain [MASK] the coast", "the team won"]
    marked = np.arange(len(augmented) * classes, dtype=np.float32).reshape(len(augmented), classes) + 100
    logits = {
        "train": np.zeros((n_train, classes), np.float32),
        "validation": np.zeros((n_val, classes), np.float32),
        "augmented": marked,
    }
    tokenizer = load_tokenizer(str(tiny_classifier_dir))
    data = distill_data(splits, [], logits, tokenizer, tiny_classifier_dir, None, 32, augmented)
    assert len(data.train) == n_train + 2
    tail = data.train.select(range(n_train, n_train + 2))
    assert tail["label"] == [-100, -100]
    assert np.allclose(np.array(tail["teacher_logits"]), marked)
    assert -100 not in data.train.select(range(n_train))["label"]


@pytest.mark.e2e
def test_compress_with_augmentation_records_what_it_made(tmp_path: Path) -> None:
    """The smoke recipe end to end through the CLI: the teacher labels the new rows (cached like any split)
    and distill/stage.json counts them per method and per teacher label."""
    from edgekd.stages.distill.labelling import torch_teacher_logits

    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekd.cli",
            "compress",
            str(SMOKE),
            "--output-dir",
            str(run_dir),
            "--set",
            "distill.augment={factor: 2, methods: [mask, delete]}",
            "--set",
            "teacher.finetune.epochs=2",
            "--set",
            "distill.epochs=1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "distill" / "stage.json").read_text())
    made = record["metrics"]["augmentation"]
    assert made["rows_per_method"]["mask"] > 400 and made["rows_per_method"]["delete"] > 400
    assert made["rows"] == sum(made["rows_per_method"].values()) <= 2 * 480
    assert made["seconds"] >= 0
    # The label counts are the teacher's argmax on exactly the rows the recipe makes.
    recipe = load_recipe(SMOKE, ["distill.augment={factor: 2, methods: [mask, delete]}"])
    from edgekd.data import load_splits

    splits = load_splits(recipe.data, recipe.seed)
    texts = augment_texts(splits.texts("train"), ["mask", "delete"], 2, recipe.distill.seed, "[MASK]").texts
    assert len(texts) == made["rows"]
    predicted = torch_teacher_logits(run_dir / "teacher" / "model", texts, recipe.data.max_length).argmax(-1)
    expected = {label: int((predicted == i).sum()) for i, label in enumerate(splits.labels)}
    assert made["teacher_label_counts"] == expected
    assert len(list((run_dir / "cache").glob("teacher_logits-augmented-*.npy"))) == 1
    assert "augmented transfer set" in result.stderr + result.stdout
