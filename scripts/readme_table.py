"""Generate the README's results table from committed benchmark reports (never typed by hand).

python scripts/readme_table.py          # rewrite the table between the markers in README.md
python scripts/readme_table.py --check  # exit 1 when README.md and the reports disagree
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgekd.report.schema import Report, Variant

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def report_paths() -> list[Path]:
    return sorted(RESULTS.glob("*/report.json"))


def render_table(reports: list[Path]) -> str:
    """One markdown table; each run's variants against its first variant (the teacher). Runs scored with an
    out-of-scope class (CLINC150) get a second table with in-scope accuracy and out-of-scope recall; a last one
    names the CPU each run was measured on."""
    lines = [
        "| run | variant | format | accuracy | size MB | p50 ms | p90 ms | speed-up p50 | compression |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    oos_lines = [
        "| run | variant | accuracy | in-scope accuracy | out-of-scope recall |",
        "|---|---|---|---|---|",
    ]
    parsed = [(path.parent.name, Report.model_validate_json(path.read_text())) for path in reports]
    for run, report in parsed:
        ref = report.variants[0]
        for v in report.variants:
            p50, p90, size, accuracy = _p50(v), _needed(v, "latency_ms.p90"), _size(v), _accuracy(v)
            lines.append(
                f"| {run} | {v.name} | {v.format} | {100 * accuracy:.2f}% "
                f"| {size / 1e6:.1f} | {p50:.2f} | {p90:.2f} "
                f"| {_p50(ref) / p50:.1f}x | {_size(ref) / size:.1f}x |"
            )
            if v.out_of_scope_recall is not None:
                oos_lines.append(
                    f"| {run} | {v.name} | {100 * accuracy:.2f}% "
                    f"| {100 * _needed(v, 'in_scope_accuracy'):.2f}% | {100 * v.out_of_scope_recall:.2f}% |"
                )
    if len(oos_lines) > 2:
        lines += ["", *oos_lines]
    machines = [_machine_row(run, report) for run, report in parsed]
    if any(machines):
        lines += ["", "| run | measured on | cores | INT8 / bf16 instructions |", "|---|---|---|---|"]
        lines += [row for row in machines if row]
    return "\n".join(lines)


# The extensions that decide how fast INT8 and bf16 run: ratios measured on one of these rows do not carry to another.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "neon")


def _machine_row(run: str, report: Report) -> str | None:
    """The CPU a run's report was measured on, from its environment (None when the report does not say)."""
    cpu = report.environment.cpu
    if cpu.model is None:
        return None
    flags = ", ".join(flag for flag in SPEED_FLAGS if cpu.flags.get(flag)) or "none listed"
    return f"| {run} | {cpu.model} | {cpu.logical_cores} | {flags} |"


def _needed(v: Variant, what: str) -> float:
    """A number the table shows; a committed report without it is an error, not a blank cell."""
    value = {
        "latency_ms.p50": v.latency_ms.p50 if v.latency_ms else None,
        "latency_ms.p90": v.latency_ms.p90 if v.latency_ms else None,
        "size_bytes": v.size_bytes,
        "accuracy": v.accuracy,
        "in_scope_accuracy": v.in_scope_accuracy,
    }[what]
    if value is None:
        raise ValueError(f"the variant {v.name} has no {what}")
    return float(value)


def _p50(v: Variant) -> float:
    return _needed(v, "latency_ms.p50")


def _size(v: Variant) -> float:
    return _needed(v, "size_bytes")


def _accuracy(v: Variant) -> float:
    return _needed(v, "accuracy")


def updated_readme(readme: str, table: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = REPO / "README.md"
    readme = readme_path.read_text()
    want = updated_readme(readme, render_table(report_paths()))
    if "--check" in argv:
        if want != readme:
            print(
                "README.md results table is out of date: run python scripts/readme_table.py", file=sys.stderr
            )
            return 1
        return 0
    readme_path.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
