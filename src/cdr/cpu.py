"""The CPU's instruction-set flags, read once from /proc/cpuinfo (or `lscpu` where that has none).

Shared by `cdr doctor` (what the machine can do) and the backends that must work around a CPU feature.
"""

from __future__ import annotations

import functools
import os
import subprocess


def parse_cpu_flags(text: str) -> set[str] | None:
    """The CPU flags in /proc/cpuinfo or `lscpu` text ('flags' on x86, 'Features' on Arm); None if it has none."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def lscpu_text() -> str:
    try:
        return subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def cpu_flags_and_source() -> tuple[frozenset[str] | None, str | None]:
    """This machine's CPU flags and where they were read ('/proc/cpuinfo', else 'lscpu'); (None, None) where
    neither has any."""
    for source, read in (("/proc/cpuinfo", lambda: read_text("/proc/cpuinfo")), ("lscpu", lscpu_text)):
        flags = parse_cpu_flags(read())
        if flags is not None:
            return frozenset(flags), source
    return None, None


def cpu_flags() -> frozenset[str] | None:
    """This machine's CPU flags, or None where neither source has any."""
    return cpu_flags_and_source()[0]
