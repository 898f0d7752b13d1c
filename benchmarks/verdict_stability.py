"""Do sign-off verdicts flip between two runs of the same files? Goal: no gate is PASS in one run and FAIL in the
other (a verdict may move between PASS and INCONCLUSIVE, or FAIL and INCONCLUSIVE, but never across).

    .venv/bin/python benchmarks/verdict_stability.py                      # builds the smoke run in /tmp/vs-smoke
    .venv/bin/python benchmarks/verdict_stability.py runs/quickstart      # and/or any run folder(s)

Each run folder's teacher, candidate (quantize/, else export/) and Optimum baseline are benchmarked twice on this
machine with `edgekd.bench.harness.benchmark_folders`, one run after the other. Where the run has no
optimum_baseline/ folder, the candidate's own folder is measured a second time under the baseline's name: the
same files against themselves, the closest call a `beat_optimum_baseline.p50` gate can face. Then the limits are
set from the first run's numbers so that most gates are close calls: on the value itself, half-way from the value
to either end of its 95% interval, and just outside the interval; both runs are judged against the same limits
(the gates read only the stored variants, so a report can be re-judged). For each judgement the file records both
runs' values, intervals and verdicts, and the verdicts the old point rule (value against limit, no interval) would
have given, so the flips the intervals prevent are counted too. Writes benchmarks/results/verdict_stability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "verdict_stability.json"
SMOKE = REPO / "recipes" / "smoke.yaml"
TIMING_GATES = ("max_latency_p90_ms", "max_latency_p99_ms", "min_speedup_p50", "min_throughput_texts_per_s")
FIXED_GATES = ("min_accuracy", "max_size_mb")


def build_smoke(folder: Path) -> Path:
    """The smoke recipe's run folder (built with `edgekd compress` when it is not there yet)."""
    if not (folder / "quantize" / "model.onnx").is_file():
        command = [
            str(REPO / ".venv" / "bin" / "edgekd"),
            "compress",
            str(SMOKE),
            "--output-dir",
            str(folder),
        ]
        subprocess.run(
            command, check=True, cwd=REPO, env={**os.environ, "EDGEKD_DATA_ROOT": "/work/shared/data"}
        )
    return folder


def models_of(run_dir: Path) -> tuple[list[Any], str]:
    """Teacher, Optimum baseline (or the candidate again under its name) and candidate of a run folder."""
    from edgekd.bench.spec import MeasuredModel
    from edgekd.report.gates import CANDIDATE, OPTIMUM_BASELINE, REFERENCE

    shipped = next(run_dir / s for s in ("quantize", "export") if (run_dir / s / "model.onnx").is_file())
    baseline = run_dir / "optimum_baseline"
    same_files = not (baseline / "model.onnx").is_file()
    models = [
        MeasuredModel(REFERENCE, run_dir / "teacher" / "model", "pytorch"),
        MeasuredModel(OPTIMUM_BASELINE, shipped if same_files else baseline, "onnx"),
        MeasuredModel(CANDIDATE, shipped, "onnx"),
    ]
    how = "the candidate's own folder measured again" if same_files else "the run's optimum_baseline/ folder"
    return models, how


def measure_twice(run_dir: Path, samples: int, work: Path) -> list[Any]:
    """Two reports of the same folders, measured one after the other (no gates: they are judged afterwards)."""
    from edgekd.bench.harness import benchmark_folders
    from edgekd.bench.spec import HarnessSettings
    from edgekd.recipe.load import load_recipe
    from edgekd.report.gates import CANDIDATE

    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    models, _ = models_of(run_dir)
    settings = HarnessSettings(
        threads=1, latency_samples=samples, warmup=20, max_length=recipe.data.max_length
    )
    reports = []
    for i in range(2):
        reports.append(
            benchmark_folders(
                models,
                recipe.data,
                work / f"run{i + 1}",
                settings,
                title=f"verdict-stability {run_dir.name} run {i + 1}",
                candidate=CANDIDATE,
                log=lambda message: print(message, file=sys.stderr),
            )
        )
    return reports


def limits_around(gate: Any) -> list[tuple[str, float]]:
    """Limits placed around a measured gate: on its value, half-way to each end of its interval (one where the
    value passes, one where it fails), and just outside the interval on the passing side."""
    value, ci = gate.value, gate.ci95
    placements = [("on the value", value)]
    if ci is None:
        return placements
    lo, hi = ci
    passing_side, failing_side = (hi, lo) if gate.comparison == "<=" else (lo, hi)
    placements += [
        ("half-way towards the interval end, value passes", value + 0.5 * (passing_side - value)),
        ("half-way towards the interval end, value fails", value + 0.5 * (failing_side - value)),
        ("just outside the interval, passing side", passing_side + 0.1 * (passing_side - failing_side)),
    ]
    return placements


def judge_both(reports: list[Any]) -> list[dict[str, Any]]:
    """Every gate at every placement, judged on both runs."""
    from edgekd.report.gates import Reading, evaluate_gates, judge

    first = {
        g.name: g for g in evaluate_gates(reports[0].variants, {n: 1.0 for n in TIMING_GATES + FIXED_GATES})
    }
    baseline = {g.name: g for g in evaluate_gates(reports[0].variants, {"beat_optimum_baseline": True})}
    rows = []
    for name, measured in first.items():
        for placement, limit in limits_around(measured):
            rows.append(_judged(name, placement, reports, {name: limit}))
    for name in baseline:  # the limit is the baseline's own number in each run
        rows.append(_judged(name, "the Optimum baseline's value", reports, {"beat_optimum_baseline": True}))
    for row in rows:
        points = [
            judge("max" if side["comparison"] == "<=" else "min", side["limit"], Reading(side["value"]))[0]
            for side in row["runs"]
        ]
        for side, point in zip(row["runs"], points, strict=True):
            side["point_verdict"] = point
        verdicts = {side["verdict"] for side in row["runs"]}
        row["agree"] = len(verdicts) == 1
        row["contradiction"] = verdicts == {"pass", "fail"}
        row["point_rule_flips"] = points[0] != points[1]
    return rows


def _judged(name: str, placement: str, reports: list[Any], limits: dict[str, Any]) -> dict[str, Any]:
    from edgekd.report.gates import evaluate_gates

    runs = []
    for report in reports:
        gate = next(g for g in evaluate_gates(report.variants, limits) if g.name == name)
        runs.append(
            {
                "value": gate.value,
                "limit": gate.limit,
                "comparison": gate.comparison,
                "ci95": list(gate.ci95) if gate.ci95 else None,
                "rule": gate.rule,
                "verdict": gate.verdict,
                "suggested_samples": gate.suggested_samples,
            }
        )
    return {"gate": name, "placement": placement, "runs": runs}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    decided = [r for r in rows if r["runs"][0]["rule"] != "point"]
    return {
        "judgements": len(rows),
        "judged_on_an_interval": len(decided),
        "verdicts_agree": sum(r["agree"] for r in rows),
        "pass_in_one_run_fail_in_the_other": sum(r["contradiction"] for r in rows),
        "point_rule_flips": sum(r["point_rule_flips"] for r in rows),
        "inconclusive_verdicts": sum(side["verdict"] == "inconclusive" for r in rows for side in r["runs"]),
    }


def machine() -> dict[str, Any]:
    from edgekd.bench.envinfo import environment

    env = environment()
    return {
        "cpu": env.get("cpu", {}).get("model"),
        "usable_cores": env.get("cpu", {}).get("usable_cores"),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "onnxruntime": env.get("versions", {}).get("onnxruntime"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="Run folders (default: the smoke run).")
    parser.add_argument(
        "--smoke-dir", type=Path, default=Path("/tmp/vs-smoke"), help="Where the smoke run is."
    )
    parser.add_argument("--samples", type=int, default=200, help="Batch-1 requests per model and run.")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    run_dirs = args.run_dirs or [build_smoke(args.smoke_dir)]
    results = []
    for run_dir in run_dirs:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="verdict-stability-") as work:
            reports = measure_twice(run_dir, args.samples, Path(work))
        rows = judge_both(reports)
        results.append(
            {
                "run": str(run_dir),
                "baseline": models_of(run_dir)[1],
                "latency_samples": args.samples,
                "seconds": round(time.perf_counter() - start, 1),
                "variants": [
                    {
                        v.name: v.latency_ms.model_dump(mode="json") if v.latency_ms else None
                        for v in r.variants
                    }
                    for r in reports
                ],
                "warnings": [r.warnings for r in reports],
                "summary": summary(rows),
                "judgements": rows,
            }
        )
        print(json.dumps({"run": str(run_dir), **results[-1]["summary"]}))
    out = {
        "goal": "pass_in_one_run_fail_in_the_other == 0 for every run",
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
