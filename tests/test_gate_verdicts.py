"""Gate verdicts that do not flip on timing noise: PASS / FAIL / INCONCLUSIVE from the stored 95% intervals, the
rule per gate (edgekd/report/gates.py), older reports without intervals, and exit code 4 vs 3."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.bench.records import paired_diff, request_rounds, throughput_ranges
from edgekd.bench.spec import Measurements
from edgekd.bench.stats import bootstrap_ci, paired_diff_ci
from edgekd.errors import GateFailed, GateInconclusive
from edgekd.recipe.schema import GatesSpec
from edgekd.report.compare import MetricChange
from edgekd.report.gates import (
    MAX_SAMPLES_FACTOR,
    OPTIMUM_BASELINE,
    RUN_TO_RUN_DRIFT,
    Reading,
    evaluate_gates,
    judge,
    suggested_samples,
    verdict_summary,
)
from edgekd.report.markdown import write_report_md
from edgekd.report.schema import Gate, Report


def _variant(name: str, accuracy: float, p50: float, p90: float, spread: float = 0.0, n: int = 200) -> dict:
    """A hand-made variant; `spread` > 0 gives it intervals of +-spread around its latencies."""
    latency: dict = {"p50": p50, "p90": p90, "p99": p90 * 1.5, "n": n}
    if spread:
        latency |= {
            "p50_ci95": [p50 - spread, p50 + spread],
            "p90_ci95": [p90 - spread, p90 + spread],
            "p99_ci95": [p90 * 1.5 - spread, p90 * 1.5 + spread],
        }
    return {
        "name": name,
        "accuracy": accuracy,
        "size_bytes": 10_000_000,
        "latency_ms": latency,
        "throughput_texts_per_s": {"8": 100.0, "32": 200.0},
        **({"throughput_range_texts_per_s": {"8": [90.0, 110.0], "32": [180.0, 220.0]}} if spread else {}),
    }


def _pair(spread: float = 0.5) -> list[dict]:
    return [
        _variant("teacher", 0.90, 20.0, 30.0, spread),
        _variant("student-int8-onnx", 0.89, 4.0, 6.0, spread),
    ]


# ----------------------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(
    ("kind", "limit", "ci", "verdict"),
    [
        ("max", 7.0, (5.5, 6.5), "pass"),  # the whole interval under the limit
        ("max", 5.0, (5.5, 6.5), "fail"),  # the whole interval over it
        ("max", 6.2, (5.5, 6.5), "inconclusive"),  # straddles it
        ("max", 6.5, (5.5, 6.5), "pass"),  # limits are inclusive, interval ends too
        ("min", 5.0, (5.5, 6.5), "pass"),
        ("min", 7.0, (5.5, 6.5), "fail"),
        ("min", 5.8, (5.5, 6.5), "inconclusive"),
    ],
)
def test_an_interval_within_outside_or_across_the_limit(kind, limit, ci, verdict):
    assert judge(kind, limit, Reading(6.0, ci, rule="interval")) == (verdict, "interval")


def test_without_an_interval_the_value_decides_and_the_rule_says_point():
    assert judge("max", 6.2, Reading(6.0, None, rule="interval")) == ("pass", "point")
    assert judge("max", 5.9, Reading(6.0, None, rule="interval")) == ("fail", "point")
    # accuracy and size against a fixed limit: an interval shown for information does not decide
    assert judge("min", 0.905, Reading(0.91, (0.90, 0.92), rule="point")) == ("pass", "point")


def test_not_worse_fails_only_when_the_whole_interval_is_on_the_wrong_side():
    assert judge("min", 0.90, Reading(0.899, (0.897, 0.902), rule="not-worse"))[0] == "pass"
    assert judge("min", 0.90, Reading(0.895, (0.893, 0.898), rule="not-worse"))[0] == "fail"


def test_a_value_outside_its_own_interval_still_counts_as_inside_it():
    # a bootstrap p99 interval can miss the point p99; the point value within the limit is never a FAIL
    assert judge("max", 6.1, Reading(6.0, (6.2, 6.4), rule="interval"))[0] == "inconclusive"


def test_suggested_samples_scale_as_one_over_sqrt_n_and_are_capped():
    # extent towards the limit 1.0, distance 0.5: 200 * (1 / 0.5)^2 * 1.25 = 1000
    assert suggested_samples(10.5, Reading(10.0, (9.0, 11.0), requests=200)) == 1000
    # the other side: value over a max limit, extent (value - lo) 0.4 over distance 0.2 -> 200 * 4 * 1.25
    assert suggested_samples(9.8, Reading(10.0, (9.6, 11.0), requests=200)) == 1000
    # a value on its limit cannot be resolved: the cap
    assert suggested_samples(10.0, Reading(10.0, (9.0, 11.0), requests=200)) == MAX_SAMPLES_FACTOR * 200
    assert suggested_samples(10.5, Reading(10.0, (9.0, 11.0), requests=None)) is None


# ----------------------------------------------------------------------------------------------------------
# Gates on hand-made variants


def test_timing_gates_read_the_stored_intervals():
    limits = {"max_latency_p90_ms": 6.7, "max_latency_p99_ms": 10.0, "min_throughput_texts_per_s": 190.0}
    gates = {g.name: g for g in evaluate_gates(_pair(spread=1.0), limits)}
    p90 = gates["max_latency_p90_ms"]  # 6.0 in [5, 7]: wider than the drift, across 6.7
    assert (p90.verdict, p90.passed, p90.ci95, p90.rule) == ("inconclusive", False, (5.0, 7.0), "interval")
    # 200 * (1.0 / 0.7)^2 * 1.25 = 510 -> 550
    assert p90.suggested_samples == 550 and "run-to-run drift" in (p90.ci95_from or "")
    assert gates["max_latency_p99_ms"].verdict == "pass"  # [8, 10] within 10
    throughput = gates["min_throughput_texts_per_s"]  # rounds 180..220 at batch 32, across 190
    assert throughput.verdict == "inconclusive" and throughput.ci95 == pytest.approx((180.0, 220.0))
    assert throughput.suggested_samples is None  # more batch-1 requests do not narrow a throughput spread


def test_timing_intervals_are_widened_by_the_run_to_run_drift():
    # p90 6.0 with a narrow interval [5.9, 6.1]: judged on at least +-10%, [5.4, 6.6]
    variants = _pair(spread=0.1)
    (close,) = evaluate_gates(variants, {"max_latency_p90_ms": 6.3})
    assert close.ci95 == pytest.approx((6.0 * (1 - RUN_TO_RUN_DRIFT), 6.0 * (1 + RUN_TO_RUN_DRIFT)))
    # within the drift: no request count can decide it, so none is suggested
    assert close.verdict == "inconclusive" and close.suggested_samples is None
    (clear,) = evaluate_gates(variants, {"max_latency_p90_ms": 6.7})
    assert clear.verdict == "pass"
    (slow,) = evaluate_gates(variants, {"max_latency_p90_ms": 5.3})
    assert slow.verdict == "fail"
    # accuracy and size are not timing: no widening
    variants[1]["accuracy_ci95"] = [0.885, 0.895]
    (accuracy,) = evaluate_gates(variants, {"min_accuracy": 0.88})
    assert accuracy.ci95 == (0.885, 0.895)


def test_the_speedup_interval_is_the_conservative_ratio_of_the_two_p50_intervals():
    gates = evaluate_gates(_pair(), {"min_speedup_p50": 5.0})
    (speedup,) = gates
    assert speedup.value == pytest.approx(5.0)
    assert speedup.ci95 == pytest.approx((19.5 / 4.5, 20.5 / 3.5))
    assert speedup.verdict == "inconclusive"
    (clear,) = evaluate_gates(_pair(), {"min_speedup_p50": 4.0})
    assert clear.verdict == "pass" and clear.passed


def test_an_old_report_without_intervals_is_judged_on_its_values():
    gates = {
        g.name: g
        for g in evaluate_gates(_pair(spread=0.0), {"max_latency_p90_ms": 6.2, "min_speedup_p50": 5.1})
    }
    assert (gates["max_latency_p90_ms"].verdict, gates["max_latency_p90_ms"].rule) == ("pass", "point")
    assert gates["max_latency_p90_ms"].ci95 is None
    assert gates["min_speedup_p50"].verdict == "fail" and not gates["min_speedup_p50"].passed


def test_accuracy_against_a_fixed_limit_is_judged_on_the_value_with_the_interval_shown():
    variants = _pair()
    variants[1]["accuracy_ci95"] = [0.88, 0.90]
    (gate,) = evaluate_gates(variants, {"min_accuracy": 0.885})
    assert (gate.verdict, gate.rule, gate.ci95) == ("pass", "point", (0.88, 0.90))


def _with_baseline(
    cand_p50: float, paired_p50: tuple[float, float], paired_acc: tuple[float, float]
) -> list[dict]:
    variants = [
        _variant("teacher", 0.90, 20.0, 30.0, 0.5),
        _variant(OPTIMUM_BASELINE, 0.89, 4.0, 6.0, 0.5),
        _variant("student-int8-onnx", 0.89 + (paired_acc[0] + paired_acc[1]) / 200, cand_p50, 6.0, 0.5),
    ]
    diff = cand_p50 - 4.0
    variants[2]["paired_diffs"] = {
        OPTIMUM_BASELINE: {
            "accuracy_pts": {"diff": sum(paired_acc) / 2, "ci95": list(paired_acc)},
            "p50_ms": {"diff": diff, "ci95": list(paired_p50), "n": 200},
        }
    }
    return variants


def test_beat_optimum_baseline_reads_the_paired_differences():
    gates = {
        g.name: g
        for g in evaluate_gates(
            _with_baseline(4.001, (-0.02, 0.03), (-0.4, 0.3)), GatesSpec(beat_optimum_baseline=True)
        )
    }
    p50 = gates["beat_optimum_baseline.p50"]
    # the baseline's p50 plus the paired interval of the difference (3.98, 4.03), widened by the drift: as fast
    # as the baseline is "not slower"
    assert p50.limit == pytest.approx(4.0)
    assert p50.ci95 == pytest.approx((4.001 * (1 - RUN_TO_RUN_DRIFT), 4.001 * (1 + RUN_TO_RUN_DRIFT)))
    assert (p50.verdict, p50.rule, p50.suggested_samples) == ("pass", "not-worse", None)
    accuracy = gates["beat_optimum_baseline.accuracy"]
    assert (accuracy.verdict, accuracy.rule) == ("pass", "not-worse")  # not shown to be worse
    assert gates["beat_optimum_baseline.size"].rule == "point"

    worse = {
        g.name: g
        for g in evaluate_gates(
            _with_baseline(3.9, (-0.15, -0.05), (-1.0, -0.2)), GatesSpec(beat_optimum_baseline=True)
        )
    }
    assert worse["beat_optimum_baseline.p50"].verdict == "pass"  # faster beyond the noise
    assert worse["beat_optimum_baseline.accuracy"].verdict == "fail"  # worse beyond the test set's noise
    slower = {
        g.name: g
        for g in evaluate_gates(
            _with_baseline(4.6, (0.5, 0.7), (-0.4, 0.3)), GatesSpec(beat_optimum_baseline=True)
        )
    }
    assert slower["beat_optimum_baseline.p50"].verdict == "fail"  # 15% slower: beyond the drift


def test_without_paired_differences_the_baseline_p50_combines_both_intervals():
    variants = [
        _variant("teacher", 0.90, 20.0, 30.0, 0.5),
        _variant(OPTIMUM_BASELINE, 0.89, 4.0, 6.0, 0.1),
        _variant("student-int8-onnx", 0.89, 3.9, 6.0, 0.1),
    ]
    gates = {g.name: g for g in evaluate_gates(variants, GatesSpec(beat_optimum_baseline=True))}
    # limit + [cand lo - base hi, cand hi - base lo] = 4.0 + [3.8 - 4.1, 4.0 - 3.9] = [3.7, 4.1], within the
    # drift of the value 3.9: [3.51, 4.29]
    assert gates["beat_optimum_baseline.p50"].ci95 == pytest.approx((3.51, 4.29))
    assert "combined (not paired)" in (gates["beat_optimum_baseline.p50"].ci95_from or "")
    assert gates["beat_optimum_baseline.p50"].verdict == "pass"


# ----------------------------------------------------------------------------------------------------------
# Reading and summing up


def test_a_gate_from_an_old_report_gets_its_verdict_from_passed():
    old = {"name": "max_size_mb", "limit": 30.0, "value": 25.0, "passed": True}
    assert Gate.model_validate(old).verdict == "pass"
    assert Gate.model_validate({**old, "passed": False}).verdict == "fail"
    # a verdict decides passed, so the two never disagree
    unsure = Gate.model_validate({**old, "verdict": "inconclusive"})
    assert unsure.passed is False and json.loads(unsure.model_dump_json())["passed"] is False


def _report(*verdicts: str) -> Report:
    gates = [
        Gate.model_validate(
            {
                "name": f"g{i}",
                "limit": 1.0,
                "value": 1.0,
                "verdict": v,
                "suggested_samples": 400 + i if v == "inconclusive" else None,
            }
        )
        for i, v in enumerate(verdicts)
    ]
    return Report(recipe="r", gates=gates, passed=all(g.passed for g in gates))


def test_report_lists_failed_and_inconclusive_gates_apart():
    report = _report("pass", "inconclusive", "fail", "inconclusive")
    assert report.failed_gates == ["g2"] and report.inconclusive_gates == ["g1", "g3"]
    assert report.verdict == "fail" and not report.passed
    assert _report("pass", "inconclusive").verdict == "inconclusive"
    assert _report("pass").verdict == "pass" and _report().verdict == "unchecked"
    headline, detail = verdict_summary(_report("pass", "inconclusive", "inconclusive"))
    assert headline == "INCONCLUSIVE" and "402 batch-1 requests" in detail


def test_exit_code_4_when_inconclusive_and_3_when_anything_failed():
    from edgekd.cli.app import raise_on_failed_gates

    with pytest.raises(GateInconclusive) as unsure:
        raise_on_failed_gates(_report("pass", "inconclusive"))
    assert unsure.value.exit_code == 4 and "--samples 401" in str(unsure.value.hint)
    assert not isinstance(unsure.value, GateFailed)
    with pytest.raises(GateInconclusive, match=r"benchmark\.latency_samples=400"):
        raise_on_failed_gates(_report("inconclusive"), rerun_with="--set benchmark.latency_samples={n}")
    with pytest.raises(GateFailed) as failed:
        raise_on_failed_gates(_report("inconclusive", "fail"))
    assert failed.value.exit_code == 3
    raise_on_failed_gates(_report("pass"))  # exit 0


def test_an_inconclusive_gate_within_the_drift_asks_for_room_not_for_requests():
    from edgekd.cli.app import raise_on_failed_gates

    variants = _pair(spread=0.1)
    report = Report.model_validate(
        {"recipe": "r", "variants": variants, "gates": evaluate_gates(variants, {"max_latency_p90_ms": 6.3})}
    )
    with pytest.raises(GateInconclusive) as unsure:
        raise_on_failed_gates(report)
    assert "more requests cannot decide it" in str(unsure.value.hint) and "--samples" not in str(
        unsure.value.hint
    )
    assert "which more requests cannot decide" in verdict_summary(report)[1]


def test_report_md_and_summary_show_inconclusive_distinctly(tmp_path):
    from edgekd.cli.app import verdict_line

    variants = _pair(spread=1.0)
    report = Report.model_validate(
        {"recipe": "r", "variants": variants, "gates": evaluate_gates(variants, {"max_latency_p90_ms": 6.7})}
    )
    write_report_md(report, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "**Verdict: INCONCLUSIVE**" in text and "_INCONCLUSIVE (try" in text and "[5, 7]" in text
    assert "| PASS |" not in text and "**FAIL**" not in text
    line = verdict_line(report)
    assert line.plain.startswith("verdict: INCONCLUSIVE") and line.style not in ("green", "red")


def test_report_html_shows_inconclusive_neither_green_nor_red():
    from edgekd.report.html import render_report_html

    variants = _pair()
    gates = evaluate_gates(variants, {"max_latency_p90_ms": 6.2, "min_speedup_p50": 4.0})
    page = render_report_html({"recipe": "r", "variants": variants, "gates": gates}, {})
    assert "INCONCLUSIVE: 1 of 2 gates" in page and "verdict pass" not in page and "verdict fail" not in page
    assert "background:#fff1c2" in page and "<td class='pass'>PASS</td>" in page


# ----------------------------------------------------------------------------------------------------------
# Measured intervals


def test_paired_bootstrap_cancels_what_both_measurements_share():
    rng = np.random.default_rng(0)
    shared = rng.lognormal(0.0, 0.5, 300)  # the text and the machine's moment, the same for both models
    a, b = shared + 0.05, shared + rng.normal(0.0, 0.01, 300)
    diff, lo, hi = paired_diff_ci(a, b)
    assert diff == pytest.approx(np.median(a) - np.median(b))
    assert lo <= diff <= hi and hi - lo < 0.05  # the shared part is gone
    with pytest.raises(ValueError, match="differ in length"):
        paired_diff_ci(a, b[:-1])


def test_a_round_the_machine_was_slow_for_widens_the_interval_as_one_draw():
    # 10 rounds of 20 requests; the machine's speed moves per round by +-10%, the requests within one by 1%
    rng = np.random.default_rng(1)
    rounds = np.repeat(np.arange(10), 20)
    level = rng.uniform(0.9, 1.1, 10)[rounds]
    samples = level * (1.0 + rng.normal(0.0, 0.01, rounds.size))
    by_request = bootstrap_ci(samples, np.median)
    by_round = bootstrap_ci(samples, np.median, clusters=rounds)
    assert by_round[1] - by_round[0] > 3 * (by_request[1] - by_request[0])
    # paired: a slow round slows both models alike, so pairing by round still cancels it
    other = samples + 0.05
    diff, lo, hi = paired_diff_ci(other, samples, clusters=rounds)
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.05) and diff == pytest.approx(0.05)
    with pytest.raises(ValueError, match="clusters name"):
        bootstrap_ci(samples, clusters=rounds[:-1])


def test_the_report_intervals_resample_the_interleaved_rounds():
    slow_round = [1.0] * 10 + [2.0] * 10  # two rounds of ten requests, the second one all slow
    rounds = [0] * 10 + [1] * 10
    result = Measurements(ready={}, model_ms=slow_round, round_of_request=rounds)
    assert request_rounds(result) == rounds
    assert request_rounds(Measurements(ready={}, model_ms=slow_round, round_of_request=[0] * 20)) is None
    assert request_rounds(Measurements(ready={}, model_ms=slow_round)) is None  # not recorded


def test_paired_diff_pairs_requests_and_texts_by_index():
    cand = Measurements(ready={}, model_ms=[1.0, 2.0, 3.0, 4.0])
    base = Measurements(ready={}, model_ms=[1.5, 2.5, 3.5, 4.5])
    predictions = {"c": np.array([0, 1, 1, 0]), "b": np.array([0, 1, 0, 0])}
    diff = paired_diff(cand, base, predictions, "c", "b", gold=[0, 1, 1, 1])
    assert diff.p50_ms is not None and diff.p50_ms.diff == pytest.approx(-0.5) and diff.p50_ms.n == 4
    assert diff.p50_ms.ci95 == pytest.approx((-0.5, -0.5))  # every pair differs by exactly 0.5 ms
    assert diff.accuracy_pts is not None and diff.accuracy_pts.diff == pytest.approx(25.0)
    unaligned = paired_diff(cand, Measurements(ready={}, model_ms=[1.0]), predictions, "c", "b", [0, 1, 1, 1])
    assert unaligned.p50_ms is None  # not the same requests: no pairing


def test_throughput_ranges_are_the_lowest_and_highest_round():
    assert throughput_ranges([{"8": 100.0, "32": 210.0}, {"8": 120.0, "32": 190.0}]) == {
        "8": (100.0, 120.0),
        "32": (190.0, 210.0),
    }


def test_compare_says_whether_two_latency_intervals_overlap():
    def change(ci_a: tuple[float, float] | None, ci_b: tuple[float, float] | None) -> MetricChange:
        return MetricChange(
            variant="m", metric="p50 ms", a=4.0, b=4.1, digits=3, unit="", ci_a=ci_a, ci_b=ci_b
        )

    assert change((3.9, 4.1), (4.0, 4.2)).within_noise is True
    assert change((3.9, 4.0), (4.05, 4.2)).within_noise is False
    assert change(None, None).within_noise is None


def test_in_scope_and_out_of_scope_gates_judge_the_two_parts_of_the_test_set():
    teacher, student = _pair()
    teacher.update(in_scope_accuracy=0.965, out_of_scope_recall=0.64)
    student.update(in_scope_accuracy=0.960, out_of_scope_recall=0.60)
    limits = {"max_in_scope_accuracy_drop_pts": 1.0, "max_out_of_scope_recall_drop_pts": 3.0}
    gates = {g.name: g for g in evaluate_gates([teacher, student], limits)}
    assert gates["max_in_scope_accuracy_drop_pts"].value == pytest.approx(0.5)
    assert gates["max_in_scope_accuracy_drop_pts"].verdict == "pass"
    assert gates["max_out_of_scope_recall_drop_pts"].value == pytest.approx(4.0)
    assert gates["max_out_of_scope_recall_drop_pts"].verdict == "fail"
    with pytest.raises(ValueError, match="out_of_scope_label"):
        evaluate_gates(_pair(), {"max_out_of_scope_recall_drop_pts": 3.0})
