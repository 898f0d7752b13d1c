"""The machine description in report.json (edgekd/bench/machine.py): x86 and arm64 /proc/cpuinfo, a /sys and
/etc laid out under a test folder, and None for every fact a missing file would have told."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.bench import envinfo, machine

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz
stepping\t: 8
microcode\t: 0x2b000461
cpu MHz\t\t: 2000.000
cache size\t: 107520 KB
flags\t\t: fpu vme de pse avx2 avx512f avx512_vnni amx_tile hypervisor
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz
stepping\t: 8
flags\t\t: fpu vme de pse avx2 avx512f avx512_vnni amx_tile hypervisor
"""

# An AWS Graviton2 (Neoverse-N1): arm64 lists no model name and no vendor, only the MIDR codes.
ARM64_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""

OS_RELEASE = 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n# a comment\nID=ubuntu\n'


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A root with cpu0's cpufreq and caches, a hypervisor type, DMI and an os-release, as Linux lays them out."""
    cpu0 = "sys/devices/system/cpu/cpu0"
    _write(tmp_path, f"{cpu0}/cpufreq/base_frequency", "2000000")
    _write(tmp_path, f"{cpu0}/cpufreq/cpuinfo_max_freq", "3800000")
    _write(tmp_path, f"{cpu0}/cpufreq/scaling_max_freq", "3000000")
    _write(tmp_path, f"{cpu0}/cpufreq/scaling_governor", "performance")
    caches = [
        ("1", "Data", "48K"),
        ("1", "Instruction", "32K"),
        ("2", "Unified", "2048K"),
        ("3", "Unified", "105M"),
    ]
    for i, (level, kind, size) in enumerate(caches):
        for name, value in (("level", level), ("type", kind), ("size", size)):
            _write(tmp_path, f"{cpu0}/cache/index{i}/{name}", value)
    _write(tmp_path, "sys/hypervisor/type", "xen")
    _write(tmp_path, "sys/class/dmi/id/sys_vendor", "Amazon EC2")
    _write(tmp_path, "sys/class/dmi/id/product_name", "m7i.2xlarge")
    _write(tmp_path, "etc/os-release", OS_RELEASE)
    return tmp_path


def test_x86_cpuinfo_gives_vendor_family_model_and_stepping() -> None:
    assert machine.cpu_identity(X86_CPUINFO) == {
        "vendor": "GenuineIntel",
        "family": 6,
        "model_number": 143,
        "stepping": 8,
        "implementer": None,
        "part": None,
        "variant": None,
        "revision": None,
    }
    assert envinfo.cpu_model(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz"
    assert machine.arm_core_name(X86_CPUINFO) is None


def test_arm64_cpuinfo_gives_implementer_part_variant_and_revision() -> None:
    assert machine.cpu_identity(ARM64_CPUINFO) == {
        "vendor": "Arm",
        "family": None,
        "model_number": None,
        "stepping": None,
        "implementer": "0x41",
        "part": "0xd0c",
        "variant": "0x3",
        "revision": 1,
    }
    # arm64 has no model name: the core is named from its codes, not left as "aarch64".
    assert envinfo.cpu_model(ARM64_CPUINFO) == "Arm Neoverse-N1"
    assert envinfo.cpu_flags(ARM64_CPUINFO)["asimd"] is True
    unknown_part = ARM64_CPUINFO.replace("0xd0c", "0xabc").replace("0x41", "0xc0")
    assert machine.arm_core_name(unknown_part) == "Ampere part 0xabc"


def test_clocks_caches_host_and_os_come_from_sys_and_etc(sysfs: Path) -> None:
    assert machine.cpu_clocks(X86_CPUINFO, root=sysfs) == {
        "base_mhz": 2000.0,
        "max_mhz": 3800.0,
        "governor": "performance",
    }
    assert machine.cpu_caches_kib(sysfs) == {"L1d": 48, "L1i": 32, "L2": 2048, "L3": 105 * 1024}
    assert machine.virtualization(ARM64_CPUINFO, root=sysfs) == {
        "guest": True,  # no flag on arm64, but the kernel names a hypervisor
        "hypervisor": "xen",
        "sys_vendor": "Amazon EC2",
        "product_name": "m7i.2xlarge",
    }
    assert machine.operating_system(sysfs)["distro"] == "Ubuntu 22.04.4 LTS"


def test_scaling_max_and_the_model_name_stand_in_for_missing_cpufreq_files(sysfs: Path) -> None:
    cpufreq = sysfs / "sys/devices/system/cpu/cpu0/cpufreq"
    (cpufreq / "base_frequency").unlink()
    (cpufreq / "cpuinfo_max_freq").unlink()
    clocks = machine.cpu_clocks(X86_CPUINFO, root=sysfs)
    assert clocks["base_mhz"] == 2000.0  # "@ 2.00GHz" in the model name
    assert clocks["max_mhz"] == 3000.0


def test_missing_files_give_none_and_never_raise(tmp_path: Path) -> None:
    assert set(machine.cpu_identity("").values()) == {None}
    assert machine.cpu_clocks("", root=tmp_path) == {"base_mhz": None, "max_mhz": None, "governor": None}
    assert machine.cpu_caches_kib(tmp_path) is None
    assert machine.cpu_caches_kib(tmp_path / "no such folder") is None
    assert machine.virtualization("", root=tmp_path) == {
        "guest": None,
        "hypervisor": None,
        "sys_vendor": None,
        "product_name": None,
    }
    assert machine.operating_system(tmp_path) == {"system": None, "kernel": None, "distro": None}


def test_unreadable_or_odd_files_give_none(tmp_path: Path) -> None:
    cpu0 = "sys/devices/system/cpu/cpu0"
    _write(tmp_path, f"{cpu0}/cpufreq/cpuinfo_max_freq", "<unknown>")
    (tmp_path / f"{cpu0}/cpufreq/base_frequency").mkdir()  # a folder where a file should be
    _write(tmp_path, f"{cpu0}/cache/index0/level", "1")
    _write(tmp_path, f"{cpu0}/cache/index0/type", "Data")
    _write(tmp_path, f"{cpu0}/cache/index0/size", "lots")
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/product_name").write_bytes(b"\xff\xfe")
    assert machine.cpu_clocks("", root=tmp_path)["max_mhz"] is None
    assert machine.cpu_clocks("", root=tmp_path)["base_mhz"] is None
    assert machine.cpu_caches_kib(tmp_path) is None
    assert machine.virtualization(X86_CPUINFO.replace(" hypervisor", ""), root=tmp_path)["guest"] is False


def test_the_live_machine_is_described_without_raising() -> None:
    env = envinfo.environment()
    cpu = env["cpu"]
    assert {"vendor", "base_mhz", "max_mhz", "governor", "caches_kib"} <= set(cpu)
    assert set(env["virtualization"]) == {"guest", "hypervisor", "sys_vendor", "product_name"}
    assert env["os"]["system"] and env["os"]["kernel"]


def test_report_md_and_html_describe_the_machine_compactly(sysfs: Path, tmp_path: Path) -> None:
    from edgekd.report.html import render_report_html
    from edgekd.report.markdown import write_report_md

    cpu = {
        "model": envinfo.cpu_model(X86_CPUINFO),
        **machine.cpu_identity(X86_CPUINFO),
        **machine.cpu_clocks(X86_CPUINFO, root=sysfs),
        "caches_kib": machine.cpu_caches_kib(sysfs),
    }
    env = {
        "cpu": cpu,
        "memory_total_mb": 33_500.0,
        "virtualization": machine.virtualization(X86_CPUINFO, root=sysfs),
        "os": {**machine.operating_system(sysfs), "system": "Linux", "kernel": "6.8.0-1015-aws"},
    }
    report = {"recipe": "m", "environment": env, "variants": [{"name": "teacher"}]}
    write_report_md(report, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    details = (
        "- CPU details: GenuineIntel family 6 model 143 stepping 8; base 2.00 GHz, max 3.80 GHz; "
        "governor performance; caches L1d 48 KiB, L1i 32 KiB, L2 2 MiB, L3 105 MiB"
    )
    host = "- Host: 33.5 GB RAM; virtual machine: xen Amazon EC2 m7i.2xlarge; Ubuntu 22.04.4 LTS, Linux 6.8.0-1015-aws"
    assert details in text and host in text
    page = render_report_html(report, {})
    assert "L3 105 MiB" in page and "Amazon EC2 m7i.2xlarge" in page


def test_a_report_from_before_the_machine_fields_still_reads(tmp_path: Path) -> None:
    from edgekd.report.markdown import write_report_md
    from edgekd.report.schema import Report

    old = {
        "environment": {"cpu": {"model": "AMD EPYC"}, "memory_total_mb": 8000.0},
        "variants": [{"name": "a"}],
    }
    report = Report.model_validate(old)
    assert report.environment.cpu.caches_kib is None and report.environment.os is None
    write_report_md(report, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "- Host: 8.0 GB RAM" in text and "CPU details" not in text
