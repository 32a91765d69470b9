"""Shared bits of the benchmark scripts: where results go, what they carry, repeats.

A run never touches the recorded baseline: ``record`` writes to the git-ignored
``benchmarks/runs/<name>-<UTC time>.json`` unless the script was started with
``--out PATH`` (that file, or a timestamped file in that folder) or ``--record``
(``benchmarks/results/<name>.json``, the files RESULTS.md quotes). Every results file
carries the command line, the script's settings, the commit, the machine (CPU model,
cores, memory, GPU and driver) and the library versions.

``--repeat N`` (``repeated``) runs a script's measurement N times; every figure of the
file is then the median of the N, with its min-max under ``spread`` and each run under
``runs`` (``python -m benchmarks.compare`` reads both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
RUNS_DIR = Path(__file__).parent / "runs"
ROOT = Path(__file__).parent.parent
# What a results file says about itself rather than measures: not figures to compare.
NOT_FIGURES = frozenset({"benchmark", "command", "commit", "machine", "when", "provenance",
                         "settings", "host", "versions", "runs", "spread", "repeat", "lag",
                         "profiles", "busy_samples", "missing_keys"})
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


def commit() -> str:
    """The checked-out commit, ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
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


# -- repeats and spread -------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def key_path(prefix: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][\w-]*", key):
        return f"{prefix}.{key}" if prefix else key
    return f'{prefix}["{key}"]'


def figures_of(data: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric figure of a results file by its key path (``rows[0].p50_ms``,
    ``cpu["stage dedup"]``), leaving out what describes the run (``NOT_FIGURES``)."""
    found: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if key in NOT_FIGURES:
                continue
            found.update(figures_of(value, key_path(prefix, str(key))))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found.update(figures_of(value, f"{prefix}[{i}]"))
    elif _is_number(data):
        found[prefix] = float(data)
    return found


def spreads_of(data: Any, prefix: str = "") -> dict[str, tuple[float, float]]:
    """Every figure's [min, max] from the ``spread`` dicts of a results file, the top
    one and those of nested repeated parts (a tuner cell), by full key path."""
    found: dict[str, tuple[float, float]] = {}
    if isinstance(data, dict):
        for path, low_high in (data.get("spread") or {}).items():
            found[f"{prefix}.{path}" if prefix and not path.startswith("[")
                  else prefix + path] = (float(low_high[0]), float(low_high[1]))
        for key, value in data.items():
            if key not in NOT_FIGURES:
                found.update(spreads_of(value, key_path(prefix, str(key))))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found.update(spreads_of(value, f"{prefix}[{i}]"))
    return found


def _decimals(value: float) -> int:
    text = repr(float(value))
    return len(text.split(".")[1]) if "." in text and "e" not in text else 6


def _median(values: list[Any]) -> Any:
    """The median, to the decimals the runs have (an even count averages two)."""
    middle = statistics.median(values)
    if all(isinstance(v, int) for v in values) and float(middle).is_integer():
        return int(middle)
    return round(float(middle), max(_decimals(v) for v in values))


def median_of(runs: list[Any]) -> Any:
    """The runs merged leaf by leaf: numbers become their median; anything else (labels,
    lists of unequal length, such as time series) is taken from the first run."""
    first = runs[0]
    if all(isinstance(r, dict) for r in runs):
        return {k: (median_of([r[k] for r in runs]) if all(k in r for r in runs) else v)
                for k, v in first.items()}
    if all(isinstance(r, list) for r in runs) and len({len(r) for r in runs}) == 1:
        return [median_of([r[i] for r in runs]) for i in range(len(first))]
    if all(_is_number(r) for r in runs):
        return _median(runs)
    return first


def summarize(runs: list[dict]) -> dict:
    """One results dict from N runs: medians, ``spread`` (path -> [min, max]) and ``runs``."""
    if len(runs) == 1:
        return {**runs[0], "repeat": 1}
    merged = median_of(runs)
    per_run = [figures_of(r) for r in runs]
    spread = {path: [min(f[path] for f in per_run), max(f[path] for f in per_run)]
              for path in figures_of(merged) if all(path in f for f in per_run)}
    return {**merged, "repeat": len(runs), "spread": spread, "runs": runs}


def repeated(times: int, measure: Callable[[int], dict],
             label: str = "run") -> dict:
    """``measure(i)`` for i in 0..times-1, summarized (see ``summarize``)."""
    runs = []
    for i in range(times):
        runs.append(measure(i))
        if times > 1:
            print(f"[{label} {i + 1}/{times} done]", flush=True)
    return summarize(runs)


def with_spread(summary: dict, path: str, value: Any, unit: str = "") -> str:
    """``54.2`` or, after repeats, ``54.2 (51.0-56.1)``: the median and its min-max."""
    low_high = summary.get("spread", {}).get(path)
    text = f"{value}{unit}"
    if low_high and summary.get("repeat", 1) > 1:
        low, high = low_high
        text += f" ({low:g}-{high:g})"
    return text


def print_spread(summary: dict) -> None:
    """After repeats: one line per figure that varied, median (min-max)."""
    if summary.get("repeat", 1) <= 1:
        return
    figures = figures_of(summary)
    print(f"\nmedian of {summary['repeat']} runs (min-max), figures that varied:")
    for path, (low, high) in summary["spread"].items():
        if low != high:
            print(f"  {path}: {figures.get(path, float('nan')):g} ({low:g}-{high:g})")


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

    sys.excepthook = show
    threading.excepthook = lambda hook: show(hook.exc_type, hook.exc_value,  # type: ignore[arg-type]
                                             hook.exc_traceback)
    _muted.append(log)
    return log


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
