"""Architectures in a recipe, checked against transformers' config classes before anything is trained.

`teacher.config` / `student.config` are free-form mappings handed to `AutoConfig.for_model`, which takes any
keyword: a typo (`num_hiden_layers`) would be ignored and the default architecture built, and an impossible
value (`hidden_size: -64`, `num_attention_heads: 0`) would only fail when the model is built, hours into a
run. Model folders are read here too (their `config.json` only, never weights) to compare their position
embeddings with `data.max_length`.

Every function returns problem lines (`field.path: what is wrong`) for one `RecipeError`, so a user sees all
of them at once, with a "did you mean" for misspelt keys.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import EdgekdError, first_line
from edgekd.recipe.schema import ModelSpec, Recipe, TokenizerBuild

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# edgekd sets these from the dataset and its training loop; a recipe value would conflict or break training.
RESERVED = {
    "num_labels": "edgekd sets it from the dataset's labels",
    "id2label": "edgekd sets it from the dataset's labels",
    "label2id": "edgekd sets it from the dataset's labels",
    "problem_type": "edgekd trains single-label classifiers",
    "return_dict": "training reads the model's outputs by name",
    "torchscript": "training reads the model's outputs by name",
}
# Sizes and counts: an integer field whose name says so and whose default is at least 1 must stay >= 1
# (`chunk_size_feed_forward` defaults to 0 and means "off", so the default decides, not the name alone).
SIZE_NAME = re.compile(r"(^|_)(size|dim|layers|heads|embeddings|groups)$|^(num|n)_|^dim$")
# Models whose position ids start after the padding id (RoBERTa's scheme): max_length + 2 positions are used.
POSITION_OFFSET_TYPES = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "data2vec-text", "ibert"}
)


def architecture_problems(recipe: Recipe) -> list[str]:
    """Every problem with the teacher's and student's architectures, as `field.path: message` lines.

    Reads config classes and local `config.json` files; a Hub id is only read when transformers runs offline
    (then from the local cache), so this never downloads anything.
    """
    problems: list[str] = []
    max_length = recipe.data.max_length
    for section, spec in (("teacher", recipe.teacher), ("student", recipe.student)):
        if spec.config is not None:
            # A fresh student without a tokenizer of its own gets the teacher's.
            fallback = (recipe.teacher.tokenizer or recipe.teacher.model) if section == "student" else None
            sized = "vocab_size" in spec.config or "pad_token_id" in spec.config
            vocab = tokenizer_size_bound(spec, fallback) if sized else None
            problems += config_problems(f"{section}.config", spec.config, max_length, vocab)
        elif spec.model is not None and spec.model != "teacher":
            problems += folder_problems(f"{section}.model", spec.model, max_length, spec.trust_remote_code)
    return problems


# ----------------------------------------------------------------------------------------------------------
# Architecture dicts (`teacher.config`, `student.config`)


def config_problems(where: str, config: dict[str, Any], max_length: int, vocab: int | None) -> list[str]:
    """Problems with one architecture dict: model type, unknown keys, types and ranges, then the built
    config as a whole (width divisible by heads, enough positions for `max_length`, room for the tokenizer).

    Args:
        where: The field path, e.g. `student.config`.
        config: The recipe's mapping (with `model_type`).
        max_length: `data.max_length`, the longest input in tokens.
        vocab: The most token ids the model's tokenizer can produce, when known (checked only then).
    """
    model_type = config.get("model_type")
    config_class = _config_class(model_type)
    if config_class is None:
        return [f"{where}.model_type: {_unknown_model_type(model_type)}"]
    known = known_fields(config_class)
    defaults = _defaults(config_class)
    problems: list[str] = []
    for key, value in config.items():
        if key == "model_type":
            continue
        if not isinstance(key, str) or key not in known:
            problems.append(f"{where}.{key}: {_unknown_field(key, known, config_class)}")
        elif key in RESERVED:
            problems.append(f"{where}.{key}: remove it ({RESERVED[key]})")
        else:
            name = config_class.attribute_map.get(key, key)
            problem = value_problem(key, value, defaults.get(name))
            if problem:
                problems.append(f"{where}.{key}: {problem}")
    if problems:
        return problems  # the whole-config checks below would only repeat them
    built, problem = _build(config_class, config)
    if built is None:
        return [f"{where}: transformers refuses this {model_type} config: {problem}"]
    return shape_problems(where, built, str(model_type), max_length, vocab, explicit=config)


def known_fields(config_class: type[PretrainedConfig]) -> set[str]:
    """Every key the config class reads: its own and PretrainedConfig's keyword arguments, the attributes
    of its default instance, and the aliases of its `attribute_map` (DistilBERT's `hidden_size` -> `dim`)."""
    from transformers import PretrainedConfig

    names = set(_defaults(config_class)) | set(config_class.attribute_map) | {"torch_dtype"}
    for cls in (config_class, PretrainedConfig):
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD) and param.name != "self":
                names.add(param.name)
    return {name for name in names if not name.startswith("_")}


def value_problem(key: str, value: Any, default: Any) -> str | None:
    """What is wrong with one value, judged by the type of the field's default and by its name, or None."""
    if value is None:
        if key.endswith("_token_id") or default is None or isinstance(default, str):
            return None
        return f"needs a value like the default {default!r}, got null"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"needs true or false, got {_shown(value)}"
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"needs a whole number, got {_shown(value)}"
        if _is_size_field(key, default) and value < 1:
            return f"must be at least 1, got {value}"
    elif isinstance(default, float) or "dropout" in key:
        if not _is_number(value):
            return f"needs a number, got {_shown(value)}{_yaml_float_tip(value)}"
    elif isinstance(default, str) and not isinstance(value, str):
        return f"needs text such as {default!r}, got {_shown(value)}"
    return _range_problem(key, value)


def _range_problem(key: str, value: Any) -> str | None:
    if not _is_number(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if "dropout" in key and not 0 <= value <= 1:
        return f"is a probability between 0 and 1, got {value}"
    if key.endswith("_eps") and value <= 0:
        return f"must be greater than 0, got {value}"
    if key == "initializer_range" and value < 0:
        return f"is a standard deviation, so not negative; got {value}"
    return None


def shape_problems(
    where: str,
    config: Any,
    model_type: str,
    max_length: int,
    vocab: int | None,
    explicit: dict[str, Any] | None = None,
) -> list[str]:
    """Cross-field problems of a built config: heads that do not divide the width, too few positions for
    `data.max_length`, a vocabulary smaller than the tokenizer's, a padding id outside the vocabulary.

    Args:
        where: The field path of the config (`teacher.config`) or folder (`teacher.model`).
        config: The transformers config.
        model_type: Its model type (decides the position offset).
        max_length: `data.max_length`.
        vocab: The most token ids the tokenizer can produce, when known.
        explicit: The recipe's own mapping, for a config built from one (None for a folder).
    """
    problems: list[str] = []
    width, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(width, int) and isinstance(heads, int) and heads > 0 and width % heads:
        problems.append(
            f"{where}: hidden_size {width} is not divisible by num_attention_heads {heads} "
            f"(each head gets hidden_size / num_attention_heads dimensions)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int):
        problems += _position_problems(where, positions, model_type, max_length, explicit)
    if explicit is not None:
        problems += _vocabulary_problems(where, config, vocab, explicit)
    return problems


def _position_problems(
    where: str, positions: int, model_type: str, max_length: int, explicit: dict[str, Any] | None
) -> list[str]:
    offset = 2 if model_type in POSITION_OFFSET_TYPES else 0
    if positions - offset >= max_length:
        return []
    detail = f"max_position_embeddings {positions}" + (" less the padding offset of 2" if offset else "")
    usable = f"at most {positions - offset} tokens ({detail})"
    if explicit is None:  # a model folder: only data.max_length can change
        return [f"data.max_length: {max_length} is more than {where} takes: {usable}"]
    return [
        f"{where}.max_position_embeddings: the model takes {usable} but data.max_length is {max_length}; "
        "raise it (or lower data.max_length)"
    ]


def _vocabulary_problems(where: str, config: Any, vocab: int | None, explicit: dict[str, Any]) -> list[str]:
    """A config-built model's embedding table must hold every id its tokenizer produces and the padding id.
    Without an explicit `vocab_size` the table is sized from the tokenizer, so only the padding id can be
    out of range then."""
    size = explicit.get("vocab_size")
    if vocab is not None and isinstance(size, int) and size < vocab:
        return [
            f"{where}.vocab_size: {size} is smaller than the tokenizer's vocabulary (up to {vocab} tokens); "
            "remove vocab_size (it defaults to the tokenizer's size) or raise it"
        ]
    table = size if isinstance(size, int) else vocab
    pad = getattr(config, "pad_token_id", None)
    if "pad_token_id" in explicit and isinstance(pad, int) and table is not None and pad >= table:
        return [f"{where}.pad_token_id: {pad} is not an id of the {table}-token vocabulary"]
    return []


# ----------------------------------------------------------------------------------------------------------
# Model folders and tokenizers


def folder_problems(where: str, model: str, max_length: int, trust_remote_code: bool) -> list[str]:
    """Problems with a model folder (or an offline-cached Hub id) given as `teacher.model` / `student.model`:
    its config cannot be read, or it has fewer positions than `data.max_length`."""
    local = Path(model).is_dir()
    if not local and not _offline():
        return []  # a Hub id while online: read when the stage runs, never downloaded by a check
    try:
        config = _read_config(model, trust_remote_code)
    except Exception as exc:  # transformers parses the user's config.json; any failure means "unusable"
        if local:
            reason = exc.message if isinstance(exc, EdgekdError) else first_line(exc)
            return [f"{where}: cannot read the model's config.json: {reason}"]
        return [
            f"{where}: {model!r} is neither a folder (relative paths start at the recipe's folder) nor a "
            "model in the local Hub cache (transformers runs offline)"
        ]
    return shape_problems(where, config, str(getattr(config, "model_type", "")), max_length, None)


def tokenizer_size_bound(spec: ModelSpec, fallback: str | TokenizerBuild | None = None) -> int | None:
    """The most token ids the tokenizer a config-built model gets can produce, when knowable up front: the
    `vocab_size` of a tokenizer trained here, the size of a local tokenizer folder; None otherwise.

    Args:
        spec: The model's recipe section.
        fallback: The tokenizer used when `spec` names none (a fresh student gets the teacher's).
    """
    source = spec.tokenizer or fallback
    if isinstance(source, TokenizerBuild):
        return source.vocab_size
    if source is None or not Path(source).is_dir():
        return None
    from edgekd.models import load_tokenizer

    try:
        return len(load_tokenizer(source, spec.trust_remote_code))
    except Exception:  # a broken tokenizer folder is reported where it is loaded, with its own message
        return None


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _config_class(model_type: Any) -> type[PretrainedConfig] | None:
    if not isinstance(model_type, str):
        return None
    from transformers import CONFIG_MAPPING

    try:
        # Not .get(): the lazy mapping only answers `in` and `[]` (its dict storage is empty).
        return CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None  # noqa: SIM401
    except Exception:  # a config module that fails to import is as unusable as an unknown type
        return None


def _unknown_model_type(model_type: Any) -> str:
    from transformers import CONFIG_MAPPING

    close = (
        difflib.get_close_matches(model_type.lower(), list(CONFIG_MAPPING.keys()), n=1, cutoff=0.6)
        if isinstance(model_type, str)
        else []
    )
    suggestion = f"; did you mean '{close[0]}'?" if close else " (e.g. bert, distilbert, roberta, mpnet)"
    return f"unknown model type {_shown(model_type)} in transformers{suggestion}"


def _unknown_field(key: Any, known: set[str], config_class: type[PretrainedConfig]) -> str:
    model_type = config_class.model_type
    if not isinstance(key, str):
        return f"unknown {model_type} config field (keys are names, got {_shown(key)})"
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f"unknown {model_type} config field; did you mean '{by_lower[close[0]]}'?"
    # Architectures name their sizes differently (DistilBERT: dim, hidden_dim, n_heads, n_layers).
    from transformers import PretrainedConfig

    common = _defaults(PretrainedConfig)  # generation settings and the like, not the architecture
    own = {name: value for name, value in _defaults(config_class).items() if name not in common}
    sizes = sorted(name for name, value in own.items() if _is_size_field(name, value))
    return f"unknown {model_type} config field; its size fields are: {', '.join(sizes)}"


def _is_size_field(name: str, default: Any) -> bool:
    return (
        isinstance(default, int)
        and not isinstance(default, bool)
        and default >= 1
        and bool(SIZE_NAME.search(name))
    )


_DEFAULTS: dict[Any, dict[str, Any]] = {}


def _defaults(config_class: type[PretrainedConfig]) -> dict[str, Any]:
    """The attributes of the class's default config (the value types the checks compare against)."""
    if config_class not in _DEFAULTS:
        try:
            _DEFAULTS[config_class] = dict(config_class().to_dict())
        except Exception:  # a composite config that cannot be built without arguments: nothing to compare
            _DEFAULTS[config_class] = {}
    return _DEFAULTS[config_class]


def _build(config_class: type[PretrainedConfig], config: dict[str, Any]) -> tuple[Any, str]:
    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        return config_class(**fields), ""
    except Exception as exc:  # config classes validate with ValueError, TypeError, AssertionError, ...
        return None, first_line(exc)


def _read_config(model: str, trust_remote_code: bool) -> Any:
    from edgekd.stages.distill.intermediate import config_of

    return config_of(model, None, trust_remote_code)


def _offline() -> bool:
    from transformers.utils import is_offline_mode

    return bool(is_offline_mode())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _yaml_float_tip(value: Any) -> str:
    # PyYAML follows YAML 1.1: `1e-12` (no dot) is text, `1.0e-12` a number.
    match = re.fullmatch(r"([+-]?\d+)([eE][+-]?\d+)", value.strip()) if isinstance(value, str) else None
    return f" (YAML reads {value} as text: write {match[1]}.0{match[2]})" if match else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"
