"""Distill stage: train the student on the teacher's soft targets plus the gold labels.

In:  teacher/model (from the teacher stage), recipe.student, recipe.distill, the data
     (+ distill.unlabeled texts and distill.augment's new texts, which the teacher labels).
Out: model/ (student, Hugging Face folder with tokenizer), log_history.json, stage.json
     (+ search.json when distill.search.n_trials > 0).

The teacher's logits are computed once per example and cached under <run>/cache/, keyed by the teacher
stage's key and the data; every epoch (and every re-run or search trial with other distillation settings) reuses
them. Because the targets are per example, the student may use a different tokenizer from the teacher's.
Intermediate losses (`distill.losses`) compare hidden states / attentions token by token: they need the
teacher's per-token outputs, which are too large to cache, so the teacher then runs on every training batch.

Under torchrun every process trains (DDP); rank 0 alone computes the cache and writes files (see
edgekd/distributed.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data import Splits, load_splits
from edgekd.distributed import is_distributed, is_main_process, main_process_first
from edgekd.errors import InputError
from edgekd.models import (
    build_from_config,
    keep_layers,
    load_classifier,
    load_tokenizer,
    resolve_tokenizer,
)
from edgekd.recipe.schema import AugmentSpec, DistillSpec, Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.distill.augment import AugmentedSet, augment_texts, embedding_neighbours
from edgekd.stages.distill.intermediate import (
    IntermediatePlan,
    check_layer_subset,
    plan_intermediate,
    preflight_intermediate,
    shape_of,
)
from edgekd.stages.distill.labelling import TeacherLabeller, labeller_for, logits_cache_key, teacher_identity
from edgekd.stages.distill.structured_prune import PruneOutcome, apply_plan, prune_for_distillation
from edgekd.stages.distill.trainer import DistillData, TrainedStudent, TrainJob, distill_data, train_student
from edgekd.stages.distill.unlabeled import load_unlabeled_texts
from edgekd.stages.runner import (
    CHECKPOINTS_FOLDER,
    fingerprint_path,
    write_atomically,
    write_json,
)
from edgekd.training import (
    choose_precision,
    save_log_history,
    save_model_then_drop_checkpoints,
    seed_everything,
)


class DistillStage(StageBase):
    name = "distill"
    folder = "distill"
    needs: tuple[str, ...] = ("teacher",)
    distributed = True  # every torchrun process runs it (DDP); rank 0 writes

    def preflight(self, recipe: Recipe, splits: Splits) -> None:
        preflight(recipe, splits)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        unlabeled = recipe.distill.unlabeled
        return {
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            # `prune` and `budget` join the key only when set: recipes from before them keep their distill stage.
            "student": recipe.student.model_dump(
                mode="json",
                exclude={f for f in ("prune", "budget") if getattr(recipe.student, f) is None},
            ),
            "student_files": fingerprint_path(
                recipe.student.model if recipe.student.model != "teacher" else None
            ),
            # `augment` and `labelling` join the key only when set: recipes from before them keep their stage.
            "distill": recipe.distill.model_dump(
                mode="json", exclude=distill_fields_left_out(recipe.distill)
            ),
            "unlabeled_files": fingerprint_path(unlabeled.path if unlabeled else None),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        spec = recipe.distill
        splits = load_splits(recipe.data, recipe.seed)
        teacher_dir = ctx.inputs["teacher"] / "model"
        recipe, budget = student_within_budget(recipe, teacher_dir, splits, ctx, out_dir / "budget.json")
        if spec.search.n_trials and is_distributed():
            raise InputError(
                "distill.search runs in a single process", hint="run the search without torchrun"
            )
        unlabeled = load_unlabeled_texts(spec.unlabeled, recipe.seed)
        precision = choose_precision(spec.precision)
        augment_started = time.perf_counter()
        augmented = augmented_transfer_set(spec, splits, teacher_dir, ctx)
        augment_seconds = time.perf_counter() - augment_started
        labeller = labeller_for(
            recipe, teacher_dir, ctx.run_dir / "cache", splits.texts("validation"), ctx.log
        )
        with main_process_first():  # rank 0 fills the cache; the other ranks then read it
            logits = {
                split: cached_teacher_logits(teacher_dir, splits.texts(split), split, recipe, ctx, labeller)
                for split in ("train", "validation")
            }
            if unlabeled:
                logits["unlabeled"] = cached_teacher_logits(
                    teacher_dir, unlabeled, "unlabeled", recipe, ctx, labeller
                )
            if augmented is not None and augmented.texts:
                labelling_started = time.perf_counter()
                logits["augmented"] = cached_teacher_logits(
                    teacher_dir, augmented.texts, "augmented", recipe, ctx, labeller
                )
                augment_seconds += time.perf_counter() - labelling_started
        seed_everything(spec.seed)  # before any fresh head or model is initialised
        student, tokenizer = build_student(recipe, splits, teacher_dir)
        plan = plan_for_models(recipe, teacher_dir, student)
        augmented_texts = augmented.texts if augmented is not None else []
        data = distill_data(
            splits, unlabeled, logits, tokenizer, teacher_dir, plan, recipe.data.max_length, augmented_texts
        )
        pruned = prune_student_before_training(student, tokenizer, data, recipe, ctx)
        job = TrainJob(recipe, data, plan, teacher_dir, precision, ctx, pruned.plan if pruned else None)
        if spec.search.n_trials:
            trained, record = search_student(job, tokenizer, out_dir)
            if is_main_process():
                write_json(out_dir / "search.json", record)
        else:
            trained = train_student(student, tokenizer, spec, job, out_dir / CHECKPOINTS_FOLDER)
        if is_main_process():
            save_log_history(trained.log_history, out_dir / "log_history.json")
            save_model_then_drop_checkpoints(
                trained.model, tokenizer, out_dir / "model", out_dir / CHECKPOINTS_FOLDER
            )
        metrics = {**trained.metrics, "params": sum(p.numel() for p in trained.model.parameters())}
        metrics["labelling"] = labeller.record()
        if budget is not None:
            metrics["budget"] = budget
        if pruned is not None:
            metrics["prune"] = pruned.metrics
        if augmented is not None:
            metrics["augmentation"] = augmentation_metrics(
                augmented, logits.get("augmented"), splits.labels, augment_seconds
            )
        return StageResult(metrics=metrics)


def preflight(recipe: Recipe, splits: Splits) -> None:
    """What can be refused before any training: search under torchrun, the unlabelled text, the student's
    layers and the intermediate losses (layer maps, widths, tokenization). One InputError/DataError line."""
    if recipe.distill.search.n_trials and is_distributed():
        raise InputError("distill.search runs in a single process", hint="run the search without torchrun")
    if recipe.student.budget is not None and is_distributed():
        # each process would time the candidates on a busy machine and might choose differently
        raise InputError("student.budget runs in a single process", hint="run the recipe without torchrun")
    unlabeled = load_unlabeled_texts(recipe.distill.unlabeled, recipe.seed)
    preflight_intermediate(recipe, splits, unlabeled)


# ----------------------------------------------------------------------------------------------------------
# Student


def build_student(recipe: Recipe, splits: Splits, teacher_dir: Path) -> tuple[Any, Any]:
    """The student and its tokenizer, as `student.init` asks: pretrained, a layer subset, or a fresh config."""
    spec = recipe.student
    source = str(teacher_dir) if spec.model == "teacher" else spec.model
    if spec.init == "pretrained":
        model = load_classifier(
            source or "",
            labels=splits.labels,
            allow_pickle=spec.allow_pickle,
            trust_remote_code=spec.trust_remote_code,
        )
        tokenizer = resolve_tokenizer(spec.model_copy(update={"model": source}), splits.texts("train"))
    elif spec.init == "layers":
        full = load_classifier(
            source or "",
            labels=splits.labels,
            allow_pickle=spec.allow_pickle,
            trust_remote_code=spec.trust_remote_code,
        )
        model = keep_layers(full, spec.layers or [])
        tokenizer = resolve_tokenizer(spec.model_copy(update={"model": source}), splits.texts("train"))
    else:
        tokenizer = resolve_tokenizer(spec, splits.texts("train"), fallback=str(teacher_dir))
        model = build_from_config(spec.config or {}, splits.labels, vocab_size=len(tokenizer))
    if model.config.num_labels != len(splits.labels):
        raise InputError(f"the student has {model.config.num_labels} outputs for {len(splits.labels)} labels")
    return model, tokenizer


def student_within_budget(
    recipe: Recipe, teacher_dir: Path, splits: Splits, ctx: StageContext, record_path: Path
) -> tuple[Recipe, dict[str, Any] | None]:
    """With `student.budget`, the recipe with the chosen candidate's layers and pruning, and the budget record
    (edgekd/stages/distill/budget.py); without, the recipe as it is and None. Single process only (see `preflight`).

    The choice is written to `record_path` in the stage's working folder at once: a resumed run continues the
    shape its checkpoints have, even when the machine would now choose another.
    """
    budget = recipe.student.budget
    if budget is None:
        return recipe, None
    from edgekd.stages.distill.budget import choose_student_shape

    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    if record is not None:
        shape = budget.candidates[record["chosen"]]
        ctx.log(f"student budget: resuming with the shape chosen before ({record_path.name})")
    else:
        shape, record = choose_student_shape(
            recipe, teacher_dir, splits.labels, splits.texts("validation"), ctx.log
        )
        write_json(record_path, record)
    student = recipe.student.model_copy(update={"layers": shape.layers, "prune": shape.prune})
    return recipe.model_copy(update={"student": student}), record


def prune_student_before_training(
    student: Any, tokenizer: Any, data: DistillData, recipe: Recipe, ctx: StageContext
) -> PruneOutcome | None:
    """`student.prune`: score the units with the distillation loss against the cached teacher logits, prune
    the student in place (None when pruning is off); training then recovers what was removed."""
    spec = recipe.student.prune
    if spec is None:
        return None
    distill = recipe.distill
    return prune_for_distillation(
        student,
        tokenizer,
        data.train,
        spec,
        distill.alpha,
        distill.temperature,
        distill.batch_size,
        distill.seed,
        ctx.log,
    )


def plan_for_models(recipe: Recipe, teacher_dir: Path, student: Any) -> IntermediatePlan | None:
    """The intermediate-loss plan checked against the real teacher and student (the pipeline checked the
    recipe's configs before training already; this also covers the Python API and `student.init: config`)."""
    from edgekd.stages.distill.intermediate import config_of

    losses = recipe.distill.losses
    if losses.hidden.weight <= 0 and losses.attention.weight <= 0:
        return None
    teacher_shape = shape_of(config_of(str(teacher_dir), None), "teacher")
    if recipe.student.init == "layers" and recipe.student.model == "teacher":
        check_layer_subset(recipe.student.layers or [], teacher_shape.layers, "teacher")
    return plan_intermediate(losses, teacher_shape, shape_of(student.config, "student"))


# ----------------------------------------------------------------------------------------------------------
# Teacher outputs


def distill_fields_left_out(spec: DistillSpec) -> dict[str, Any]:
    """DistillSpec fields kept out of the stage key while at their default (added after runs were cached), in
    pydantic's `exclude` form."""
    left_out: dict[str, Any] = {}
    if spec.augment is None:
        left_out["augment"] = True
    elif spec.augment.class_factors is None:
        left_out["augment"] = {"class_factors": True}
    if spec.labelling == "auto":
        left_out["labelling"] = True
    return left_out


def cached_teacher_logits(
    teacher_dir: Path,
    texts: list[str],
    split: str,
    recipe: Recipe,
    ctx: StageContext,
    labeller: TeacherLabeller | None = None,
) -> Any:
    """The teacher's logits for every text of `split`, from <run>/cache/ or computed once and stored there.

    The labeller (default: `distill.labelling`'s, checked on `texts`) picks the backend; torch-fp32 logits keep
    the cache key of earlier edgekd versions, other backends' carry their tag (edgekd/stages/distill/labelling.py).
    """
    cache_dir = ctx.run_dir / "cache"
    labeller = labeller or labeller_for(recipe, teacher_dir, cache_dir, texts, ctx.log)
    teacher = teacher_identity(teacher_dir)

    def cache_path(backend: str) -> Path:
        key = logits_cache_key(teacher, texts, recipe.data.max_length, backend)
        return cache_dir / f"teacher_logits-{split}-{key}.npy"

    for backend in labeller.acceptable_caches():
        path = cache_path(backend)
        if not path.is_file():
            continue
        cached = load_cached_logits(path, len(texts))
        if cached is not None:
            ctx.log(f"teacher logits for {split}: cached ({path.name})")
            labeller.note_cached(split, len(texts), backend)
            return cached
        ctx.log(
            f"warning: the cached teacher logits {path} are truncated or unreadable: computing them again"
        )
    t0 = time.perf_counter()
    logits, backend = labeller.label(texts, split)
    path = cache_path(backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fsync'ed and renamed into place: a kill or power cut never leaves a cache file that looks complete
    write_atomically(path, lambda handle: np.save(handle, logits))
    ctx.log(f"teacher logits for {split} ({backend}): {len(logits)} rows in {time.perf_counter() - t0:.1f}s")
    return logits


def load_cached_logits(path: Path, rows: int) -> Any:
    """The logits stored at `path` when they are whole (one finite float32 row per text), else None.

    A cache file cut short (a full disk, a copy that stopped, an older edgekd without fsync) must not block
    every later run, `--force` included: the caller computes it again.
    """
    try:
        logits = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    whole = (
        logits.dtype == np.float32
        and logits.ndim == 2
        and logits.shape[0] == rows
        and logits.shape[1] > 0
        and bool(np.isfinite(logits).all())
    )
    return logits if whole else None


# ----------------------------------------------------------------------------------------------------------
# Augmented transfer set


def augmented_transfer_set(
    spec: DistillSpec, splits: Splits, teacher_dir: Path, ctx: StageContext
) -> AugmentedSet | None:
    """`distill.augment`'s new texts (None when it is off), made with the teacher's tokenizer and embeddings."""
    augment = spec.augment
    if augment is None:
        return None
    train_texts = splits.texts("train")
    tokenizer = load_tokenizer(str(teacher_dir))
    # Without a mask token the unknown token still hides the word from the teacher.
    mask_token = tokenizer.mask_token or tokenizer.unk_token or "[UNK]"
    neighbours = None
    if "neighbours" in augment.methods:
        embedding_layer: Any = load_classifier(str(teacher_dir)).get_input_embeddings()
        embeddings = embedding_layer.weight.detach().float().numpy()
        neighbours = embedding_neighbours(
            embeddings, tokenizer.get_vocab(), tokenizer.all_special_tokens, train_texts
        )
    seed = augment.seed if augment.seed is not None else spec.seed
    augmented = augment_texts(
        train_texts, augment.methods, row_factors(augment, splits), seed, mask_token, neighbours
    )
    made = ", ".join(f"{n} by {m}" for m, n in augmented.counts().items())
    ctx.log(f"augmented transfer set: {len(augmented.texts)} new rows from {len(train_texts)} ({made})")
    return augmented


def row_factors(augment: AugmentSpec, splits: Splits) -> int | list[int]:
    """`factor` for every train row, or per row from its class when `class_factors` names it."""
    if not augment.class_factors:
        return augment.factor
    by_id = {splits.labels.index(name): n for name, n in augment.class_factors.items()}
    return [by_id.get(label, augment.factor) for label in splits.label_ids("train")]


def augmentation_metrics(
    augmented: AugmentedSet, logits: Any, labels: list[str], seconds: float
) -> dict[str, Any]:
    """Rows per method, the teacher's label distribution on them (argmax counts) and the time taken."""
    predicted = np.asarray(logits).argmax(-1) if logits is not None and len(augmented.texts) else np.array([])
    return {
        "rows": len(augmented.texts),
        "rows_per_method": augmented.counts(),
        "teacher_label_counts": {label: int((predicted == i).sum()) for i, label in enumerate(labels)},
        "seconds": round(seconds, 2),
    }


def search_student(job: TrainJob, tokenizer: Any, out_dir: Path) -> tuple[TrainedStudent, dict[str, Any]]:
    """Optuna search: every trial trains a fresh student; the best one is returned with the search record."""
    from edgekd.stages.distill.search import run_search

    recipe = job.recipe
    spec = recipe.distill
    splits = load_splits(recipe.data, recipe.seed)
    trial_root = out_dir / CHECKPOINTS_FOLDER
    trial_numbers = iter(range(spec.search.n_trials))

    def train_trial(params: dict[str, Any], callbacks: list[Any]) -> tuple[TrainedStudent, dict[str, Any]]:
        seed_everything(spec.seed)  # every trial starts from the same student initialisation
        student, _ = build_student(recipe, splits, job.teacher_dir)
        if job.prune is not None:
            apply_plan(student, job.prune)
        checkpoints = trial_root / f"trial-{next(trial_numbers)}"
        try:
            trained = train_student(
                student, tokenizer, spec.model_copy(update=params), job, checkpoints, callbacks, resume=False
            )
        finally:
            shutil.rmtree(checkpoints, ignore_errors=True)  # pruned trials stop mid-training
        return trained, trained.metrics

    job.ctx.log(
        f"searching distillation settings: {spec.search.n_trials} trials (Optuna TPE, seed {spec.seed})"
    )
    outcome = run_search(spec.search, spec.seed, train_trial, log=job.ctx.log)
    shutil.rmtree(trial_root, ignore_errors=True)
    best: TrainedStudent = outcome.model
    best.metrics = outcome.metrics
    return best, outcome.record
