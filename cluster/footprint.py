"""What a running local stack costs in memory: every process it started, by role.

Read from ``/proc`` (Linux): the stack's own process and all its descendants (the
broker, Ray's GCS and raylet, every actor and Serve replica). Each process counts
its proportional set size (PSS), so libraries shared by many processes (torch,
Ray) are counted once overall rather than once per process, as RSS would.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

PROC = Path("/proc")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def pss_bytes(pid: int) -> int:
    """Proportional set size, falling back to RSS where smaps_rollup is unreadable."""
    for name, field in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in (PROC / str(pid) / name).read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def role(pid: int) -> str:
    """A readable role: Ray sets worker titles to ``ray::<Actor>...``."""
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    head = cmdline.strip().split(" ")[0] if cmdline.strip() else ""
    if head.startswith("ray::"):
        name = head[5:].split(".")[0]
        if name.startswith("ServeReplica:"):  # ServeReplica:<app>:<deployment>
            return "Serve " + name.split(":")[-1]
        name = name.split(":")[0]
        return "Ray worker (idle)" if name in ("IDLE", "") else name
    for marker, label in (("gcs_server", "Ray GCS"), ("raylet", "raylet"), ("tansu", "broker"),
                          ("dashboard", "Ray dashboard"), ("log_monitor", "Ray log monitor"),
                          ("runtime_env", "Ray runtime env agent")):
        if marker in cmdline:
            return label
    return "deeplens (driver)" if pid == os.getpid() else Path(head).name or "?"


def footprint(pid: int | None = None) -> tuple[int, dict[str, tuple[int, int]]]:
    """(total bytes, {role: (bytes, processes)}) over ``pid`` and its descendants."""
    by_role: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # type: ignore[arg-type]
    total = 0
    for proc in descendants(pid or os.getpid()):
        size = pss_bytes(proc)
        total += size
        entry = by_role[role(proc)]
        entry[0] += size
        entry[1] += 1
    return total, {k: (v[0], v[1]) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1][0])}


def describe(total: int, by_role: dict[str, tuple[int, int]], top: int = 6) -> str:
    parts = [f"{name} {size / 2**20:.0f} MB" + (f" ({count} processes)" if count > 1 else "")
             for name, (size, count) in list(by_role.items())[:top]]
    return f"{total / 2**30:.2f} GB in all: " + ", ".join(parts)
