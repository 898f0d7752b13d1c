"""What the benchmark refuses before it measures: settings, request counts, threads, names, model folders and
their labels; warnings about the machine it measures on; and the command line's folders, gates and data.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from warnings import catch_warnings, simplefilter

import numpy as np

from edgekd.artifact import (
    MANIFEST_FILE,
    folder_size,
    onnx_model_path,
    param_count,
    quantized_for,
    read_json_object,
)
from edgekd.bench.envinfo import cpu_snapshot, cpu_target, other_processes_cores, usable_cores
from edgekd.bench.spec import HarnessSettings, MeasuredModel, Measurements
from edgekd.bench.worker import thread_env
from edgekd.errors import (
    InputError,
    first_line,
)
from edgekd.recipe.schema import SEED_LIMIT, DataSpec, GatesSpec

# Other processes using more than this share of the cores competed with the measurements.
BUSY_CORE_SHARE = 0.5


# How long to watch the machine before the workers start.
IDLE_CHECK_SECONDS = 1.0


# Above this, a request count is a typo, and would take hours or the memory to draw the sample.
MAX_REQUESTS = 1_000_000


FOLDER_HINT = (
    "pass a model folder: an edgekd export/quantize folder or a Hugging Face folder with safetensors"
)


def check_settings(settings: HarnessSettings, n_models: int) -> None:
    """Refuse settings that cannot give a meaningful measurement.

    Raises:
        InputError: No models, too many threads, no latency samples, a non-positive size, or a seed numpy
            cannot take.
    """
    if n_models < 1:
        raise InputError("no model folders to benchmark", hint="pass at least one model folder")
    check_threads(settings.threads)
    if settings.throughput_threads is not None:
        check_threads(settings.throughput_threads)
    check_count("the number of latency samples", settings.latency_samples, 1, "--samples")
    check_count("the number of warm-up requests", settings.warmup, 0, "--warmup")
    check_count("batch_size", settings.batch_size, 1, "--batch-size")
    check_count("max_length", settings.max_length, 1, "--max-length")
    check_count("round_size", settings.round_size, 1, "round_size")
    check_count("seq_samples", settings.seq_samples, 1, "seq_samples")
    if not settings.seq_lengths or min(settings.seq_lengths) < 1:
        raise InputError("sequence lengths must be at least 1 token", hint="use lengths such as 16, 64, 128")
    if not settings.throughput_batch_sizes or min(settings.throughput_batch_sizes) < 1:
        raise InputError("throughput batch sizes must be at least 1", hint="use batch sizes such as 8, 32")
    if not 0 <= settings.seed < SEED_LIMIT:
        raise InputError(
            f"the seed must be from 0 to {SEED_LIMIT - 1}, got {settings.seed}", hint="use e.g. --seed 42"
        )


def check_count(what: str, value: int, minimum: int, option: str) -> None:
    """Refuse a count below `minimum`.

    Raises:
        InputError: naming `what` and the option that sets it.
    """
    if value < minimum:
        raise InputError(
            f"{what} must be at least {minimum}, got {value}", hint=f"set {option} to {minimum} or more"
        )


def check_request_counts(settings: HarnessSettings) -> None:
    """Refuse request counts beyond MAX_REQUESTS: on the command line that is a typo (an extra digit or
    two) that would run for days or run out of memory drawing the sample.

    Raises:
        InputError: naming the option.
    """
    for what, value, option in (
        ("the number of latency samples", settings.latency_samples, "--samples"),
        ("the number of warm-up requests", settings.warmup, "--warmup"),
    ):
        if value > MAX_REQUESTS:
            raise InputError(
                f"{what} must be at most {MAX_REQUESTS:,}, got {value}",
                hint=f"set {option} to a smaller value (the default is a good start)",
            )


def check_threads(threads: int) -> None:
    """Refuse a thread budget the machine cannot give: oversubscribed numbers describe no real deployment.

    Raises:
        InputError: When `threads` is below 1 or exceeds the cores this process may use.
    """
    known = [n for n in (os.cpu_count(), usable_cores()) if n]
    available = min(known) if known else 1
    if threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}", hint="use e.g. --threads 1")
    if threads > available:
        raise InputError(
            f"threads is {threads} but this machine gives this process {available} core(s)",
            hint=f"use at most {available} thread(s)",
        )


def check_names(names: Sequence[str]) -> None:
    """Names become file names (raw/<name>.json) and table rows: unique, non-empty, no path separators.

    Raises:
        InputError: When a name is empty, repeated or contains a path separator.
    """
    for name in names:
        # A lone surrogate (an invalid UTF-8 byte in an argument) could not be written into report.md.
        if not name or "/" in name or "\\" in name or name in (".", "..") or not name.isprintable():
            raise InputError(
                f"invalid model name {name!r}", hint="use letters, digits, '-', '_' or '.' in --names"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"model names must be unique, repeated: {', '.join(repeated)}",
            hint="pass --names with one distinct name per folder",
        )


def latency_sample_indices(n_texts: int, n_samples: int, seed: int) -> list[int]:
    """Which test texts the batch-1 requests use: a seeded sample, without replacement when there are enough.

    Raises:
        InputError: When there are no samples to draw or nothing to draw them from.
    """
    if n_samples < 1:
        raise InputError("the number of latency samples must be at least 1", hint="use e.g. --samples 200")
    if n_texts < 1:
        raise InputError(
            "the test split is empty: nothing to benchmark",
            hint="put test texts in the data folder's test file",
        )
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_texts, size=n_samples, replace=n_samples > n_texts)]


def detect_format(folder: Path) -> str:
    """ "onnx" for a folder with an .onnx graph, "pytorch" for a Hugging Face folder with safetensors weights.

    Raises:
        InputError: When the folder is neither.
    """
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}", hint=FOLDER_HINT)
    if any(folder.glob("*.onnx")):
        return "onnx"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "pytorch"
    if (folder / "config.json").is_file() and (folder / "pytorch_model.bin").is_file():
        raise InputError(
            f"{folder} holds pytorch_model.bin weights; only safetensors weights are loaded",
            hint="re-save the model with save_pretrained(..., safe_serialization=True)",
        )
    raise InputError(
        f"{folder} is neither a PyTorch model folder (config.json + *.safetensors) "
        "nor an ONNX one (*.onnx + tokenizer.json)",
        hint=FOLDER_HINT,
    )


def check_model_folder(folder: Path, fmt: str) -> list[str]:
    """Fail before any worker starts when a model folder cannot be measured; its class names in id order.

    An ONNX folder is loaded as `edgekd predict` loads it (JSON files, labels, tokenizer, graph inputs and
    outputs) and runs one text, so a damaged file, a graph that is not a text classifier, or a graph with
    more or fewer outputs than class names is refused here rather than scored. A PyTorch folder's JSON
    files, tokenizer.json and safetensors headers are read (the model itself is loaded by its worker).

    Raises:
        InputError: A needed file is missing or unreadable, or the labels do not fit the model.
    """
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}", hint=FOLDER_HINT)
    labels = check_onnx_folder(folder) if fmt == "onnx" else check_pytorch_folder(folder)
    # The report needs these after measuring; a folder they fail on is refused now, not then.
    folder_size(folder, onnx=fmt == "onnx")
    param_count(folder, onnx=fmt == "onnx")
    return labels


def check_onnx_folder(folder: Path) -> list[str]:
    """The runtime's own checks on an ONNX folder, plus one text through the graph; returns its labels."""
    from edgekd.runtime import Classifier

    graph = onnx_model_path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise InputError(f"the ONNX folder {folder} has no tokenizer.json", hint=FOLDER_HINT)
    classifier = Classifier.load(folder, threads=1, model_file=graph.name)
    # A class dimension the graph leaves symbolic is only known from a real output.
    with catch_warnings():
        simplefilter("ignore")  # a truncation of this probe text is nothing the user should see
        classifier.predict_logits(["a short text to check the model's outputs"])
    return classifier.labels


def check_pytorch_folder(folder: Path) -> list[str]:
    """config.json and the tokenizer files parse, the weights' headers read; returns config.json's labels."""
    from edgekd.artifact import read_json_object, read_labels
    from edgekd.runtime import load_shipped_tokenizer

    if not (folder / "config.json").is_file():
        raise InputError(f"the model folder {folder} has no config.json", hint=FOLDER_HINT)
    if not any(
        (folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        raise InputError(
            f"the model folder {folder} has no tokenizer files",
            hint="save the tokenizer next to the model (tokenizer.save_pretrained(folder))",
        )
    config = read_json_object(folder / "config.json")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        read_json_object(folder / name)
    if (folder / "tokenizer.json").is_file():
        load_shipped_tokenizer(folder, max_length=8, config=config)
    check_safetensors_headers(folder)
    # transformers labels the outputs from config.json's id2label, whatever else the folder holds.
    return read_labels(folder, None, config)


def check_safetensors_headers(folder: Path) -> None:
    """Each *.safetensors file opens (a truncated or foreign file fails here, not in the worker).

    Raises:
        InputError: naming the file.
    """
    try:
        from safetensors import safe_open
    except ImportError:  # the worker will say which extra to install
        return
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types per failure
            raise InputError(
                f"cannot read the weights {path}: {first_line(exc)}",
                hint="the file is damaged: copy or save the model again",
            ) from None


def check_labels(model_labels: list[str], data_labels: list[str], variant: str) -> None:
    """Every class a model can predict must be a class of the dataset, or its accuracy means nothing.

    Raises:
        InputError: When the model names no classes, or has classes the dataset does not.
    """
    if not model_labels:
        raise InputError(
            f"the {variant} model names no classes (no edgekd.json labels, no config.json id2label)",
            hint="edgekd.json 'labels' or config.json 'id2label' must list the class names",
        )
    unknown = [label for label in model_labels if label not in set(data_labels)]
    if unknown:
        raise InputError(
            f"the {variant} model predicts classes the dataset does not have: {unknown[:5]} "
            f"(dataset classes: {data_labels[:5]}{'...' if len(data_labels) > 5 else ''})",
            hint="the model and the data must share the same label names",
        )


def setup_warnings(env: dict[str, Any], threads: int, n_texts: int, n_samples: int) -> list[str]:
    """Conditions under which the numbers deserve less trust; they go into the report."""
    warnings = []
    cores = env.get("cpu", {}).get("usable_cores") or os.cpu_count() or 1
    others = (env.get("other_processes_cores") or {}).get("at_start")
    if others is not None and others > BUSY_CORE_SHARE * cores:
        warnings.append(
            f"other processes were using {others} of {cores} cores when the benchmark started: "
            "latency may be inflated"
        )
    load = (env.get("load_average") or [0.0])[0]
    if others is None and load > BUSY_CORE_SHARE * cores:
        warnings.append(
            f"the machine was busy at the start (load {load} on {cores} cores): latency may be inflated"
        )
    if threads == cores and cores > 1:
        warnings.append(f"threads uses every core ({cores}): the OS and the harness compete with the model")
    if n_samples > n_texts:
        warnings.append(
            f"latency samples ({n_samples}) exceed the test split ({n_texts} texts): texts were reused"
        )
    return warnings


def other_processes_cores_now(seconds: float = IDLE_CHECK_SECONDS) -> float | None:
    """Cores other processes keep busy, watched for `seconds` while this process sleeps."""
    before = cpu_snapshot()
    time.sleep(seconds)
    return other_processes_cores(before, cpu_snapshot())


def busy_after_warnings(env: dict[str, Any]) -> list[str]:
    """A machine that got busy during the run makes every model slower; interleaving keeps them comparable."""
    cores = env.get("cpu", {}).get("usable_cores") or os.cpu_count() or 1
    others = (env.get("other_processes_cores") or {}).get("during")
    if others is not None:
        if others <= BUSY_CORE_SHARE * cores:
            return []
        return [
            f"other processes used {others} of {cores} cores on average during the run: absolute latencies may "
            "be inflated (ratios between models stay comparable: they were measured interleaved)"
        ]
    # No /proc/stat (not Linux): the load average, which also counts the benchmark's own workers.
    before = (env.get("load_average") or [0.0])[0]
    after = (env.get("load_average_after") or [0.0])[0]
    if after > BUSY_CORE_SHARE * cores and after > before:
        return [
            f"the load average rose to {after} on {cores} cores during the run: absolute latencies may be "
            "inflated (ratios between models stay comparable: they were measured interleaved)"
        ]
    return []


def max_length_warnings(model: MeasuredModel, max_length: int) -> list[str]:
    """An export records its max_length; a different one here measures another model than is shipped."""
    try:
        recorded = json.loads((model.folder / "edgekd.json").read_text(encoding="utf-8")).get("max_length")
    except (OSError, ValueError, AttributeError):
        return []
    if recorded is not None and recorded != max_length:
        return [f"{model.name} was exported with max_length {recorded}; the benchmark used {max_length}"]
    return []


def target_warnings(model: MeasuredModel, env: Mapping[str, Any]) -> list[str]:
    """An INT8 folder quantized for another CPU than this one (edgekd.json's quantization target against this
    machine's flags and architecture, `env` as `envinfo.environment()` returns it): one line, never an error."""
    try:
        manifest = read_json_object(model.folder / MANIFEST_FILE)
    except InputError:  # a damaged edgekd.json is reported where the folder is checked
        return []
    cpu = env.get("cpu") or {}
    here = cpu_target(cpu.get("flags") or {}, str(env.get("machine") or ""))
    quantization = (manifest or {}).get("quantization") or {}
    message = target_mismatch(model.name, quantized_for(manifest), here, quantization)
    return [message] if message else []


def target_mismatch(
    name: str, built_for: str | None, here: str | None, quantization: Mapping[str, Any]
) -> str | None:
    """The warning for a folder quantized for CPU target `built_for` measured on a `here` CPU (both
    `quantize.target` names; None where unknown, which says nothing); None when they match."""
    if built_for is None or here is None or built_for == here:
        return None
    if quantization.get("target") == "auto":
        build = quantization.get("build_cpu") or {}
        how = f"target auto on a {build.get('machine')} CPU with {build.get('flags')}"
    else:
        how = f"quantize.target {built_for}"
    weights = (quantization.get("settings") or {}).get("weight_type")
    why = "its latency and accuracy here are not the target's"
    if weights == "qint8" and here in ("avx2", "avx512"):
        why += " (its int8 weights take the u8s8 kernel, whose VPMADDUBSW can saturate in int16 on this CPU)"
    return (
        f"{name} was quantized for {built_for} ({how}) but is measured on an {here} CPU: {why}; set "
        f"quantize.target: {here} for this CPU"
    )


def thread_settings(settings: HarnessSettings, measured: Mapping[str, Measurements]) -> dict[str, Any]:
    """The thread budgets the numbers were taken with, as the report's environment records them."""
    return {
        "latency_threads": settings.threads,
        "accuracy_threads": next(
            (m.accuracy_pass_threads for m in measured.values() if m.accuracy_pass_threads), None
        ),
        "throughput_threads": next(
            (m.throughput_threads for m in measured.values() if m.throughput_threads), None
        ),
        "effective_threads": {name: m.ready.get("effective_threads") for name, m in measured.items()},
        "inter_op_threads": 1,
        "onnxruntime": {"execution_mode": "sequential", "allow_spinning": False},
        "worker_env": thread_env(settings.threads),
    }


def models_from_folders(folders: Sequence[Path], names: Sequence[str] | None = None) -> list[MeasuredModel]:
    """ModelSpecs for folders given on the command line, format detected, named by `names` or the folder.

    A folder called `model` (a pipeline stage's PyTorch output) is named after its parent instead.

    Raises:
        InputError: A folder is not a model, or `names` does not match the folders one to one.
    """
    if names is not None and len(names) != len(folders):
        raise InputError(
            f"--names gives {len(names)} name(s) for {len(folders)} folder(s)",
            hint="pass one name per model folder, comma-separated, in the same order",
        )
    specs = []
    for i, folder in enumerate(folders):
        fmt = detect_format(folder)
        default = folder.resolve().parent.name if folder.resolve().name == "model" else folder.resolve().name
        specs.append(MeasuredModel(names[i] if names is not None else default, folder, fmt))
    check_names([s.name for s in specs])
    return specs


def parse_gates(assignments: Sequence[str]) -> GatesSpec:
    """`name=value` pairs as GatesSpec, e.g. ["max_accuracy_drop_pts=1", "min_speedup_p50=2"].

    Raises:
        InputError: Malformed pair, unknown gate (with the closest name) or an out-of-range value.
    """
    import difflib

    from pydantic import ValidationError

    limits: dict[str, str] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise InputError(f"--gate {text!r} is not name=value", hint="e.g. --gate max_accuracy_drop_pts=1")
        if name not in GatesSpec.model_fields:
            close = difflib.get_close_matches(name, list(GatesSpec.model_fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"gates: {', '.join(GatesSpec.model_fields)}"
            raise InputError(f"unknown gate {name!r}", hint=hint)
        limits[name] = value.strip()
    try:
        return GatesSpec.model_validate(limits)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"--gate {field_name}: {first['msg']}", hint="e.g. --gate max_accuracy_drop_pts=1"
        ) from None


def data_spec_for(
    folder: Path,
    max_length: int,
    labels: Sequence[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> DataSpec:
    """The DataSpec of a data folder given on the command line (no limits: the whole test split is used).

    Raises:
        InputError: When the folder is missing or a value is out of range.
    """
    from pydantic import ValidationError

    if not folder.is_dir():
        raise InputError(
            f"data folder not found: {folder}",
            hint="pass --data a folder with a test file (test.jsonl, test.csv or test.parquet)",
        )
    try:
        return DataSpec(
            path=str(folder),
            max_length=max_length,
            labels=list(labels) if labels else None,
            text_column=text_column,
            label_column=label_column,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "the data options"
        raise InputError(
            f"{option}: {first['msg']}", hint=f"check the value of {option} (see edgekd benchmark --help)"
        ) from None
