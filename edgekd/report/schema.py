"""report.json as typed models: the sign-off contract a hardware team reads.

`Report` is what `edgekd benchmark` and a pipeline's benchmark stage write (edgekd/bench/records.py builds it) and
what report.md, report.html, `edgekd compare` and the gates read. docs/report.schema.json is generated from it
(scripts/report_schema.py; a test fails when the committed file is stale).

Reading is lenient, writing is exact:

* A report written before `schema_version` existed reads as version 0. Sections an older edgekd did not write
  read as None (or empty), and only a variant's `name` is required, so hand-made and older reports still load.
* Keys these models do not declare are kept (`extra="allow"`), so reading and writing a report loses nothing;
  the writer itself produces declared fields only (tests/test_report_schema.py checks every level).
* `Report.to_json()` writes every declared field, None as null, as report.json always has, except the keys a
  report leaves out when they do not apply: `stage_times`, `student_budget` (pipeline runs only),
  `carried_over_s` (resumed stages only) and a variant's out-of-scope scores (only with
  `benchmark.out_of_scope_label`; they are written, possibly as null, exactly when they were set).

Imports only pydantic and the standard library (tests/test_import_graph.py keeps the report modules acyclic).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = 1
"""The version of report.json this edgekd writes. 0: reports from before the field existed. Raise it when a
key changes meaning or goes away (adding an optional key does not need it)."""


def _omitted_when_none(value: Any) -> bool:
    return value is None


class Section(BaseModel):
    """Base of every part of the report: unknown keys are kept, and infinities are written as JSON's
    Infinity (a ratio over a zero, as json.dumps always wrote it) rather than as null."""

    model_config = ConfigDict(
        extra="allow",
        ser_json_inf_nan="constants",
        json_schema_serialization_defaults_required=True,
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )


# ----------------------------------------------------------------------------------------------------------
# Numbers of one variant


class Percentiles(Section):
    """A latency summary over requests, in milliseconds."""

    p50: float
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    n: int | None = None
    """Requests measured."""


class Latency(Percentiles):
    """Batch-1 latency of the model call alone, ms."""

    p50_ci95: tuple[float, float] | None = None
    """Bootstrap 95% interval of the median (1000 resamples, seed 0)."""
    p90_ci95: tuple[float, float] | None = None
    """Bootstrap 95% interval of the p90 (the same resamples)."""
    p99_ci95: tuple[float, float] | None = None
    """Bootstrap 95% interval of the p99 (the same resamples)."""


class LengthLatency(Section):
    """Batch-1 model-call latency on token-exact inputs of one length, ms."""

    tokens: int
    p50: float
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    n: int | None = None


class BoxStats(Section):
    """The numbers of a box plot of the batch-1 model-call latency, ms."""

    min: float
    p5: float
    p25: float
    p50: float
    p75: float
    p95: float
    max: float


class ShippedFile(Section):
    """One file of a measured model folder: what was signed, byte for byte."""

    path: str
    """Relative to the model folder."""
    bytes: int
    sha256: str


class ClassScores(Section):
    """One class's scores on the test split."""

    precision: float
    recall: float
    f1: float
    support: int
    """Test rows whose true class this is."""


class AccuracyDiff(Section):
    """Variant accuracy minus the reference's, in percentage points, on the same test texts."""

    diff: float
    ci95: tuple[float, float]
    """Paired bootstrap 95% interval (1000 resamples, seed 0)."""


class LatencyDiff(Section):
    """This variant's batch-1 p50 minus another's, ms, over the same requests."""

    diff: float
    ci95: tuple[float, float]
    """Paired bootstrap 95% interval: request i of both is the same text in the same round (1000 resamples,
    seed 0)."""
    n: int
    """Requests paired."""


class PairedDiff(Section):
    """This variant minus another one, measured side by side in the same run (edgekd/bench/records.py)."""

    accuracy_pts: AccuracyDiff | None = None
    p50_ms: LatencyDiff | None = None


OUT_OF_SCOPE_KEYS = ("in_scope_accuracy", "out_of_scope_recall")


def _out_of_scope_not_required(schema: dict[str, Any]) -> None:
    required = schema.get("required")
    if isinstance(required, list):
        schema["required"] = [key for key in required if key not in OUT_OF_SCOPE_KEYS]


class Variant(Section):
    """One measured model: a line of the report. The comparisons are against the report's first variant (the
    reference). Sizes in bytes and MB = 1e6 bytes; latencies in ms; memory in MB."""

    model_config = ConfigDict(json_schema_extra=_out_of_scope_not_required)

    name: str
    format: str | None = None
    """"pytorch" or "onnx"."""
    accuracy: float | None = None
    """Share of the test split predicted right (0..1)."""
    accuracy_ci95: tuple[float, float] | None = None
    """Bootstrap 95% interval of the accuracy over the test texts (1000 resamples, seed 0): how far another
    test set of this size could move it. The test set is fixed, so a rerun gives the same accuracy."""
    macro_f1: float | None = None
    per_class: dict[str, ClassScores] | None = None
    """By class name."""
    size_bytes: int | None = None
    """Every file a deployment ships (weights, config, tokenizer)."""
    size_mb: float | None = None
    params: int | None = None
    """Parameters read from the weight files' headers (ONNX: stored initializers, quantized ones included)."""
    latency_ms: Latency | None = None
    latency_box_ms: BoxStats | None = None
    latency_e2e_ms: Percentiles | None = None
    """Tokenization plus model call, per request."""
    tokenize_ms: Percentiles | None = None
    latency_by_length_ms: list[LengthLatency] | None = None
    throughput_texts_per_s: dict[str, float] | None = None
    """Texts per second by batch size (median over rounds), tokenization included."""
    throughput_range_texts_per_s: dict[str, tuple[float, float]] | None = None
    """Lowest and highest texts per second over the rounds, by batch size."""
    throughput_threads: int | None = None
    throughput_per_s: float | None = None
    """Texts per second of the accuracy pass over the whole test split."""
    accuracy_pass_threads: int | None = None
    peak_rss_mb: float | None = None
    """Worker's peak resident memory after loading and serving the batch-1 requests."""
    peak_rss_accuracy_pass_mb: float | None = None
    peak_rss_throughput_mb: float | None = None
    rss_after_load_mb: float | None = None
    load_s: float | None = None
    threads: int | None = None
    effective_threads: int | None = None
    max_positions: int | None = None
    torch_imported: bool | None = None
    """Whether the worker process imported torch (False for an ONNX variant: the torch-free runtime)."""
    source: str | None = None
    """Set when this run did not measure the variant: the report its numbers were copied from (a device run's
    reference)."""
    raw: str | None = None
    """Per-request latencies and predictions, relative to the report folder."""
    folder: str | None = None
    files: list[ShippedFile] | None = None
    """Every file the model needs (weights, graph, config, tokenizer), with its size and sha256."""
    in_scope_accuracy: float | None = None
    """Accuracy on the test rows whose true class is not the out-of-scope one (with benchmark.out_of_scope_label)."""
    out_of_scope_recall: float | None = None
    """Share of the out-of-scope test rows predicted out of scope (with benchmark.out_of_scope_label)."""
    agreement_with_reference: float | None = None
    accuracy_diff_vs_reference_pts: AccuracyDiff | None = None
    speedup_p50: float | None = None
    """Reference p50 latency divided by this variant's."""
    speedup_e2e_p50: float | None = None
    compression: float | None = None
    """Reference size divided by this variant's."""
    params_ratio: float | None = None
    """This variant's params divided by the reference's (None when the reference's are unknown)."""
    paired_diffs: dict[str, PairedDiff] | None = None
    """This variant minus the named variant on the same texts and requests (written against the Optimum
    baseline, when the report has one, for `beat_optimum_baseline`)."""

    @model_serializer(mode="wrap")
    def _leave_out_unscored(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation: with one, pydantic would describe the variant by it in the JSON Schema.
        data = handler(self)
        if isinstance(data, dict):
            for key in OUT_OF_SCOPE_KEYS:
                if key not in self.model_fields_set:
                    data.pop(key, None)
        return data

    @property
    def out_of_scope_scored(self) -> bool:
        """Whether this variant was scored with an out-of-scope class."""
        return any(key in self.model_fields_set for key in OUT_OF_SCOPE_KEYS)


# ----------------------------------------------------------------------------------------------------------
# Gates


GateVerdict = Literal["pass", "fail", "inconclusive"]


class Gate(Section):
    """One sign-off gate's verdict on the candidate (edgekd/report/gates.py says which rule each gate uses).

    A gate read without `verdict` (a report from before it existed) gets "pass" or "fail" from `passed`; a gate
    given a `verdict` gets `passed` from it, so the two never disagree."""

    name: str
    limit: float
    value: float
    passed: bool
    """verdict == "pass" (what readers of older reports look at)."""
    verdict: GateVerdict
    """"pass", "fail", or "inconclusive" when the value's 95% interval straddles the limit."""
    ci95: tuple[float, float] | None = None
    """The 95% interval of `value`, on the scale of `limit`; None when the value has none."""
    ci95_from: str | None = None
    """What `ci95` is (e.g. a bootstrap over the batch-1 requests, a paired difference, the throughput rounds)."""
    rule: str | None = None
    """How the verdict was reached: "interval" (pass when all of ci95 is within the limit, fail when all of it
    is outside, else inconclusive), "not-worse" (fail only when all of ci95 is on the wrong side) or "point"
    (the value alone)."""
    suggested_samples: int | None = None
    """Inconclusive latency gates: the batch-1 requests per model that would likely resolve the gate."""
    comparison: str | None = None
    """"<=" or ">=": how `value` must compare with `limit` (inclusive)."""
    unit: str | None = None
    candidate: str | None = None
    reference: str | None = None
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _verdict_and_passed_agree(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            if data.get("verdict") is not None:
                data["passed"] = data["verdict"] == "pass"
            elif isinstance(data.get("passed"), bool):
                data["verdict"] = "pass" if data["passed"] else "fail"
        return data


# ----------------------------------------------------------------------------------------------------------
# Where and how it was measured


class Cpu(Section):
    model: str | None = None
    logical_cores: int | None = None
    physical_cores: int | None = None
    usable_cores: int | None = None
    """Cores this process may run on (its affinity)."""
    cgroup_cpu_quota: float | None = None
    """CPUs a cgroup v2 quota allows; None when unlimited or unknown."""
    flags: dict[str, bool] = Field(default_factory=dict)
    """The instruction-set extensions that decide the INT8 kernels; empty where the OS does not list them."""
    vendor: str | None = None
    """x86: vendor_id ("GenuineIntel", "AuthenticAMD"); arm64: named from the implementer code ("Arm")."""
    family: int | None = None
    """x86 CPU family (with model_number and stepping: the exact CPU generation and revision)."""
    model_number: int | None = None
    """x86 CPU model number (/proc/cpuinfo's "model")."""
    stepping: int | None = None
    implementer: str | None = None
    """arm64 "CPU implementer" code ("0x41": Arm)."""
    part: str | None = None
    """arm64 "CPU part" code ("0xd0c": Neoverse-N1)."""
    variant: str | None = None
    """arm64 "CPU variant"."""
    revision: int | None = None
    """arm64 "CPU revision"."""
    base_mhz: float | None = None
    """Base (nominal) clock of cpu0, MHz."""
    max_mhz: float | None = None
    """Highest clock cpu0 may run at (turbo included), MHz."""
    governor: str | None = None
    """cpufreq scaling governor ("performance", "powersave"); None where the kernel exposes no cpufreq."""
    caches_kib: dict[str, int] | None = None
    """Cache sizes one core sees, KiB, by name ("L1d", "L1i", "L2", "L3")."""


class Virtualization(Section):
    """Whether the machine is a virtual one, and what the firmware calls it."""

    guest: bool | None = None
    """True under a hypervisor (x86's "hypervisor" CPU flag or /sys/hypervisor/type); None where unknown."""
    hypervisor: str | None = None
    """/sys/hypervisor/type ("xen")."""
    sys_vendor: str | None = None
    """DMI system vendor ("Amazon EC2", "QEMU", a board maker)."""
    product_name: str | None = None
    """DMI product name."""


class OperatingSystem(Section):
    system: str | None = None
    """"Linux", "Darwin", "Windows"."""
    kernel: str | None = None
    """Kernel release."""
    distro: str | None = None
    """/etc/os-release's PRETTY_NAME (macOS or Windows version elsewhere)."""


class OtherProcessesCores(Section):
    """Cores other processes kept busy: a busy machine makes latencies unreliable."""

    at_start: float | None = None
    during: float | None = None


class OrtThreading(Section):
    execution_mode: str | None = None
    allow_spinning: bool | None = None


class ThreadSettings(Section):
    """The thread budgets the numbers were taken with."""

    latency_threads: int | None = None
    accuracy_threads: int | None = None
    throughput_threads: int | None = None
    effective_threads: dict[str, int | None] = Field(default_factory=dict)
    """By variant name."""
    inter_op_threads: int | None = None
    onnxruntime: OrtThreading | None = None
    worker_env: dict[str, str] = Field(default_factory=dict)


class Environment(Section):
    """The machine and libraries (edgekd/bench/envinfo.py), and the load before and after measuring."""

    cpu: Cpu = Field(default_factory=Cpu)
    memory_total_mb: float | None = None
    """Installed RAM, MB = 1e6 bytes."""
    virtualization: Virtualization | None = None
    os: OperatingSystem | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    """Library versions, None when not installed."""
    python: str | None = None
    python_implementation: str | None = None
    platform: str | None = None
    machine: str | None = None
    load_average: list[float] | None = None
    """1, 5 and 15 minute load averages before measuring."""
    thread_env: dict[str, str] = Field(default_factory=dict)
    other_processes_cores: OtherProcessesCores | None = None
    load_average_after: list[float] | None = None
    threads: ThreadSettings | None = None


class BenchmarkSettings(Section):
    """How every variant was measured (report.json's `benchmark`)."""

    threads: int | None = None
    """Intra-op threads per model for the batch-1 latency."""
    latency_samples: int | None = None
    warmup: int | None = None
    batch_size: int | None = None
    """Batch size of the accuracy pass."""
    seed: int | None = None
    max_length: int | None = None
    test_texts: int | None = None
    test_texts_sha256: str | None = None
    """sha256 of the test texts and their label ids in order (edgekd.bench.reference.digest_of_test_texts): a
    device run with --reference refuses other texts."""
    interleaved_rounds: int | None = None
    round_size: int | None = None
    seq_lengths: list[int] | None = None
    seq_samples: int | None = None
    throughput_batch_sizes: list[int] | None = None
    latency_definition: str | None = None
    out_of_scope_label: str | None = None
    """The class scored apart as "none of the others" (in-scope accuracy, out-of-scope recall), if any."""


class StageTime(Section):
    """Wall time of one pipeline stage before the benchmark."""

    stage: str
    wall_time_s: float
    carried_over_s: float | None = Field(default=None, exclude_if=_omitted_when_none)
    """Work of earlier, interrupted invocations of a resumed stage (included in wall_time_s)."""


class BudgetPrune(Section):
    ffn_keep: float | None = None
    heads_keep: float | None = None
    batches: int | None = None


class BudgetCandidate(Section):
    """One `student.budget` shape the distill stage timed."""

    layers: list[int] = Field(default_factory=list)
    prune: BudgetPrune | None = None
    int8_p50_ms: float | None = None
    predicted_speedup_p50: float | None = None


class StudentBudget(Section):
    """The distill stage's `student.budget` record, with the candidate's measured speed-up beside it."""

    teacher_p50_ms: float | None = None
    threads: int | None = None
    texts: int | None = None
    needed_speedup: float | None = None
    candidates: list[BudgetCandidate] = Field(default_factory=list)
    chosen: int | None = None
    """Index into `candidates`."""
    fits: bool | None = None
    predicted_speedup_p50: float | None = None
    seconds: float | None = None
    measured_speedup_p50: float | None = None


# ----------------------------------------------------------------------------------------------------------
# The report


class ReferenceReport(Section):
    """The build machine's report a device run was judged against (`edgekd benchmark --reference`)."""

    path: str
    sha256: str
    recipe: str | None = None
    created_utc: str | None = None
    reference: str | None = None
    """Its reference variant, copied into this report's variants."""
    candidate: str | None = None
    """The variant it signed: the measured folder's files are compared with this one's."""
    machine: str | None = None
    """The CPU it was measured on."""


class Report(Section):
    """report.json."""

    schema_version: int = 0
    """1 for reports written now; 0 (the default when reading) for reports from before the field existed."""
    recipe: str | None = None
    """The recipe's name (`edgekd benchmark`: its --title)."""
    edgekd_version: str | None = None
    created_utc: str | None = None
    environment: Environment = Field(default_factory=Environment)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    reference: str | None = None
    """The variant every other one is compared with (the first)."""
    candidate: str | None = None
    """The variant the gates judge."""
    variants: list[Variant] = Field(default_factory=list)
    gates: list[Gate] = Field(default_factory=list)
    passed: bool = False
    """Every gate passed (True when no gate is set); False when one failed or is inconclusive."""
    warnings: list[str] = Field(default_factory=list)
    stage_times: list[StageTime] | None = Field(default=None, exclude_if=_omitted_when_none)
    """Pipeline runs only."""
    student_budget: StudentBudget | None = Field(default=None, exclude_if=_omitted_when_none)
    reference_report: ReferenceReport | None = Field(default=None, exclude_if=_omitted_when_none)
    """A device run's (`edgekd benchmark --reference`): the report whose reference variant and gates it used."""
    """Pipeline runs with `student.budget` only."""

    def to_json(self) -> dict[str, Any]:
        """The content of report.json: JSON types, null for unknown values, the optional sections left out."""
        return self.model_dump(mode="json")

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def failed_gates(self) -> list[str]:
        """Gates whose verdict is "fail"."""
        return [gate.name for gate in self.gates if gate.verdict == "fail"]

    @property
    def inconclusive_gates(self) -> list[str]:
        """Gates whose interval straddles the limit: measure them again with more requests."""
        return [gate.name for gate in self.gates if gate.verdict == "inconclusive"]

    @property
    def verdict(self) -> str:
        """The worst gate verdict: "fail", then "inconclusive", then "pass"; "unchecked" when no gate is set."""
        if not self.gates:
            return "unchecked"
        if self.failed_gates:
            return "fail"
        return "inconclusive" if self.inconclusive_gates else "pass"


def as_report(report: Report | Mapping[str, Any]) -> Report:
    """`report` as a Report: a report.json's content (a dict) is validated.

    Raises:
        pydantic.ValidationError: When the dict does not have the shape of a report.
    """
    return report if isinstance(report, Report) else Report.model_validate(report)


def as_variant(variant: Variant | Mapping[str, Any]) -> Variant:
    return variant if isinstance(variant, Variant) else Variant.model_validate(variant)


def undeclared_keys(model: Any, where: str = "report") -> list[str]:
    """Every key a model holds, at any depth, that its class does not declare (kept from the file it was read
    from); a report edgekd builds has none."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        found += [f"{where}.{key}" for key in model.model_extra or {}]
        for name in type(model).model_fields:
            found += undeclared_keys(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list | tuple):
        for i, item in enumerate(model):
            found += undeclared_keys(item, f"{where}[{i}]")
    elif isinstance(model, dict):
        for key, item in model.items():
            found += undeclared_keys(item, f"{where}.{key}")
    return found


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json as edgekd writes it (fields always written are required)."""
    schema = Report.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
