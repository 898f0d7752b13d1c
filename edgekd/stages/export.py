"""The export stage: the distilled PyTorch classifier to ONNX (via optimum-onnx), checked on real inputs.

Output folder (the artifact contract):

* `model.onnx` (+ external weight files, if the exporter had to write any): dynamic batch and sequence axes;
* `config.json` and the tokenizer files, so `ORTModelForSequenceClassification.from_pretrained(folder)` and
  `transformers.pipeline` load it, and so does the torch-free `edgekd.runtime.Classifier`; tokenizer_config.json
  sets `model_max_length` to `data.max_length` and right-side truncation, so `pipeline(..., truncation=True)`
  cuts a long text where the runtime does;
* `edgekd.json`: labels, max_length, the ONNX inputs and provenance (recipe, source folder relative to the run
  folder, e.g. "prune_vocab/model", versions, opset);
* `parity.json`: |ONNX - PyTorch| logits on the first validation texts. A difference beyond
  `export.atol`, or any disagreement on the predicted class, fails the stage with `ParityError`.

Heavy imports (torch, transformers, optimum, onnx) happen inside the functions that need them, so importing
this module stays cheap.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgekd._version import __version__
from edgekd.artifact import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MODEL_FILE,
    TOKENIZER_CONFIG_FILE,
    UNSET_MODEL_MAX_LENGTH,
    onnx_file_bytes,
    read_json_object,
    read_labels,
)
from edgekd.data import load_splits
from edgekd.errors import InputError, ParityError, StageError, first_line
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import write_json

PARITY_FILE = "parity.json"
TASK = "text-classification"
PARITY_BATCH_SIZE = 16


@dataclass(frozen=True)
class ParityReport:
    """How closely the ONNX model reproduces the PyTorch model's logits on the same real inputs."""

    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float


class ExportStage(StageBase):
    """Distilled PyTorch classifier -> ONNX folder that optimum, transformers and edgekd.runtime can load."""

    name = "export"
    folder = "export"

    def __init__(self, source: str = "distill") -> None:
        """Args: source: the stage whose `model/` folder is exported (distill, or prune_vocab when enabled)."""
        self.source = source
        self.needs: tuple[str, ...] = (source,)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        """What the output depends on besides the distilled model (the parity texts come from the data)."""
        return {
            "export": recipe.export.model_dump(mode="json"),
            "data": recipe.data.model_dump(mode="json"),
            "seed": recipe.seed,
            "exporter": package_versions("optimum-onnx", "optimum", "torch", "transformers"),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        source = ctx.inputs[self.source] / "model"
        labels = read_model_labels(source)
        splits = load_splits(recipe.data, recipe.seed)
        if splits.labels != labels:
            raise StageError(
                f"the distilled model's classes {labels} differ from the dataset's {splits.labels}",
                hint="re-run the distill stage with --force",
            )
        max_length = recipe.data.max_length
        check_max_length(source, max_length)

        ctx.log(f"export: {source} -> ONNX opset {recipe.export.opset}")
        export_onnx(source, out_dir, recipe.export.opset)
        write_tokenizer_limits(out_dir, max_length)
        onnx_path = out_dir / MODEL_FILE

        texts = splits.texts("validation")[: recipe.export.parity_samples]
        report = measure_parity(source, out_dir, texts, max_length)
        write_json(out_dir / PARITY_FILE, parity_record(report, recipe.export.atol, max_length))
        check_parity(report, recipe.export.atol)

        # The run-relative name of the source, never a path of the machine that built it (the folder ships).
        write_json(out_dir / MANIFEST_FILE, build_manifest(recipe, f"{self.source}/model", onnx_path, labels))
        onnx_bytes = onnx_file_bytes(onnx_path)
        ctx.log(
            f"export: parity on {report.samples} texts: max |diff| {report.max_abs_diff:.2e}, "
            f"argmax agreement {report.argmax_agreement:.0%}; {onnx_bytes / 1e6:.1f} MB"
        )
        return StageResult(
            metrics={
                "max_abs_diff": report.max_abs_diff,
                "mean_abs_diff": report.mean_abs_diff,
                "argmax_agreement": report.argmax_agreement,
                "onnx_bytes": onnx_bytes,
            },
            summary=f"ONNX opset {recipe.export.opset}, max |diff| {report.max_abs_diff:.1e}",
        )


# ----------------------------------------------------------------------------------------------------------
# Export


def export_onnx(source: Path, out_dir: Path, opset: int) -> None:
    """Export a local `*ForSequenceClassification` folder with optimum-onnx into `out_dir`.

    Writes `model.onnx` with dynamic batch and sequence axes, plus `config.json` and the tokenizer files.

    Args:
        source: A local Hugging Face model folder (never a Hub id: nothing is downloaded here).
        out_dir: The folder to write into.
        opset: The ONNX opset to export with.

    Raises:
        InputError: `source` is not a local folder.
        StageError: the exporter failed.
    """
    if not source.is_dir():
        raise InputError(f"the model to export is not a folder: {source}", hint="run the distill stage first")
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        # The TorchScript tracer warns about every Python-side constant in the attention mask code.
        warnings.filterwarnings("ignore", message=".*results are registered as constants.*")
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated.*")
        # optimum-onnx 0.1.0 uses the TorchScript exporter on purpose; torch 2.13 flags it as legacy.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings(
            "ignore", message="The feature will be removed.*", category=DeprecationWarning
        )
        try:
            main_export(
                str(source),
                output=out_dir,
                task=TASK,
                opset=opset,
                dtype="fp32",
                library_name="transformers",  # skips library inference, which may query the Hub
                local_files_only=True,
                do_validation=False,  # optimum checks random inputs; measure_parity checks real ones
                device="cpu",
            )
        except Exception as exc:  # the exporter raises many types; the message is what matters
            raise StageError(f"ONNX export of {source} failed: {first_line(exc)}") from exc
    if not (out_dir / MODEL_FILE).is_file():
        raise StageError(f"the exporter wrote no {MODEL_FILE} into {out_dir}")


def write_tokenizer_limits(out_dir: Path, max_length: int) -> None:
    """Set the exported tokenizer_config.json to truncate where edgekd.runtime does: at `max_length`, on the right.

    Without it the config keeps the source's limit (often unset), and `transformers.pipeline(..., truncation=True)`
    feeds texts longer than the recipe's max_length: another input than the runtime scores, or a crash past the
    model's position embeddings.

    Raises:
        StageError: the exporter wrote no tokenizer_config.json.
    """
    path = out_dir / TOKENIZER_CONFIG_FILE
    config = read_json_object(path)
    if config is None:
        raise StageError(f"the exporter wrote no {TOKENIZER_CONFIG_FILE} into {out_dir}")
    write_json(path, {**config, "model_max_length": max_length, "truncation_side": "right"})


def read_model_labels(model_dir: Path) -> list[str]:
    """The class names in id order from a model folder's config.json (the rule the runtime reads them by).

    Raises:
        InputError: no config.json, or its id2label is missing or not the ids 0..n-1.
    """
    config = read_json_object(model_dir / CONFIG_FILE)
    if config is None:
        raise InputError(f"the model folder {model_dir} has no {CONFIG_FILE}")
    return read_labels(model_dir, None, config)


def check_max_length(model_dir: Path, max_length: int) -> None:
    """Refuse a data.max_length the model cannot take: inputs that long would crash at inference time.

    Raises:
        InputError: max_length exceeds the tokenizer's model_max_length or the model's position embeddings.
    """
    limits = {}
    for file_name, key in (
        (TOKENIZER_CONFIG_FILE, "model_max_length"),
        (CONFIG_FILE, "max_position_embeddings"),
    ):
        try:
            value = json.loads((model_dir / file_name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, (int, float)) and 0 < value < UNSET_MODEL_MAX_LENGTH:
            limits[f"{file_name}:{key}"] = int(value)
    too_small = {where: limit for where, limit in limits.items() if max_length > limit}
    if too_small:
        where, limit = next(iter(too_small.items()))
        raise InputError(
            f"data.max_length {max_length} exceeds what the model accepts ({where} = {limit})",
            hint=f"set data.max_length to at most {min(too_small.values())}",
        )


# ----------------------------------------------------------------------------------------------------------
# Parity


def measure_parity(
    model_dir: Path, onnx_dir: Path, texts: list[str], max_length: int, batch_size: int = PARITY_BATCH_SIZE
) -> ParityReport:
    """Run the PyTorch model and the ONNX model on the same tokenized texts and compare their logits.

    The tokenizer comes from `onnx_dir`, i.e. the files that ship with the ONNX model.

    Args:
        model_dir: The PyTorch model folder that was exported.
        onnx_dir: The exported folder (model.onnx + tokenizer files).
        texts: Real inputs; tokenized with truncation at `max_length`, padded per batch.
        max_length: Truncation length, in tokens.
        batch_size: Texts per forward pass (padding inside a batch is part of what is checked).

    Raises:
        StageError: there are no texts, or the ONNX graph needs an input the tokenizer does not produce.
    """
    if not texts:
        raise StageError("the validation split is empty: there is nothing to check ONNX parity on")
    from edgekd.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(str(onnx_dir))
    model = load_classifier(str(model_dir)).float().eval()
    session = _cpu_session(onnx_dir / MODEL_FILE)
    torch_logits, onnx_logits = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="np",
        )
        arrays = {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}
        torch_logits.append(_torch_logits(model, arrays))
        onnx_logits.append(_onnx_logits(session, arrays))
    return compare_logits(np.concatenate(torch_logits), np.concatenate(onnx_logits))


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> ParityReport:
    """Max and mean |candidate - reference| and the share of rows whose argmax agrees."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    agreement = float(np.mean(candidate.argmax(axis=-1) == reference.argmax(axis=-1)))
    return ParityReport(
        samples=int(reference.shape[0]),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        argmax_agreement=agreement,
    )


def check_parity(report: ParityReport, atol: float) -> None:
    """Fail unless the ONNX logits are within `atol` of PyTorch's and every predicted class agrees.

    Raises:
        ParityError: with the measured numbers and the tolerance.
    """
    if report.max_abs_diff <= atol and report.argmax_agreement >= 1.0:
        return
    disagreeing = round((1.0 - report.argmax_agreement) * report.samples)
    raise ParityError(
        f"ONNX and PyTorch logits differ on {report.samples} validation texts: "
        f"max abs diff {report.max_abs_diff:.3e} (tolerance export.atol = {atol:.1e}), "
        f"mean abs diff {report.mean_abs_diff:.3e}, argmax agreement {report.argmax_agreement:.2%} "
        f"({disagreeing} text(s) get another class; 100% required)",
        hint="check the model for ops that export differently, or raise export.atol if the gap is acceptable",
    )


def parity_record(report: ParityReport, atol: float, max_length: int) -> dict[str, Any]:
    """The content of parity.json."""
    passed = report.max_abs_diff <= atol and report.argmax_agreement >= 1.0
    return {
        **asdict(report),
        "atol": atol,
        "passed": passed,
        "max_length": max_length,
        "batch_size": PARITY_BATCH_SIZE,
        "inputs": "first validation texts, truncated at max_length, padded per batch",
    }


def _torch_logits(model: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        output = model(**{name: torch.from_numpy(value) for name, value in arrays.items()})
    return output.logits.float().numpy()


def _onnx_logits(session: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    feed = {}
    for graph_input in session.get_inputs():
        if graph_input.name not in arrays:
            raise StageError(
                f"the ONNX graph needs input '{graph_input.name}', which the tokenizer does not produce "
                f"(it gives {', '.join(arrays)})"
            )
        feed[graph_input.name] = arrays[graph_input.name]
    return np.asarray(session.run(["logits"], feed)[0], dtype=np.float32)


def _cpu_session(onnx_path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------------------
# Manifest and sizes


def build_manifest(recipe: Recipe, source: str, onnx_path: Path, labels: list[str]) -> dict[str, Any]:
    """The content of edgekd.json: what the runtime needs, and where the model came from (`source`: the
    exported folder relative to the run folder)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    return {
        "format": MANIFEST_FORMAT,
        "task": TASK,
        "labels": labels,
        "max_length": recipe.data.max_length,
        "inputs": [graph_input.name for graph_input in model.graph.input],
        "precision": "fp32",
        "provenance": {
            "recipe": recipe.name,
            "source": source,
            "edgekd_version": __version__,
            "opset": opset,
            "exporter": package_versions("optimum-onnx", "optimum", "torch", "transformers", "onnx"),
        },
    }


def package_versions(*names: str) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
