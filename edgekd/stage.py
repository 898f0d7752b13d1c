"""The stage contract and the runner that caches stages and writes them atomically.

A stage is anything with a `name`, the names of the stages it reads (`needs`), a `params(recipe)` method giving
what its output depends on, and `run(ctx, out_dir) -> StageResult`. It reads earlier stages' folders from
`ctx.inputs` and writes only into `out_dir`. The runner:

* keys the stage by a hash of its params, its inputs' keys and the fingerprint of local files it reads, and
  skips it when `<run>/<stage>/stage.json` holds the same key (`force` re-runs it);
* runs it in a temporary sibling folder and renames that into place only when the stage finished, so a killed
  run never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from edgekd import __version__
from edgekd.distributed import barrier, is_main_process, main_process_first
from edgekd.errors import EdgekdError, StageError, resource_error
from edgekd.recipe import Recipe

STAGE_FILE = "stage.json"
PARTIAL_MARKER = ".key"  # in a partial folder: the stage key it is being built for
# In a partial folder: when the current invocation started and the work carried over from earlier ones.
INVOCATION_FILE = ".invocation.json"
BOOKKEEPING_FILES = (PARTIAL_MARKER, INVOCATION_FILE)


@dataclass
class StageContext:
    """What a stage may read: the recipe, the run folder and the finished folders of the stages it needs."""

    recipe: Recipe
    run_dir: Path
    inputs: dict[str, Path]
    log: Callable[[str], None] = print


@dataclass
class StageResult:
    """What a stage reports back; `metrics` lands in stage.json and can be read by later stages."""

    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


class Stage(Protocol):
    name: str
    folder: str
    needs: tuple[str, ...]

    def params(self, recipe: Recipe) -> dict[str, Any]: ...

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult: ...


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys); 16 hex digits are plenty for cache keys."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_path(value: str | None) -> Any:
    """Identity of a local file or folder by content (names, sizes, sha256); a Hub id is its own identity.

    Content, not mtimes: a data root or model folder copied again (a new checkout, a re-synced share) keeps its
    cache keys, so hours of teacher training are not redone for files that did not change.
    """
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        return value
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [
        (str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, file_digest(p)) for p in files
    ]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file (16 hex digits), computed once per process for an unchanged file (stages ask often)."""
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo_key] = digest.hexdigest()[:16]
    return _DIGESTS[memo_key]


def read_stage_json(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def stage_key(stage: Stage, recipe: Recipe, input_keys: dict[str, str]) -> str:
    return stable_hash({"stage": stage.name, "params": stage.params(recipe), "inputs": input_keys})


def run_stage(
    stage: Stage,
    recipe: Recipe,
    run_dir: Path,
    input_keys: dict[str, str],
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[str, dict[str, Any], bool]:
    """Run one stage unless an identical finished run is on disk.

    Returns:
        (key, stage.json content, whether it was skipped)
    """
    key = stage_key(stage, recipe, input_keys)
    final = run_dir / stage.folder
    tmp = run_dir / f".{stage.folder}.partial"
    try:
        # Under torchrun only rank 0 touches the run folder; the others wait and then read what it decided.
        with main_process_first():
            if is_main_process():
                finish_interrupted_swap(tmp, final, key, log)
            done = read_stage_json(final)
            if done and done.get("key") == key and not force:
                return key, done, True
            carried_s = 0.0
            if is_main_process():
                prepare_partial_folder(tmp, key, log, resume=not force)  # --force means from scratch
                carried_s = start_invocation(tmp)
    except OSError as exc:
        raise _write_failure(exc, stage, run_dir, final) from None

    ctx = StageContext(recipe=recipe, run_dir=run_dir, inputs={n: run_dir / n for n in stage.needs}, log=log)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    # On failure the partial folder stays (marked with its key) so a re-run can resume from checkpoints;
    # it never looks finished because it is not at its final name.
    # Stages that are not multi-process aware (export, quantize, benchmark) run on rank 0 alone.
    runs_here = is_main_process() or getattr(stage, "distributed", False)
    try:
        result = stage.run(ctx, tmp) if runs_here else StageResult()
    except EdgekdError:
        shutil.rmtree(tmp, ignore_errors=True)  # bad input or a failed check: nothing worth resuming
        raise
    except Exception as exc:
        problem = resource_error(exc, run_dir, f"running the {stage.name} stage")
        if problem is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # half-written files only take the space the user must free
        raise problem from None
    if not is_main_process():
        barrier()  # rank 0 writes stage.json and renames the folder; then read its record
        return key, read_stage_json(final) or {"key": key, "wall_time_s": 0.0, "metrics": {}}, False
    record = {
        "stage": stage.name,
        "key": key,
        "inputs": input_keys,
        "params": stage.params(recipe),
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        # Resumed from an interrupted run: the earlier invocations' work up to their last saved file.
        "carried_over_s": round(carried_s, 3),
        "edgekd_version": __version__,
        "metrics": result.metrics,
        "files": sorted(
            str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name not in BOOKKEEPING_FILES
        ),
    }
    try:
        # stage.json first, marker last: a partial folder with a matching stage.json is complete, so a run
        # killed before the swap below is finished by the next one instead of being redone.
        write_json(tmp / STAGE_FILE, record)
        (tmp / INVOCATION_FILE).unlink(missing_ok=True)
        (tmp / PARTIAL_MARKER).unlink(missing_ok=True)
        _swap_into_place(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failure(exc, stage, run_dir, final) from None
    barrier()
    return key, record, False


def _write_failure(exc: OSError, stage: Stage, run_dir: Path, final: Path) -> EdgekdError:
    """The error for an OSError while the runner itself writes a stage's folder."""
    doing = f"writing the {stage.name} stage into {final}"
    return resource_error(exc, run_dir, doing) or StageError(f"{doing} failed: {exc.strerror or exc}")


def finish_interrupted_swap(tmp: Path, final: Path, key: str, log: Callable[[str], None]) -> None:
    """Complete what a run killed inside `_swap_into_place` left: the previous folder parked at `.<name>.old`
    goes back into place, and a finished partial folder of the same key (its stage.json is written last
    before the swap) is moved into place instead of being recomputed."""
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        os.replace(old, final)
    finished = read_stage_json(tmp)
    if finished and finished.get("key") == key:
        log(f"finishing the interrupted run in {tmp.name}: it had completed")
        _swap_into_place(tmp, final)


def prepare_partial_folder(tmp: Path, key: str, log: Callable[[str], None], resume: bool = True) -> Path:
    """The folder a stage writes into. A partial folder left by an interrupted run of the *same* stage key is
    kept when `resume` is set, so training can resume from its last checkpoint; anything else is cleared."""
    marker = tmp / PARTIAL_MARKER
    if tmp.exists():
        if resume and marker.is_file() and marker.read_text().strip() == key:
            log(f"resuming from the interrupted run in {tmp.name}")
            return tmp
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    marker.write_text(key)
    return tmp


def start_invocation(tmp: Path) -> float:
    """Record that a stage starts (or resumes) in `tmp`; return the seconds of work carried over.

    An interrupted invocation cannot record when it stopped, so its useful work is measured up to the newest
    file it left (its last checkpoint: whatever it did after that is redone), from the start it recorded here.
    Summed over every earlier invocation, so idle time between them is never counted.
    """
    path = tmp / INVOCATION_FILE
    carried = 0.0
    try:
        previous = json.loads(path.read_text())
        newest = max(
            (p.stat().st_mtime for p in tmp.rglob("*") if p.is_file() and p.name not in BOOKKEEPING_FILES),
            default=previous["started"],
        )
        carried = float(previous["carried_s"]) + max(0.0, newest - float(previous["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a fresh folder (or one from an older edgekd): nothing to carry over
    # Bookkeeping only: a folder that cannot be written fails the stage itself, with its own error.
    with contextlib.suppress(OSError):
        write_json(path, {"started": time.time(), "carried_s": carried})
    return carried


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace `final` with `tmp` so that at every instant either the old or the new folder is complete."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    parked = final.exists()
    if parked:
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if parked:
            os.replace(old, final)  # the previous finished folder stays the current one
        raise
    if parked:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON via a temporary file + rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise EdgekdError(f"{what} is missing: {path}", hint="re-run with --force to rebuild the run")
    return path
