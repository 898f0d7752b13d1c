"""`compress`: run a recipe's stages in order in a run folder, skipping those already done.

runs/<name>/
  recipe.resolved.yaml  env.json
  teacher/ distill/ export/ quantize/   each: artifacts + stage.json
  report/  report.json  report.md
  cache/   teacher logits reused across re-runs
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from edgekd.data import Splits, load_splits
from edgekd.errors import InputError, RecipeError, RunLockedError, StageError, resource_error
from edgekd.recipe.load import fix_hint, load_recipe, recipe_to_yaml
from edgekd.recipe.schema import Recipe
from edgekd.report.gates import SCOPE_GATES
from edgekd.stages.base import Stage
from edgekd.stages.runner import acquire_or_refuse, run_stage, write_json

RUNS_ROOT = Path("runs")


def stages(recipe: Recipe | None = None) -> list[Stage]:
    """The chain, in order. Imported here so `import edgekd` stays light.

    With `calibrate.out_of_scope` set, the calibrate stage follows distill; with `prune_vocab.enabled`, the
    vocabulary-pruning stage sits before export; each later stage reads the model of the one before it.
    Without them the chain (and every cache key) is exactly as without the stages. With
    `benchmark.optimum_baseline`, the Optimum baseline stage runs before the benchmark, which measures it too;
    with `benchmark.teacher_int8_optimum`, so does the stage that quantizes the teacher with Optimum alone.
    """
    from edgekd.stages.benchmark import BenchmarkStage
    from edgekd.stages.calibrate import CalibrateStage
    from edgekd.stages.distill.stage import DistillStage
    from edgekd.stages.export import ExportStage
    from edgekd.stages.optimum_baseline import OptimumBaselineStage
    from edgekd.stages.optimum_teacher import TeacherInt8OptimumStage
    from edgekd.stages.prune_vocab import PruneVocabStage
    from edgekd.stages.quantize.stage import QuantizeStage
    from edgekd.stages.teacher import TeacherStage

    calibrated = recipe is not None and recipe.calibrate.out_of_scope != "off"
    pruned = recipe is not None and recipe.prune_vocab.enabled
    student: list[Stage] = [DistillStage()]
    trained = "distill"  # the stage whose model/ the next one reads
    if calibrated:
        student.append(CalibrateStage())
        trained = "calibrate"
    if pruned:
        student.append(PruneVocabStage(source=trained))
        trained = "prune_vocab"
    student.append(ExportStage(source=trained))
    baseline = recipe is not None and recipe.benchmark.optimum_baseline
    teacher_int8 = recipe is not None and recipe.benchmark.teacher_int8_optimum
    benchmark = BenchmarkStage(baseline=baseline, teacher_int8=teacher_int8, student_stage=trained)
    measured: list[Stage] = [OptimumBaselineStage()] if baseline else []
    if teacher_int8:
        measured.append(TeacherInt8OptimumStage())
    return [TeacherStage(), *student, QuantizeStage(), *measured, benchmark]


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
    """One edgekd process per run folder: a second one gets a clear error instead of corrupting the first.

    An OS lock (flock; LockFileEx on Windows), so the OS drops it when the holder dies, even by SIGKILL. Never a
    marker file, which a killed run would leave behind: with `on_acquired`, filelock refuses to fall back to one
    on a filesystem without flock, and that becomes a one-line error about the folder.
    """
    busy = RunLockedError(
        f"another edgekd process is running in {run_dir}",
        hint="wait for it to finish, or use --output-dir for a separate run",
    )
    with writing_in(run_dir, "creating the lock file"):
        # preserve_lock_file: the folder looks the same on every OS (Windows would delete the file on release).
        lock = acquire_or_refuse(run_dir / ".lock", busy, preserve_lock_file=True, on_acquired=_write_pid)
    try:
        yield
    finally:
        lock.release()


def _write_pid(fd: int) -> None:
    """The holder's pid in the lock file, for a person wondering who holds it."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode("ascii"))


def compress(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    output_dir: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    rebenchmark: bool = False,
) -> dict[str, Any]:
    """Run every stage of a recipe and return the report (the content of report/report.json).

    Args:
        recipe_path: The YAML recipe.
        overrides: `a.b=value` overrides applied before validation.
        output_dir: Run folder; default runs/<recipe name>.
        force: Re-run every stage even when its cached output matches.
        log: Where progress lines go.
        rebenchmark: Measure again (the benchmark stage only), with every other stage reused when cached: a
            new report of the same models, e.g. after an edgekd upgrade or on a quieter machine.

    Raises:
        RecipeError, DataError, InputError: bad recipe or input, found before any training.
        StageError: a stage failed, or the teacher is no better than the majority class on validation.
    """
    from edgekd.distributed import init_distributed, is_main_process
    from edgekd.stages.teacher import judge_teacher

    init_distributed()  # under torchrun: join the process group before the first barrier
    if not is_main_process():
        log = _quiet  # one process reports progress
    recipe, splits = preflight(recipe_path, overrides)
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
        records: dict[str, dict[str, Any]] = {}
        for stage in stages(recipe):
            inputs = {name: keys[name] for name in stage.needs}
            key, record, skipped = run_stage(
                stage,
                recipe,
                run_dir,
                inputs,
                force=force or (rebenchmark and stage.name == "benchmark"),
                log=log,
                upstream=records,
            )
            keys[stage.name], records[stage.name] = key, record
            if skipped and stage.name == "benchmark" and is_main_process():
                from edgekd.stages.benchmark import restore_model_card

                restore_model_card(run_dir)
            how = "cached, skipped" if skipped else f"done in {record['wall_time_s']:.1f}s"
            log(f"[{stage.name}] {how}")
            if stage.name == "teacher":  # fresh or cached: a teacher that learned nothing stops the run here
                judge_teacher(
                    recipe.teacher, record.get("metrics") or {}, splits.label_ids("validation"), log
                )
        report_path = run_dir / "report" / "report.json"
        try:
            report: dict[str, Any] = json.loads(report_path.read_text())
        except (OSError, ValueError) as exc:
            raise StageError(f"the benchmark stage left no readable report: {exc}") from None
    report["run_dir"] = str(run_dir)
    return report


def _quiet(message: str) -> None:
    """The log of processes other than rank 0."""


# ----------------------------------------------------------------------------------------------------------
# Preflight: everything that can be refused before the first stage (`edgekd validate` runs exactly this)


def preflight(recipe_path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Splits]:
    """Load a recipe and refuse, before anything is trained or written, whatever `compress` would refuse
    later: missing model folders, impossible architectures, settings this machine cannot honour, data that
    cannot be read, labels that do not match, and the distillation set-up (layers, widths, tokenizers).

    Reads configs, tokenizers and the data; loads no weights, creates no run folder.

    Args:
        recipe_path: The YAML recipe.
        overrides: `a.b=value` overrides applied before validation.

    Returns:
        The validated recipe and its data splits.

    Raises:
        RecipeError, DataError, InputError: what to change, one message (every recipe problem at once).
    """
    from edgekd.recipe.architectures import architecture_problems

    recipe = load_recipe(recipe_path, overrides)
    check_model_folders(recipe)
    problems = [*architecture_problems(recipe), *setting_problems(recipe)]
    if problems:
        raise RecipeError(str(recipe_path), problems, hint=fix_hint(recipe_path))
    splits = load_splits(recipe.data, recipe.seed)
    problems = label_problems(recipe, splits.labels)
    if problems:
        raise RecipeError(str(recipe_path), problems, hint=fix_hint(recipe_path))
    check_teacher_classes(recipe, splits.labels)
    for stage in stages(recipe):  # e.g. distill: unlabelled text, layer maps, widths, tokenizers
        stage.preflight(recipe, splits)
    return recipe, splits


def check_model_folders(recipe: Recipe) -> None:
    """Fail before any work when a recipe points at a model or tokenizer folder that is not there (an
    offline asset that `make assets` has not made gets that command as its hint)."""
    from edgekd.assets import require_asset

    for section, spec in (("teacher", recipe.teacher), ("student", recipe.student)):
        for field, value in (("model", spec.model), ("tokenizer", spec.tokenizer)):
            if not isinstance(value, str) or value == "teacher":
                continue
            if field == "model":
                require_asset(value)
            # Relative paths were resolved against the recipe; what is still relative is a Hub id.
            if Path(value).is_absolute() and not Path(value).is_dir():
                raise InputError(
                    f"{section}.{field}: folder not found: {value}",
                    hint=f"fix {section}.{field} in the recipe (a folder relative to the recipe, or a Hub id)",
                )


def setting_problems(recipe: Recipe) -> list[str]:
    """Recipe settings that are valid in general but not here: more latency threads than this process may
    use, quantizer op types it does not know, vocabulary pruning of a tokenizer that is not WordPiece, an
    out-of-scope calibration without an out-of-scope class."""
    from edgekd.bench.inputs import check_threads
    from edgekd.stages.quantize.ort import check_op_types

    problems: list[str] = []
    if recipe.calibrate.out_of_scope != "off" and recipe.benchmark.out_of_scope_label is None:
        problems.append(
            "calibrate.out_of_scope needs the out-of-scope class: set benchmark.out_of_scope_label to the "
            "dataset's 'none of the others' class (or calibrate.out_of_scope: off)"
        )
    for name in SCOPE_GATES:
        if getattr(recipe.gates, name) is not None and recipe.benchmark.out_of_scope_label is None:
            problems.append(
                f"gates.{name} needs benchmark.out_of_scope_label (the 'none of the others' class)"
            )
    try:  # the benchmark stage's own rule, so what passes here passes there
        check_threads(recipe.benchmark.threads)
    except InputError as exc:
        problems.append(f"benchmark.threads: {exc.message}; {exc.hint}" if exc.hint else exc.message)
    try:
        check_op_types(recipe.quantize.op_types)
    except InputError as exc:
        problems.append(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
    tokenizer_type = student_tokenizer_type(recipe) if recipe.prune_vocab.enabled else None
    if tokenizer_type not in (None, "WordPiece"):
        problems.append(
            f"prune_vocab.enabled: vocabulary pruning supports WordPiece tokenizers only; the student's "
            f"tokenizer is {tokenizer_type}, so set it to false"
        )
    return problems


def student_tokenizer_type(recipe: Recipe) -> str | None:
    """The model type (WordPiece, BPE, Unigram) of the tokenizer the student will use, when a local
    tokenizer.json says so before training; None when it cannot be known yet (or is trained here: WordPiece)."""
    from edgekd.recipe.schema import TokenizerBuild

    student, teacher = recipe.student, recipe.teacher
    source: str | TokenizerBuild | None = student.tokenizer
    if source is None:
        own = student.model if student.model not in (None, "teacher") else None
        source = own or teacher.tokenizer or teacher.model
    if isinstance(source, TokenizerBuild):
        return "WordPiece"
    if source is None:
        return None
    try:
        data = json.loads((Path(source) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # a Hub id, a folder with only vocab.txt, a broken file: the stage checks the student
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    return kind if isinstance(kind, str) else None


def label_problems(recipe: Recipe, labels: list[str]) -> list[str]:
    """Recipe fields that name one of the dataset's classes."""
    named: list[tuple[str, str]] = []
    if recipe.benchmark.out_of_scope_label is not None:
        named.append(("benchmark.out_of_scope_label", recipe.benchmark.out_of_scope_label))
    augment = recipe.distill.augment
    class_factors = augment.class_factors if augment is not None else None
    named += [("distill.augment.class_factors", name) for name in class_factors or {}]
    return [unknown_class(field, name, labels) for field, name in named if name not in labels]


def unknown_class(field: str, name: str, labels: list[str]) -> str:
    close = difflib.get_close_matches(name, labels, n=1, cutoff=0.6)
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    suggestion = f"did you mean '{close[0]}'?" if close else f"the classes are: {shown}"
    return f"{field}: {name!r} is not one of the dataset's {len(labels)} classes; {suggestion} (or remove it)"


def check_teacher_classes(recipe: Recipe, labels: list[str]) -> None:
    """A local teacher that is already a classifier must know the dataset's classes in the same order
    (the teacher stage would otherwise refuse it only after the run folder exists)."""
    from edgekd.models import model_labels
    from edgekd.stages.teacher import check_teacher_labels

    teacher = recipe.teacher
    if teacher.model is None or not (Path(teacher.model) / "config.json").is_file():
        return
    known = model_labels(teacher.model, teacher.trust_remote_code)
    if known is not None:
        check_teacher_labels(known, labels, teacher.model)


def _environment() -> dict[str, Any]:
    from edgekd.bench.envinfo import environment

    return environment()
