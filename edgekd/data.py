"""Dataset loading: a local folder of split files (jsonl, jsonl.gz, csv, parquet) or a Hub dataset id.

Every split comes out as a `datasets.Dataset` with two columns, `text` (str) and `label` (int id into
`labels`), so the stages never see the source format. Problems are reported as `DataError` with the file
and the row that is wrong.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import DataError, MissingDependencyError
from edgekd.recipe import DataSpec

if TYPE_CHECKING:
    from datasets import Dataset

SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".csv", ".csv.gz", ".parquet")


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
        seed: Seeds the validation carve-out and the caps.
        model_labels: Only for measuring finished models (`edgekd benchmark`): a data folder may then hold just a
            test split, and without data.labels or labels.txt the class names are these (the reference model's).

    Raises:
        DataError: missing split, empty file, bad rows, unknown labels, unreadable file.
    """
    if spec.hub is not None:
        raw, labels = _read_hub(spec)
        folder_labels = None
    else:
        folder = _find_folder(spec.path or "")
        raw = {split: _read_split(folder, split, spec) for split in SPLIT_ALIASES}
        folder_labels = _read_labels_file(folder)
        labels = spec.labels or folder_labels
    trainless = raw["train"] is None and model_labels is not None
    if raw["train"] is None and not trainless:
        raise DataError(
            "the dataset has no train split", hint="add a train.jsonl / train.csv / train.parquet file"
        )
    if raw["test"] is None:
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
    result.warnings = [w for w in (untested_classes_warning(result), overlap_warning(result)) if w]
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


def _find_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            f"data folder not found: {path}",
            hint="set data.path to a folder (relative to the recipe) or set EDGEKD_DATA_ROOT",
        )
    return folder


def _split_file(folder: Path, split: str) -> Path | None:
    for name in SPLIT_ALIASES[split]:
        for suffix in SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _read_labels_file(folder: Path) -> list[str] | None:
    path = folder / "labels.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})", hint="re-encode it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise DataError(f"{path}: no class names", hint="list one class name per line, or delete the file")
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate class names: {_names(duplicates)}")
    return labels


def _read_split(folder: Path, split: str, spec: DataSpec) -> list[tuple[str, Any]] | None:
    path = _split_file(folder, split)
    if path is None:
        return None
    try:
        records = list(_read_records(path))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start})", hint="re-encode the file as UTF-8"
        ) from None
    except (OSError, EOFError, zlib.error, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    except ValueError as exc:  # pyarrow's ArrowInvalid for a file that is not parquet
        raise DataError(f"{path}: cannot read: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if not records:
        raise DataError(f"{path}: the file has no rows")
    rows = []
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: row {i} is not an object with named columns")
        for column in (spec.text_column, spec.label_column):
            if column not in record:
                found = ", ".join(map(str, record))
                raise DataError(
                    f"{path}: row {i} has no column '{column}' (columns: {found})",
                    hint="set data.text_column / data.label_column",
                )
        text = record[spec.text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {i} has an empty or non-text '{spec.text_column}': {text!r}")
        rows.append((text, record[spec.label_column]))
    return rows


def _read_records(path: Path) -> Any:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        if ".csv" in name:
            yield from csv.DictReader(text)
            return
        for lineno, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} is not valid JSON: {exc.msg}") from None


def _read_hub(spec: DataSpec) -> tuple[dict[str, list[tuple[str, Any]] | None], list[str] | None]:
    """Online users: a Hub dataset. Integer labels with a ClassLabel feature become class names."""
    try:
        from datasets import load_dataset
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError("datasets") from exc
    try:
        dsd = load_dataset(spec.hub, spec.hub_config)
    except Exception as exc:  # the hub client raises many types; the message is what matters
        raise DataError(f"cannot load Hub dataset '{spec.hub}': {exc}".splitlines()[0]) from None
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


def _carve_validation(
    rows: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """A seeded, per-class split of train into train and validation (same seed, same split)."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    rng = random.Random(seed)
    train, validation = [], []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        n_val = round(len(members) * fraction) if len(members) > 1 else 0
        validation.extend(members[:n_val])
        train.extend(members[n_val:])
    rng.shuffle(train)
    rng.shuffle(validation)
    if not validation:
        raise DataError("train is too small to carve a validation split", hint="add a validation file")
    return train, validation


def _cap(rows: list[tuple[str, int]], cap: int | None, seed: int) -> list[tuple[str, int]]:
    if cap is None or cap >= len(rows):
        return rows
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:cap]
