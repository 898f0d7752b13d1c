"""The runner that caches stages and writes them atomically (the contract itself is in `stages/base.py`). It:

* keys the stage by a hash of its params, its inputs' keys and the fingerprint of local files it reads, and
  skips it when `<run>/<stage>/stage.json` holds the same key (`force` re-runs it); the record of the folder
  users ship (a stage with `ships = True`: quantize) is kept beside it, `<run>/<stage>.stage.json`, so that
  folder holds the deployment alone;
* runs it in a temporary sibling folder and renames that into place only when the stage finished, so a killed
  run never leaves a folder that looks complete;
* records the size and sha256 of every file in stage.json (written to disk with fsync before the rename) and
  re-runs, with a warning, a cached stage whose files no longer match;
* keeps a partial folder's training checkpoints when the disk filled up, so the same command resumes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from edgekd._version import __version__
from edgekd.distributed import barrier, is_main_process, main_process_first
from edgekd.errors import EdgekdError, ResourceError, StageError, resource_error
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import Stage, StageContext, StageResult

STAGE_FILE = "stage.json"
PARTIAL_MARKER = ".key"  # in a partial folder: the stage key it is being built for
# In a partial folder: when the current invocation started and the work carried over from earlier ones.
INVOCATION_FILE = ".invocation.json"
BOOKKEEPING_FILES = (PARTIAL_MARKER, INVOCATION_FILE)
# Training stages keep their Trainer checkpoints here; the only part of a partial folder worth keeping when the
# disk fills up (see `keep_only_checkpoints`).
CHECKPOINTS_FOLDER = "checkpoints"
# What `Trainer.train(resume_from_checkpoint=...)` reads (safetensors weights: save_safetensors=True).
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
# Every run folder gets this file before its first stage runs: a folder holding it is an edgekd run folder.
RUN_FOLDER_MARKER = "recipe.resolved.yaml"
# Files up to this size are hashed again whenever a finished stage is reused; larger ones (model weights) are
# checked by size only, so reusing a 400 MB teacher costs a stat, not a read.
REHASHED_BYTES = 1 << 20


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys); 16 hex digits are plenty for cache keys."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The run folder whose stages are being keyed (set by `run_stage`): never part of a fingerprint.
_CURRENT_RUN_DIR: ContextVar[Path | None] = ContextVar("edgekd_current_run_dir", default=None)


def fingerprint_path(value: str | None) -> Any:
    """Identity of a local file or folder by content (names, sizes, sha256); a Hub id is its own identity.

    Content, not mtimes: a data root or model folder copied again (a new checkout, a re-synced share) keeps its
    cache keys, so hours of teacher training are not redone for files that did not change.

    Run folders inside the folder (the current one, `--output-dir <data>/runs/x` or `data.path: .`, and any
    other holding `recipe.resolved.yaml`) are left out: edgekd's own writes would otherwise change the key of
    every stage that reads the folder, so it would never be reused or resumed. A folder without a run folder
    inside keeps exactly the fingerprint it always had.
    """
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        return value
    files = [path] if path.is_file() else content_files(path)
    return [
        (str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, file_digest(p)) for p in files
    ]


def content_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, except the files of edgekd run folders inside it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    runs = {
        p.parent.relative_to(folder).parts
        for p in files
        if p.name == RUN_FOLDER_MARKER and p.parent != folder
    }
    current = _CURRENT_RUN_DIR.get()
    if current is not None:
        with contextlib.suppress(OSError, ValueError):  # not inside `folder`: nothing to leave out
            inside = current.resolve().relative_to(folder.resolve()).parts
            if inside:
                runs.add(inside)
    if not runs:
        return files
    return [p for p in files if not _under_any(p.relative_to(folder).parts, runs)]


def _under_any(parts: tuple[str, ...], folders: set[tuple[str, ...]]) -> bool:
    return any(parts[: len(folder)] == folder for folder in folders)


@contextlib.contextmanager
def fingerprints_leaving_out(run_dir: Path) -> Iterator[None]:
    """While keying the stages of `run_dir`, `fingerprint_path` skips that folder's files."""
    token = _CURRENT_RUN_DIR.set(run_dir)
    try:
        yield
    finally:
        _CURRENT_RUN_DIR.reset(token)


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


def acquire_or_refuse(
    lock_path: Path,
    busy: EdgekdError,
    *,
    preserve_lock_file: bool = False,
    on_acquired: Callable[[int], None] | None = None,
) -> Any:
    """Take the OS lock on `lock_path` at once (flock; LockFileEx on Windows), or raise `busy` when another
    process holds it. The OS drops the lock when its holder dies, even by SIGKILL. Returns the held
    `filelock.FileLock`; release it when done."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), preserve_lock_file=preserve_lock_file, on_acquired=on_acquired)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise busy from None
    return lock


def read_stage_json(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def record_beside(run_dir: Path, stage: Stage) -> Path | None:
    """Where the record of a stage whose folder users ship is kept (`<run>/<folder>.stage.json`, beside the
    folder, so the folder holds only the deployment); None for every other stage (its record is in its folder)."""
    return run_dir / f"{stage.folder}.{STAGE_FILE}" if getattr(stage, "ships", False) else None


def read_stage_record(run_dir: Path, stage: Stage) -> dict[str, Any] | None:
    """The stage.json record of a finished stage folder, wherever it is kept.

    A record inside the folder comes first: a run folder from before records were kept beside shipped folders,
    or a swap interrupted before its record was moved out (the record beside is then the previous run's).
    A record beside a folder that is gone records nothing.
    """
    final = run_dir / stage.folder
    inside = read_stage_json(final)
    beside = record_beside(run_dir, stage)
    if inside is not None or beside is None or not final.is_dir():
        return inside
    try:
        record = json.loads(beside.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def move_record_beside(run_dir: Path, stage: Stage) -> None:
    """Move a shipped folder's stage.json beside it (after a swap; for run folders from before, on reuse)."""
    beside = record_beside(run_dir, stage)
    inside = run_dir / stage.folder / STAGE_FILE
    if beside is not None and inside.is_file():
        os.replace(inside, beside)
        sync_folder(run_dir / stage.folder)
        sync_folder(run_dir)


def file_checks(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 (16 hex digits) of each file, for stage.json: what a later reuse checks."""
    return {
        name: {"bytes": (folder / name).stat().st_size, "sha256": file_digest(folder / name)}
        for name in names
    }


def damaged_file(folder: Path, record: dict[str, Any]) -> str | None:
    """The first file of a finished stage that is missing or differs from its stage.json record, else None.

    Cheap enough for every reuse: sizes (a truncated or half-copied file) for all, content for small files only.
    Records from before sizes were kept list only names: those files must exist.
    """
    checks = record.get("file_checks")
    if not isinstance(checks, dict):
        names = record.get("files")
        missing = [n for n in names if not (folder / n).is_file()] if isinstance(names, list) else []
        return f"{missing[0]} is missing" if missing else None
    for name, check in sorted(checks.items()):
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != check.get("bytes"):
            return f"{name} has {size} bytes, {check.get('bytes')} when written"
        if size <= REHASHED_BYTES and file_digest(path) != check.get("sha256"):
            return f"{name} changed since it was written"
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
    upstream: dict[str, dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any], bool]:
    """Run one stage unless an identical finished run is on disk. `upstream`: the records of the stages that ran
    before it in the chain, handed to the stage in its context.

    Returns:
        (key, stage.json content, whether it was skipped)
    """
    with fingerprints_leaving_out(run_dir):
        key = stage_key(stage, recipe, input_keys)
        params = stage.params(recipe)
    final = run_dir / stage.folder
    tmp = run_dir / f".{stage.folder}.partial"
    try:
        # Under torchrun only rank 0 touches the run folder; the others wait and then read what it decided.
        with main_process_first():
            if is_main_process():
                finish_interrupted_swap(tmp, final, key, log)
                move_record_beside(run_dir, stage)
            done = read_stage_record(run_dir, stage)
            if done and done.get("key") == key and not force:
                damage = damaged_file(final, done)
                if damage is None:
                    return key, done, True
                log(
                    f"warning: the cached {stage.name} stage is damaged ({stage.folder}/{damage}): running it again"
                )
            carried_s = 0.0
            if is_main_process():
                prepare_partial_folder(tmp, key, log, resume=not force)  # --force means from scratch
                carried_s = start_invocation(tmp)
    except OSError as exc:
        raise _write_failure(exc, stage, run_dir, final) from None

    inputs = {n: run_dir / n for n in stage.needs}
    ctx = StageContext(recipe=recipe, run_dir=run_dir, inputs=inputs, log=log, upstream=dict(upstream or {}))
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    # On failure the partial folder stays (marked with its key) so a re-run can resume from checkpoints;
    # it never looks finished because it is not at its final name.
    # Stages that are not multi-process aware (export, quantize, benchmark) run on rank 0 alone.
    runs_here = is_main_process() or stage.distributed
    try:
        result = stage.run(ctx, tmp) if runs_here else StageResult()
    except ResourceError:
        keep_only_checkpoints(tmp)
        raise
    except EdgekdError:
        shutil.rmtree(tmp, ignore_errors=True)  # bad input or a failed check: nothing worth resuming
        raise
    except Exception as exc:
        problem = stage_resource_error(exc, run_dir, f"running the {stage.name} stage")
        if problem is None:
            raise
        keep_only_checkpoints(tmp)
        raise problem from None
    if not is_main_process():
        barrier()  # rank 0 writes stage.json and renames the folder; then read its record
        return (
            key,
            read_stage_record(run_dir, stage) or {"key": key, "wall_time_s": 0.0, "metrics": {}},
            False,
        )
    record = {
        "stage": stage.name,
        "key": key,
        "inputs": input_keys,
        "params": params,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        # Resumed from an interrupted run: the earlier invocations' work up to their last saved file.
        "carried_over_s": round(carried_s, 3),
        "edgekd_version": __version__,
        "metrics": result.metrics,
    }
    try:
        files = sorted(
            str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name not in BOOKKEEPING_FILES
        )
        record["files"] = files
        record["file_checks"] = file_checks(tmp, files)
        # On disk before stage.json says they are complete: a power cut after the rename must not leave a
        # finished-looking stage with empty or truncated files.
        sync_tree(tmp)
        # stage.json first, marker last: a partial folder with a matching stage.json is complete, so a run
        # killed before the swap below is finished by the next one instead of being redone.
        write_json(tmp / STAGE_FILE, record)
        (tmp / INVOCATION_FILE).unlink(missing_ok=True)
        (tmp / PARTIAL_MARKER).unlink(missing_ok=True)
        _swap_into_place(tmp, final)
        sync_folder(run_dir)
        move_record_beside(run_dir, stage)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failure(exc, stage, run_dir, final) from None
    barrier()
    return key, record, False


def _write_failure(exc: OSError, stage: Stage, run_dir: Path, final: Path) -> EdgekdError:
    """The error for an OSError while the runner itself writes a stage's folder."""
    doing = f"writing the {stage.name} stage into {final}"
    return resource_error(exc, run_dir, doing) or StageError(f"{doing} failed: {exc.strerror or exc}")


# What torch.save (the Trainer's optimizer, scheduler and RNG files) raises when a write comes up short: its C++
# stream writer reports no errno, so the system's "No space left on device" never reaches Python.
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed writing", "file write failed")
_TORCH_STREAM_ERROR = "basic_ios::clear"  # also raised for other stream errors: trusted only on a full disk
NEARLY_FULL_BYTES = 64 << 20


def stage_resource_error(exc: BaseException, run_dir: Path, doing: str) -> ResourceError | None:
    """`resource_error`, plus torch's errno-less write failures, which on a checkpoint save mean a full disk."""
    problem = resource_error(exc, run_dir, doing)
    if problem is None and _is_torch_write_failure(exc, run_dir):
        problem = resource_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), run_dir, doing)
    return problem


def _is_torch_write_failure(exc: BaseException, run_dir: Path) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if isinstance(current, RuntimeError) and any(marker in text for marker in _TORCH_WRITE_FAILURES):
            return True
        if isinstance(current, RuntimeError) and _TORCH_STREAM_ERROR in text and _nearly_full(run_dir):
            return True
        current = current.__cause__ or current.__context__
    return False


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def keep_only_checkpoints(tmp: Path) -> None:
    """What stays of a partial folder when the disk filled up: its complete training checkpoints (and its key),
    so freeing space and running the same command resumes training; everything else is deleted to give the
    space back. A folder with no complete checkpoint has nothing worth keeping and goes entirely."""
    if not is_main_process() or not tmp.is_dir():
        return  # under torchrun rank 0 alone tidies the run folder
    if last_checkpoint(tmp / CHECKPOINTS_FOLDER) is None:  # it also deletes half-written checkpoints
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for path in tmp.iterdir():
        if path.name in (CHECKPOINTS_FOLDER, *BOOKKEEPING_FILES):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def finish_interrupted_swap(tmp: Path, final: Path, key: str, log: Callable[[str], None]) -> None:
    """Complete what a run killed inside `_swap_into_place` left: the previous folder parked at `.<name>.old`
    goes back into place, and a finished partial folder of the same key (its stage.json is written last
    before the swap) is moved into place instead of being recomputed."""
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        os.replace(old, final)
    finished = read_stage_json(tmp)
    if finished and finished.get("key") == key:
        damage = damaged_file(tmp, finished)
        if damage is not None:
            # Its marker is gone, so `prepare_partial_folder` clears it and the stage runs again.
            log(f"warning: the interrupted run in {tmp.name} is damaged ({damage}): running it again")
            return
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
    text = json.dumps(obj, indent=2, default=str) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_atomically(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through `<name>.tmp`, fsync it, then rename it into place: after a kill or a power cut
    `path` is either the old file or the whole new one, never a truncated one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file would only hold space the user must free
        raise
    sync_folder(path.parent)


def sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (and itself), so a rename that follows publishes data that is
    on the disk, not only in the page cache."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _fsync(path, os.O_RDONLY)
        elif path.is_dir() and not path.is_symlink():
            sync_folder(path)
    sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """fsync a folder so the names created or renamed in it survive a power cut (a no-op where folders cannot
    be opened, as on Windows)."""
    with contextlib.suppress(OSError):
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise  # EIO, ENOSPC: the data did not reach the disk
        # the file system or platform cannot fsync this kind of handle: nothing more to do
    finally:
        os.close(fd)


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise EdgekdError(f"{what} is missing: {path}", hint="re-run with --force to rebuild the run")
    return path


# ----------------------------------------------------------------------------------------------------------
# Trainer checkpoints a stage resumes from (kept in `<stage>.partial/checkpoints` across interruptions)


def last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* Trainer checkpoint in `folder`, if an interrupted run left one (to resume from it).

    A run killed while the Trainer saved leaves a checkpoint folder with only some of its files, and
    `transformers.trainer_utils.get_last_checkpoint` would pick it by number alone and fail to load it. Such
    folders are deleted, so the Trainer's checkpoint rotation never counts them either.
    """
    if not folder.is_dir():
        return None
    newest = None
    for _step, path in sorted(_numbered_checkpoints(folder)):
        if is_complete_checkpoint(path):
            newest = path
        else:
            shutil.rmtree(path, ignore_errors=True)
    return str(newest) if newest else None


def is_complete_checkpoint(path: Path) -> bool:
    """Whether every file a resume needs is there. The Trainer writes trainer_state.json last, so a readable
    one means the weights, optimizer and scheduler before it were written in full."""
    if not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _numbered_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return found
