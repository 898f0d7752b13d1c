"""`edgekd compare A B`: what changed between two benchmark reports, per model and in the environment.

A number that moved is only meaningful next to what else moved: a p50 that doubled on another CPU, another
onnxruntime or another thread budget says nothing about the model. So the environment differences are listed
with the per-model ones. And a latency that moved less than its measurement noise did not move: where both
reports carry the 95% interval of a latency, the table says whether the two intervals overlap ("within noise":
the change cannot be told from run-to-run variation) or not ("beyond noise"). Overlap is the conservative
reading: two intervals that just overlap can still hide a real difference, but two that do not overlap are not
noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekd.errors import InputError, first_line
from edgekd.report.schema import Report, Variant, as_report

REPORT_FILE = "report.json"
REPORT_HINT = "pass the report.json that `edgekd compress` or `edgekd benchmark` wrote (or its folder)"


# (label, how to read it from a variant, digits, unit)
METRICS: tuple[tuple[str, Callable[[Variant], Any], int, str], ...] = (
    ("accuracy", lambda v: v.accuracy, 4, ""),
    ("p50 ms", lambda v: v.latency_ms.p50 if v.latency_ms else None, 3, ""),
    ("p90 ms", lambda v: v.latency_ms.p90 if v.latency_ms else None, 3, ""),
    ("p99 ms", lambda v: v.latency_ms.p99 if v.latency_ms else None, 3, ""),
    ("size MB", lambda v: v.size_bytes / 1e6 if v.size_bytes is not None else None, 2, ""),
    ("speed-up p50", lambda v: v.speedup_p50, 2, "x"),
)


# The 95% interval a report stores for a metric, by label (latencies: a bootstrap over the batch-1 requests).
INTERVALS: dict[str, Callable[[Variant], Any]] = {
    "p50 ms": lambda v: v.latency_ms.p50_ci95 if v.latency_ms else None,
    "p90 ms": lambda v: v.latency_ms.p90_ci95 if v.latency_ms else None,
    "p99 ms": lambda v: v.latency_ms.p99_ci95 if v.latency_ms else None,
}


@dataclass(frozen=True)
class MetricChange:
    """One number of one model in both reports, with its 95% interval in each where the report has one."""

    variant: str
    metric: str
    a: float | None
    b: float | None
    digits: int
    unit: str
    ci_a: tuple[float, float] | None = None
    ci_b: tuple[float, float] | None = None

    @property
    def within_noise(self) -> bool | None:
        """True when the two intervals overlap (the change is within the measurement noise), False when they
        do not, None when a side has no interval."""
        if self.ci_a is None or self.ci_b is None:
            return None
        return self.ci_a[0] <= self.ci_b[1] and self.ci_b[0] <= self.ci_a[1]

    @property
    def delta(self) -> float | None:
        return self.b - self.a if self.a is not None and self.b is not None else None

    @property
    def relative(self) -> float | None:
        return self.delta / self.a if self.delta is not None and self.a else None


@dataclass(frozen=True)
class EnvChange:
    """One environment setting that differs between the reports."""

    key: str
    a: str
    b: str


@dataclass(frozen=True)
class Comparison:
    """Everything `edgekd compare` shows."""

    path_a: Path
    path_b: Path
    metrics: list[MetricChange]
    only_in_a: list[str]
    only_in_b: list[str]
    environment: list[EnvChange]
    not_comparable: list[str] = field(default_factory=list)
    """Why the numbers of A and B do not measure the same thing (other recipe, test set, threads or machine)."""


# environment_facts keys that make two reports measure different things, and how `compare` names them.
COMPARABILITY_FACTS = {
    "benchmark.threads": "latency threads",
    "cpu.model": "CPU",
    "cpu.flags": "CPU flags",
    "cpu.usable_cores": "usable cores",
}


def resolve_report(path: str | Path) -> Path:
    """A report.json path from a report.json, a report folder, or a run folder (run/report/report.json).

    Raises:
        InputError: When no report.json is there.
    """
    candidate = Path(path)
    for option in (candidate, candidate / REPORT_FILE, candidate / "report" / REPORT_FILE):
        if option.is_file():
            return option
    raise InputError(
        f"no report.json at {candidate}", hint="pass a report.json, a report folder or a run folder"
    )


def load_report(path: str | Path) -> Report:
    """Read a report.json (of any schema version: an older one reads as version 0).

    Raises:
        InputError: When it is missing, not JSON, has no variants, a variant is not an object with a name, or
            a value has the wrong type (a number where the report has text, a list where it has an object).
    """
    file = resolve_report(path)
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"cannot read {file}: {first_line(exc)}", hint=REPORT_HINT) from None
    if not isinstance(report, dict) or not isinstance(report.get("variants"), list):
        raise InputError(f"{file} is not an edgekd report (no 'variants' list)", hint=REPORT_HINT)
    for i, variant in enumerate(report["variants"]):
        if not isinstance(variant, dict) or not isinstance(variant.get("name"), str) or not variant["name"]:
            raise InputError(
                f"{file}: variants[{i}] is not a model's record (an object with a 'name')",
                hint=f"{REPORT_HINT}; a hand-edited file must keep one object per model",
            )
    try:
        return as_report(report)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise InputError(
            f"{file} is not an edgekd report: {where}: {problem['msg']}", hint=REPORT_HINT
        ) from None


def compare_reports(path_a: str | Path, path_b: str | Path) -> Comparison:
    """Per-model metric changes (models matched by name) and environment differences from A to B."""
    report_a, report_b = load_report(path_a), load_report(path_b)
    pairs, only_a, only_b = pair_variants(report_a.variants, report_b.variants)
    metrics = [
        MetricChange(
            label_pair,
            label,
            _float(read(a)),
            _float(read(b)),
            digits,
            unit,
            _interval(a, label),
            _interval(b, label),
        )
        for label_pair, a, b in pairs
        for label, read, digits, unit in METRICS
    ]
    return Comparison(
        path_a=resolve_report(path_a),
        path_b=resolve_report(path_b),
        metrics=metrics,
        only_in_a=only_a,
        only_in_b=only_b,
        environment=environment_changes(report_a, report_b),
        not_comparable=comparability_problems(report_a, report_b),
    )


def comparability_problems(report_a: Report, report_b: Report) -> list[str]:
    """What makes two reports' numbers measure different things: the recipe, the test set (its size: the texts
    themselves are not recorded), the latency threads, or the machine (CPU model, flags, usable cores)."""
    facts_a, facts_b = environment_facts(report_a), environment_facts(report_b)
    pairs = [
        ("recipe", report_a.recipe, report_b.recipe),
        ("test texts", report_a.benchmark.test_texts, report_b.benchmark.test_texts),
        *((label, facts_a[key], facts_b[key]) for key, label in COMPARABILITY_FACTS.items()),
    ]
    unknown = (None, "–")  # a side that does not say cannot be told apart
    return [f"{what}: {a} vs {b}" for what, a, b in pairs if a not in unknown and b not in unknown and a != b]


def pair_variants(
    variants_a: list[Variant], variants_b: list[Variant]
) -> tuple[list[tuple[str, Variant, Variant]], list[str], list[str]]:
    """Models matched by name; when the reports share no name but hold as many models, matched by position.

    Returns:
        ([(label, variant in A, variant in B)], names only in A, names only in B).
    """
    by_name_b = {v.name: v for v in variants_b}
    shared = [(v.name, v, by_name_b[v.name]) for v in variants_a if v.name in by_name_b]
    if not shared and len(variants_a) == len(variants_b):
        # Two `edgekd benchmark` runs of the same chain under other folder names: position is the match.
        return (
            [(f"{a.name} / {b.name}", a, b) for a, b in zip(variants_a, variants_b, strict=True)],
            [],
            [],
        )
    names_a = {v.name for v in variants_a}
    return (
        shared,
        [v.name for v in variants_a if v.name not in by_name_b],
        [v.name for v in variants_b if v.name not in names_a],
    )


def environment_facts(report: Report | Mapping[str, Any]) -> dict[str, str]:
    """The settings that shape the numbers, flattened to `key: text` (CPU, flags, libraries, threads, ...)."""
    report = as_report(report)
    env, bench = report.environment, report.benchmark
    facts: dict[str, Any] = {
        "cpu.model": env.cpu.model,
        "cpu.usable_cores": env.cpu.usable_cores,
        "cpu.logical_cores": env.cpu.logical_cores,
        "cpu.flags": ",".join(sorted(k for k, v in env.cpu.flags.items() if v)) or "none",
        "python": env.python,
        "platform": env.platform,
        "benchmark.threads": bench.threads,
        "benchmark.max_length": bench.max_length,
        "benchmark.batch_size": bench.batch_size,
        "benchmark.latency_samples": bench.latency_samples,
        "threads.throughput": env.threads.throughput_threads if env.threads else None,
    }
    for name, version in env.versions.items():
        facts[f"version.{name}"] = version
    for name, value in env.thread_env.items():
        facts[f"env.{name}"] = value
    return {key: "–" if value is None else str(value) for key, value in facts.items()}


def environment_changes(
    report_a: Report | Mapping[str, Any], report_b: Report | Mapping[str, Any]
) -> list[EnvChange]:
    """The environment facts whose values differ (a fact missing on one side shows as '–')."""
    facts_a, facts_b = environment_facts(report_a), environment_facts(report_b)
    keys = [*facts_a, *(k for k in facts_b if k not in facts_a)]
    return [
        EnvChange(key, facts_a.get(key, "–"), facts_b.get(key, "–"))
        for key in keys
        if facts_a.get(key, "–") != facts_b.get(key, "–")
    ]


def print_comparison(comparison: Comparison, console: Console) -> None:
    """Two rich tables: per-model metrics A → B, then the environment differences."""
    # markup=False and Text cells: paths, model names and versions come from the files and may hold [brackets].
    console.print(
        f"A: {comparison.path_a}\nB: {comparison.path_b}", highlight=False, soft_wrap=True, markup=False
    )
    if comparison.not_comparable:
        # Said first and loudly: the deltas below still show, but they mix what changed with how it was measured.
        console.print(Text("NOT COMPARABLE: these reports measure different things", style="bold red"))
        for problem in comparison.not_comparable:
            console.print(Text(f"  {problem}", style="red"))
    table = Table(title="per model: A → B")
    for column in ("variant", "metric", "A", "B", "Δ", "Δ %", "95% intervals"):
        table.add_column(column, justify="left" if column in ("variant", "metric") else "right")
    previous = None
    for change in comparison.metrics:
        table.add_row(
            Text(change.variant if change.variant != previous else ""),
            change.metric,
            _fmt(change.a, change.digits, change.unit),
            _fmt(change.b, change.digits, change.unit),
            _fmt(change.delta, change.digits, change.unit, signed=True),
            f"{change.relative * 100:+.1f}%" if change.relative is not None else "–",
            _noise_text(change),
        )
        previous = change.variant
    console.print(table)
    for side, names in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if names:
            console.print(f"only in {side}: {', '.join(names)}", markup=False)
    if not comparison.environment:
        console.print("environment: no differences")
        return
    env_table = Table(title="environment differences")
    for column in ("setting", "A", "B"):
        env_table.add_column(column)
    for env_change in comparison.environment:
        env_table.add_row(Text(env_change.key), Text(env_change.a), Text(env_change.b))
    console.print(env_table)


def _interval(variant: Variant, label: str) -> tuple[float, float] | None:
    read = INTERVALS.get(label)
    ci = read(variant) if read else None
    if ci is None or len(ci) != 2 or any(_float(end) is None for end in ci):
        return None
    return (float(ci[0]), float(ci[1]))


def _noise_text(change: MetricChange) -> Text:
    """The overlap column: whether a latency change is within the noise of the two measurements."""
    if change.within_noise is None:
        return Text("–")
    if change.within_noise:
        return Text("overlap: within noise", style="dim")
    return Text("apart: beyond noise", style="bold")


def _float(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits in a hand-edited report
        return None


def _fmt(value: float | None, digits: int, unit: str, signed: bool = False) -> str:
    if value is None:
        return "–"
    return (f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}") + unit
