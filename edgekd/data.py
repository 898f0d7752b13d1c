"""Dataset loading: a local folder of split files (jsonl, jsonl.gz, json, csv, csv.gz, parquet), a single such
file, or a Hub dataset id.

A single file holds all the labelled rows: a seeded, stratified `TEST_FRACTION` of them becomes the test split,
and validation is carved from the rest as for a folder without a validation file.

Every split comes out as a `datasets.Dataset` with two columns, `text` (str) and `label` (int id into
`labels`), so the stages never see the source format. Problems are reported as `DataError` with the file
and the row that is wrong, and a hint that says what to change.

Files are read as people save them: CSV from Excel (UTF-8 with a byte-order mark), CSV fields of any length,
`.json` files that hold one array of objects as well as one object per line. A JSON text with a lone
surrogate escape (`"\\ud800"`), which no tokenizer can encode, has it replaced with U+FFFD and one warning.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import DataError, MissingDependencyError, first_line
from edgekd.recipe.load import data_root
from edgekd.recipe.schema import DataSpec

if TYPE_CHECKING:
    from datasets import Dataset

SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".csv", ".csv.gz", ".parquet")
# Share of a single data file's rows held out (seeded, per class) as the test split. 20% keeps a few hundred
# test rows for a few thousand labelled ones, enough to tell a one-point accuracy drop from noise on most data.
TEST_FRACTION = 0.2

# utf-8-sig reads plain UTF-8 unchanged and drops the byte-order mark Excel and Notepad put at the start, which
# would otherwise become part of the first column's name.
ENCODING = "utf-8-sig"
# Python's csv module refuses fields over 131,072 characters, while the same text loads from JSON Lines; this is
# the largest limit every platform's C long accepts.
CSV_FIELD_LIMIT = 2**31 - 1
# json.loads can only produce these from a `\udXXX` escape without its pair; tokenizers cannot encode them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_READ_HINT = "check that the file is complete and readable (copy or download it again)"
_JSONL_HINT = 'give each line one JSON object, e.g. {"text": "...", "label": "..."}'
_JSON_HINT = "a .json file holds one array of objects, or one JSON object per line"
_CSV_HINT = (
    "put texts that contain commas, quotes or line breaks in double quotes (as spreadsheet exports do)"
)


@dataclass
class Splits:
    """The three splits as lists of (text, label id), plus the class names in id order.

    `warnings` lists problems that do not stop a run but make its numbers less meaningful (a class without
    test rows, test texts that also appear in train); `pipeline.compress` logs them once.
    """

    labels: list[str]
    train: list[tuple[str, int]]
    validation: list[tuple[str, int]]
    test: list[tuple[str, int]]
    validation_carved: bool = False
    warnings: list[str] = field(default_factory=list)

    def texts(self, split: str) -> list[str]:
        return [t for t, _ in getattr(self, split)]

    def label_ids(self, split: str) -> list[int]:
        return [y for _, y in getattr(self, split)]

    def dataset(self, split: str) -> Dataset:
        """The split as a `datasets.Dataset` with columns `text` and `label`."""
        try:
            from datasets import Dataset
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("datasets") from exc
        rows = getattr(self, split)
        return Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})

    def counts(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in ("train", "validation", "test")}


def load_splits(spec: DataSpec, seed: int = 42, *, model_labels: Sequence[str] | None = None) -> Splits:
    """Load, check and cap the splits the recipe describes.

    Args:
        spec: The recipe's data section.
        seed: Seeds the test carve-out (single file), the validation carve-out and the caps.
        model_labels: Only for measuring finished models (`edgekd benchmark`): a data folder may then hold just a
            test split, and without data.labels or labels.txt the class names are these (the reference model's).

    Raises:
        DataError: missing split, empty file, bad rows, unknown labels, unreadable file.
    """
    repaired: Counter[str] = Counter()
    single_file = False
    if spec.hub is not None:
        raw, labels = _read_hub(spec)
    else:
        source = _find_source(spec.path or "")
        single_file = source.is_file()
        if single_file:
            raw = {"train": _read_data_file(source, spec, repaired), "validation": None, "test": None}
            labels = spec.labels
        else:
            raw = {split: _read_split(source, split, spec, repaired) for split in SPLIT_ALIASES}
            labels = spec.labels or read_labels_file(source)
    trainless = raw["train"] is None and model_labels is not None
    if raw["train"] is None and not trainless:
        raise DataError(
            "the dataset has no train split", hint="add a train.jsonl / train.csv / train.parquet file"
        )
    if raw["test"] is None and not single_file:
        raise DataError(
            "the dataset has no test split", hint="add a test.jsonl / test.csv / test.parquet file"
        )
    if labels is None and trainless and model_labels:
        labels = list(model_labels)
    if labels is None:
        labelled = raw["test"] if trainless else raw["train"]
        labels = sorted({str(label) for _, label in labelled or []})
    if len(labels) < 2:
        raise DataError(
            f"a classifier needs at least 2 classes; the data has {len(labels)}: {labels}",
            hint="check data.label_column, labels.txt or data.labels",
        )
    label_ids = {name: i for i, name in enumerate(labels)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, rows in raw.items():
        if rows is not None:
            splits[split] = _encode_labels(rows, label_ids, split)
    if trainless:
        splits["train"] = []
        splits.setdefault("validation", [])
    if single_file:
        splits["train"], splits["test"] = _carve_test(splits["train"], seed, spec.path or "")
    carved = "validation" not in splits
    if carved:
        splits["train"], splits["validation"] = _carve_validation(
            splits["train"], spec.validation_fraction, seed
        )
    for split in ("train", "validation", "test"):
        cap = getattr(spec.limits, split)
        splits[split] = _cap(splits[split], cap, seed)
    result = Splits(
        labels=list(labels),
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        validation_carved=carved,
    )
    if not trainless:
        check_every_class_is_trained(result, capped=spec.limits.train is not None)
    checks = (surrogates_warning(repaired), untested_classes_warning(result), overlap_warning(result))
    result.warnings = [w for w in checks if w]
    return result


def check_every_class_is_trained(splits: Splits, capped: bool) -> None:
    """A class without train rows can never be predicted: the model would silently learn one class fewer.

    Raises:
        DataError: naming the classes without train rows.
    """
    missing = _classes_without_rows(splits, "train")
    if missing:
        hint = "add train rows for them, or remove them from labels.txt / data.labels"
        if capped:
            hint = "raise data.limits.train, " + hint
        raise DataError(f"{len(missing)} class(es) have no train rows: {_names(missing)}", hint=hint)


def surrogates_warning(repaired: Counter[str]) -> str | None:
    """Lone surrogates are replaced rather than refused: one broken emoji should not stop a run, but the user
    should know the text they train on is not byte for byte their file."""
    if not repaired:
        return None
    files = ", ".join(f"{name}: {n}" for name, n in sorted(repaired.items()))
    return (
        f"{sum(repaired.values())} row(s) held lone UTF-16 surrogates (such as \\ud800), which no tokenizer can "
        f"encode; replaced them with U+FFFD ({files})"
    )


def untested_classes_warning(splits: Splits) -> str | None:
    """Small test sets happen, so a class without test rows is a warning: its accuracy is simply not measured."""
    missing = _classes_without_rows(splits, "test")
    if not missing:
        return None
    return (
        f"{len(missing)} class(es) have no test rows, so the report does not measure them: {_names(missing)}"
    )


def overlap_warning(splits: Splits) -> str | None:
    """Test texts that are exact copies of train texts inflate test accuracy (the model has seen them)."""
    train_texts = set(splits.texts("train"))
    duplicates = sum(1 for text in splits.texts("test") if text in train_texts)
    if not duplicates:
        return None
    return (
        f"{duplicates} of {len(splits.test)} test texts also appear in train (exact duplicates): "
        "test accuracy will look better than it is"
    )


def _classes_without_rows(splits: Splits, split: str) -> list[str]:
    present = set(splits.label_ids(split))
    return [name for i, name in enumerate(splits.labels) if i not in present]


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _find_source(path: str) -> Path:
    """The data folder, or the single data file, that data.path names."""
    source = Path(path)
    if source.is_file():
        if not source.name.endswith(SUFFIXES):
            raise DataError(
                f"data.path is a file edgekd cannot read: {path}",
                hint=f"give a data file ending in {', '.join(SUFFIXES)}, or a folder of split files",
            )
        return source
    if not source.is_dir():
        raise DataError(
            f"data folder not found: {path} (looked next to the recipe, then under {_data_root_named()})",
            hint="set data.path to a data folder or file (relative to the recipe), set EDGEKD_DATA_ROOT to the "
            "folder that holds it, or add data.hub: <dataset id> to read it from the Hugging Face Hub when online",
        )
    return source


def _data_root_named() -> str:
    root = data_root()
    return f"the data root {root}" if root else "a data root (EDGEKD_DATA_ROOT is not set)"


def split_file(folder: Path, split: str) -> Path | None:
    """The file of `split` in a data folder (any alias, any suffix), or None."""
    for name in SPLIT_ALIASES[split]:
        for suffix in SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read_labels_file(folder: Path) -> list[str] | None:
    """The class names of the folder's labels.txt in id order, or None without one.

    Raises:
        DataError: an unreadable, empty or duplicated list.
    """
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding=ENCODING)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})", hint="re-encode it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}", hint=_READ_HINT) from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise DataError(f"{path}: no class names", hint="list one class name per line, or delete the file")
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise DataError(
            f"{path}: duplicate class names: {_names(duplicates)}", hint="list each class name once"
        )
    return labels


def _read_split(
    folder: Path, split: str, spec: DataSpec, repaired: Counter[str]
) -> list[tuple[str, Any]] | None:
    path = split_file(folder, split)
    if path is None:
        return None
    return _read_data_file(path, spec, repaired)


def _read_data_file(path: Path, spec: DataSpec, repaired: Counter[str]) -> list[tuple[str, Any]]:
    records = read_records(path, repaired)
    return [_row(path, i, record, spec) for i, record in enumerate(records, start=1)]


def read_records(path: Path, repaired: Counter[str] | None = None) -> list[Any]:
    """Every row of one data file as stored (a dict of columns for a well-formed file).

    Raises:
        DataError: naming the file, for an empty, unreadable or malformed one.
    """
    try:
        records = list(_read_records(path, repaired))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start})", hint="re-encode the file as UTF-8"
        ) from None
    except csv.Error as exc:
        raise DataError(f"{path}: cannot read as CSV: {first_line(exc)}", hint=_CSV_HINT) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read: {first_line(exc)}", hint=_READ_HINT) from None
    if not records:
        raise DataError(f"{path}: the file has no rows", hint="add rows to it, or remove the file")
    return records


def _row(path: Path, i: int, record: Any, spec: DataSpec) -> tuple[str, Any]:
    """(text, label) of one record, or a DataError naming the file, the row and what to change."""
    if not isinstance(record, dict):
        hint = 'give each row named columns, e.g. {"text": "...", "label": "..."}'
        if isinstance(record, list) and not path.name.endswith(".json"):
            hint = "a file that holds one JSON array of rows must be named .json"
        raise DataError(f"{path}: row {i} is not an object with named columns", hint=hint)
    for column in (spec.text_column, spec.label_column):
        if column not in record:
            found = ", ".join(repr(str(name)) for name in record)
            raise DataError(
                f"{path}: row {i} has no column '{column}' (columns: {found})",
                hint="set data.text_column / data.label_column",
            )
        if record[column] is None and _is_csv(path):
            # csv.DictReader fills the columns a short row lacks with None.
            width = sum(1 for name, value in record.items() if name is not None and value is not None)
            raise DataError(
                f"{path}: row {i} has {width} of {len(record)} fields (no '{column}')",
                hint=f"complete row {i} (row 1 is the first after the header); {_CSV_HINT}",
            )
    text, label = record[spec.text_column], record[spec.label_column]
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            f"{path}: row {i} has an empty or non-text '{spec.text_column}': {_preview(text)}",
            hint="give every row a non-empty text, or remove the row",
        )
    if label is None or isinstance(label, (list, dict)):
        raise DataError(
            f"{path}: row {i} has no single class in '{spec.label_column}': {_preview(label)}",
            hint="give every row one class name (or id), or remove the row",
        )
    return text, label


def _preview(value: Any, limit: int = 60) -> str:
    """A short, one-line description of a cell: containers are named, not printed (they can be huge or nested
    deeper than repr can go)."""
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _is_csv(path: Path) -> bool:
    return ".csv" in path.name


def _read_records(path: Path, repaired: Counter[str] | None = None) -> Iterator[Any]:
    """The rows of one file, in order. JSON rows have lone surrogates in their string values replaced with
    U+FFFD; `repaired[path.name]` counts the rows that had any.

    Raises:
        DataError: a row that is not JSON or is nested too deeply, a file that is not parquet.
        UnicodeDecodeError, OSError, EOFError, zlib.error, csv.Error: left to the caller, which names the file.
    """
    name = path.name
    if name.endswith(".parquet"):
        yield from _read_parquet(path)
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        text = io.TextIOWrapper(fh, encoding=ENCODING, newline="")
        if _is_csv(path):
            csv.field_size_limit(CSV_FIELD_LIMIT)
            yield from csv.DictReader(text)
            return
        lines: Iterable[str] = text
        if name.endswith(".json"):
            content = text.read()
            if content.lstrip().startswith("["):
                rows = _parse_json(path, content, "the file", _JSON_HINT)
                yield from (_without_lone_surrogates(row, name, repaired) for row in rows)
                return
            lines = io.StringIO(content, newline="")  # one object per line, as in .jsonl
        hint = _JSON_HINT if name.endswith(".json") else _JSONL_HINT
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                row = _parse_json(path, line, f"line {lineno}", hint)
                yield _without_lone_surrogates(row, name, repaired)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # a device install (numpy, onnxruntime, tokenizers) has no pyarrow
        raise DataError(
            f"{path}: reading parquet needs the Python package 'pyarrow', which is not installed",
            hint="pip install pyarrow, or convert the file to .jsonl or .csv "
            "(e.g. pandas.read_parquet(path).to_json(out, orient='records', lines=True))",
        ) from None

    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except (pa.ArrowException, ValueError) as exc:  # ArrowInvalid for a file that is not parquet
        raise DataError(
            f"{path}: cannot read as parquet: {first_line(exc)}",
            hint="write the file again (pandas DataFrame.to_parquet or pyarrow), or use .jsonl / .csv",
        ) from None
    return rows


def _parse_json(path: Path, text: str, where: str, hint: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f" (line {exc.lineno}, column {exc.colno})" if where == "the file" else f" (column {exc.colno})"
        raise DataError(f"{path}: {where} is not valid JSON: {exc.msg}{at}", hint=hint) from None
    except RecursionError:
        raise DataError(
            f"{path}: {where} is nested too deeply to read (arrays or objects inside each other)",
            hint="keep each row flat: " + _JSONL_HINT,
        ) from None


def _without_lone_surrogates(row: Any, name: str, repaired: Counter[str] | None) -> Any:
    if not isinstance(row, dict):
        return row
    changed = False
    for key, value in row.items():
        if isinstance(value, str) and _LONE_SURROGATE.search(value):
            row[key] = _LONE_SURROGATE.sub("\ufffd", value)
            changed = True
    if changed and repaired is not None:
        repaired[name] += 1
    return row


def _read_hub(spec: DataSpec) -> tuple[dict[str, list[tuple[str, Any]] | None], list[str] | None]:
    """Online users: a Hub dataset. Integer labels with a ClassLabel feature become class names."""
    try:
        from datasets import load_dataset
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError("datasets") from exc
    try:
        dsd = load_dataset(spec.hub, spec.hub_config)
    except Exception as exc:  # the hub client raises many types; the message is what matters
        raise DataError(
            f"cannot load Hub dataset '{spec.hub}': {first_line(exc)}",
            hint="check data.hub and data.hub_config, or set data.path to a local folder",
        ) from None
    labels = spec.labels
    raw: dict[str, list[tuple[str, Any]] | None] = {}
    for split, aliases in SPLIT_ALIASES.items():
        name = next((a for a in aliases if a in dsd), None)
        if name is None:
            raw[split] = None
            continue
        ds = dsd[name]
        feature = ds.features.get(spec.label_column)
        names = getattr(feature, "names", None)
        if names and labels is None:
            labels = list(names)
        rows = [
            (r[spec.text_column], names[r[spec.label_column]] if names else r[spec.label_column]) for r in ds
        ]
        raw[split] = rows
    return raw, labels


def _encode_labels(
    rows: list[tuple[str, Any]], label_ids: dict[str, int], split: str
) -> list[tuple[str, int]]:
    encoded = []
    unknown: Counter[str] = Counter()
    for text, label in rows:
        key = str(label)
        if key not in label_ids:
            unknown[key] += 1
            continue
        encoded.append((text, label_ids[key]))
    if unknown:
        shown = ", ".join(f"{k!r} ({n} rows)" for k, n in unknown.most_common(5))
        raise DataError(
            f"{split} split has labels that are not in the label list: {shown}",
            hint="fix the rows or list every class in data.labels / labels.txt",
        )
    return encoded


def _carve_test(
    rows: list[tuple[str, int]], seed: int, path: str
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """A single data file's rows split into train and a held-out test split (seeded, per class)."""
    train, test = _stratified_split(rows, TEST_FRACTION, seed)
    if not test:
        raise DataError(
            f"{path}: too few rows to hold out a test split ({len(rows)} rows)",
            hint="add rows (a class needs 3 for one test row), or use a folder with train and test files",
        )
    return train, test


def _carve_validation(
    rows: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """A seeded, per-class split of train into train and validation (same seed, same split)."""
    train, validation = _stratified_split(rows, fraction, seed)
    if not validation:
        raise DataError("train is too small to carve a validation split", hint="add a validation file")
    return train, validation


def _stratified_split(
    rows: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(rest, held out): `fraction` of each class held out, rounded; a class with one row is never held out."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    rng = random.Random(seed)
    rest, held_out = [], []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        n_held = round(len(members) * fraction) if len(members) > 1 else 0
        held_out.extend(members[:n_held])
        rest.extend(members[n_held:])
    rng.shuffle(rest)
    rng.shuffle(held_out)
    return rest, held_out


def _cap(rows: list[tuple[str, int]], cap: int | None, seed: int) -> list[tuple[str, int]]:
    if cap is None or cap >= len(rows):
        return rows
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:cap]
