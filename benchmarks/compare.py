"""Two results files side by side: every figure both hold, its ratio, and whether it moved.

    python -m benchmarks.compare benchmarks/results/ceiling.json benchmarks/runs/ceiling-*.json
        [--all] [--tolerance 0.10] [--match cpu_ms]

For each figure both files hold (same key path, e.g. ``end_to_end_images_per_s`` or
``rows[1].p95_ms``) it prints A, B, their ratio B/A and a flag:

- ``!`` the ratio lies outside both runs' spreads: B/A is outside A's own min/median ..
  max/median, and A/B outside B's. Such a difference is larger than either run's
  run-to-run variation (needs ``--repeat`` runs: a file without ``spread`` has none);
- ``?`` a run has no spread (one run) and the ratio is off 1 by more than ``--tolerance``;
- blank: within the spreads (or within the tolerance).

Only figures that differ are printed unless ``--all``. Exit status 0; the flags are the
answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.spread import figures_of, spreads_of


@dataclass(frozen=True)
class Compared:
    path: str
    a: float
    b: float
    a_spread: tuple[float, float] | None
    b_spread: tuple[float, float] | None
    ratio: float | None  # b / a; None when a is 0
    flag: str  # "!", "?" or ""


def _band(median: float, spread: tuple[float, float] | None) -> tuple[float, float] | None:
    """A run's spread as ratios to its median: what a second run of it could come out as."""
    if spread is None or median == 0:
        return None
    return spread[0] / median, spread[1] / median


def flag_for(a: float, b: float, a_spread: tuple[float, float] | None,
             b_spread: tuple[float, float] | None, tolerance: float) -> str:
    """``!`` outside both spreads, ``?`` off by more than tolerance without a spread."""
    if a == b:
        return ""
    if a == 0 or b == 0:
        return "!" if a_spread and b_spread else "?"
    ratio = b / a
    band_a, band_b = _band(a, a_spread), _band(b, b_spread)
    if band_a is None or band_b is None or band_a == (1.0, 1.0) and band_b == (1.0, 1.0):
        return "?" if abs(ratio - 1) > tolerance else ""
    inside_a = band_a[0] <= ratio <= band_a[1]
    inside_b = band_b[0] <= 1 / ratio <= band_b[1]
    return "" if inside_a or inside_b else "!"


def compare(a: dict[str, Any], b: dict[str, Any], tolerance: float = 0.10) -> list[Compared]:
    """Every figure both results hold, in A's order."""
    fa, fb = figures_of(a), figures_of(b)
    sa, sb = spreads_of(a), spreads_of(b)
    rows = []
    for path, va in fa.items():
        if path not in fb:
            continue
        vb = fb[path]
        spread_a, spread_b = sa.get(path), sb.get(path)
        rows.append(Compared(path, va, vb, spread_a, spread_b, vb / va if va else None,
                             flag_for(va, vb, spread_a, spread_b, tolerance)))
    return rows


def _cell(value: float, spread: tuple[float, float] | None) -> str:
    text = f"{value:g}"
    return text + (f" ({spread[0]:g}-{spread[1]:g})" if spread and spread[0] != spread[1]
                   else "")


def render(rows: list[Compared], a_name: str, b_name: str, show_all: bool = False) -> str:
    shown = [r for r in rows if show_all or r.a != r.b]
    lines = [f"| figure | A: {a_name} | B: {b_name} | B/A | |", "|---|---|---|---|---|"]
    for r in shown:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        lines.append(f"| {r.path} | {_cell(r.a, r.a_spread)} | {_cell(r.b, r.b_spread)} | "
                     f"{ratio} | {r.flag} |")
    moved = sum(1 for r in rows if r.flag == "!")
    unsure = sum(1 for r in rows if r.flag == "?")
    lines.append(f"\n{len(rows)} shared figures, {len(rows) - len(shown)} equal; "
                 f"{moved} outside both runs' spreads (!), {unsure} off by more than the "
                 "tolerance where a run has no spread (?)")
    return "\n".join(lines)


def describe(data: dict[str, Any]) -> str:
    return (f"{data.get('benchmark', '?')}, {data.get('when', '?')}, "
            f"commit {data.get('commit', '?')}, {data.get('machine', '?')}, "
            f"repeat {data.get('repeat', 1)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="where a run has no spread: flag ratios off 1 by more than this")
    parser.add_argument("--all", action="store_true", help="also figures that are equal")
    parser.add_argument("--match", default="", help="only figures whose path contains this")
    args = parser.parse_args(argv)
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    if a.get("benchmark") != b.get("benchmark"):
        print(f"note: different benchmarks ({a.get('benchmark')} vs {b.get('benchmark')})",
              file=sys.stderr)
    rows = [r for r in compare(a, b, args.tolerance) if args.match in r.path]
    print(f"A: {args.a}\n   {describe(a)}\nB: {args.b}\n   {describe(b)}\n")
    print(render(rows, args.a.name, args.b.name, args.all))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
