"""Extra unlabelled text for distillation (`distill.unlabeled`): the teacher labels it with soft targets and the
student learns from those alone (its rows carry label -100, so the CE term skips them).

A file (.jsonl, .jsonl.gz, .json, .csv, .csv.gz, .parquet, or .txt with one text per line) or a folder of such
files, read in name order.
"""

from __future__ import annotations

import random
from pathlib import Path

from edgekd.data import SUFFIXES, _read_records
from edgekd.errors import DataError
from edgekd.recipe.schema import UnlabeledSpec

TEXT_SUFFIXES = (*SUFFIXES, ".txt")


def unlabeled_files(path: str) -> list[Path]:
    """The readable files at `path` (one file, or every supported file in a folder)."""
    source = Path(path)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        if not files:
            raise DataError(
                f"distill.unlabeled: {path} has no text files",
                hint=f"put files ending in {', '.join(TEXT_SUFFIXES)} there",
            )
        return files
    raise DataError(
        f"distill.unlabeled: {path} not found", hint="set distill.unlabeled.path to a file or folder"
    )


def read_unlabeled_file(path: Path, text_column: str) -> list[str]:
    """Every non-empty text of one file; a row without the column is an error naming the row."""
    if path.name.endswith(".txt"):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        return [line.strip() for line in lines if line.strip()]
    texts = []
    try:
        for i, record in enumerate(_read_records(path), start=1):
            if not isinstance(record, dict) or text_column not in record:
                raise DataError(
                    f"{path}: row {i} has no column '{text_column}'", hint="set distill.unlabeled.text_column"
                )
            text = record[text_column]
            if isinstance(text, str) and text.strip():
                texts.append(text)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return texts


def load_unlabeled_texts(spec: UnlabeledSpec | None, seed: int) -> list[str]:
    """The unlabelled texts the recipe asks for ([] when there are none); `limit` keeps the first N after a
    seeded shuffle, like `data.limits`.

    Raises:
        DataError: missing path, a file without the text column, or no text at all.
    """
    if spec is None:
        return []
    texts: list[str] = []
    for path in unlabeled_files(spec.path):
        texts.extend(read_unlabeled_file(path, spec.text_column))
    if not texts:
        raise DataError(
            f"distill.unlabeled: {spec.path} has no text rows", hint="point it at a non-empty file"
        )
    if spec.limit is not None and spec.limit < len(texts):
        random.Random(seed).shuffle(texts)
        texts = texts[: spec.limit]
    return texts
