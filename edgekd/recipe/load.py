"""Loading a recipe: YAML through `yaml.safe_load` into the strict models of `schema.py`.

Every problem in a recipe is collected and reported at once with its field path; unknown keys name the
closest valid one. Nothing in a recipe is ever executed. Relative paths resolve against the recipe file.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from edgekd.errors import RecipeError
from edgekd.recipe.schema import Recipe

# A recipe is a short hand-written file. These limits turn hostile or broken input (YAML alias bombs,
# self-referencing aliases, thousands of nesting levels, numbers no field can use) into a clear RecipeError
# before anything walks the structure, hashes it or hands it to a library.
MAX_RECIPE_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_VALUES = 10_000
MAX_ABS_INT = 10**18


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; resolve its relative paths against the recipe's folder.

    Args:
        path: The YAML file.
        overrides: `a.b=value` strings; the value is parsed as YAML (so `3`, `true`, `[0, 2]` work).

    Raises:
        RecipeError: With every problem found, each with its field path.
    """
    path = Path(path)
    raw = _read_yaml(path)
    problems: list[str] = []
    for item in overrides or []:
        problem = _apply_override(raw, item)
        if problem:
            problems.append(problem)
    unsafe = structure_problems(raw)
    if unsafe:  # not even safe to hand to the schema validator
        raise RecipeError(str(path), problems + unsafe, hint=fix_hint(path))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:  # report override and schema problems together
        problems += _describe_errors(exc, raw)
    if problems:
        raise RecipeError(str(path), problems, hint=fix_hint(path))
    try:
        return _resolve_paths(recipe, path.resolve().parent)
    except _PathProblem as exc:
        raise RecipeError(str(path), [str(exc)], hint=fix_hint(path)) from None


def fix_hint(path: str | Path) -> str:
    """The hint of a RecipeError about fields of the recipe at `path`."""
    return f"fix the fields above, then check with: edgekd validate {path}"


NOT_A_RECIPE_HINT = "pass a YAML recipe such as recipes/smoke.yaml (not a data, model or binary file)"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(str(path), ["recipe file not found"], hint="pass the path of a .yaml recipe")
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(
                str(path),
                [f"the file is larger than {MAX_RECIPE_BYTES // 1024} KB: not a recipe"],
                hint=NOT_A_RECIPE_HINT,
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["the file is not UTF-8 text"], hint=NOT_A_RECIPE_HINT) from None
    except OSError as exc:
        raise RecipeError(
            str(path),
            [f"cannot read the file: {exc.strerror or exc}"],
            hint="check that the file is readable (its permissions), or pass another recipe",
        ) from None
    data = _parse_yaml(text, str(path))
    if data is None:
        raise RecipeError(str(path), ["the recipe is empty"], hint="start from recipes/smoke.yaml")
    if not isinstance(data, dict):
        raise RecipeError(
            str(path),
            [f"a recipe is a mapping of sections, got {type(data).__name__}"],
            hint="write the sections as top-level keys (name:, data:, teacher:, student:, ...), "
            "as in recipes/smoke.yaml",
        )
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML silently keeps the last, so
    a recipe with two `distill:` sections would lose the first without a word). Keys brought in by a `<<`
    merge may still be overridden: that is what merging is for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # merges are allowed to repeat keys; complex keys are refused by PyYAML itself
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {_clip(key, 40)} is given twice (first at line {first_line[key] + 1}); "
                    "keep one",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line


def _parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` (refusing duplicate keys) with every way it can fail turned into a RecipeError
    naming `source`."""
    hint = f"fix the YAML there (indent with spaces; quote text containing ': ' or ' #'), then run: edgekd validate {source}"
    if flow_nesting_estimate(text) > MAX_DEPTH:
        # PyYAML's scanner slows down quadratically with bracket depth (seconds at a few hundred levels).
        raise RecipeError(source, [f"YAML nested more than {MAX_DEPTH} levels deep"], hint=hint)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects, no code
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RecipeError(source, [f"not valid YAML{where}: {problem}"], hint=hint) from None
    except RecursionError:
        raise RecipeError(source, [f"YAML nested more than {MAX_DEPTH} levels deep"], hint=hint) from None
    except (ValueError, OverflowError) as exc:
        # The YAML is well-formed but a scalar cannot become a Python value: an integer of thousands of
        # digits (Python's int-to-string limit) or an impossible date such as 2024-13-45.
        raise RecipeError(
            source, [f"not valid YAML: a value cannot be read ({_clip(str(exc), 100)})"], hint=hint
        ) from None


def flow_nesting_estimate(text: str) -> int:
    """The deepest `[`/`{` nesting in `text`, ignoring brackets inside quotes. An estimate (comments and
    block scalars are not special-cased), good enough to refuse absurd depth before PyYAML scans it."""
    depth = deepest = 0
    quote = ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char == "\n":
            quote = ""  # an unclosed quote is a YAML error; do not let it hide the rest of the file
    return deepest


def structure_problems(data: Any) -> list[str]:
    """Problems no schema field can accept, found by walking the parsed YAML without recursion.

    Catches what would otherwise surface far from the recipe: self-referencing or exponentially expanding
    YAML aliases (they would hang hashing and dumping), absurd nesting, integers beyond any field's range
    (Python refuses to print ints of more than 4300 digits) and strings with NUL bytes or lone surrogates
    (they cannot be file names or printed).
    """
    problems: list[str] = []
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    visited = 0
    while stack:
        value, where, depth = stack.pop()
        visited += 1
        if visited > MAX_VALUES:
            too_many = (
                f"the recipe holds more than {MAX_VALUES} values: does a YAML alias (*name) refer to itself?"
            )
            return [*problems, too_many]
        here = where or "(top level)"
        if depth > MAX_DEPTH:
            shown = here if len(here) <= 60 else here[:60] + "…"
            problems.append(
                f"{shown}: nested more than {MAX_DEPTH} levels deep (or a YAML alias refers to itself)"
            )
        elif isinstance(value, dict):
            stack.extend((key, here, depth + 1) for key in value)  # keys are values too (e.g. a huge int)
            stack.extend((child, _join_field(where, key), depth + 1) for key, child in value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((child, _join_field(where, i), depth + 1) for i, child in enumerate(value))
        elif isinstance(value, str) and not _is_clean_text(value):
            problems.append(f"{here}: text with a NUL byte or an invalid unicode character: {_clip(value)}")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ABS_INT:
            problems.append(f"{here}: the number is too large (more than {len(str(MAX_ABS_INT))} digits)")
    return problems


def _is_clean_text(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


def _join_field(where: str, key: Any) -> str:
    part = key if isinstance(key, str) and key.isprintable() else _clip(key, 40)
    return f"{where}.{part}" if where else str(part)


def _clip(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters; safe for any value YAML can produce."""
    try:
        shown = repr(value)
    except (ValueError, RecursionError):  # ints beyond the str-conversion limit, self-referencing lists
        shown = f"<{type(value).__name__}>"
    return shown[:limit] + "…" if len(shown) > limit else shown


def _apply_override(raw: dict[str, Any], item: str) -> str | None:
    """Apply one `a.b.c=value` override in place; return a problem description or None."""
    if "=" not in item:
        return f"--set {item!r}: expected KEY=VALUE, e.g. distill.epochs=1"
    key, _, value_text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        return f"--set {item!r}: empty field name in {key!r}"
    try:
        value = _parse_yaml(value_text, "--set") if value_text.strip() else ""
    except RecipeError:
        value = value_text  # not YAML: take the text as a string (and let the schema judge it)
    node: Any = raw
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            return f"--set {item!r}: '{part}' is not a section"
        node = child
    node[parts[-1]] = value
    return None


def _describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """Turn pydantic errors into `field.path: message` lines, with a closest-match hint for unknown keys."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = "(top level)"
        for i, part in enumerate(err["loc"]):
            where = _join_field(where if i else "", part)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            by_lower = {name.lower(): name for name in valid}  # `EPOCHS` is `epochs` misspelt
            close = difflib.get_close_matches(loc[-1].lower(), list(by_lower), n=1, cutoff=0.6)
            msg = f"{where}: unknown field"
            if close:
                msg += f"; did you mean '{by_lower[close[0]]}'?"
            elif valid:
                msg += f"; valid fields: {', '.join(valid)}"
        elif err["type"] == "missing":
            msg = f"{where}: required field is missing"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{where}: {text}"
            if "input" in err and err["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {_clip(err['input'])})"
        lines.append(msg)
    return lines


def _valid_keys(loc: list[str]) -> list[str]:
    """Field names of the model at `loc` (a list of field names from the Recipe root)."""
    model: Any = Recipe
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


# ----------------------------------------------------------------------------------------------------------
# Paths


def data_root() -> Path | None:
    """The folder named by $EDGEKD_DATA_ROOT, else `../shared/data` next to the working directory if present."""
    env = os.environ.get("EDGEKD_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    default = Path.cwd().parent / "shared" / "data"
    return default if default.is_dir() else None


def _looks_like_hub_id(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", value) is not None and not value.startswith(".")


def resolve_local(value: str, base: Path) -> str:
    """Resolve a folder reference: absolute, else relative to the recipe; otherwise returned unchanged
    (a Hub id, or a name looked up later under the data root)."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    relative = base / candidate
    if relative.exists() or value.startswith(("./", "../")):
        return str(relative.resolve())
    return value


class _PathProblem(Exception):
    """A path field the file system cannot even look up (name too long, `~unknown_user`, ...)."""


def _resolve_field(field: str, resolve: Callable[[str, Path], str], value: str, base: Path) -> str:
    try:
        return resolve(value, base)
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: expanduser of an unknown ~user
        reason = getattr(exc, "strerror", None) or str(exc)
        raise _PathProblem(f"{field}: not a usable path ({reason})") from None


def _resolve_data_path(value: str, base: Path) -> str:
    local = resolve_local(value, base)
    if not Path(local).is_absolute():
        root = data_root()
        if root is not None and (root / local).exists():
            local = str((root / local).resolve())
    return local


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Resolve the recipe's local paths in place.

    Raises:
        _PathProblem: a path field cannot be looked up at all; the caller makes it a RecipeError.
    """
    data = recipe.data
    if data.path is not None:
        data.path = _resolve_field("data.path", _resolve_data_path, data.path, base)
        # One source is used, in order: the folder next to the recipe, the one under the data root, the Hub.
        # Only the source in use stays in the recipe, so a local run's cache keys do not depend on the fallback.
        if data.hub is not None:
            if Path(data.path).exists():
                data.hub = data.hub_config = None
            else:
                data.path = None
    for section, spec in (("teacher", recipe.teacher), ("student", recipe.student)):
        if spec.model is not None and spec.model != "teacher":
            spec.model = _resolve_field(f"{section}.model", resolve_local, spec.model, base)
        if isinstance(spec.tokenizer, str) and spec.tokenizer != "teacher":
            spec.tokenizer = _resolve_field(f"{section}.tokenizer", resolve_local, spec.tokenizer, base)
    unlabeled = recipe.distill.unlabeled
    if unlabeled is not None:
        unlabeled.path = _resolve_field("distill.unlabeled.path", resolve_local, unlabeled.path, base)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to the run folder as recipe.resolved.yaml)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
