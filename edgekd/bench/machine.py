"""Which CPU, clocks, caches, host and OS a benchmark ran on, in the words a hardware team uses.

Read from Linux's /proc/cpuinfo, /sys and /etc/os-release under `root` (tests give a folder that mimics
them), with psutil and `platform` as fallbacks. Every fact is None where nothing says it: a missing or
unreadable file, a field the architecture does not have, a sandbox that hides /sys. Nothing here raises.

Torch-free and dependency-light on purpose (stdlib and psutil only; no py-cpuinfo): it runs inside the
benchmark on boards that only have the runtime.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import psutil

ROOT = Path("/")
_CPUFREQ = "sys/devices/system/cpu/cpu0/cpufreq"
_CACHE = "sys/devices/system/cpu/cpu0/cache"

# Arm's "CPU implementer" codes (the MIDR register), for a vendor name where /proc/cpuinfo has none.
ARM_IMPLEMENTERS = {
    0x41: "Arm",
    0x42: "Broadcom",
    0x43: "Cavium",
    0x46: "Fujitsu",
    0x48: "HiSilicon",
    0x4E: "NVIDIA",
    0x50: "Applied Micro",
    0x51: "Qualcomm",
    0x53: "Samsung",
    0x61: "Apple",
    0xC0: "Ampere",
}
# Arm Ltd's own cores by "CPU part" (most server and board CPUs are one of these under another name).
ARM_PARTS = {
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77",
    0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78",
    0xD44: "Cortex-X1",
    0xD46: "Cortex-A510",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD49: "Neoverse-N2",
    0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3",
    0xD4F: "Neoverse-V2",
    0xD80: "Cortex-A520",
    0xD81: "Cortex-A720",
    0xD82: "Cortex-X4",
}
_CACHE_TYPES = {"Data": "d", "Instruction": "i", "Unified": ""}
_SIZE_UNITS = {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024 * 1024}


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """The CPU's vendor and identification numbers from the first processor of a /proc/cpuinfo text.

    x86 gives `vendor` (vendor_id), `family`, `model_number` and `stepping`; arm64 gives `implementer`,
    `part`, `variant` (hex strings as the kernel writes them) and `revision`, with `vendor` named from the
    implementer code. The fields the architecture lacks are None.
    """
    fields = first_processor(cpuinfo)
    implementer = fields.get("CPU implementer")
    vendor = fields.get("vendor_id") or fields.get("vendor")
    if not vendor and implementer:
        code = _int(implementer)
        vendor = ARM_IMPLEMENTERS.get(code) if code is not None else None
    return {
        "vendor": vendor or None,
        "family": _int(fields.get("cpu family")),
        "model_number": _int(fields.get("model")),
        "stepping": _int(fields.get("stepping")),
        "implementer": implementer or None,
        "part": fields.get("CPU part") or None,
        "variant": fields.get("CPU variant") or None,
        "revision": _int(fields.get("CPU revision")),
    }


def arm_core_name(cpuinfo: str) -> str | None:
    """ "Arm Neoverse-N1"-style name from the implementer and part codes (arm64 /proc/cpuinfo has no model
    name), or None where either is unknown."""
    fields = first_processor(cpuinfo)
    implementer = _int(fields.get("CPU implementer"))
    part = _int(fields.get("CPU part"))
    if implementer is None or part is None:
        return None
    vendor = ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer:#x}")
    core = ARM_PARTS.get(part) if implementer == 0x41 else None
    return f"{vendor} {core or f'part {part:#x}'}"


def cpu_clocks(cpuinfo: str = "", root: Path = ROOT) -> dict[str, Any]:
    """Base and maximum clock in MHz and the frequency governor of cpu0.

    Base: cpufreq's base_frequency (intel_pstate), else the "@ 2.10GHz" of an Intel model name. Max:
    cpuinfo_max_freq, else scaling_max_freq, else psutil (only for the live machine, root "/"). The
    governor is None where the kernel exposes no cpufreq (most VMs and containers).
    """
    cpufreq = root / _CPUFREQ
    base = _khz_as_mhz(read(cpufreq / "base_frequency"))
    if base is None:
        named = re.search(r"@\s*([\d.]+)\s*GHz", first_processor(cpuinfo).get("model name", ""))
        base = round(float(named.group(1)) * 1000, 1) if named else None
    top = _khz_as_mhz(read(cpufreq / "cpuinfo_max_freq")) or _khz_as_mhz(read(cpufreq / "scaling_max_freq"))
    if top is None and root == ROOT:
        top = _psutil_max_mhz()
    return {"base_mhz": base, "max_mhz": top, "governor": read(cpufreq / "scaling_governor") or None}


def cpu_caches_kib(root: Path = ROOT) -> dict[str, int] | None:
    """cpu0's cache sizes in KiB by name ("L1d", "L1i", "L2", "L3"), from /sys; None where /sys has none.

    L1 and L2 are usually per core and L3 shared by a cluster or socket: the sizes are what one core sees.
    """
    caches: dict[str, int] = {}
    folder = root / _CACHE
    try:
        indexes = sorted(folder.glob("index*"))
    except OSError:
        return None
    for index in indexes:
        level, kind, size = (read(index / name) for name in ("level", "type", "size"))
        kib = _size_kib(size)
        if not level or kind not in _CACHE_TYPES or kib is None:
            continue
        caches.setdefault(f"L{level}{_CACHE_TYPES[kind]}", kib)
    return caches or None


def virtualization(cpuinfo: str, root: Path = ROOT) -> dict[str, Any]:
    """Whether the CPU runs under a hypervisor, which one the kernel names, and the DMI vendor and product.

    `guest` is True with x86's "hypervisor" flag or a /sys/hypervisor/type, False when the x86 flags are
    listed without it, and None where nothing says (arm64 has no such flag). DMI names the cloud or VM
    ("Amazon EC2", "QEMU", "VMware, Inc.") or the physical board; it is often root-only or absent.
    """
    flags = first_processor(cpuinfo).get("flags")
    kind = read(root / "sys/hypervisor/type") or None
    guest: bool | None = None
    if kind:
        guest = True
    elif flags is not None:
        guest = "hypervisor" in flags.split()
    dmi = root / "sys/class/dmi/id"
    return {
        "guest": guest,
        "hypervisor": kind,
        "sys_vendor": read(dmi / "sys_vendor") or None,
        "product_name": read(dmi / "product_name") or None,
    }


def operating_system(root: Path = ROOT) -> dict[str, Any]:
    """The OS ("Linux"), its kernel release and the distribution's PRETTY_NAME from /etc/os-release.

    For the live machine (root "/"), system and kernel come from `platform`, and off Linux the
    distribution is the macOS or Windows version `platform` knows.
    """
    distro = os_release(read(root / "etc/os-release")).get("PRETTY_NAME")
    if root != ROOT:
        return {"system": None, "kernel": None, "distro": distro}
    system = platform.system() or None
    if not distro and system == "Darwin" and platform.mac_ver()[0]:
        distro = f"macOS {platform.mac_ver()[0]}"
    elif not distro and system == "Windows":
        distro = f"Windows {platform.release()} ({platform.version()})"
    return {"system": system, "kernel": platform.release() or None, "distro": distro or None}


def os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release file, quotes removed."""
    pairs = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            pairs[key] = value.strip().strip("\"'")
    return pairs


def first_processor(cpuinfo: str) -> dict[str, str]:
    """The "key : value" fields of the first processor block of /proc/cpuinfo (arm64 lists some, such as
    Features, per processor and "Hardware" after the last block: fields after the first block that it does
    not have are kept too)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return fields


def read(path: Path) -> str:
    """A small text file's content, stripped; "" when it is missing, unreadable or not text."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except (OSError, ValueError):
        return ""


def _int(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text, 0)  # "0x41" as well as "25"
    except ValueError:
        return None


def _khz_as_mhz(text: str) -> float | None:
    value = _int(text)
    return round(value / 1000, 1) if value else None


def _size_kib(text: str) -> int | None:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text.strip(), flags=re.IGNORECASE)
    if not match:
        return None
    return round(int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]) or None


def _psutil_max_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (psutil.Error, OSError, RuntimeError, NotImplementedError):
        return None
    top = getattr(freq, "max", None) if freq else None
    return round(float(top), 1) if isinstance(top, int | float) and top > 0 else None
