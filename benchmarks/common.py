"""Shared bits of the benchmark scripts: where results go, what they carry, repeats.

A run never touches the recorded baseline: ``record`` writes to the git-ignored
``benchmarks/runs/<name>-<UTC time>.json`` unless the script was started with
``--out PATH`` (that file, or a timestamped file in that folder) or ``--record``
(``benchmarks/results/<name>.json``, the files RESULTS.md quotes). Every results file
carries the command line, the script's settings, the commit, the machine (CPU model,
cores, memory, GPU and driver) and the library versions.

``--repeat N``: see benchmarks/spread.py. Past a clean teardown, stderr goes to a log
under runs/logs/ so a run's last lines are its results (``quietly_closed``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
RUNS_DIR = Path(__file__).parent / "runs"
ROOT = Path(__file__).parent.parent
LIBRARIES = ("ray", "torch", "torchvision", "open-clip-torch", "nvidia-dali-cuda130",
             "nvidia-dali-cuda120", "confluent-kafka", "lancedb", "usearch", "numpy", "pillow",
             "fastapi", "uvicorn", "httpx", "pydantic", "sqlalchemy")
_SECRET = re.compile(r"KEY|PASSWORD|SECRET|TOKEN", re.IGNORECASE)


class _Destination:
    """Where ``record`` writes, as the script's command line asked (``BenchParser``)."""

    out: Path | None = None
    baseline: bool = False
    settings: dict[str, Any] = {}


def command_line() -> str:
    """How this script was started, as one would type it again."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = (f"python -m {spec.name}" if spec is not None and spec.name
               else f"python {os.path.relpath(sys.argv[0], ROOT)}")
    return " ".join([program, *sys.argv[1:]])


# Files that cannot change a measurement: a results file or a document edited while a
# benchmark runs does not make its figures come from a tree other than the commit.
NOT_MEASURED = (":(exclude)*.md", ":(exclude)benchmarks/results", ":(exclude)benchmarks/runs")


def commit(root: Path = ROOT) -> str:
    """The checked-out commit, ``+dirty`` when tracked files that could change what is
    measured (code, settings, tests; not documents or results) differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *NOT_MEASURED],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout)"
    return head + ("+dirty" if dirty else "")


def provenance(machine_text: str | None = None) -> dict[str, Any]:
    """What every results file carries: the command line, the commit, the machine (and its
    parts), the library versions, when."""
    return {"command": command_line(), "commit": commit(),
            "machine": machine_text or machine(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": host(), "versions": versions()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(ln.split(":", 1)[1].strip() for ln in handle
                        if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    """Every NVIDIA card nvidia-smi sees: name, driver, memory; empty without one."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    cards = []
    for line in answer.stdout.strip().splitlines():
        name, driver, memory = (part.strip() for part in (line.split(",") + ["", ""])[:3])
        cards.append({"name": name, "driver": driver, "memory": memory})
    return cards


def host() -> dict[str, Any]:
    """The machine's parts: CPU model, cores, memory, GPUs with their driver, OS, Python."""
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": memory_gb,
            "gpus": gpus(), "os": platform.platform(), "python": platform.python_version()}


def machine() -> str:
    """One line: cores, CPU model and the GPU (with its driver) or "no GPU"."""
    cards = gpus()
    gpu = (", ".join(f"{c['name']} (driver {c['driver']})" for c in cards) if cards
           else "no GPU")
    return f"{os.cpu_count()} cores ({_cpu_model()}), {gpu}"


def versions() -> dict[str, str]:
    """Installed versions of the libraries a figure depends on (those present)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def unlimited_ingestion() -> Any:
    """The HTTP edge's settings for a benchmark's own key: every rate limit (reads and
    writes) far above what a run sends, so a run measures the pipeline, never a 429."""
    from deeplens.settings import IngestionSettings

    return IngestionSettings(upload_rate_limit_per_minute=10**7, upload_rate_limit_burst=10**6,
                             rate_limit_per_minute=10**7, rate_limit_burst=10**6)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- where a run goes ---------------------------------------------------------------------


class BenchParser(argparse.ArgumentParser):
    """The scripts' argument parser: ``--out`` / ``--record`` (and ``--repeat N``) on top
    of the script's own options; parsing them tells ``record`` where to write."""

    def __init__(self, doc: str | None, *, repeat: bool = True, **kwargs: Any) -> None:
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)
        group = self.add_argument_group("results (benchmarks/common.py)")
        group.add_argument("--out", type=Path, default=None, metavar="PATH",
                           help="write the results file here (a folder: a timestamped file "
                                "in it); default benchmarks/runs/<name>-<UTC time>.json, "
                                "which git ignores")
        group.add_argument("--record", action="store_true",
                           help="overwrite the recorded baseline benchmarks/results/<name>.json "
                                "(what RESULTS.md quotes); only on purpose")
        if repeat:
            group.add_argument("--repeat", type=int, default=1, metavar="N",
                               help="measure N times: every figure becomes the median of the "
                                    "N, with its min-max under 'spread'")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        if parsed.out is not None and parsed.record:
            self.error("--out and --record: choose one")
        if getattr(parsed, "repeat", 1) < 1:
            self.error("--repeat must be at least 1")
        configure(out=parsed.out, baseline=parsed.record, settings=vars(parsed))
        return parsed


def bench_parser(doc: str | None, *, repeat: bool = True) -> BenchParser:
    return BenchParser(doc, repeat=repeat)


def configure(out: Path | None = None, baseline: bool = False,
              settings: dict[str, Any] | None = None) -> None:
    """Where the next ``record`` writes (what ``BenchParser.parse_args`` sets)."""
    _Destination.out = Path(out) if out is not None else None
    _Destination.baseline = baseline
    _Destination.settings = {k: v for k, v in (settings or {}).items()
                             if k not in ("out", "record")}


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def destination(name: str, out: Path | None = None, baseline: bool = False) -> Path:
    """The results file of a run: ``out`` (a file, or a folder for a timestamped name),
    the baseline ``results/<name>.json``, or by default ``runs/<name>-<time>.json``."""
    if out is not None:
        out = Path(out)
        if out.is_dir() or str(out).endswith(os.sep):
            return _free(out / f"{name}-{_stamp()}.json")
        return out
    if baseline:
        return RESULTS_DIR / f"{name}.json"
    return _free(RUNS_DIR / f"{name}-{_stamp()}.json")


def _free(path: Path) -> Path:
    """``path``, or ``path`` with -2, -3... when two runs end within one second."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def run_settings(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The script's options, plus every DEEPLENS_* variable set (secrets masked)."""
    env = {k: ("***" if _SECRET.search(k) else v) for k, v in sorted(os.environ.items())
           if k.startswith("DEEPLENS_")}
    return _jsonable({**_Destination.settings, **(extra or {}), "environment": env})


def record(name: str, figures: dict, *, out: Path | None = None,
           baseline: bool | None = None, settings: dict[str, Any] | None = None) -> Path:
    """Write figures with the command line, settings, commit, machine, library versions
    and time; where: see ``destination`` (the command line's ``--out`` / ``--record`` unless
    given here). tests/test_results_figures.py checks every quoted figure against the
    recorded baseline."""
    path = destination(name, out if out is not None else _Destination.out,
                       _Destination.baseline if baseline is None else baseline)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, **provenance(), "settings": run_settings(settings),
               **figures}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# -- clean output -------------------------------------------------------------------------


_muted: list[Path] = []


def mute_stderr_from_now(label: str) -> Path:
    """Past a clean teardown, clients a library still holds (an admin client's librdkafka
    thread retrying a stopped broker, Ray's core worker and its forwarded "(raylet)"
    lines) may write to stderr until the process exits: stderr goes to a log from here
    on, file descriptor 2 and Python's ``sys.stderr`` both. An uncaught exception is
    still printed on the terminal (and in the log)."""
    if _muted:
        return _muted[0]
    log = _free(RUNS_DIR / "logs" / f"{label}-{_stamp()}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = open(os.dup(2), "w", buffering=1)  # noqa: SIM115
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = open(log, "a", buffering=1)  # noqa: SIM115

    def show(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        import traceback

        for stream in (terminal, sys.stderr):
            traceback.print_exception(kind, error, tb, file=stream)

    sys.stdout = _WithoutRayLines(sys.stdout, sys.stderr)
    sys.excepthook = show
    threading.excepthook = lambda hook: show(hook.exc_type, hook.exc_value,  # type: ignore[arg-type]
                                             hook.exc_traceback)
    _muted.append(log)
    return log


class _WithoutRayLines:
    """stdout past a teardown: the lines Ray forwards from its processes ("(raylet) Task
    ServeController.listen_for_change failed ... actor is dead") go to the log; the
    results stay on stdout."""

    RAY_LINE = re.compile(r"^(\x1b\[[\d;]*m)?\((raylet|pid=|\w+ pid=)")

    def __init__(self, out: Any, log: Any) -> None:
        self.out, self.log, self._line = out, log, ""

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            (self.log if self.RAY_LINE.match(line) else self.out).write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._line:
            (self.log if self.RAY_LINE.match(self._line) else self.out).write(self._line)
            self._line = ""
        self.out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


@contextmanager
def quietly_closed(resource: Any, label: str) -> Iterator[Any]:
    """``with resource`` whose clean exit (a stack's, a broker's shutdown) and everything
    after it writes its stderr noise to a log (``mute_stderr_from_now``); an exit on an
    error stays on the terminal."""
    value = resource.__enter__()
    try:
        yield value
    except BaseException:
        if not resource.__exit__(*sys.exc_info()):
            raise
    else:
        mute_stderr_from_now(label)
        resource.__exit__(None, None, None)
