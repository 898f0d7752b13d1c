"""The benchmark's "machine was busy" warnings count other processes' CPU time, not the lagging load average."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgekd.bench.envinfo import CpuSnapshot, cpu_snapshot, other_processes_cores
from edgekd.bench.inputs import busy_after_warnings, setup_warnings


def proc_stat(busy_ticks: int, idle_ticks: int) -> str:
    """A /proc/stat with the same busy/idle counters on every core this process may use."""
    cores = sorted(os.sched_getaffinity(0))
    lines = [f"cpu  {busy_ticks * len(cores)} 0 0 {idle_ticks * len(cores)} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0" for n in cores]
    lines.append("intr 1 2 3")
    return "\n".join(lines)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_snapshot_sums_the_per_core_lines_of_this_process_affinity():
    snap = cpu_snapshot(proc_stat(busy_ticks=300, idle_ticks=700))
    hz = os.sysconf("SC_CLK_TCK")
    cores = len(os.sched_getaffinity(0))
    assert snap is not None and snap.cores == cores
    assert snap.busy_s == pytest.approx(300 * cores / hz)
    assert snap.total_s == pytest.approx(1000 * cores / hz)


def test_no_proc_stat_means_no_snapshot():
    assert cpu_snapshot("") is None
    assert other_processes_cores(None, None) is None


def test_own_cpu_time_is_not_counted_as_other_processes():
    # 2 cores over 10 s of wall time: 20 core-seconds, of which 12 busy; this process used 10 of them.
    before = CpuSnapshot(busy_s=100.0, total_s=1000.0, own_s=5.0, cores=2)
    after = CpuSnapshot(busy_s=112.0, total_s=1020.0, own_s=15.0, cores=2)
    assert other_processes_cores(before, after) == pytest.approx(0.2)
    # Only our own work: nobody else was busy, whatever the load average says.
    after_alone = CpuSnapshot(busy_s=110.0, total_s=1020.0, own_s=15.0, cores=2)
    assert other_processes_cores(before, after_alone) == 0.0


# Spins until its own CPU time reaches argv[1] seconds, reports it, then sleeps on stdin: while it has not been
# waited for, its CPU time belongs to "other processes", not to the parent's os.times().
SPIN_CHILD = """
import sys, time
while time.process_time() < float(sys.argv[1]):
    pass
print(time.process_time(), flush=True)
sys.stdin.read()
"""


def spin(cpu_seconds: float) -> float:
    """Burn `cpu_seconds` of this process's CPU time; returns the CPU time actually used."""
    start = time.process_time()
    total = 0
    while time.process_time() - start < cpu_seconds:
        total += sum(range(1000))
    return time.process_time() - start


def test_real_snapshots_count_a_spinning_child_as_other_processes_and_our_own_spin_as_ours():
    # Bounds, not values: they hold whatever else the machine runs, since other processes only add to
    # `others` (the child's lower bound) and every core-second, ours included, fits in the wall time.
    before = cpu_snapshot()
    if before is None:
        pytest.skip("no /proc/stat")
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN_CHILD, "1.0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        own_cpu_s = spin(0.5)
        assert child.stdout is not None
        child_cpu_s = float(child.stdout.readline())
        after = cpu_snapshot()
    finally:
        child.kill()
        child.wait(timeout=60)
    assert after is not None
    wall_s = (after.total_s - before.total_s) / after.cores
    others = other_processes_cores(before, after)
    assert others is not None
    # The child's second is somebody else's: lost if unwaited children counted as ours or the time units slip.
    assert others * wall_s >= 0.75 * child_cpu_s
    # Our own spin is not: on a busy machine, counting it would push the others past the cores left over, by
    # own_cpu_s / wall_s (0.2 cores on this 2-core one). The 0.05 covers os.times()' whole clock ticks.
    assert others <= after.cores - own_cpu_s / wall_s + 0.05


def env_with(at_start=None, during=None, load=(1.9, 1.9, 1.9), load_after=(1.9, 1.9, 1.9)):
    return {
        "cpu": {"usable_cores": 2},
        "load_average": list(load),
        "load_average_after": list(load_after),
        "other_processes_cores": {"at_start": at_start, "during": during},
    }


def test_a_high_load_average_left_by_the_previous_stage_does_not_warn_when_the_cores_are_free():
    env = env_with(at_start=0.05, during=0.1, load=(1.8, 1.9, 1.9), load_after=(1.95, 1.5, 1.4))
    assert not [w for w in setup_warnings(env, 1, 100, 50) if "busy" in w or "other processes" in w]
    assert busy_after_warnings(env) == []


def test_other_processes_using_the_cores_warn_before_and_during():
    env = env_with(at_start=1.6, during=1.2, load=(0.1, 0.1, 0.1), load_after=(0.2, 0.1, 0.1))
    assert any("other processes were using 1.6 of 2 cores" in w for w in setup_warnings(env, 1, 100, 50))
    [during] = busy_after_warnings(env)
    assert "other processes used 1.2 of 2 cores on average during the run" in during


def test_without_proc_stat_the_load_average_decides():
    env = env_with(at_start=None, during=None, load=(1.8, 1.9, 1.9), load_after=(1.95, 1.5, 1.4))
    assert any("busy at the start (load 1.8" in w for w in setup_warnings(env, 1, 100, 50))
    assert "load average rose to 1.95" in busy_after_warnings(env)[0]
