"""benchmarks.compare: every shared figure side by side, flagged when it moved by more
than either run's own spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import compare
from benchmarks.spread import figures_of, summarize


def repeated_run(*rates: float, p99: float = 5.0) -> dict:
    return {"benchmark": "x", "commit": "c", "machine": "m", "when": "w",
            **summarize([{"images_per_s": r, "cpu": {"stage dedup": 2.0},
                          "rows": [{"p99_ms": p99}]} for r in rates])}


def test_figure_paths_leave_out_what_describes_the_run() -> None:
    data = {"benchmark": "x", "command": "python -m x", "host": {"cores": 2},
            "versions": {"ray": "2.6"}, "settings": {"images": 9}, "lag": [{"t": 1}],
            "rate": 3, "flag": True, "cpu": {"stage dedup": 2.0}, "rows": [{"p50_ms": 1}]}
    assert figures_of(data) == {"rate": 3.0, 'cpu["stage dedup"]': 2.0, "rows[0].p50_ms": 1.0}


def test_a_ratio_outside_both_spreads_is_flagged() -> None:
    a = repeated_run(50.0, 54.0, 56.0)  # median 54, 0.93-1.04 of it
    b = repeated_run(38.0, 38.8, 40.0)  # median 38.8, 0.98-1.03 of it
    rows = {r.path: r for r in compare.compare(a, b)}
    moved = rows["images_per_s"]
    assert moved.flag == "!" and moved.ratio == pytest.approx(38.8 / 54)
    assert moved.a_spread == (50.0, 56.0) and moved.b_spread == (38.0, 40.0)
    assert rows['cpu["stage dedup"]'].flag == ""  # equal


def test_a_ratio_inside_either_spread_is_not_flagged() -> None:
    a = repeated_run(50.0, 54.0, 60.0)  # B/A = 52/54 = 0.963: inside A's 0.93-1.11
    b = repeated_run(51.5, 52.0, 52.5)
    assert {r.path: r.flag for r in compare.compare(a, b)}["images_per_s"] == ""


def test_single_runs_are_judged_by_the_tolerance() -> None:
    a = {"images_per_s": 100.0, "p": 10.0}
    b = {"images_per_s": 105.0, "p": 20.0}
    flags = {r.path: r.flag for r in compare.compare(a, b, tolerance=0.10)}
    assert flags == {"images_per_s": "", "p": "?"}


def test_nested_spreads_count(tmp_path: Path) -> None:
    """A tuner cell carries its own spread (cells[i].spread): compare finds it."""
    cell = summarize([{"p95_ms": 10.0}, {"p95_ms": 12.0}, {"p95_ms": 11.0}])
    a = {"cells": [{"max_batch_size": 8, **cell}]}
    b = {"cells": [{"max_batch_size": 8, **summarize([{"p95_ms": 20.0}, {"p95_ms": 21.0},
                                                      {"p95_ms": 22.0}])}]}
    row = next(r for r in compare.compare(a, b) if r.path == "cells[0].p95_ms")
    assert row.a_spread == (10.0, 12.0) and row.flag == "!"


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(repeated_run(50.0, 54.0, 56.0)))
    b.write_text(json.dumps(repeated_run(38.0, 38.8, 40.0, p99=9.0)))
    assert compare.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| images_per_s | 54 (50-56) | 38.8 (38-40) | 0.72 | ! |" in out
    assert "| rows[0].p99_ms | 5 | 9 | 1.80 | ? |" in out
    assert 'cpu["stage dedup"]' not in out  # equal: only with --all
    assert "3 shared figures, 1 equal; 1 outside both runs' spreads (!)" in out
    compare.main([str(a), str(b), "--all"])
    assert 'cpu["stage dedup"]' in capsys.readouterr().out
