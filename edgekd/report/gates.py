"""Sign-off gates: each gate compares the deployable variant (in a pipeline run `student-int8-onnx`; for
`edgekd benchmark` the last folder) with the reference (`teacher`, or the first folder); a gate left unset is not
checked. The numbers come from the variants of report.json (edgekd/report/schema.py), so a report can be re-judged against other limits
without measuring again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekd.recipe.schema import GatesSpec
from edgekd.report.schema import Gate, Variant, as_variant

REFERENCE = "teacher"
CANDIDATE = "student-int8-onnx"
OPTIMUM_BASELINE = "optimum-int8"
"""The variant `beat_optimum_baseline` compares the candidate with (see edgekd.stages.optimum_baseline)."""
MB = 1e6
# Limits are inclusive. Accuracies are ratios of counts, so a drop of exactly 2 points can come out as
# 2.0000000000000018; a relative tolerance far below any meaningful difference keeps such a gate passing.
GATE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class GateRule:
    """One gate: `value(reference, candidate)` must stay at most (`max`) or at least (`min`) the limit."""

    name: str
    kind: str
    unit: str
    description: str
    value: Callable[[Variant, Variant], float]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.inf


def _number(variant: Variant, what: str, value: float | None) -> float:
    if value is None:
        raise ValueError(f"the variant {variant.name} has no {what}")
    return float(value)


def _accuracy(v: Variant) -> float:
    return _number(v, "accuracy", v.accuracy)


def _p50(v: Variant) -> float:
    return _number(v, "latency_ms.p50", v.latency_ms.p50 if v.latency_ms else None)


def _p90(v: Variant) -> float:
    return _number(v, "latency_ms.p90", v.latency_ms.p90 if v.latency_ms else None)


def _size_bytes(v: Variant) -> float:
    return _number(v, "size_bytes", v.size_bytes)


def _largest_batch_throughput(v: Variant) -> float:
    """Texts/s at the largest batch size measured (the keys of throughput_texts_per_s are batch sizes)."""
    rates = v.throughput_texts_per_s or {}
    largest = max(rates, key=int, default=None)
    return _number(v, "throughput_texts_per_s", rates[largest] if largest is not None else None)


GATE_RULES: tuple[GateRule, ...] = (
    GateRule(
        "max_accuracy_drop_pts",
        "max",
        "pts",
        "reference accuracy minus candidate accuracy, in percentage points",
        lambda ref, cand: (_accuracy(ref) - _accuracy(cand)) * 100.0,
    ),
    GateRule(
        "max_latency_p90_ms",
        "max",
        "ms",
        "candidate p90 batch-1 latency of the model call",
        lambda ref, cand: _p90(cand),
    ),
    GateRule(
        "max_size_mb",
        "max",
        "MB",
        "candidate deployed size (weights + config + tokenizer), MB = 1e6 bytes",
        lambda ref, cand: _size_bytes(cand) / MB,
    ),
    GateRule(
        "min_speedup_p50",
        "min",
        "x",
        "reference p50 latency divided by candidate p50 latency",
        lambda ref, cand: _ratio(_p50(ref), _p50(cand)),
    ),
    GateRule(
        "min_compression",
        "min",
        "x",
        "reference size divided by candidate size",
        lambda ref, cand: _ratio(_size_bytes(ref), _size_bytes(cand)),
    ),
    GateRule(
        "min_accuracy",
        "min",
        "",
        "candidate accuracy (fraction)",
        lambda ref, cand: _accuracy(cand),
    ),
    GateRule(
        "max_latency_p99_ms",
        "max",
        "ms",
        "candidate p99 batch-1 latency of the model call",
        lambda ref, cand: _number(cand, "latency_ms.p99", cand.latency_ms.p99 if cand.latency_ms else None),
    ),
    GateRule(
        "max_peak_rss_mb",
        "max",
        "MB",
        "candidate worker's peak resident memory serving batch-1 requests",
        lambda ref, cand: _number(cand, "peak_rss_mb", cand.peak_rss_mb),
    ),
    GateRule(
        "max_load_s",
        "max",
        "s",
        "seconds a fresh process takes to import the runtime and load the candidate",
        lambda ref, cand: _number(cand, "load_s", cand.load_s),
    ),
    GateRule(
        "min_throughput_texts_per_s",
        "min",
        "texts/s",
        "candidate texts per second at the largest batch size measured",
        lambda ref, cand: _largest_batch_throughput(cand),
    ),
)


GATES_BY_NAME = {rule.name: rule for rule in GATE_RULES}

# `beat_optimum_baseline`: the candidate against the Optimum baseline variant, not against fixed limits.
# (name suffix, comparison, unit, description, value of a variant)
BASELINE_CHECKS: tuple[tuple[str, str, str, str, Callable[[Variant], float]], ...] = (
    ("accuracy", ">=", "", "candidate accuracy vs the Optimum baseline's", _accuracy),
    ("p50", "<=", "ms", "candidate p50 vs the Optimum baseline's", _p50),
    ("size", "<=", "MB", "candidate size vs the Optimum baseline's", lambda v: _size_bytes(v) / MB),
)


def evaluate_gates(
    variants: Sequence[Variant | Mapping[str, Any]],
    gates_spec: GatesSpec | Mapping[str, float | None],
    reference: str = REFERENCE,
    candidate: str = CANDIDATE,
) -> list[Gate]:
    """Check the candidate variant against every gate the recipe sets.

    Args:
        variants: The variants of report.json (need name, accuracy, size_bytes, latency_ms.p50/p90); dicts
            are read as `Variant`.
        gates_spec: The recipe's gates; None values are not checked.
        reference: Name of the variant the candidate is compared with.
        candidate: Name of the variant that must pass.

    Returns:
        One `Gate` per set gate, in the order of `GATE_RULES`: name, limit, value, passed (limits are
        inclusive, up to `GATE_TOLERANCE` for float rounding), plus comparison
        ("<=" or ">="), unit, candidate, reference and a description.

    Raises:
        ValueError: When a named variant is missing or lacks a number a gate needs, or `gates_spec` names an
            unknown gate.
    """
    limits = gates_spec.model_dump() if isinstance(gates_spec, GatesSpec) else dict(gates_spec)
    beat_baseline = bool(limits.pop("beat_optimum_baseline", False))
    unknown = set(limits) - set(GATES_BY_NAME)
    if unknown:
        raise ValueError(f"unknown gate(s): {', '.join(sorted(unknown))}")
    by_name = {v.name: v for v in map(as_variant, variants)}
    missing = [name for name in (reference, candidate) if name not in by_name]
    if missing:
        raise ValueError(f"the report has no variant named {', '.join(missing)}")
    ref, cand = by_name[reference], by_name[candidate]
    results = []
    for rule in GATE_RULES:
        limit = limits.get(rule.name)
        if limit is None:
            continue
        value = float(rule.value(ref, cand))
        slack = GATE_TOLERANCE * max(1.0, abs(limit))
        passed = value <= limit + slack if rule.kind == "max" else value >= limit - slack
        results.append(
            Gate(
                name=rule.name,
                limit=float(limit),
                value=value,
                passed=bool(passed),
                comparison="<=" if rule.kind == "max" else ">=",
                unit=rule.unit,
                candidate=candidate,
                reference=reference,
                description=rule.description,
            )
        )
    if beat_baseline:
        if OPTIMUM_BASELINE not in by_name:
            raise ValueError(f"beat_optimum_baseline needs a variant named {OPTIMUM_BASELINE}")
        results.extend(baseline_gates(by_name[OPTIMUM_BASELINE], cand, candidate))
    return results


def baseline_gates(baseline: Variant, cand: Variant, candidate: str) -> list[Gate]:
    """The `beat_optimum_baseline` gate as three results: accuracy, p50 and size against the baseline's."""
    results = []
    for suffix, comparison, unit, description, value_of in BASELINE_CHECKS:
        limit, value = value_of(baseline), value_of(cand)
        slack = GATE_TOLERANCE * max(1.0, abs(limit))
        passed = value >= limit - slack if comparison == ">=" else value <= limit + slack
        results.append(
            Gate(
                name=f"beat_optimum_baseline.{suffix}",
                limit=limit,
                value=value,
                passed=bool(passed),
                comparison=comparison,
                unit=unit,
                candidate=candidate,
                reference=OPTIMUM_BASELINE,
                description=description,
            )
        )
    return results
