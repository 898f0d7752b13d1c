"""Reading a user's data for `edgekd init`: its files (a folder of splits or one file) and which columns hold the
texts and the classes (named like them, else guessed from their values).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.data import (
    SPLIT_ALIASES,
    SUFFIXES,
    TEST_FRACTION,
    read_records,
    split_file,
)
from edgekd.errors import DataError
from edgekd.recipe.schema import DataSpec

# Column names people give texts and classes, most telling first (compared case-insensitively).
TEXT_NAMES = ("text", "sentence", "utterance", "query", "content", "review", "document")

_VALIDATION_FRACTION = DataSpec.model_fields["validation_fraction"].default


LABEL_NAMES = ("label", "labels", "intent", "category", "class", "target", "topic")


# A column with more distinct values than this is an id or free text, not a set of classes.
MAX_CLASSES = 1000


# A column is text-like when at least this share of its rows hold a string with a letter in it (CSV makes every
# value a string, so "is a string" alone would take ids and numbers for text).
TEXT_SHARE = 0.5


def data_files(data: Path) -> tuple[Path, dict[str, Path]]:
    """(what data.path names, the files to read by split; "all" for a single file)."""
    if data.is_file():
        if not data.name.endswith(SUFFIXES):
            raise DataError(
                f"{data}: not a data file edgekd reads", hint=f"pass a file ending in {', '.join(SUFFIXES)}"
            )
        return data, {"all": data}
    if not data.is_dir():
        raise DataError(
            f"data not found: {data}",
            hint="pass --data a data file (.csv, .jsonl, .json, .parquet) or a folder with train and test files",
        )
    splits = {split: path for split in SPLIT_ALIASES if (path := split_file(data, split)) is not None}
    if "train" in splits and "test" in splits:
        return data, splits
    found = sorted(p for p in data.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if not found:
        raise DataError(
            f"{data}: no data files in the folder (none ending in {', '.join(SUFFIXES)})",
            hint="pass --data a data file, or a folder with train and test files (train.csv and test.csv)",
        )
    if not splits and len(found) == 1:
        return found[0], {"all": found[0]}
    if "train" in splits:
        raise DataError(
            f"{data}: the folder has a train file but no test file",
            hint=f"add a test file, or pass --data {splits['train']} alone: edgekd then holds out "
            f"{TEST_FRACTION:.0%} of its rows for testing",
        )
    if "test" in splits:
        raise DataError(f"{data}: the folder has a test file but no train file", hint="add a train file")
    names = ", ".join(p.name for p in found[:5]) + (" ..." if len(found) > 5 else "")
    raise DataError(
        f"{data}: {len(found)} data files, none named train or test ({names})",
        hint="name them train.<ext> and test.<ext>, or pass --data one file with every labelled row",
    )


def dict_records(path: Path) -> list[dict[Any, Any]]:
    records = read_records(path)
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: row {i} is not an object with named columns",
                hint='give each row named columns, e.g. {"text": "...", "label": "..."}',
            )
    return records


def column_names(records: list[dict[Any, Any]]) -> list[str]:
    """Column names in the order they first appear (csv's None key for surplus fields left out)."""
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            if isinstance(key, str):
                seen.setdefault(key, None)
    return list(seen)


def pick_text_column(
    records: list[dict[Any, Any]], columns: list[str], path: Path, given: str | None
) -> tuple[str, str]:
    if given is not None:
        _check_column(given, columns, path, "--text-column")
        return given, "given with --text-column"
    textlike = [c for c in columns if _text_share(records, c) >= TEXT_SHARE]
    named = _first_named(textlike, TEXT_NAMES)
    if named is not None:
        return named, "detected by its name"
    candidates = [c for c in textlike if c.strip().lower() not in LABEL_NAMES]
    if not candidates:
        raise DataError(
            f"{path}: no column of texts found (columns: {_listed(columns)})",
            hint="give the file a column of texts (named e.g. 'text'), or name it with --text-column",
        )
    longest = max(candidates, key=lambda c: _mean_length(records, c))
    return longest, "detected as the column with the longest texts"


def pick_label_column(
    records: list[dict[Any, Any]], columns: list[str], text: str, path: Path, given: str | None
) -> tuple[str, str]:
    if given is not None:
        _check_column(given, columns, path, "--label-column")
        return given, "given with --label-column"
    others = [c for c in columns if c != text]
    named = _first_named(others, LABEL_NAMES)
    if named is not None:
        return named, "detected by its name"
    limit = min(MAX_CLASSES, max(2, len(records) // 2))
    distinct = {c: len({str(r[c]) for r in records if is_class(r.get(c))}) for c in others}
    candidates = [c for c in others if 2 <= distinct[c] <= limit and _all_scalar(records, c)]
    if not candidates:
        raise DataError(
            f"{path}: no column of classes found (columns: {_listed(columns)})",
            hint="give the file a column of class names (named e.g. 'label'), or name it with --label-column",
        )
    fewest = min(candidates, key=lambda c: distinct[c])
    return fewest, "detected as the column with the fewest distinct values"


def _check_column(column: str, columns: list[str], path: Path, option: str) -> None:
    if column not in columns:
        close = difflib.get_close_matches(column, columns, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"pass {option} one of the file's columns"
        raise DataError(f"{path}: no column '{column}' (columns: {_listed(columns)})", hint=hint)


def _first_named(columns: list[str], names: Sequence[str]) -> str | None:
    by_name = {c.strip().lower(): c for c in reversed(columns)}
    return next((by_name[n] for n in names if n in by_name), None)


def _text_share(records: list[dict[Any, Any]], column: str) -> float:
    texts = sum(1 for r in records if isinstance(v := r.get(column), str) and any(ch.isalpha() for ch in v))
    return texts / len(records)


def _mean_length(records: list[dict[Any, Any]], column: str) -> float:
    lengths = [len(v) for r in records if isinstance(v := r.get(column), str)]
    return sum(lengths) / max(1, len(lengths))


def _all_scalar(records: list[dict[Any, Any]], column: str) -> bool:
    return not any(isinstance(r.get(column), (list, dict)) for r in records)


def is_class(value: Any) -> bool:
    return value is not None and not isinstance(value, (list, dict)) and str(value).strip() != ""


def _listed(columns: list[str]) -> str:
    return ", ".join(repr(c) for c in columns) or "none"


def train_rows(records: dict[str, list[dict[Any, Any]]]) -> int:
    """Rows the teacher trains on, estimated the way `load_splits` holds rows out."""
    rest = len(records["all"]) * (1 - TEST_FRACTION) if "all" in records else len(records["train"])
    if "validation" not in records:
        rest *= 1 - _VALIDATION_FRACTION
    return round(rest)
