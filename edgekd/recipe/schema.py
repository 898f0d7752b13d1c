"""The recipe's schema: strict pydantic models, one per section. Field validators here; reading YAML, overrides,
paths and error messages are in `load.py`. `model_dump()` of these models is part of every stage's cache key:
renaming or re-typing a field changes the keys of finished runs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
SEED_LIMIT = 2**32  # numpy and torch take seeds in [0, 2**32)


def _refuse_bool(value: Any) -> Any:
    # Pydantic's lax mode reads `true` as 1: `benchmark.threads: true` would quietly mean one thread.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


# Numbers that refuse true/false but keep the rest of lax mode: PyYAML reads `1e-4` (no dot) as text, and
# "1e-4" must still become 0.0001. Strict booleans: `trust_remote_code: "yes"` must not switch a safety off.
# All three validate to plain int/float/bool, so `model_dump()` (and every stage cache key) is unchanged.
Integer = Annotated[int, BeforeValidator(_refuse_bool)]
Number = Annotated[float, BeforeValidator(_refuse_bool)]
Flag = StrictBool


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, not silently ignored."""

    # allow_inf_nan=False: `epochs: .inf` satisfies `gt=0` but breaks training much later.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class Limits(Strict):
    """Optional row caps per split (the first N rows after a seeded shuffle)."""

    train: Integer | None = Field(None, ge=1)
    validation: Integer | None = Field(None, ge=1)
    test: Integer | None = Field(None, ge=1)


class DataSpec(Strict):
    """Where the data lives and how to read it."""

    path: str | None = None
    """Local folder with train/validation/test files (jsonl, jsonl.gz, csv, parquet), or one such file of all the
    labelled rows (edgekd.data.TEST_FRACTION held out for test). Relative paths resolve against the recipe
    file, then under $EDGEKD_DATA_ROOT."""
    hub: str | None = None
    """A Hugging Face Hub dataset id, for online users (e.g. `fancyzhx/ag_news`)."""
    hub_config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    """Class names in id order. Default: the folder's labels.txt, else the sorted label values of train."""
    max_length: Integer = Field(128, ge=8, le=4096)
    limits: Limits = Limits()
    validation_fraction: Number = Field(0.1, gt=0.0, lt=0.5)
    """Share of train carved out (seeded, stratified) when the data has no validation split."""

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        # Both may be set: the local folder when it is found, else the Hub (see `_resolve_paths`).
        if self.path is None and self.hub is None:
            raise ValueError("set 'path' (local folder), 'hub' (Hub dataset id) or both (local first)")
        return self


class TokenizerBuild(Strict):
    """Train a small WordPiece tokenizer on the training texts (for models built from a config)."""

    vocab_size: Integer = Field(1000, ge=50, le=200_000)


class FinetuneSpec(Strict):
    """Supervised fine-tuning of a teacher that is not yet a classifier for the dataset's labels."""

    epochs: Number = Field(1.0, gt=0)
    batch_size: Integer = Field(32, ge=1)
    learning_rate: Number = Field(5e-5, gt=0, lt=1)
    weight_decay: Number = Field(0.01, ge=0)
    warmup_ratio: Number = Field(0.06, ge=0, lt=1)
    max_steps: Integer | None = Field(None, ge=1)
    early_stopping_patience: Integer | None = Field(2, ge=1)
    evals_per_epoch: Integer = Field(2, ge=1, le=100)
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class ModelSpec(Strict):
    """A model: a local folder or Hub id (`model`), or a fresh model built from an architecture `config`."""

    model: str | None = None
    config: dict[str, Any] | None = None
    """Architecture of a fresh, randomly initialised model (`model_type` plus transformers config fields)."""
    tokenizer: str | TokenizerBuild | None = None
    """A folder/Hub id, or `{vocab_size: N}` to train one on the training texts. Default: the model's own."""
    trust_remote_code: Flag = False
    allow_pickle: Flag = False
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
    min_gain_over_majority_pts: Number | None = Field(5.0, ge=0, le=100)
    """Stop the run before distillation unless the teacher's validation accuracy beats always answering the
    most frequent class by this many points (capped at half the gap between that rate and 100%, so a useful
    teacher on very imbalanced data still passes). Catches a teacher that learned nothing, which the drop gate
    cannot: it compares the student with that teacher. null or 0 turns the check off. A check on the result,
    not an input of training: changing it never re-trains the teacher."""

    @model_validator(mode="after")
    def _fresh_teacher_has_tokenizer(self) -> TeacherSpec:
        # A student can fall back to the teacher's tokenizer; a teacher built from a config has none to use.
        if self.config is not None and self.tokenizer is None:
            raise ValueError(
                "a teacher built from 'config' needs a 'tokenizer' (a folder, or {vocab_size: N})"
            )
        return self


class PruneSpec(Strict):
    """Structured pruning of a BERT-family student before distillation (edgekd/stages/distill/structured_prune.py)."""

    ffn_keep: Number = Field(1.0, gt=0, le=1)
    """Share of each layer's feed-forward neurons kept (the same count in every layer)."""
    heads_keep: Number = Field(1.0, gt=0, le=1)
    """Share of each layer's attention heads kept (at least one)."""
    batches: Integer = Field(8, ge=1, le=10_000)
    """Training batches (distill.batch_size rows) the importance scores are summed over."""


def _check_layer_list(v: list[int]) -> list[int]:
    if len(set(v)) != len(v) or any(i < 0 for i in v):
        raise ValueError("'layers' must be distinct non-negative layer indices")
    return v


class StudentShape(Strict):
    """One candidate of `student.budget`: the layers to copy and, optionally, how far to prune them."""

    layers: list[Integer] = Field(min_length=1)
    prune: PruneSpec | None = None

    _layers_distinct = field_validator("layers")(_check_layer_list)


class BudgetSpec(Strict):
    """Choose the student's shape on this machine before distilling (edgekd/stages/distill/budget.py): each candidate is
    built, exported and quantized as the pipeline would, its batch-1 INT8 latency timed against the teacher's,
    and the first whose predicted speed-up clears `gates.min_speedup_p50` times `margin` is distilled."""

    candidates: list[StudentShape] = Field(min_length=1, max_length=16)
    """Best first (usually deepest first); the last should be one the gate surely allows."""
    margin: Number = Field(1.1, ge=1.0, le=10.0)
    """Safety factor on the speed gate: the benchmark's own measurement will differ by a few percent."""
    texts: Integer = Field(100, ge=10, le=10_000)
    """Validation texts timed for each candidate and for the teacher."""


class StudentSpec(ModelSpec):
    """The student. `init: layers` copies the listed layers of `model` (default: the teacher)."""

    model: str | None = None
    init: Literal["pretrained", "layers", "config"] = "pretrained"
    layers: list[Integer] | None = None
    prune: PruneSpec | None = None
    """Remove feed-forward neurons and heads, scored on the teacher's signal; distillation then recovers."""
    budget: BudgetSpec | None = None
    """Instead of `layers` and `prune`: candidates timed on this machine; the best the speed gate allows wins."""

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
        if self.budget is not None:
            if self.init != "layers":
                raise ValueError("'budget' chooses among layer subsets: it needs init 'layers'")
            if self.layers is not None or self.prune is not None:
                raise ValueError("'budget' chooses 'layers' and 'prune': remove them, or remove 'budget'")
        elif self.init == "layers":
            if not self.layers:
                raise ValueError("init 'layers' needs 'layers', e.g. [0, 2, 4]")
            _check_layer_list(self.layers)
        elif self.layers is not None:
            raise ValueError("'layers' is only used with init 'layers'")
        return self


def _check_layer_map(v: list[int] | None) -> list[int] | None:
    if v is not None and (not v or any(i < 0 for i in v)):
        raise ValueError("layer_map lists a non-negative teacher layer for each student layer")
    return v


class HiddenLossSpec(Strict):
    """Hidden-state MSE between mapped layers (a learned linear projection bridges different widths)."""

    weight: Number = Field(0.0, ge=0)
    layer_map: list[Integer] | None = None
    """Teacher layer (0-based) for each student layer. Default: student i <-> teacher round((i+1)*T/S)-1."""
    embeddings: Flag = False
    """Also match the embedding outputs."""
    projection: Literal["linear", "none"] = "linear"
    """How a student of another width is compared: a learned linear map (trained, not saved), or refuse."""

    @field_validator("layer_map")
    @classmethod
    def _layers_non_negative(cls, v: list[int] | None) -> list[int] | None:
        return _check_layer_map(v)


class AttentionLossSpec(Strict):
    """KL between the attention distributions of mapped layers (needs identical tokenization)."""

    weight: Number = Field(0.0, ge=0)
    layer_map: list[Integer] | None = None
    """Teacher layer for each student layer; default uniform as for hidden states."""

    @field_validator("layer_map")
    @classmethod
    def _layers_non_negative(cls, v: list[int] | None) -> list[int] | None:
        return _check_layer_map(v)


class LossesSpec(Strict):
    """Intermediate-layer losses added to the logit loss; weight 0 (the default) switches one off."""

    hidden: HiddenLossSpec = HiddenLossSpec()
    attention: AttentionLossSpec = AttentionLossSpec()


def _ordered_range(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"range [min, max] has min {v[0]} > max {v[1]}")
    return v


class SearchSpec(Strict):
    """Optuna search over distillation settings; each range is [min, max]. n_trials 0 means no search."""

    n_trials: Integer = Field(0, ge=0, le=1000)
    alpha: tuple[Number, Number] = (0.1, 0.9)
    temperature: tuple[Number, Number] = (1.0, 8.0)
    learning_rate: tuple[Number, Number] = (1e-5, 5e-4)
    epochs: tuple[Integer, Integer] = (1, 4)
    pruning: Flag = True
    """Stop trials whose per-epoch validation accuracy is below the median of earlier trials."""

    @field_validator("alpha", "temperature", "learning_rate", "epochs")
    @classmethod
    def _min_not_above_max(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_range(v)

    @model_validator(mode="after")
    def _in_domain(self) -> SearchSpec:
        if self.alpha[0] < 0 or self.alpha[1] > 1:
            raise ValueError("alpha range must lie within [0, 1]")
        if self.temperature[0] <= 0:
            raise ValueError("temperature range must be > 0")
        if self.learning_rate[0] <= 0 or self.learning_rate[1] >= 1:
            raise ValueError("learning_rate range must lie within (0, 1)")
        if self.epochs[0] < 1:
            raise ValueError("epochs range must be >= 1")
        return self


class UnlabeledSpec(Strict):
    """Extra text without labels: the teacher labels it and the student learns from those soft targets."""

    path: str
    """A .jsonl/.csv/.parquet/.txt file or a folder of them (relative to the recipe)."""
    text_column: str = "text"
    limit: Integer | None = Field(None, ge=1)
    """Use at most this many texts (the first N after a seeded shuffle)."""


AugmentMethod = Literal["mask", "delete", "neighbours"]
AUGMENT_METHODS: tuple[AugmentMethod, ...] = ("mask", "delete", "neighbours")


class AugmentSpec(Strict):
    """New training texts made from the train split and labelled by the teacher (KD term only, like
    `unlabeled`): see edgekd/stages/distill/augment.py."""

    factor: Integer = Field(1, ge=1, le=100)
    """New rows per original row (an upper bound: duplicates are dropped)."""
    class_factors: dict[str, Annotated[Integer, Field(ge=0, le=100)]] | None = None
    """Per class name, new rows per original row of that class instead of `factor` (e.g. {oos: 10}: a class the
    student learns worst, with few train rows, gets more teacher-labelled variants)."""
    methods: list[AugmentMethod] = Field(default_factory=lambda: list(AUGMENT_METHODS), min_length=1)
    """Taking turns row after row: word masking, deletion / n-gram sampling, nearest-neighbour replacement."""
    seed: Integer | None = Field(None, ge=0, lt=SEED_LIMIT)
    """Default: distill.seed."""

    @field_validator("methods")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        repeated = sorted({m for m in v if v.count(m) > 1})
        if repeated:
            raise ValueError(f"list each method once (repeated: {', '.join(repeated)})")
        return v


class DistillSpec(Strict):
    """Distillation: loss = alpha*CE + (1-alpha)*T^2*KL(softmax(t/T) || softmax(s/T)) + intermediate losses."""

    epochs: Number = Field(3.0, gt=0)
    batch_size: Integer = Field(32, ge=1)
    learning_rate: Number = Field(1e-4, gt=0, lt=1)
    weight_decay: Number = Field(0.01, ge=0)
    warmup_ratio: Number = Field(0.06, ge=0, lt=1)
    alpha: Number = Field(0.5, ge=0, le=1)
    temperature: Number = Field(2.0, gt=0)
    seed: Integer = Field(42, ge=0, lt=SEED_LIMIT)
    max_steps: Integer | None = Field(None, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    losses: LossesSpec = LossesSpec()
    search: SearchSpec = SearchSpec()
    unlabeled: UnlabeledSpec | None = None
    augment: AugmentSpec | None = None
    """Off by default; left out of the stage key while off, so existing runs keep their cache."""
    labelling: Literal["auto", "torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"] = "auto"
    """How the teacher labels texts (see edgekd/stages/distill/labelling.py); left out of the stage key while auto."""


class ExportSpec(Strict):
    # 14 at least: torch exports scaled_dot_product_attention (every current encoder's attention) from opset 14.
    opset: Integer = Field(17, ge=14, le=21)
    atol: Number = Field(1e-3, gt=0)
    """Largest tolerated |ONNX - PyTorch| logit difference on real inputs."""
    parity_samples: Integer = Field(64, ge=1)


class PruneVocabSpec(Strict):
    """Shrink the student's embedding matrix and WordPiece vocabulary to the tokens the training data uses."""

    enabled: Flag = False
    reserve: Integer = Field(0, ge=0)
    """Also keep this many further tokens (most frequent in train below min_count first, then by vocab id)."""
    min_count: Integer = Field(1, ge=1)
    """A token is kept when it occurs at least this often in the tokenized training texts."""


class CalibrateSpec(Strict):
    """Fold an out-of-scope logit offset, chosen on validation, into the student's classifier (a stage after
    distill; needs benchmark.out_of_scope_label). See edgekd/stages/calibrate.py."""

    out_of_scope: Literal["off", "teacher_recall", "teacher_agreement", "accuracy"] = "off"
    """teacher_recall: flag the validation's out-of-scope texts as often as the teacher does; teacher_agreement:
    the offset at which the student's answers agree with the teacher's on the most validation texts; accuracy:
    the offset with the best validation accuracy; off: no calibrate stage (the chain and its keys as without
    it)."""


class QuantizeSpec(Strict):
    """INT8 with ONNX Runtime: dynamic (default) or static; accuracy-aware when a drop budget is set."""

    mode: Literal["dynamic", "static"] = "dynamic"
    target: Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"] = "auto"
    """The CPU the INT8 model will serve on. auto: the CPU running `compress`; the others take weight_type,
    per_channel and reduce_range from Optimum's AutoQuantizationConfig preset of that name, unless set here
    (table and sources in edgekd/stages/quantize/ort.py)."""
    weight_type: Literal["auto", "qint8", "quint8"] = "auto"
    """auto: the target's choice; for target auto, from the build CPU's instruction set (see
    edgekd/stages/quantize/stage.py)."""
    per_channel: Flag | None = None
    """Unset: the target's choice (off for target auto)."""
    reduce_range: Flag | None = None
    """7-bit weights, against int16 saturation of u8s8 on AVX2/AVX512 without VNNI. Unset: the target's choice
    (off for every target)."""
    # Gather quantizes the word-embedding table: most of a small student's bytes (a 3x384 BERT is 47 of its
    # 70 MB in embeddings), so leaving it out would keep INT8 files about 3x larger than they need to be.
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization"]
    )
    nodes_to_exclude: list[str] = Field(default_factory=list)
    optimize: Literal["none", "auto", "basic", "extended", "all"] = "none"
    """ONNX Runtime transformer fusions before quantizing; auto keeps them only when measured faster."""
    calibration_samples: Integer = Field(128, ge=1)
    """Training texts used to calibrate activation ranges (mode: static)."""
    max_accuracy_drop_pts: Number | None = Field(None, ge=0)
    """Validation accuracy budget vs the fp32 ONNX, in points; over it, sensitive layers fall back to fp32."""
    fallback: Literal["layer", "node"] = "layer"
    """Granularity of the fp32 fallback: whole encoder layers, or single MatMul nodes."""


class BenchmarkSpec(Strict):
    threads: Integer = Field(1, ge=1)
    """Intra-op threads per model for batch-1 latency; the accuracy and throughput passes use every core."""
    latency_samples: Integer = Field(200, ge=1)
    warmup: Integer = Field(20, ge=0)
    batch_size: Integer = Field(32, ge=1)
    """Batch size for the accuracy pass (not for latency, which is batch 1)."""
    out_of_scope_label: str | None = None
    """The class meaning "none of the others" (CLINC150's `oos`): the report adds in-scope accuracy and
    out-of-scope recall for it."""
    optimum_baseline: Flag = False
    """Also measure the distilled student as Optimum's defaults ship it (optimum export + ORTQuantizer
    avx512_vnni dynamic preset), as the variant `optimum-int8`."""
    teacher_int8_optimum: Flag = False
    """Also measure what a user ships without distillation: the teacher exported by optimum-onnx and quantized
    by ORTQuantizer's dynamic preset for the build CPU (avx512_vnni, avx512, avx2 or arm64), as the variant
    `teacher-int8-optimum`."""


class GatesSpec(Strict):
    """Sign-off gates: the student INT8 ONNX variant against the teacher. Unset gates are not checked."""

    max_accuracy_drop_pts: Number | None = Field(None, ge=0)
    max_latency_p90_ms: Number | None = Field(None, gt=0)
    max_size_mb: Number | None = Field(None, gt=0)
    min_speedup_p50: Number | None = Field(None, gt=0)
    min_compression: Number | None = Field(None, gt=0)
    min_accuracy: Number | None = Field(None, ge=0, le=1)
    max_latency_p99_ms: Number | None = Field(None, gt=0)
    max_peak_rss_mb: Number | None = Field(None, gt=0)
    """The candidate worker's peak resident memory while it loads and serves the batch-1 requests."""
    max_load_s: Number | None = Field(None, gt=0)
    """Seconds the candidate's fresh worker process takes to import its runtime and load the folder."""
    min_throughput_texts_per_s: Number | None = Field(None, gt=0)
    """Texts per second at the largest batch size the benchmark measures (tokenization included)."""
    max_in_scope_accuracy_drop_pts: Number | None = Field(None, ge=0)
    """With benchmark.out_of_scope_label: the reference's accuracy on the in-scope test rows minus the candidate's."""
    max_out_of_scope_recall_drop_pts: Number | None = Field(None, ge=0)
    """With benchmark.out_of_scope_label: the reference's out-of-scope recall minus the candidate's, in points."""
    beat_optimum_baseline: Flag = False
    """The candidate must be at least as accurate, as fast (p50) and as small as the `optimum-int8` variant."""


class Recipe(Strict):
    """A whole compression recipe."""

    name: str = Field(pattern=NAME_PATTERN)
    """Run name; the run folder is runs/<name>. Letters, digits, `_.-` only (it cannot escape the run root)."""
    seed: Integer = Field(42, ge=0, lt=SEED_LIMIT)
    data: DataSpec
    teacher: TeacherSpec
    student: StudentSpec
    distill: DistillSpec = DistillSpec()
    calibrate: CalibrateSpec = CalibrateSpec()
    prune_vocab: PruneVocabSpec = PruneVocabSpec()
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

    @model_validator(mode="after")
    def _baseline_gate_has_baseline(self) -> Recipe:
        if self.gates.beat_optimum_baseline and not self.benchmark.optimum_baseline:
            raise ValueError("gates.beat_optimum_baseline needs benchmark.optimum_baseline: true")
        return self

    @model_validator(mode="after")
    def _budget_has_a_gate(self) -> Recipe:
        if self.student.budget is None:
            return self
        if self.gates.min_speedup_p50 is None:
            raise ValueError("student.budget sizes the student to gates.min_speedup_p50: set that gate")
        losses = self.distill.losses
        if losses.hidden.weight > 0 or losses.attention.weight > 0:
            raise ValueError(
                "student.budget does not combine with distill.losses (their layer maps need a fixed depth)"
            )
        return self
