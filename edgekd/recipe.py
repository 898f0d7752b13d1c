"""Recipes: YAML through `yaml.safe_load` into strict pydantic models.

Every problem in a recipe is collected and reported at once with its field path; unknown keys name the
closest valid one. Nothing in a recipe is ever executed. Relative paths resolve against the recipe file.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekd.errors import RecipeError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Limits(Strict):
    """Optional row caps per split (the first N rows after a seeded shuffle)."""

    train: int | None = Field(None, ge=1)
    validation: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class DataSpec(Strict):
    """Where the data lives and how to read it."""

    path: str | None = None
    """Local folder with train/validation/test files (jsonl, jsonl.gz, csv, parquet). Relative paths resolve
    against the recipe file, then under $EDGEKD_DATA_ROOT."""
    hub: str | None = None
    """A Hugging Face Hub dataset id, for online users (e.g. `fancyzhx/ag_news`)."""
    hub_config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    """Class names in id order. Default: the folder's labels.txt, else the sorted label values of train."""
    max_length: int = Field(128, ge=8, le=4096)
    limits: Limits = Limits()
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of train carved out (seeded, stratified) when the data has no validation split."""

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.path is None) == (self.hub is None):
            raise ValueError("set exactly one of 'path' (local folder) or 'hub' (Hub dataset id)")
        return self


class TokenizerBuild(Strict):
    """Train a small WordPiece tokenizer on the training texts (for models built from a config)."""

    vocab_size: int = Field(1000, ge=50, le=200_000)


class FinetuneSpec(Strict):
    """Supervised fine-tuning of a teacher that is not yet a classifier for the dataset's labels."""

    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_steps: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(2, ge=1)
    evals_per_epoch: int = Field(2, ge=1, le=100)
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class ModelSpec(Strict):
    """A model: a local folder or Hub id (`model`), or a fresh model built from an architecture `config`."""

    model: str | None = None
    config: dict[str, Any] | None = None
    """Architecture of a fresh, randomly initialised model (`model_type` plus transformers config fields)."""
    tokenizer: str | TokenizerBuild | None = None
    """A folder/Hub id, or `{vocab_size: N}` to train one on the training texts. Default: the model's own."""
    trust_remote_code: bool = False
    allow_pickle: bool = False
    """Allow pickled `.bin` weights (they can run code when loaded). Default: safetensors only."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.model is None) == (self.config is None):
            raise ValueError("set exactly one of 'model' (folder or Hub id) or 'config' (fresh architecture)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("'config' needs a 'model_type' (e.g. bert)")
        return self


class TeacherSpec(ModelSpec):
    finetune: FinetuneSpec = FinetuneSpec()


class StudentSpec(ModelSpec):
    """The student. `init: layers` copies the listed layers of `model` (default: the teacher)."""

    model: str | None = None
    init: Literal["pretrained", "layers", "config"] = "pretrained"
    layers: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: Any) -> Any:
        # `init: layers` without `model` means "a subset of the teacher's layers".
        if isinstance(data, dict) and data.get("init") == "layers" and "model" not in data:
            data = {**data, "model": "teacher"}
        return data

    @model_validator(mode="after")
    def _init_matches(self) -> StudentSpec:
        if self.init == "config" and self.config is None:
            raise ValueError("init 'config' needs a 'config' with the architecture")
        if self.init in ("pretrained", "layers") and self.model is None:
            raise ValueError(f"init '{self.init}' needs a 'model' (folder, Hub id or 'teacher')")
        if self.init == "layers":
            if not self.layers:
                raise ValueError("init 'layers' needs 'layers', e.g. [0, 2, 4]")
            if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
                raise ValueError("'layers' must be distinct non-negative layer indices")
        elif self.layers is not None:
            raise ValueError("'layers' is only used with init 'layers'")
        return self


class DistillSpec(Strict):
    """Logit distillation: loss = alpha*CE + (1-alpha)*T^2*KL(softmax(t/T) || softmax(s/T))."""

    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    seed: int = 42
    max_steps: int | None = Field(None, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class ExportSpec(Strict):
    opset: int = Field(17, ge=11, le=21)
    atol: float = Field(1e-3, gt=0)
    """Largest tolerated |ONNX - PyTorch| logit difference on real inputs."""
    parity_samples: int = Field(64, ge=1)


class QuantizeSpec(Strict):
    """Dynamic INT8 with ONNX Runtime."""

    weight_type: Literal["qint8", "quint8"] = "qint8"
    per_channel: bool = False
    reduce_range: bool = False
    op_types: list[str] = Field(default_factory=lambda: ["MatMul", "Gemm", "Attention"])
    nodes_to_exclude: list[str] = Field(default_factory=list)


class BenchmarkSpec(Strict):
    threads: int = Field(1, ge=1)
    latency_samples: int = Field(200, ge=1)
    warmup: int = Field(20, ge=0)
    batch_size: int = Field(32, ge=1)
    """Batch size for the accuracy pass (not for latency, which is batch 1)."""


class GatesSpec(Strict):
    """Sign-off gates: the student INT8 ONNX variant against the teacher. Unset gates are not checked."""

    max_accuracy_drop_pts: float | None = Field(None, ge=0)
    max_latency_p90_ms: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)
    min_speedup_p50: float | None = Field(None, gt=0)
    min_compression: float | None = Field(None, gt=0)
    min_accuracy: float | None = Field(None, ge=0, le=1)


class Recipe(Strict):
    """A whole compression recipe."""

    name: str = Field(pattern=NAME_PATTERN)
    """Run name; the run folder is runs/<name>. Letters, digits, `_.-` only (it cannot escape the run root)."""
    seed: int = 42
    data: DataSpec
    teacher: TeacherSpec
    student: StudentSpec
    distill: DistillSpec = DistillSpec()
    export: ExportSpec = ExportSpec()
    quantize: QuantizeSpec = QuantizeSpec()
    benchmark: BenchmarkSpec = BenchmarkSpec()
    gates: GatesSpec = GatesSpec()

    @field_validator("name")
    @classmethod
    def _no_dots_only(cls, v: str) -> str:
        if set(v) <= {"."}:
            raise ValueError("name cannot be only dots")
        return v


# ----------------------------------------------------------------------------------------------------------
# Loading


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
    if problems:
        raise RecipeError(str(path), problems)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(str(path), _describe_errors(exc, raw), hint=_hint_for(path)) from None
    return _resolve_paths(recipe, path.resolve().parent)


def _hint_for(path: Path) -> str:
    return f"fix the fields above, then check with: edgekd validate {path}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(str(path), ["recipe file not found"], hint="pass the path of a .yaml recipe")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["the file is not UTF-8 text"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RecipeError(str(path), [f"not valid YAML{where}: {problem}"]) from None
    except RecursionError:
        raise RecipeError(str(path), ["YAML nested too deeply"]) from None
    if data is None:
        raise RecipeError(str(path), ["the recipe is empty"], hint="start from recipes/smoke.yaml")
    if not isinstance(data, dict):
        raise RecipeError(str(path), [f"a recipe is a mapping of sections, got {type(data).__name__}"])
    return data


def _apply_override(raw: dict[str, Any], item: str) -> str | None:
    """Apply one `a.b.c=value` override in place; return a problem description or None."""
    if "=" not in item:
        return f"--set {item!r}: expected KEY=VALUE, e.g. distill.epochs=1"
    key, _, value_text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        return f"--set {item!r}: empty field name in {key!r}"
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
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
        where = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
            msg = f"{where}: unknown field"
            if close:
                msg += f"; did you mean '{close[0]}'?"
            elif valid:
                msg += f"; valid fields: {', '.join(valid)}"
        elif err["type"] == "missing":
            msg = f"{where}: required field is missing"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{where}: {text}"
            if "input" in err and err["type"] not in ("value_error", "assertion_error"):
                shown = repr(err["input"])
                msg += f" (got {shown[:60] + '…' if len(shown) > 60 else shown})"
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


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    data = recipe.data
    if data.path is not None:
        local = resolve_local(data.path, base)
        if not Path(local).is_absolute():
            root = data_root()
            if root is not None and (root / local).exists():
                local = str((root / local).resolve())
        data.path = local
    for spec in (recipe.teacher, recipe.student):
        if spec.model is not None and spec.model != "teacher":
            spec.model = resolve_local(spec.model, base)
        if isinstance(spec.tokenizer, str) and spec.tokenizer != "teacher":
            spec.tokenizer = resolve_local(spec.tokenizer, base)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to the run folder as recipe.resolved.yaml)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
