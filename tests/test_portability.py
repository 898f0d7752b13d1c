"""The core runs on macOS and Windows workstations: no fcntl, no resource, no /proc.

Those machines are simulated on Linux: the POSIX-only modules are made unimportable, edgekd's own reads of
/proc and /sys fail, and the os functions Windows lacks are removed. psutil, which asks each OS its own way,
still answers, as it would there.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import filelock  # noqa: F401 - imported while fcntl is importable; on Windows it locks with LockFileEx instead
import psutil
import pytest

from edgekd.bench import envinfo
from edgekd.errors import RunLockedError
from edgekd.pipeline import run_lock

POSIX_ONLY_MODULES = ("fcntl", "resource")
CORE_MODULES = (
    "edgekd.bench.envinfo",
    "edgekd.training",
    "edgekd.pipeline",
    "edgekd.cli.predict",
    "edgekd.cli.app",
)
LINUX_ONLY_FOLDERS = ("/proc", "/sys")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """edgekd's reads of /proc and /sys fail (psutil's own reads are left alone: it has other ways elsewhere),
    and the os functions that only some Unixes have are gone."""
    real_open = Path.open

    def open_outside_proc(self: Path, *args: Any, **kwargs: Any) -> Any:
        if str(self).startswith(LINUX_ONLY_FOLDERS):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_outside_proc)
    for name in ("sched_getaffinity", "getloadavg", "sysconf"):
        monkeypatch.delattr(os, name, raising=False)


@pytest.fixture
def core_without_posix_modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fresh imports of the core modules while `import fcntl` and `import resource` fail, as on Windows.

    The originals are put back afterwards (in sys.modules and as attributes of their packages), so the
    rest of the session keeps the modules it imported."""
    for name in POSIX_ONLY_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    for name in CORE_MODULES:
        package, _, attribute = name.rpartition(".")
        parent = importlib.import_module(package)  # run alone, the test may be the first to need it
        original = getattr(parent, attribute, None)
        monkeypatch.setattr(parent, attribute, original, raising=False)
        monkeypatch.delitem(sys.modules, name, raising=False)
    return {name: importlib.import_module(name) for name in CORE_MODULES}


def test_the_core_imports_and_locks_without_fcntl_or_resource(
    core_without_posix_modules: dict[str, Any], tmp_path: Path
) -> None:
    fresh_lock = core_without_posix_modules["edgekd.pipeline"].run_lock
    refused = pytest.raises(RunLockedError, match="another edgekd process is running")
    with fresh_lock(tmp_path), refused, fresh_lock(tmp_path):
        pass
    with fresh_lock(tmp_path):
        pass  # released


def test_the_environment_is_known_without_proc(without_proc: None) -> None:
    env = envinfo.environment()
    cpu = env["cpu"]
    assert cpu["flags"] == {}, "flags nobody could read are unknown, not absent"
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert cpu["logical_cores"] >= 1
    assert cpu["physical_cores"] == psutil.cpu_count(logical=False)
    assert cpu["usable_cores"] == len(psutil.Process().cpu_affinity())
    assert env["memory_total_mb"] == pytest.approx(psutil.virtual_memory().total / 1e6, abs=0.1)
    assert env["load_average"] is None


def test_training_reads_no_cpu_flags_without_proc(without_proc: None) -> None:
    from edgekd.training import choose_precision

    assert envinfo.cpu_flag_names() == set()
    assert choose_precision("auto") == "fp32"  # no flags read: no native bf16 assumed


def test_the_busy_machine_measure_works_without_proc(without_proc: None) -> None:
    before = envinfo.cpu_snapshot()
    assert before is not None and before.cores == envinfo.usable_cores()
    after = envinfo.cpu_snapshot()
    assert after is not None
    others = envinfo.other_processes_cores(before, after)
    assert others is None or 0.0 <= others <= after.cores  # None: no clock tick passed between the two


def test_where_the_os_tells_nothing_every_fact_is_none(
    without_proc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise psutil.AccessDenied()

    for name in ("cpu_count", "virtual_memory", "cpu_times"):
        monkeypatch.setattr(psutil, name, refused)
    monkeypatch.setattr(psutil.Process, "cpu_affinity", refused)
    env = envinfo.environment()
    assert env["cpu"]["physical_cores"] is None
    assert env["memory_total_mb"] is None
    assert env["cpu"]["usable_cores"] == os.cpu_count()
    assert envinfo.cpu_snapshot() is None


# Field sets psutil's per-core CPU times have on each OS: Windows counts interrupt and DPC time inside
# system time, Linux counts guest time inside user time, so neither may be added again.
WINDOWS_TIMES = namedtuple("WINDOWS_TIMES", "user system idle interrupt dpc")
MACOS_TIMES = namedtuple("MACOS_TIMES", "user nice system idle")
LINUX_TIMES = namedtuple("LINUX_TIMES", "user nice system idle iowait irq softirq steal guest guest_nice")


@pytest.mark.parametrize(
    ("times", "busy", "total"),
    [
        (WINDOWS_TIMES(user=3.0, system=2.0, idle=5.0, interrupt=0.5, dpc=0.5), 5.0, 10.0),
        (MACOS_TIMES(user=3.0, nice=1.0, system=2.0, idle=4.0), 6.0, 10.0),
        (LINUX_TIMES(3.0, 1.0, 1.0, 3.0, 1.0, 0.5, 0.25, 0.25, 2.0, 1.0), 6.0, 10.0),
    ],
)
def test_per_core_times_count_each_second_once_on_every_os(
    without_proc: None, monkeypatch: pytest.MonkeyPatch, times: Any, busy: float, total: float
) -> None:
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: [times, times])
    monkeypatch.delattr(psutil.Process, "cpu_affinity")  # as on macOS: no affinity, every core counts
    snap = envinfo.cpu_snapshot()
    assert snap is not None and snap.cores == 2
    assert snap.busy_s == pytest.approx(2 * busy)
    assert snap.total_s == pytest.approx(2 * total)


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from edgekd.pipeline import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(300)
"""


def test_a_killed_run_leaves_its_folder_unlocked(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError), run_lock(tmp_path):
            pass
        assert (tmp_path / ".lock").read_text() == str(holder.pid), (
            "a refused process leaves the holder's pid"
        )
        holder.kill()  # SIGKILL (TerminateProcess on Windows): no cleanup code of the holder runs
        holder.wait(timeout=60)
        with run_lock(tmp_path):
            assert (tmp_path / ".lock").read_text() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait(timeout=60)
