"""Start from data: a commented recipe for the user's own data, or a copy of a shipped example.

`init_recipe` reads a data file or folder, finds the text and label columns, counts rows and classes, picks
`max_length` from the text lengths and writes a recipe whose every choice has a comment beside it. The text is
checked with `load_recipe` before it replaces anything, so `init` never writes a recipe that `edgekd validate`
refuses as a recipe. `write_example` copies a recipe shipped in the package (`smoke`) with its toy data into the
user's folder, so a `pip install "edgekd[train]"` user can run it and edit it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import shlex
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgekd.cli.data_columns import (
    column_names,
    data_files,
    dict_records,
    is_class,
    pick_label_column,
    pick_text_column,
    train_rows,
)
from edgekd.data import (
    SUFFIXES,
    TEST_FRACTION,
    read_labels_file,
)
from edgekd.errors import DataError, EdgekdError, InputError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import NAME_PATTERN, DataSpec

# WordPiece splits rare words and punctuation off: about 1.3 tokens per English word.
TOKENS_PER_WORD = 1.3
LENGTH_PERCENTILE = 0.95
MAX_LENGTH_STEPS = (32, 64, 128, 256)
# Below this many train rows per class the teacher gets 3 epochs (CLINC150's ~100 per class needed them),
# above it 1 (AG News's 5,000 per class reach 92% in one).
ROWS_PER_CLASS_FOR_ONE_EPOCH = 2000
DEFAULT_OUTPUT = Path("recipe.yaml")
# Examples shipped in the wheel (pyproject.toml maps recipes/ to the package `edgekd.examples`).
EXAMPLES = {"smoke": "smoke.yaml"}
_VALIDATION_FRACTION = DataSpec.model_fields["validation_fraction"].default


@dataclass(frozen=True)
class ModelChoice:
    """A model the written recipe uses: the offline folder `edgekd assets` makes, else its Hub id."""

    asset: str
    hub: str
    description: str


TEACHER = ModelChoice(
    "models/mpnet-base",
    "sentence-transformers/all-mpnet-base-v2",
    "MPNet-base (all-mpnet-base-v2, 110M parameters)",
)
STUDENT = ModelChoice(
    "models/minilm-l6", "sentence-transformers/all-MiniLM-L6-v2", "MiniLM-L6 (all-MiniLM-L6-v2, 384 wide)"
)
# Three of MiniLM-L6's six layers: on AG News (recipes/ag_news.yaml) three layers scored within half a point of
# two and ahead of one on validation, at 34x the teacher's batch-1 speed (benchmarks/results/student_depth.json).
STUDENT_LAYERS = (1, 3, 5)


@dataclass
class DataSummary:
    """What `init` found in the data, and the choices it made from it."""

    path: Path
    """What data.path names: the folder of split files, or the single file of all labelled rows."""
    single_file: bool
    text_column: str
    label_column: str
    text_reason: str
    label_reason: str
    rows: int
    train_rows: int
    """Rows the teacher trains on, after the test and validation hold-outs."""
    classes: list[str]
    class_counts: Counter[str]
    unlabelled_rows: int
    labels_file: bool
    words_p95: int
    max_length: int


def init_recipe(
    data: str | Path,
    output: str | Path = DEFAULT_OUTPUT,
    name: str | None = None,
    force: bool = False,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write a commented recipe for a data file or folder.

    Args:
        data: One file with every labelled row (.csv, .jsonl, .json, .parquet, optionally .gz), or a folder with
            train and test files as `edgekd compress` reads them.
        output: The recipe to write; its folder is created. Paths in it are relative to it.
        name: Run name (default: the data's file or folder name).
        force: Overwrite an existing recipe.
        text_column: The column of texts (default: detected).
        label_column: The column of class names or ids (default: detected).
        log: Receives one line per finding (columns, rows, classes, max_length).

    Returns:
        The written recipe.

    Raises:
        InputError: The output exists (without `force`) or is a folder; the name is not a usable run name.
        DataError: No data files, no text-like or label column, fewer than 2 classes, unreadable data.
    """
    output = Path(output)
    _check_output(output, force)
    if name is not None:
        _check_name(name)
    summary = inspect_data(Path(data), text_column, label_column)
    run_name = name or name_from_data(summary.path)
    output.parent.mkdir(parents=True, exist_ok=True)
    text = render_recipe(summary, run_name, output.parent.resolve(), command=_command(data, output))
    _write_checked(text, output)
    if log is not None:
        for line in _findings(summary):
            log(line)
    return output


def inspect_data(data: Path, text_column: str | None = None, label_column: str | None = None) -> DataSummary:
    """Read the data and detect its columns, classes and text lengths.

    Raises:
        DataError: see `init_recipe`.
    """
    source, files = data_files(data)
    records = {split: dict_records(path) for split, path in files.items()}
    first_path = files.get("train") or next(iter(files.values()))
    first = records.get("train") or next(iter(records.values()))
    columns = column_names(first)
    text, text_reason = pick_text_column(first, columns, first_path, text_column)
    label, label_reason = pick_label_column(first, columns, text, first_path, label_column)
    every_row = [row for rows in records.values() for row in rows]
    class_counts = Counter(str(row[label]) for row in every_row if is_class(row.get(label)))
    names_file = read_labels_file(source) if source.is_dir() else None
    classes = names_file or sorted(class_counts)
    if len(classes) < 2:
        raise DataError(
            f"{first_path}: column '{label}' holds {len(classes)} class(es) {classes}; a classifier needs at "
            "least 2",
            hint="add rows of the other classes, or name the class column with --label-column",
        )
    p95 = words_percentile([row[text] for row in every_row if isinstance(row.get(text), str)])
    return DataSummary(
        path=source,
        single_file=source.is_file(),
        text_column=text,
        label_column=label,
        text_reason=text_reason,
        label_reason=label_reason,
        rows=len(every_row),
        train_rows=train_rows(records),
        classes=classes,
        class_counts=class_counts,
        unlabelled_rows=sum(1 for row in every_row if not is_class(row.get(label))),
        labels_file=names_file is not None,
        words_p95=p95,
        max_length=choose_max_length(p95),
    )


def words_percentile(texts: Sequence[str], percentile: float = LENGTH_PERCENTILE) -> int:
    """The word count that `percentile` of the texts do not exceed (nearest rank)."""
    counts = sorted(len(text.split()) for text in texts)
    if not counts:
        return 0
    return counts[max(0, math.ceil(percentile * len(counts)) - 1)]


def choose_max_length(words: int) -> int:
    """The smallest of 32/64/128/256 tokens that holds `words` words (1.3 tokens each); 256 at most, where
    attention's cost (quadratic in length) would eat the student's speed-up."""
    tokens = words * TOKENS_PER_WORD
    return next((step for step in MAX_LENGTH_STEPS if step >= tokens), MAX_LENGTH_STEPS[-1])


def name_from_data(data: Path) -> str:
    """A valid run name from a data file's or folder's name (`my reviews.csv.gz` -> `my_reviews`)."""
    stem = data.resolve().name
    for suffix in SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip("._-")[:100]
    return name or "my_data"


# ----------------------------------------------------------------------------------------------------------
# Reading the data


# ----------------------------------------------------------------------------------------------------------
# Writing the recipe


def render_recipe(summary: DataSummary, name: str, recipe_dir: Path, command: str = "edgekd init") -> str:
    """The commented recipe text for `summary`; relative paths are relative to `recipe_dir`."""
    s = summary
    lines = [
        f"# Written by `{command}` for {_relative(s.path, recipe_dir)}: {s.rows:,} rows, {len(s.classes)} classes.",
        "# Check it with `edgekd validate <this file>`, run it with `edgekd compress <this file>`.",
        "# Each choice has its reason beside it: change what does not fit your data or your device.",
        f"name: {_yaml(name)}  # the run folder is runs/{name}",
        "seed: 42",
        "data:",
        *_data_lines(s, recipe_dir),
        "teacher:",
        *_teacher_lines(s, recipe_dir),
        "student:",
        *_student_lines(recipe_dir),
        "distill:",
        "  # The student learns from the teacher's soft outputs (temperature 2) and from the labels, half each.",
        "  epochs: 3",
        "  batch_size: 32",
        "  learning_rate: 0.0002",
        "  alpha: 0.5",
        "  temperature: 2.0",
        "prune_vocab:",
        "  # Keep only the vocabulary your training texts use: a smaller embedding table, same outputs on them.",
        "  enabled: true",
        "quantize:",
        "  per_channel: true  # the most accurate INT8 setting measured here, at no latency cost",
        "benchmark:",
        "  threads: 1  # batch-1 latency on one thread, as on a small device or a busy server",
        "  latency_samples: 200",
        "  warmup: 20",
        "gates:",
        "  # The sign-off: `edgekd compress` exits 3 when the shipped INT8 student misses one of these. Each",
        "  # compares it with the teacher on the test split; a gate you remove is not checked.",
        "  max_accuracy_drop_pts: 1.0  # test accuracy at most 1 point below the teacher's",
        "  # Median batch-1 latency at least 10x lower, and model files at least 10x smaller than the teacher's.",
        "  # On AG News this student measured about 34x and 35x: 10x leaves room for slower CPUs and longer texts.",
        "  min_speedup_p50: 10",
        "  min_compression: 10",
    ]
    return "\n".join(lines) + "\n"


def _data_lines(s: DataSummary, recipe_dir: Path) -> list[str]:
    lines = []
    if s.single_file:
        lines += [
            f"  # One file holds every labelled row: edgekd holds out {TEST_FRACTION:.0%} of each class (seeded) as the",
            f"  # test split the report measures, then {_VALIDATION_FRACTION:.0%} of the rest for validation.",
        ]
    lines.append(f"  path: {_yaml(_relative(s.path, recipe_dir))}")
    lines.append(f"  text_column: {_yaml(s.text_column)}  # {s.text_reason}")
    lines.append(f"  label_column: {_yaml(s.label_column)}  # {s.label_reason}")
    source = "from labels.txt" if s.labels_file else "sorted: edgekd numbers them in this order"
    lines.append(f"  # {len(s.classes)} classes ({source}): {_class_shares(s)}")
    if s.unlabelled_rows:
        lines.append(
            f"  # {s.unlabelled_rows:,} rows have no value in '{s.label_column}': give them a class or remove them."
        )
    tokens = math.ceil(s.words_p95 * TOKENS_PER_WORD)
    cut = "" if tokens <= s.max_length else "; longer texts are cut at max_length"
    lines += [
        f"  # 95% of texts have at most {s.words_p95} words, about {tokens} tokens at {TOKENS_PER_WORD} per word{cut}.",
        f"  max_length: {s.max_length}",
        "  # limits: {train: 20000}  # cap the train rows (seeded sample) for a quicker first run",
    ]
    return lines


def _class_shares(s: DataSummary, shown: int = 5) -> str:
    total = sum(s.class_counts.values()) or 1
    top = s.class_counts.most_common(shown)
    text = ", ".join(f"{_clip(name)} {count / total:.0%}" for name, count in top)
    if len(s.class_counts) > shown:
        text += f" and {len(s.class_counts) - shown} more"
    return text


def _teacher_lines(s: DataSummary, recipe_dir: Path) -> list[str]:
    epochs = 1 if s.train_rows / len(s.classes) >= ROWS_PER_CLASS_FOR_ONE_EPOCH else 3
    per_class = f"{s.train_rows / len(s.classes):,.0f} train rows per class"
    return [
        f"  # {TEACHER.description}, fine-tuned here on your train split: the student",
        "  # learns from it, and every gate compares with it. It must beat always answering the most frequent",
        "  # class by 5 points on validation (teacher.min_gain_over_majority_pts), or the run stops there.",
        *_model_lines(TEACHER, recipe_dir),
        f"  # {epochs} epoch(s) for {per_class}; early stopping ends sooner when validation stops improving.",
        f"  finetune: {{epochs: {epochs}, batch_size: 32, learning_rate: 0.00005, evals_per_epoch: 2}}",
    ]


def _student_lines(recipe_dir: Path) -> list[str]:
    layers = ", ".join(str(i) for i in STUDENT_LAYERS)
    return [
        f"  # Layers {layers} of {STUDENT.description} on its pretrained embeddings. One layer is",
        '  # faster (--set "student.layers=[3]"), all six more accurate (--set student.init=pretrained',
        "  # --set student.layers=null).",
        "  init: layers",
        *_model_lines(STUDENT, recipe_dir),
        f"  layers: [{layers}]",
    ]


def _model_lines(choice: ModelChoice, recipe_dir: Path) -> list[str]:
    local = find_asset(choice.asset, recipe_dir)
    if local is not None:
        return [f"  model: {_yaml(local)}  # made by `edgekd assets`; online: {choice.hub}"]
    return [
        f"  # A Hub id, downloaded on first use. Offline: `edgekd assets` unpacks it to {choice.asset}; point",
        "  # this at that folder (relative to this recipe).",
        f"  model: {choice.hub}",
    ]


def find_asset(asset: str, recipe_dir: Path) -> str | None:
    """`asset` (e.g. models/mpnet-base) in the recipe's folder or the nearest folder above it that has it,
    as the path the recipe writes (relative to it); None when there is none."""
    for folder in (recipe_dir, *recipe_dir.parents):
        candidate = folder / asset
        if (candidate / "config.json").is_file():
            return _relative(candidate, recipe_dir)
    return None


def _relative(path: Path, base: Path) -> str:
    # abspath, not resolve: a models/ or data folder that is a symlink keeps its short path.
    absolute = os.path.abspath(path)
    try:
        return Path(os.path.relpath(absolute, base)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(absolute).as_posix()


def _yaml(value: str) -> str:
    """A YAML scalar for a string: plain when YAML reads it back unchanged, else double-quoted (JSON's escapes
    are valid YAML)."""
    if re.fullmatch(r"[A-Za-z0-9_./-][A-Za-z0-9_./ -]*", value):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)


def _clip(value: str, limit: int = 30) -> str:
    shown = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(shown)


def _command(data: str | Path, output: Path) -> str:
    command = f"edgekd init --data {shlex.quote(str(data))}"
    return command if output == DEFAULT_OUTPUT else f"{command} --output {shlex.quote(str(output))}"


def _findings(s: DataSummary) -> list[str]:
    return [
        f"data: {s.path} ({s.rows:,} rows{', one file: 20% held out for test' if s.single_file else ''})",
        f"text column: '{s.text_column}' ({s.text_reason})",
        f"label column: '{s.label_column}' ({s.label_reason}), {len(s.classes)} classes",
        f"max_length: {s.max_length} (95% of texts have at most {s.words_p95} words)",
    ]


# ----------------------------------------------------------------------------------------------------------
# Output files


def _check_output(output: Path, force: bool) -> None:
    if output.is_dir():
        raise InputError(f"{output} is a folder", hint="pass --output a file name such as recipe.yaml")
    if output.exists() and not force:
        raise InputError(
            f"{output} already exists", hint="pass --force to overwrite it, or choose another --output"
        )


def _check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name) or set(name) <= {"."}:
        raise InputError(
            f"--name {name!r} is not a usable run name",
            hint="use letters, digits and _ . - (at most 100, starting with a letter or digit)",
        )
    return name


def _write_checked(text: str, output: Path) -> None:
    """Write `text` to `output` only once it loads as a recipe from there (its relative paths resolve
    against `output`'s folder), so a failed check leaves an existing file untouched."""
    partial = output.with_name(f".{output.name}.partial.yaml")
    try:
        partial.write_text(text, encoding="utf-8")
        load_recipe(partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# Shipped examples


def examples_root() -> Path:
    """The shipped examples: inside the installed package (a wheel), else the checkout's recipes/ folder."""
    package = Path(__file__).resolve().parent.parent  # edgekd/
    packaged = package / "examples"
    return packaged if packaged.is_dir() else package.parent / "recipes"


def write_example(
    example: str, output: str | Path | None = None, name: str | None = None, force: bool = False
) -> Path:
    """Copy a shipped example recipe and its data folder next to `output`, ready to run and edit.

    Args:
        example: One of `EXAMPLES` (e.g. smoke).
        output: The recipe to write (default: `<example>.yaml` in the current folder); the example's data goes
            to the same relative path beside it (smoke: data/toy_topics).
        name: Run name (default: the example's).
        force: Overwrite an existing recipe and data files.

    Raises:
        InputError: Unknown example, existing files without `force`, a bad name.
    """
    if example not in EXAMPLES:
        close = difflib.get_close_matches(example, list(EXAMPLES), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(EXAMPLES)}"
        raise InputError(f"unknown example '{example}'", hint=hint)
    source = examples_root() / EXAMPLES[example]
    if not source.is_file():
        raise EdgekdError(
            f"the example files are missing from this install ({source})",
            hint='reinstall edgekd (pip install --force-reinstall "edgekd[train]")',
        )
    target = Path(output) if output is not None else Path(source.name)
    _check_output(target, force)
    if target.resolve() == source.resolve():
        raise InputError(f"{target} is the shipped example itself", hint="pass --output another file")
    text = source.read_text(encoding="utf-8")
    if name is not None:
        text = re.sub(r"(?m)^name: .*$", f"name: {_check_name(name)}", text, count=1)
    data_path = (yaml.safe_load(text).get("data") or {}).get("path")
    target.parent.mkdir(parents=True, exist_ok=True)
    if data_path:
        _copy_example_data(source.parent / data_path, target.parent / data_path, force)
    header = f"# Copied by `edgekd init --example {example}`; run it with `edgekd compress {target.name}`.\n"
    _write_checked(header + text, target)
    return target


def _copy_example_data(source: Path, target: Path, force: bool) -> None:
    if target.exists() and target.resolve() == source.resolve():
        return
    if target.exists() and not force:
        raise InputError(
            f"{target} already exists",
            hint="pass --force to overwrite its files, or write the example elsewhere with --output DIR/smoke.yaml",
        )
    shutil.copytree(source, target, dirs_exist_ok=True)
