"""A process's CPU time and memory from Linux's /proc, for the benches (0 for a process that is gone)."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (Spark's JVM is the streaming driver's child, its Python workers the
    JVM's)."""
    found: list[int] = []
    try:
        direct = [int(p) for task in Path(f"/proc/{pid}/task").iterdir()
                  for p in (task / "children").read_text().split()]
    except OSError:
        return found
    for child in direct:
        found += [child, *children(child)]
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process, s (its children's once it has waited for them)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS  # utime stime cutime cstime


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its live descendants, s. A descendant that ended unwaited is not counted."""
    return sum(cpu_seconds(p) for p in (pid, *children(pid)))


def rss_mib(pid: int) -> float:
    """Resident memory of one process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
