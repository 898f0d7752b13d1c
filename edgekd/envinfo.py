"""What machine and software a run used, so a benchmark number can be judged and reproduced.

Torch-free on purpose: it runs on devices that only have the runtime, and versions come from package
metadata rather than from importing (and paying for) the libraries.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Instruction-set extensions that decide which INT8/BF16 kernels the runtimes can use.
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "neon",
    "asimd",
)
LIBRARIES = ("torch", "transformers", "onnxruntime", "optimum", "optimum-onnx", "onnx", "numpy", "tokenizers")
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM")


def environment() -> dict[str, Any]:
    """The machine, the libraries and the load at the time of the call.

    Returns:
        JSON-ready dict: cpu (model, logical/physical/usable cores, cgroup quota, flags), memory, library
        versions, python, platform, load average and the thread-related environment variables.
    """
    cpuinfo = _read_text("/proc/cpuinfo")
    return {
        "cpu": {
            "model": cpu_model(cpuinfo),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(cpuinfo),
            "usable_cores": usable_cores(),
            "cgroup_cpu_quota": cgroup_cpu_quota(),
            "flags": cpu_flags(cpuinfo),
        },
        "memory_total_mb": memory_total_mb(),
        "versions": library_versions(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average": load_average(),
        "thread_env": {name: os.environ[name] for name in THREAD_ENV_VARS if name in os.environ},
    }


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what `platform` knows."""
    text = _read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    for key in ("model name", "Model", "Hardware", "cpu model"):
        value = _first_field(text, key)
        if value:
            return value
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Whether the CPU has each instruction-set extension in `CPU_FLAGS` (x86 `flags`, Arm `Features`)."""
    text = _read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    present = set((_first_field(text, "flags") or _first_field(text, "Features") or "").split())
    return {flag: flag in present for flag in CPU_FLAGS}


def physical_cores(cpuinfo: str | None = None) -> int | None:
    """Distinct (socket, core) pairs in /proc/cpuinfo; None where the file does not say (VMs, Arm)."""
    text = _read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    cores = set()
    socket = core = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if core is not None:
                cores.add((socket, core))
            socket = core = None
            continue
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            socket = value.strip()
        elif key.strip() == "core id":
            core = value.strip()
    return len(cores) or None


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited or unknown."""
    text = _read_text("/sys/fs/cgroup/cpu.max").split()
    if len(text) != 2 or text[0] == "max":
        return None
    try:
        return round(int(text[0]) / int(text[1]), 2)
    except (ValueError, ZeroDivisionError):
        return None


def memory_total_mb() -> float | None:
    """Installed memory from /proc/meminfo (MB = 1e6 bytes)."""
    value = _first_field(_read_text("/proc/meminfo"), "MemTotal")
    if not value:
        return None
    try:
        return round(int(value.split()[0]) * 1024 / 1e6, 1)
    except ValueError:
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (None when not installed), and edgekd's."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from edgekd import __version__

    versions["edgekd"] = __version__
    return versions


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: a busy machine makes latency numbers unreliable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds since boot on the cores this process may use, and this process's own share of them."""

    busy_s: float  # every process, summed over those cores
    total_s: float  # busy + idle, summed over those cores
    own_s: float  # this process and its finished (waited-for) children
    cores: int


def cpu_snapshot(stat: str | None = None) -> CpuSnapshot | None:
    """Read /proc/stat (Linux; None elsewhere). Only the per-core lines of this process's affinity count, so a
    process pinned to a few cores of a big machine is not told about work on the others."""
    text = _read_text("/proc/stat") if stat is None else stat
    try:
        allowed: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = None
    busy = total = 0
    cores = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or len(fields) < 5:
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        ticks = [int(x) for x in fields[:8]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        total += sum(ticks)
        busy += sum(ticks) - idle
        cores += 1
    if not cores:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    own = os.times()
    own_s = own.user + own.system + own.children_user + own.children_system
    return CpuSnapshot(busy_s=busy / hz, total_s=total / hz, own_s=own_s, cores=cores)


def other_processes_cores(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """Average number of cores other processes kept busy between two snapshots.

    Unlike the load average, which trails by a minute and so blames a run's own previous stage, this counts
    only CPU time that was not ours, over exactly the measured interval.
    """
    if before is None or after is None or after.cores != before.cores:
        return None
    wall_s = (after.total_s - before.total_s) / after.cores
    if wall_s <= 0:
        return None
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return round(max(0.0, others) / wall_s, 2)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _first_field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


if __name__ == "__main__":  # pragma: no cover - a quick look from a shell
    import json

    json.dump(environment(), sys.stdout, indent=2)
    print()
