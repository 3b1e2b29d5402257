"""CPU time and peak memory of this process and its descendants, read from ``/proc`` (Linux).

The data benches count CPU time per crop over the whole process tree (a local Ray instance's
raylet, GCS and workers are descendants of the driver; so are a DataLoader's workers), which
is less distorted by other load on a shared machine than wall-clock rates, and the peak
resident memory (``VmHWM``) of the processes that decode. ``psutil`` is not a dependency; on a
system without ``/proc`` every function returns empty results.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces


def descendants(root: int | None = None) -> list[int]:
    """``root`` (default: this process) and every process below it."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in PROC.glob("[0-9]*") if PROC.is_dir() else []:
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int] | None = None) -> dict[int, float]:
    """User + system CPU seconds per process (default: this process tree)."""
    out = {}
    for pid in descendants() if pids is None else pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib(pids: list[int]) -> dict[int, float]:
    """Peak resident memory (``VmHWM``, MiB) per process, since its start or its last reset."""
    peaks = {pid: _status_kib(pid, "VmHWM") for pid in pids}
    return {pid: kib / 1024 for pid, kib in peaks.items() if kib is not None}


def reset_peaks(pids: list[int]) -> None:
    """Restart the peak-RSS counters of ``pids`` (``clear_refs`` 5); processes that refuse are left."""
    for pid in pids:
        try:
            (PROC / str(pid) / "clear_refs").write_text("5")
        except OSError:
            pass


def is_ray_worker(pid: int) -> bool:
    """A Ray worker process (the ones that run Ray Data's read and crop tasks)."""
    line = cmdline(pid)
    return line.startswith("ray::") or "default_worker.py" in line
