"""Memory figures from /proc/<pid>/status, shared by the benchmark scripts (Linux only)."""

from __future__ import annotations

from pathlib import Path


def status_mib(field: str, pid: int | str = "self") -> float:
    """`VmRSS` (resident now) or `VmHWM` (this process's own peak) in MiB.

    VmHWM rather than `resource.getrusage().ru_maxrss`: the latter carries the parent's peak over fork + exec.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")
