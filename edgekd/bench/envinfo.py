"""What machine and software a run used, so a benchmark number can be judged and reproduced.

Torch-free on purpose: it runs on devices that only have the runtime, and versions come from package
metadata rather than from importing (and paying for) the libraries. Portable on purpose too: memory, core
counts and CPU times come from psutil on every OS; the CPU's model name, flags, clocks and caches are read
from Linux's /proc/cpuinfo and /sys (edgekd/bench/machine.py), and elsewhere they are whatever `platform`
and psutil know, else empty or None.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from edgekd.artifact import THREAD_ENV_VARS
from edgekd.bench import machine

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
# CPU flags that give ONNX Runtime's u8s8 kernels an int32-accumulating dot product (no int16 saturation).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM64_MACHINES = frozenset({"aarch64", "arm64"})
LIBRARIES = ("torch", "transformers", "onnxruntime", "optimum", "optimum-onnx", "onnx", "numpy", "tokenizers")
# What psutil raises where the OS withholds a fact (a sandbox without /proc, a platform it does not cover).
_PSUTIL_FAILURES = (psutil.Error, OSError, RuntimeError)


def environment() -> dict[str, Any]:
    """The machine, the libraries and the load at the time of the call.

    Returns:
        JSON-ready dict: cpu (model, logical/physical/usable cores, cgroup quota, flags, vendor and
        identification numbers, clocks, governor, caches: edgekd/bench/machine.py), memory, virtualization,
        OS, library versions, python, platform, load average and the thread-related environment variables.
    """
    cpuinfo = _read_text("/proc/cpuinfo")  # Linux only: "" elsewhere
    return {
        "cpu": {
            "model": cpu_model(cpuinfo),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(),
            "usable_cores": usable_cores(),
            "cgroup_cpu_quota": cgroup_cpu_quota(),
            "flags": cpu_flags(cpuinfo),
            **machine.cpu_identity(cpuinfo),
            **machine.cpu_clocks(cpuinfo),
            "caches_kib": machine.cpu_caches_kib(),
        },
        "memory_total_mb": memory_total_mb(),
        "virtualization": machine.virtualization(cpuinfo),
        "os": machine.operating_system(),
        "versions": library_versions(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average": load_average(),
        "thread_env": {name: os.environ[name] for name in THREAD_ENV_VARS if name in os.environ},
    }


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name from /proc/cpuinfo (on arm64, which has none, the core its implementer and
    part codes name), else what `platform` knows."""
    text = _read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    for key in ("model name", "Model", "Hardware", "cpu model"):
        value = _first_field(text, key)
        if value:
            return value
    return machine.arm_core_name(text) or platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Whether the CPU has each instruction-set extension in `CPU_FLAGS`; empty where the OS does not list
    the CPU's flags (only Linux does), so an unknown flag is never reported as absent."""
    present = cpu_flag_names(cpuinfo)
    if not present:
        return {}
    return {flag: flag in present for flag in CPU_FLAGS}


def cpu_target(flags: Mapping[str, bool], arch: str) -> str | None:
    """The `quantize.target` whose INT8 kernels a CPU runs: arm64, avx512_vnni (any int32-accumulating u8s8
    dot product: AVX512-VNNI, AVX-VNNI or AMX-INT8), avx512 (AVX512F without VNNI), avx2; None when the OS lists
    no flags (not Linux) or an x86 CPU has none of these.

    Args:
        flags: `cpu_flags()` (or a report's environment.cpu.flags).
        arch: `platform.machine()` (or a report's environment.machine).
    """
    if arch.lower() in ARM64_MACHINES:
        return "arm64"
    if any(flags.get(flag) for flag in VNNI_FLAGS):
        return "avx512_vnni"
    if flags.get("avx512f"):
        return "avx512"
    if flags.get("avx2"):
        return "avx2"
    return None


def cpu_flags_summary(flags: Mapping[str, bool]) -> str:
    """The flags of `CPU_FLAGS` a CPU has, space-separated ("avx2 avx512f avx512_vnni"); "unknown" when the
    OS lists none."""
    if not flags:
        return "unknown"
    return " ".join(flag for flag in CPU_FLAGS if flags.get(flag)) or "none of " + " ".join(CPU_FLAGS)


def cpu_flag_names(cpuinfo: str | None = None) -> set[str]:
    """Every flag /proc/cpuinfo lists (x86 `flags`, Arm `Features`); empty without that file."""
    text = _read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    return set((_first_field(text, "flags") or _first_field(text, "Features") or "").split())


# Flags of CPUs that multiply bf16 in hardware; elsewhere bf16 autocast is emulated and slower than fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_native(flags: set[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (`flags`: /proc/cpuinfo's, read when None)."""
    present = flags if flags is not None else cpu_flag_names()
    return any(flag in present for flag in BF16_FLAGS)


def physical_cores() -> int | None:
    """Physical cores (hyper-threads counted once); None where the OS does not say (some VMs)."""
    try:
        return psutil.cpu_count(logical=False)
    except _PSUTIL_FAILURES:
        return None


def usable_cores() -> int | None:
    """Cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    allowed = _affinity()
    return len(allowed) if allowed else os.cpu_count()


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
    """Installed memory (MB = 1e6 bytes)."""
    try:
        return round(psutil.virtual_memory().total / 1e6, 1)
    except _PSUTIL_FAILURES:
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (None when not installed), and edgekd's."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from edgekd._version import __version__

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
    """CPU times so far on the cores this process may use (from psutil), or None where the OS does not say.

    Only the cores of this process's affinity count, so a process pinned to a few cores of a big machine is
    not told about work on the others.

    Args:
        stat: The text of a Linux /proc/stat to read instead of asking the OS (tests give one).
    """
    per_core = _core_times() if stat is None else _core_times_from_stat(stat)
    allowed = _affinity()
    counted = [times for core, times in per_core.items() if allowed is None or core in allowed]
    if not counted:
        return None
    # os.times is portable; Windows leaves the children's share at 0, as psutil does.
    own = os.times()
    own_s = own.user + own.system + own.children_user + own.children_system
    return CpuSnapshot(
        busy_s=sum(busy for busy, _ in counted),
        total_s=sum(total for _, total in counted),
        own_s=own_s,
        cores=len(counted),
    )


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


# CPU-time fields that another field already contains: Linux counts guest time in user time, Windows counts
# interrupt and DPC time in system time.
_COUNTED_ELSEWHERE = frozenset({"guest", "guest_nice", "interrupt", "dpc"})
_IDLE_FIELDS = ("idle", "iowait")
# The columns of a per-core line of /proc/stat, in clock ticks.
_PROC_STAT_FIELDS = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)


def _core_times() -> dict[int, tuple[float, float]]:
    """(busy, total) seconds per core. psutil lists the online cores in order, so the position is the core's
    number unless a lower-numbered core is offline."""
    try:
        per_core = psutil.cpu_times(percpu=True)
    except _PSUTIL_FAILURES:
        return {}
    return {core: _busy_and_total(times._asdict()) for core, times in enumerate(per_core)}


def _core_times_from_stat(text: str) -> dict[int, tuple[float, float]]:
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    per_core: dict[int, tuple[float, float]] = {}
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 5:
            seconds = {key: int(n) / ticks_per_s for key, n in zip(_PROC_STAT_FIELDS, fields, strict=False)}
            per_core[int(name[3:])] = _busy_and_total(seconds)
    return per_core


def _busy_and_total(seconds: dict[str, float]) -> tuple[float, float]:
    total = sum(value for field, value in seconds.items() if field not in _COUNTED_ELSEWHERE)
    idle = sum(seconds.get(field, 0.0) for field in _IDLE_FIELDS)
    return total - idle, total


def _affinity() -> set[int] | None:
    """The cores this process may run on, where the OS says: Linux (os), Windows and FreeBSD (psutil)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        return set(psutil.Process().cpu_affinity())
    except (AttributeError, *_PSUTIL_FAILURES):
        return None


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
