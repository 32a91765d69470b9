"""Sampling profiles of running processes with py-spy, summarised per process.

``profile_processes({pid: role}, seconds)`` runs ``py-spy record`` (raw collapsed
stacks, non-blocking, idle threads left out) on every process at once and returns, per
role: the sample count, the share of samples by *where the time is spent* (the innermost
frame that is not the standard library: Kafka client, pydantic, SQLAlchemy, Ray/Serve,
HTTP framework, ... or DeepLens' own code), the top functions by self time, and the top
DeepLens functions by inclusive time. py-spy is installed with ``ray[serve]``; it
needs ptrace rights over the processes (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
AREAS = (  # first match wins, on the frame's file path
    ("Kafka client", ("confluent_kafka", "deeplens/kafka.py")),
    ("pydantic (event parse/build)", ("pydantic",)),
    ("SQLAlchemy / SQLite (catalog)", ("sqlalchemy", "sqlite3", "alembic")),
    ("LanceDB / Arrow (vector store)", ("lancedb", "pyarrow", "lance")),
    ("HTTP framework (Starlette/FastAPI/uvicorn)", ("starlette", "fastapi", "uvicorn", "h11",
                                                    "httptools", "multipart", "anyio")),
    ("Ray Serve / Ray core", ("ray/",)),
    ("gRPC / protobuf (Ray's RPC)", ("grpc", "google/protobuf")),
    ("image decode / model (DALI, Pillow, torch)", ("nvidia/dali", "PIL", "torch", "open_clip")),
    ("numpy / numba", ("numpy", "numba")),
    ("DeepLens code", ("deeplens/", "actors/", "ingestion/", "serve_apps/", "cluster/")),
)
STDLIB = ("/lib/python3", "<frozen")


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame.strip())
        out.append((match["func"], match["path"]) if match else (frame.strip(), ""))
    return out


def _stdlib(path: str) -> bool:
    return path.startswith("<") or ("/lib/python3" in path and "site-packages" not in path)


def _area(frames: list[tuple[str, str]]) -> str:
    """Where a sample's time goes: the innermost frame outside the standard library."""
    for _func, path in reversed(frames):
        if not path or _stdlib(path):
            continue
        for name, needles in AREAS:
            if any(n in path for n in needles):
                return name
        return "other libraries"
    return "standard library only (threads, asyncio, json, ...)"


def summarise(raw: str, top: int = 6) -> dict:
    samples = 0
    areas: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        samples += n
        areas[_area(frames)] += n
        func, path = frames[-1]
        leaf[f"{func} ({Path(path).name})"] += n
        seen = {f"{f} ({p.split('site-packages/')[-1]})" for f, p in frames
                if any(d in p for d in AREAS[-1][1]) and "site-packages" not in p}
        for name in seen:
            ours[name] += n

    def share(counter: Counter[str]) -> list[list]:
        return [[name, round(100 * n / max(samples, 1), 1)] for name, n in counter.most_common(top)]

    return {"samples": samples, "areas": share(Counter(dict(areas.most_common()))),
            "self": share(leaf), "deeplens_inclusive": share(ours)}


def profile_processes(roles: dict[int, str], seconds: float, rate: int = 50) -> dict[str, dict]:
    """Profile every process at once for ``seconds``; {role: summary}."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        for pid, role in roles.items():
            out = Path(tmp) / f"{pid}.txt"
            running.append((role, out, subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
                 str(rate), "--format", "raw", "--nonblocking", "--full-filenames", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        result: dict[str, dict] = {}
        for role, out, proc in running:
            proc.wait(timeout=seconds + 60)
            if out.exists():
                result[role] = summarise(out.read_text())
        return result
