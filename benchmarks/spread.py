"""Repeats and spread: N runs of a measurement become one results dict whose every figure
is the median of the N, with its min-max under ``spread`` and each run under ``runs``.

Figures are addressed by key path (``rows[0].p50_ms``, ``cpu["stage dedup"]``), the form
tests/test_results_figures.py reads; ``python -m benchmarks.compare`` compares two files
figure by figure with these paths and spreads.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from typing import Any

# What a results file says about itself rather than measures: not figures to compare.
NOT_FIGURES = frozenset({"benchmark", "command", "commit", "machine", "when", "provenance",
                         "settings", "host", "versions", "runs", "spread", "repeat", "lag",
                         "profiles", "busy_samples", "missing_keys"})
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
