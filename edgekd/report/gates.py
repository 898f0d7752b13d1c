"""Sign-off gates: each gate compares the deployable variant (in a pipeline run `student-int8-onnx`; for
`edgekd benchmark` the last folder) with the reference (`teacher`, or the first folder); a gate left unset is not
checked. The numbers come from the variants of report.json (edgekd/report/schema.py), so a report can be re-judged
against other limits without measuring again: every interval a gate reads is computed when the variants are
measured (edgekd/bench/records.py) and stored in them, because the raw samples may not travel with the report (a
device run judges against a reference variant copied from another machine's report).

Each gate gets a verdict: "pass", "fail", or "inconclusive" when the value's 95% interval straddles the limit, so a
verdict does not flip between two runs of the same files because of timing noise. The rule per gate:

* **Timing** (`max_latency_p90_ms`, `max_latency_p99_ms`, `min_speedup_p50`, `min_throughput_texts_per_s`), rule
  "interval": PASS when the whole interval is within the limit (limits are inclusive), FAIL when the whole interval
  is outside it, INCONCLUSIVE otherwise. The intervals: a cluster bootstrap over the interleaved rounds of batch-1
  requests (whole rounds resampled, so a round the machine was slow for counts as one draw) of the candidate's
  p90 / p99 (`latency_ms.p90_ci95`, `p99_ci95`); for the speed-up, the conservative ratio of the two p50 intervals
  [ref lo / cand hi, ref hi / cand lo]; for throughput, the lowest and highest texts/s of the throughput rounds
  (`throughput_range_texts_per_s`: a spread, not a 95% interval). Each is then widened to at least
  `RUN_TO_RUN_DRIFT` of the value either side: no interval from one run sees the next run's machine. An
  inconclusive latency gate names `suggested_samples`: the half-width of an interval shrinks about as 1/sqrt(n),
  so n * (half-width towards the limit / distance to the limit)^2, times 1.25 for margin, rounded up to 50 and at
  most 20x the current count (none when the limit is within the drift of the value: more requests cannot
  decide it).
* **The p50 against the Optimum baseline** (part of `beat_optimum_baseline`), rule "not-worse" (below) on the
  baseline's p50 plus the paired bootstrap (by round) of the difference of the medians over the same requests
  (`paired_diffs`; else the two p50 intervals combined conservatively), widened by the drift like the timing
  gates: "not slower". The two are often the same graph, as fast as each other.
* **Accuracy and size against a fixed limit** (`min_accuracy`, `max_accuracy_drop_pts`, `max_size_mb`,
  `min_compression`), rule "point": the test set and the files are fixed, so a rerun of the same files gives the
  same value, and the verdict cannot flip on noise; it is judged on the value. The test-set interval (a bootstrap
  of the accuracy, or the paired one of the drop) is shown for information: it says how far another test set of
  this size could move the number, which is a question about the test set, not about this run.
* **Comparing two models' accuracy** (`beat_optimum_baseline.accuracy`, "not worse than the baseline"), rule
  "not-worse": FAIL only when the whole paired 95% interval of (candidate - baseline) over the same test texts is
  below 0 (the candidate is worse beyond what the test set can resolve); PASS otherwise. The value is fixed for
  fixed files, so an INCONCLUSIVE could never be cleared by measuring again; and a claim of "no worse than" a
  baseline built from the same student is refuted by evidence of being worse, not by a tie. Without a paired
  interval (an older report) the two accuracies' intervals are combined conservatively, else the values compared.
* **Single measurements** (`max_peak_rss_mb`, `max_load_s`, `beat_optimum_baseline.size`), rule "point".

A variant without the interval a rule needs (a report from before they were written) is judged on its value, as
before, and its gate says rule "point". `Gate.passed` is verdict == "pass". The CLI exits 3 when a gate fails and 4
when none fails but one is inconclusive (edgekd/errors.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekd.recipe.schema import GatesSpec
from edgekd.report.schema import Gate, GateVerdict, Report, Variant, as_variant

REFERENCE = "teacher"
CANDIDATE = "student-int8-onnx"
OPTIMUM_BASELINE = "optimum-int8"
"""The variant `beat_optimum_baseline` compares the candidate with (see edgekd.stages.optimum_baseline)."""
MB = 1e6
SCOPE_GATES = ("max_in_scope_accuracy_drop_pts", "max_out_of_scope_recall_drop_pts")
"""The gates that read in-scope accuracy and out-of-scope recall, so need `benchmark.out_of_scope_label`."""
# Limits are inclusive. Accuracies are ratios of counts, so a drop of exactly 2 points can come out as
# 2.0000000000000018; a relative tolerance far below any meaningful difference keeps such a gate passing.
GATE_TOLERANCE = 1e-9
MAX_SAMPLES_FACTOR = 20
"""`suggested_samples` is at most this many times the requests measured."""
SAMPLES_MARGIN = 1.25
"""`suggested_samples` asks for this much more than the 1/sqrt(n) estimate: the value itself moves too."""

RUN_TO_RUN_DRIFT = 0.10
"""Every timing interval is widened to at least this share of the value either side. Why: an interval from one
run sees the noise within that run, not a machine that is a few percent slower or faster as a whole in the next
one. benchmarks/verdict_stability.py measured the same files twice on one idle 2-core machine: throughput moved 8%
and a 0.18 ms p90 by 35%, outside the first run's intervals, and two copies of the same model, interleaved in one
run, differed by 4% in p50; a later pair of runs moved throughput by 19%. A timing gate closer to its limit than
this cannot be signed on one run. 10% does not cover every drift seen (the sub-millisecond p90, throughput), but
with both runs' intervals widened no verdict has gone from PASS to FAIL between them."""

Interval = tuple[float, float]
BOOTSTRAP = "bootstrap over the interleaved rounds of batch-1 requests"
DRIFT_NOTE = f"widened to at least ±{RUN_TO_RUN_DRIFT:.0%} of the value (run-to-run drift)"


@dataclass(frozen=True)
class Reading:
    """A gate's value with its 95% interval and how the verdict uses it.

    Attributes:
        value: The number compared with the limit.
        ci95: Its interval on the scale of the limit (None: it has none).
        ci95_from: What the interval is.
        rule: "interval", "not-worse" or "point" (see the module docstring).
        requests: The batch-1 requests per model behind the interval, when more of them would narrow it.
        drift: For a timing reading, the share of the value the judged interval reaches at least either side
            (`RUN_TO_RUN_DRIFT`); 0 otherwise.
    """

    value: float
    ci95: Interval | None = None
    ci95_from: str | None = None
    rule: str = "point"
    requests: int | None = None
    drift: float = 0.0

    @property
    def drift_band(self) -> Interval:
        """The value plus and minus `drift` of it (the value alone when there is no drift)."""
        spread = self.drift * abs(self.value)
        return self.value - spread, self.value + spread

    @property
    def judged_ci95(self) -> Interval | None:
        """The interval the verdict reads: `ci95`, holding the value itself and, for timing, widened by `drift`."""
        if self.ci95 is None:
            return None
        band_lo, band_hi = self.drift_band
        return min(self.ci95[0], band_lo), max(self.ci95[1], band_hi)

    @property
    def judged_from(self) -> str | None:
        """What `judged_ci95` is."""
        if self.ci95_from and self.drift:
            return f"{self.ci95_from}, {DRIFT_NOTE}"
        return self.ci95_from


def _timing(
    value: float, ci: Interval | None, how: str, rule: str = "interval", requests: int | None = None
) -> Reading:
    return Reading(value, ci, how, rule, requests, drift=RUN_TO_RUN_DRIFT)


@dataclass(frozen=True)
class Pair:
    """The two variants a gate reads; `ref_is_first`: the reference is the report's first variant (the one
    `accuracy_diff_vs_reference_pts` is measured against)."""

    ref: Variant
    cand: Variant
    ref_is_first: bool = False


@dataclass(frozen=True)
class GateRule:
    """One gate: `value(pair)` must stay at most (`max`) or at least (`min`) the limit."""

    name: str
    kind: str
    unit: str
    description: str
    value: Callable[[Pair], Reading]


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


def _size_bytes(v: Variant) -> float:
    return _number(v, "size_bytes", v.size_bytes)


def _requests(v: Variant) -> int | None:
    return v.latency_ms.n if v.latency_ms else None


def _latency_reading(v: Variant, q: str) -> Reading:
    """The candidate's p90 or p99 with its bootstrap interval."""
    value = _number(v, f"latency_ms.{q}", getattr(v.latency_ms, q, None))
    ci = getattr(v.latency_ms, f"{q}_ci95", None)
    return _timing(value, ci, f"{BOOTSTRAP} of the {q}", requests=_requests(v))


def _speedup(pair: Pair) -> Reading:
    ref_p50, cand_p50 = _p50(pair.ref), _p50(pair.cand)
    ref_ci = pair.ref.latency_ms.p50_ci95 if pair.ref.latency_ms else None
    cand_ci = pair.cand.latency_ms.p50_ci95 if pair.cand.latency_ms else None
    ci = None
    if ref_ci and cand_ci:
        # Conservative: the slowest reference over the fastest candidate, and the other way round.
        ci = (_ratio(ref_ci[0], cand_ci[1]), _ratio(ref_ci[1], cand_ci[0]))
    how = f"the two p50 intervals ({BOOTSTRAP}), ref lo / cand hi to ref hi / cand lo"
    return _timing(_ratio(ref_p50, cand_p50), ci, how, requests=_requests(pair.cand))


def _drop(pair: Pair) -> Reading:
    value = (_accuracy(pair.ref) - _accuracy(pair.cand)) * 100.0
    paired = (pair.cand.paired_diffs or {}).get(pair.ref.name)
    diff = paired.accuracy_pts if paired else None
    if diff is None and pair.ref_is_first:
        diff = pair.cand.accuracy_diff_vs_reference_pts
    ci = (-diff.ci95[1], -diff.ci95[0]) if diff else None
    return Reading(value, ci, "paired bootstrap over the test texts (for information: the test set is fixed)")


def _min_accuracy(pair: Pair) -> Reading:
    how = "bootstrap over the test texts (for information: the test set is fixed)"
    return Reading(_accuracy(pair.cand), pair.cand.accuracy_ci95, how)


def _throughput(pair: Pair) -> Reading:
    """Texts/s at the largest batch size measured (the keys of throughput_texts_per_s are batch sizes)."""
    v = pair.cand
    rates = v.throughput_texts_per_s or {}
    largest = max(rates, key=int, default=None)
    value = _number(v, "throughput_texts_per_s", rates[largest] if largest is not None else None)
    spread = (v.throughput_range_texts_per_s or {}).get(largest) if largest is not None else None
    return _timing(value, spread, "lowest and highest texts/s of the throughput rounds")


def _scope_drop(pair: Pair, field: str) -> float:
    """Points lost by the candidate on the in-scope or out-of-scope part of the test set."""
    what = f"{field} (set benchmark.out_of_scope_label)"
    return (
        _number(pair.ref, what, getattr(pair.ref, field))
        - _number(pair.cand, what, getattr(pair.cand, field))
    ) * 100


def _point(read: Callable[[Pair], float]) -> Callable[[Pair], Reading]:
    return lambda pair: Reading(read(pair))


GATE_RULES: tuple[GateRule, ...] = (
    GateRule(
        "max_accuracy_drop_pts",
        "max",
        "pts",
        "reference accuracy minus candidate accuracy, in percentage points",
        _drop,
    ),
    GateRule(
        "max_latency_p90_ms",
        "max",
        "ms",
        "candidate p90 batch-1 latency of the model call",
        lambda pair: _latency_reading(pair.cand, "p90"),
    ),
    GateRule(
        "max_size_mb",
        "max",
        "MB",
        "candidate deployed size (weights + config + tokenizer), MB = 1e6 bytes",
        _point(lambda pair: _size_bytes(pair.cand) / MB),
    ),
    GateRule(
        "min_speedup_p50",
        "min",
        "x",
        "reference p50 latency divided by candidate p50 latency",
        _speedup,
    ),
    GateRule(
        "min_compression",
        "min",
        "x",
        "reference size divided by candidate size",
        _point(lambda pair: _ratio(_size_bytes(pair.ref), _size_bytes(pair.cand))),
    ),
    GateRule("min_accuracy", "min", "", "candidate accuracy (fraction)", _min_accuracy),
    GateRule(
        "max_latency_p99_ms",
        "max",
        "ms",
        "candidate p99 batch-1 latency of the model call",
        lambda pair: _latency_reading(pair.cand, "p99"),
    ),
    GateRule(
        "max_peak_rss_mb",
        "max",
        "MB",
        "candidate worker's peak resident memory serving batch-1 requests",
        _point(lambda pair: _number(pair.cand, "peak_rss_mb", pair.cand.peak_rss_mb)),
    ),
    GateRule(
        "max_load_s",
        "max",
        "s",
        "seconds a fresh process takes to import the runtime and load the candidate",
        _point(lambda pair: _number(pair.cand, "load_s", pair.cand.load_s)),
    ),
    GateRule(
        "min_throughput_texts_per_s",
        "min",
        "texts/s",
        "candidate texts per second at the largest batch size measured",
        _throughput,
    ),
    GateRule(
        "max_in_scope_accuracy_drop_pts",
        "max",
        "pts",
        "reference in-scope accuracy minus the candidate's (benchmark.out_of_scope_label), in points",
        _point(lambda pair: _scope_drop(pair, "in_scope_accuracy")),
    ),
    GateRule(
        "max_out_of_scope_recall_drop_pts",
        "max",
        "pts",
        "reference out-of-scope recall minus the candidate's (benchmark.out_of_scope_label), in points",
        _point(lambda pair: _scope_drop(pair, "out_of_scope_recall")),
    ),
)


GATES_BY_NAME = {rule.name: rule for rule in GATE_RULES}


def _baseline_accuracy(baseline: Variant, cand: Variant) -> Reading:
    """Candidate accuracy with the paired interval of (candidate - baseline) added to the baseline's."""
    value, limit = _accuracy(cand), _accuracy(baseline)
    paired = (cand.paired_diffs or {}).get(baseline.name)
    if paired and paired.accuracy_pts:
        lo, hi = paired.accuracy_pts.ci95
        ci: Interval | None = (limit + lo / 100.0, limit + hi / 100.0)
        how = "baseline's accuracy + paired bootstrap of (candidate - baseline) over the same test texts"
    else:
        ci = _combined(value, limit, cand.accuracy_ci95, baseline.accuracy_ci95)
        how = "the two accuracies' intervals combined (not paired)"
    return Reading(value, ci, how, "not-worse")


def _baseline_p50(baseline: Variant, cand: Variant) -> Reading:
    """Candidate p50 with the paired interval of (candidate - baseline) medians added to the baseline's."""
    value, limit = _p50(cand), _p50(baseline)
    paired = (cand.paired_diffs or {}).get(baseline.name)
    if paired and paired.p50_ms:
        lo, hi = paired.p50_ms.ci95
        ci: Interval | None = (limit + lo, limit + hi)
        how = "baseline's p50 + paired bootstrap of the difference of the medians over the same requests"
    else:
        cand_ci = cand.latency_ms.p50_ci95 if cand.latency_ms else None
        base_ci = baseline.latency_ms.p50_ci95 if baseline.latency_ms else None
        ci = _combined(value, limit, cand_ci, base_ci)
        how = f"the two p50 intervals ({BOOTSTRAP}) combined (not paired)"
    # "Not slower": edgekd's student and Optimum's are often the same graph with other weights, as fast as each
    # other; only a candidate slower beyond the drift fails (see "not-worse" in the module doc).
    return _timing(value, ci, how, "not-worse")


def _combined(value: float, limit: float, cand: Interval | None, base: Interval | None) -> Interval | None:
    """Conservative interval of the candidate's value against a limit that is itself measured: the limit plus
    [cand lo - base hi, cand hi - base lo]."""
    if not cand or not base:
        return None
    return (limit + cand[0] - base[1], limit + cand[1] - base[0])


# `beat_optimum_baseline`: the candidate against the Optimum baseline variant, not against fixed limits.
# (name suffix, comparison, unit, description, reading of (baseline, candidate), limit of the baseline)
BASELINE_CHECKS: tuple[
    tuple[str, str, str, str, Callable[[Variant, Variant], Reading], Callable[[Variant], float]], ...
] = (
    ("accuracy", ">=", "", "candidate accuracy vs the Optimum baseline's", _baseline_accuracy, _accuracy),
    ("p50", "<=", "ms", "candidate p50 vs the Optimum baseline's", _baseline_p50, _p50),
    (
        "size",
        "<=",
        "MB",
        "candidate size vs the Optimum baseline's",
        lambda base, cand: Reading(_size_bytes(cand) / MB),
        lambda v: _size_bytes(v) / MB,
    ),
)


def judge(kind: str, limit: float, reading: Reading) -> tuple[GateVerdict, str]:
    """The verdict of a reading against a limit, and the rule it was reached by.

    Args:
        kind: "max" (the value must stay at most the limit) or "min" (at least).
        limit: The limit (inclusive, up to `GATE_TOLERANCE`).
        reading: The value, its interval and the rule to apply.

    Returns:
        ("pass" | "fail" | "inconclusive", the rule applied: "point" when the reading has no interval).
    """
    slack = GATE_TOLERANCE * max(1.0, abs(limit))

    def within(x: float) -> bool:
        return x <= limit + slack if kind == "max" else x >= limit - slack

    interval = reading.judged_ci95
    if interval is None or reading.rule == "point":
        return ("pass" if within(reading.value) else "fail"), "point"
    # The interval always holds the value itself, so a value within the limit is never a FAIL.
    lo, hi = interval
    inside = [within(lo), within(hi)]
    if all(inside):
        return "pass", reading.rule
    if not any(inside):
        return "fail", reading.rule
    return ("pass" if reading.rule == "not-worse" else "inconclusive"), reading.rule


def suggested_samples(limit: float, reading: Reading) -> int | None:
    """Batch-1 requests per model that would likely decide an inconclusive gate; None where more requests
    would not narrow its interval enough (no request count, or the limit within the run-to-run drift).

    The interval's extent from the value towards the limit shrinks about as 1/sqrt(n); the gate is decided once
    it no longer reaches the limit: n * (extent / distance)^2 (times `SAMPLES_MARGIN`, rounded up to 50, at most
    `MAX_SAMPLES_FACTOR` times n; a value on its limit gets the most).
    """
    n = reading.requests
    if not n or reading.ci95 is None:
        return None
    value = reading.value
    band_lo, band_hi = reading.drift_band
    if reading.drift and band_lo <= limit <= band_hi:
        return None
    lo, hi = min(reading.ci95[0], value), max(reading.ci95[1], value)
    extent = hi - value if limit >= value else value - lo
    distance = abs(limit - value)
    most = MAX_SAMPLES_FACTOR * n
    if distance <= 0 or not math.isfinite(extent) or not math.isfinite(distance):
        return most
    needed = n * (extent / distance) ** 2 * SAMPLES_MARGIN
    # (the epsilon: 0.4 / 0.2 is 2.0000000000000004 in floating point, which must not round up a step)
    return int(min(most, max(n + 1, math.ceil(needed / 50 - 1e-9) * 50)))


def evaluate_gates(
    variants: Sequence[Variant | Mapping[str, Any]],
    gates_spec: GatesSpec | Mapping[str, float | None],
    reference: str = REFERENCE,
    candidate: str = CANDIDATE,
) -> list[Gate]:
    """Check the candidate variant against every gate the recipe sets.

    Args:
        variants: The variants of report.json (need name, accuracy, size_bytes, latency_ms.p50/p90; the
            intervals where they have them); dicts are read as `Variant`.
        gates_spec: The recipe's gates; None values are not checked.
        reference: Name of the variant the candidate is compared with.
        candidate: Name of the variant that must pass.

    Returns:
        One `Gate` per set gate, in the order of `GATE_RULES`: name, limit, value, its ci95 (where it has one),
        the verdict and the rule that reached it (module docstring), `passed` (verdict == "pass"),
        `suggested_samples` for an inconclusive latency gate, plus comparison ("<=" or ">="), unit,
        candidate, reference and a description.

    Raises:
        ValueError: When a named variant is missing or lacks a number a gate needs, or `gates_spec` names an
            unknown gate.
    """
    limits = gates_spec.model_dump() if isinstance(gates_spec, GatesSpec) else dict(gates_spec)
    beat_baseline = bool(limits.pop("beat_optimum_baseline", False))
    unknown = set(limits) - set(GATES_BY_NAME)
    if unknown:
        raise ValueError(f"unknown gate(s): {', '.join(sorted(unknown))}")
    parsed = [as_variant(v) for v in variants]
    by_name = {v.name: v for v in parsed}
    missing = [name for name in (reference, candidate) if name not in by_name]
    if missing:
        raise ValueError(f"the report has no variant named {', '.join(missing)}")
    pair = Pair(by_name[reference], by_name[candidate], ref_is_first=parsed[0].name == reference)
    results = []
    for rule in GATE_RULES:
        limit = limits.get(rule.name)
        if limit is not None:
            where = (rule.unit, rule.description, reference, candidate)
            results.append(_gate(rule.name, rule.kind, float(limit), rule.value(pair), *where))
    if beat_baseline:
        if OPTIMUM_BASELINE not in by_name:
            raise ValueError(f"beat_optimum_baseline needs a variant named {OPTIMUM_BASELINE}")
        results.extend(baseline_gates(by_name[OPTIMUM_BASELINE], pair.cand, candidate))
    return results


def baseline_gates(baseline: Variant, cand: Variant, candidate: str) -> list[Gate]:
    """The `beat_optimum_baseline` gate as three results: accuracy, p50 and size against the baseline's."""
    results = []
    for suffix, comparison, unit, description, read, limit_of in BASELINE_CHECKS:
        kind = "min" if comparison == ">=" else "max"
        where = (unit, description, OPTIMUM_BASELINE, candidate)
        results.append(
            _gate(f"beat_optimum_baseline.{suffix}", kind, limit_of(baseline), read(baseline, cand), *where)
        )
    return results


def _gate(
    name: str,
    kind: str,
    limit: float,
    reading: Reading,
    unit: str,
    description: str,
    reference: str,
    candidate: str,
) -> Gate:
    verdict, rule = judge(kind, limit, reading)
    ci = reading.judged_ci95
    return Gate(
        name=name,
        limit=limit,
        value=float(reading.value),
        passed=verdict == "pass",
        verdict=verdict,
        ci95=(float(ci[0]), float(ci[1])) if ci is not None else None,
        ci95_from=reading.judged_from if ci is not None else None,
        rule=rule,
        suggested_samples=suggested_samples(limit, reading) if verdict == "inconclusive" else None,
        comparison="<=" if kind == "max" else ">=",
        unit=unit,
        candidate=candidate,
        reference=reference,
        description=description,
    )


# ----------------------------------------------------------------------------------------------------------
# The verdict in words (report.md, report.html and the terminal summary say the same)

VERDICT_LABELS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}


def rerun_samples(gates: Sequence[Gate]) -> int | None:
    """The batch-1 requests per model to measure again with: the most any inconclusive gate suggests."""
    counts = [g.suggested_samples for g in gates if g.verdict == "inconclusive" and g.suggested_samples]
    return max(counts) if counts else None


def verdict_summary(report: Report) -> tuple[str, str]:
    """The report's top-line verdict: (FAIL | INCONCLUSIVE | PASS | NO GATES SET, what it rests on)."""
    gates, failed, unsure = report.gates, report.failed_gates, report.inconclusive_gates
    if not gates:
        return "NO GATES SET", "nothing was checked"
    also = f"; {len(unsure)} inconclusive ({', '.join(unsure)})" if unsure else ""
    if failed:
        return "FAIL", f"{len(failed)} of {len(gates)} gates failed ({', '.join(failed)}){also}"
    if unsure:
        samples = rerun_samples(gates)
        rerun = (
            f"; measure again with {samples} batch-1 requests per model"
            if samples
            else f"; within {RUN_TO_RUN_DRIFT:.0%} of the limit, which more requests cannot decide"
        )
        return "INCONCLUSIVE", (
            f"{len(unsure)} of {len(gates)} gates within measurement noise of their limit "
            f"({', '.join(unsure)}), none failed{rerun}"
        )
    return "PASS", f"all {len(gates)} gates passed"


def gate_cells(gate: Gate) -> list[str]:
    """A gate's row in the report tables: name, limit, value, 95% interval, verdict, measured as."""
    unit = f" {gate.unit}" if gate.unit else ""
    ci = f"[{gate.ci95[0]:.4g}, {gate.ci95[1]:.4g}]" if gate.ci95 else "–"
    verdict = VERDICT_LABELS.get(gate.verdict, gate.verdict.upper())
    if gate.verdict == "inconclusive" and gate.suggested_samples:
        verdict += f" (try {gate.suggested_samples} requests)"
    how = gate.description or ""
    if gate.ci95_from:
        how += f"; interval: {gate.ci95_from}"
    if gate.rule == "point" and gate.ci95:
        how += " (judged on the value)"
    return [
        gate.name,
        f"{gate.comparison or ''} {gate.limit:.4g}{unit}".strip(),
        f"{gate.value:.4g}{unit}",
        ci,
        verdict,
        how,
    ]


GATE_COLUMNS = ["gate", "limit", "value", "95% interval", "verdict", "measured as"]
