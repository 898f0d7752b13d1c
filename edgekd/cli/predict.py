"""`edgekd predict`: classify texts with an exported folder, on the torch-free runtime only.

This module imports numpy, onnxruntime and tokenizers (through `edgekd.runtime`) and nothing from the training
stack, so `pip install edgekd` is enough to run it.

Input rules (documented in `edgekd predict --help`):

* Texts come from the arguments and/or `--file` (UTF-8, one text per line, `-` for stdin). Blank lines in a
  file are skipped (a trailing newline is not a text); an empty string given as an argument is classified like
  any text (from [CLS] [SEP] alone) and a note says so.
* Texts longer than the model's max_length are truncated (the end is cut), with one note for the whole call.
* A file or an argument that is not UTF-8, a folder without model/tokenizer/labels, a model whose inputs,
  outputs or vocabulary do not match its tokenizer and labels, or a thread count far above the cores is an
  `InputError`: one line and a hint, exit code 2, no traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekd.errors import InputError
from edgekd.runtime import Classifier, Prediction, TruncationWarning, check_encodable, check_thread_count

MAX_SHOWN_CHARS = 70


def texts_to_predict(texts: list[str], file: Path | None) -> list[str]:
    """The texts to classify: the arguments, then the file's non-blank lines.

    Raises:
        InputError: the file is missing, unreadable or not UTF-8, or there is no text at all.
    """
    for i, text in enumerate(texts, start=1):
        # Python turns bytes of an argument that are not UTF-8 into lone surrogates the tokenizer refuses.
        check_encodable(text, f"text argument {i}")
    collected = list(texts)
    if file is not None:
        collected.extend(line for line in _read_lines(file) if line.strip())
    if not collected:
        raise InputError(
            "no texts to classify", hint="pass texts as arguments or --file texts.txt (one per line)"
        )
    return collected


def check_options(threads: int | None, batch_size: int) -> None:
    """Refuse option values before any text is read or model loaded (the CLI leaves ranges to this).

    Raises:
        InputError: threads outside 1..(4 x cores), or a batch size below 1.
    """
    if threads is not None:
        check_thread_count(threads, "--threads")
    if batch_size < 1:
        raise InputError(
            f"--batch-size must be at least 1, got {batch_size}", hint="use e.g. --batch-size 32"
        )


def _read_lines(file: Path) -> list[str]:
    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        raise InputError(
            f"cannot read {file}: {exc.strerror or exc}", hint="pass a readable text file, one text per line"
        ) from None
    try:
        text = data.decode("utf-8-sig")  # a BOM from Windows editors is not part of the first text
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{file} is not UTF-8 text (invalid byte at offset {exc.start})", hint="re-encode it as UTF-8"
        ) from None
    return text.splitlines()


def classify(
    folder: Path, texts: list[str], threads: int | None, batch_size: int
) -> tuple[Classifier, list[Prediction], bool]:
    """Load the folder and predict every text.

    Returns:
        The classifier, one prediction per text, and whether any text was truncated.
    """
    classifier = Classifier.load(folder, threads=threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        predictions = classifier.predict(texts, batch_size=batch_size)
    truncated = any(issubclass(w.category, TruncationWarning) for w in caught)
    return classifier, predictions, truncated


def predict_command(
    folder: Path,
    texts: list[str],
    file: Path | None,
    threads: int | None,
    batch_size: int,
    as_json: bool,
    echo: Callable[[str], None],
    note: Callable[[str], None],
) -> None:
    """What `edgekd predict` does: read, classify, print (results to `echo`, remarks to `note`)."""
    check_options(threads, batch_size)
    batch = texts_to_predict(texts, file)
    classifier, predictions, truncated = classify(folder, batch, threads, batch_size)
    if truncated:
        note(f"texts longer than max_length={classifier.max_length} tokens were truncated (the end was cut)")
    empty = sum(1 for text in batch if not text.strip())
    if empty:
        note(f"{empty} empty text(s) were classified from [CLS] [SEP] alone")
    if as_json:
        echo(json.dumps([prediction_record(t, p) for t, p in zip(batch, predictions, strict=True)], indent=2))
        return
    for text, prediction in zip(batch, predictions, strict=True):
        echo(f"{prediction.label}\t{prediction.score:.4f}\t{_shorten(text)}")


def prediction_record(text: str, prediction: Prediction) -> dict[str, Any]:
    """One text's JSON output."""
    return {"text": text, "label": prediction.label, "score": prediction.score, "scores": prediction.scores}


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_SHOWN_CHARS else flat[: MAX_SHOWN_CHARS - 1] + "…"
