"""`compress`: run a recipe's stages in order in a run folder, skipping those already done.

runs/<name>/
  recipe.resolved.yaml  env.json
  teacher/ distill/ export/ quantize/   each: artifacts + stage.json
  report/  report.json  report.md
  cache/   teacher logits reused across re-runs
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from edgekd.data import load_splits
from edgekd.errors import InputError, RunLockedError, StageError, resource_error
from edgekd.recipe import Recipe, load_recipe, recipe_to_yaml
from edgekd.stage import Stage, run_stage, write_json

RUNS_ROOT = Path("runs")


def stages(recipe: Recipe | None = None) -> list[Stage]:
    """The chain, in order. Imported here so `import edgekd` stays light.

    With `prune_vocab.enabled`, the vocabulary-pruning stage sits between distill and export and export reads
    its model; otherwise the chain (and every cache key) is exactly as without the stage. With
    `benchmark.optimum_baseline`, the Optimum baseline stage runs before the benchmark, which measures it too.
    """
    from edgekd.stages.benchmark import BenchmarkStage
    from edgekd.stages.distill import DistillStage
    from edgekd.stages.export import ExportStage
    from edgekd.stages.optimum_baseline import OptimumBaselineStage
    from edgekd.stages.prune_vocab import PruneVocabStage
    from edgekd.stages.quantize import QuantizeStage
    from edgekd.stages.teacher import TeacherStage

    pruned = recipe is not None and recipe.prune_vocab.enabled
    if pruned:
        student: list[Stage] = [DistillStage(), PruneVocabStage(), ExportStage(source="prune_vocab")]
    else:
        student = [DistillStage(), ExportStage()]
    baseline = recipe is not None and recipe.benchmark.optimum_baseline
    benchmark = BenchmarkStage(baseline=baseline, student_stage="prune_vocab" if pruned else "distill")
    measured: list[Stage] = [OptimumBaselineStage(), benchmark] if baseline else [benchmark]
    return [TeacherStage(), *student, QuantizeStage(), *measured]


def run_dir_for(recipe: Recipe, output_dir: str | Path | None) -> Path:
    """`--output-dir`, else runs/<name>. The name is restricted by the recipe schema, so it cannot escape."""
    if output_dir is not None:
        return Path(output_dir)
    path = (RUNS_ROOT / recipe.name).resolve()
    if RUNS_ROOT.resolve() not in path.parents:
        raise InputError(f"recipe name {recipe.name!r} would write outside {RUNS_ROOT}/")
    return path


@contextmanager
def writing_in(run_dir: Path, doing: str) -> Iterator[None]:
    """Turn an OSError while edgekd writes its own files in `run_dir` into a one-line error: a ResourceError
    for a full disk or a folder that cannot be written, else an InputError about the folder."""
    try:
        yield
    except OSError as exc:
        problem = resource_error(exc, run_dir, doing) or InputError(
            f"{doing} in {run_dir} failed: {exc.strerror or exc}",
            hint="choose another folder with --output-dir",
        )
        raise problem from None


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One edgekd process per run folder: a second one gets a clear error instead of corrupting the first."""
    lock_path = run_dir / ".lock"
    with writing_in(run_dir, "creating the lock file"):
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunLockedError(
            f"another edgekd process is running in {run_dir}",
            hint="wait for it to finish, or use --output-dir for a separate run",
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def compress(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    output_dir: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage of a recipe and return the report (the content of report/report.json).

    Args:
        recipe_path: The YAML recipe.
        overrides: `a.b=value` overrides applied before validation.
        output_dir: Run folder; default runs/<recipe name>.
        force: Re-run every stage even when its cached output matches.
        log: Where progress lines go.

    Raises:
        RecipeError, DataError, InputError: bad recipe or input, found before any training.
        StageError: a stage failed.
    """
    from edgekd.distributed import init_distributed, is_main_process
    from edgekd.stages.distill import preflight as preflight_distill

    init_distributed()  # under torchrun: join the process group before the first barrier
    if not is_main_process():
        log = _quiet  # one process reports progress
    recipe = load_recipe(recipe_path, overrides)
    check_model_folders(recipe)
    splits = load_splits(recipe.data, recipe.seed)  # fail on bad data before any training
    preflight_distill(recipe, splits)  # unlabelled text, layer maps, widths, tokenizers
    log(f"data: {splits.counts()} rows, {len(splits.labels)} classes")
    for warning in splits.warnings:
        log(f"warning: {warning}")
    run_dir = run_dir_for(recipe, output_dir)
    with writing_in(run_dir, "creating the run folder"):
        run_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun rank 0 holds the lock for all processes of this run (they would lock each other out).
    with run_lock(run_dir) if is_main_process() else nullcontext():
        with writing_in(run_dir, "writing recipe.resolved.yaml and env.json"):
            if is_main_process():
                (run_dir / "recipe.resolved.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
                write_json(run_dir / "env.json", _environment())
        keys: dict[str, str] = {}
        for stage in stages(recipe):
            inputs = {name: keys[name] for name in stage.needs}
            key, record, skipped = run_stage(stage, recipe, run_dir, inputs, force=force, log=log)
            keys[stage.name] = key
            how = "cached, skipped" if skipped else f"done in {record['wall_time_s']:.1f}s"
            log(f"[{stage.name}] {how}")
        report_path = run_dir / "report" / "report.json"
        try:
            report: dict[str, Any] = json.loads(report_path.read_text())
        except (OSError, ValueError) as exc:
            raise StageError(f"the benchmark stage left no readable report: {exc}") from None
    report["run_dir"] = str(run_dir)
    return report


def _quiet(message: str) -> None:
    """The log of processes other than rank 0."""


def check_model_folders(recipe: Recipe) -> None:
    """Fail before any work when a recipe points at an offline model folder that `make assets` has not made."""
    from edgekd.assets import require_asset

    for spec in (recipe.teacher, recipe.student):
        if spec.model and spec.model != "teacher":
            require_asset(spec.model)


def _environment() -> dict[str, Any]:
    from edgekd.envinfo import environment

    return environment()
