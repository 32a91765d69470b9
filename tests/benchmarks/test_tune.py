"""benchmarks.tune's pure parts: open-loop arrivals, a cell's steady-state figures and the
recommendation, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import tune


def cell(size: int, wait: float, rate: float, achieved: float, p95: float) -> dict:
    return {"max_batch_size": size, "batch_wait_timeout_s": wait, "rate": rate,
            "offered_per_s": rate, "images_per_s": achieved, "p50_ms": p95 / 2,
            "p95_ms": p95, "p99_ms": p95 * 1.5, "mean_formed_batch": 1.0}


CELLS = [
    cell(8, 0.002, 50, 50, 40), cell(8, 0.002, 100, 99, 90), cell(8, 0.002, 150, 110, 2000),
    cell(32, 0.01, 50, 50, 60), cell(32, 0.01, 100, 100, 120), cell(32, 0.01, 150, 149, 400),
    cell(32, 0.05, 150, 150, 700),
]


def test_the_highest_throughput_under_the_target_wins() -> None:
    choice = tune.recommend(CELLS, p95_target_ms=500)
    assert choice == tune.Choice(32, 0.01, 150, 149, 400)


def test_a_tighter_target_picks_a_smaller_batch() -> None:
    assert tune.recommend(CELLS, p95_target_ms=100) == tune.Choice(8, 0.002, 100, 99, 90)


def test_a_cell_that_did_not_keep_up_does_not_count() -> None:
    """110 of 150/s answered: its finite-run p95 understates an ever-growing queue."""
    cells = [cell(8, 0.002, 150, 110, 50), cell(8, 0.002, 100, 99, 60)]
    assert tune.recommend(cells, 100).rate == 100
    assert tune.recommend(cells, 100, keep_up=0.7).rate == 150


def test_no_cell_meets_the_target() -> None:
    assert tune.recommend(CELLS, p95_target_ms=10) is None


def test_ties_go_to_the_lower_latency_then_the_shorter_wait() -> None:
    cells = [cell(64, 0.05, 100, 100, 80), cell(32, 0.01, 100, 100, 80),
             cell(16, 0.01, 100, 100, 90)]
    assert tune.recommend(cells, 100) == tune.Choice(32, 0.01, 100, 100, 80)


def test_settings_lines_apply_the_choice() -> None:
    lines = tune.settings_lines(tune.Choice(32, 0.01, 150, 149, 400))
    assert lines[:2] == ["DEEPLENS_SERVE__MAX_BATCH_SIZE=32",
                         "DEEPLENS_SERVE__BATCH_WAIT_TIMEOUT_S=0.01"]
    assert any("user_config: {max_batch_size: 32, batch_wait_timeout_s: 0.01}" in ln
               for ln in lines)
    big = tune.settings_lines(tune.Choice(512, 0.05, 1, 1, 1))
    assert "DEEPLENS_SERVE__MAX_ONGOING_REQUESTS=1024" in big


def test_poisson_arrivals_come_at_the_rate() -> None:
    times = tune.poisson_arrivals(200.0, 4000, seed=1)
    assert times == sorted(times) and times[0] > 0
    assert 4000 / times[-1] == pytest.approx(200, rel=0.1)
    assert tune.poisson_arrivals(200.0, 10, seed=1) == times[:10]


def test_cell_figures_leave_the_warm_up_out() -> None:
    arrivals = [0.1 * i for i in range(30)]  # 10/s for 3 s
    answered = [a + (5.0 if a < 1.0 else 0.02) for a in arrivals]  # the first second is slow
    figures = tune.cell_figures(arrivals, answered, warmup_s=1.0)
    assert figures["requests"] == 20
    assert figures["p50_ms"] == pytest.approx(20, abs=0.2)
    assert figures["p99_ms"] == pytest.approx(20, abs=0.2)
    assert figures["offered_per_s"] == pytest.approx(10, rel=0.01)
    assert figures["images_per_s"] == pytest.approx(20 / (2.92 - 1.0), rel=0.01)
    with pytest.raises(ValueError):
        tune.cell_figures(arrivals, answered, warmup_s=5.0)


def test_plot_writes_png_and_svg(tmp_path: Path) -> None:
    paths = tune.plot(CELLS, tmp_path / "tune", p95_target_ms=500)
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
