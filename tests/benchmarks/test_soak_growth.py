"""The soak benchmark's judgement: growth per stored image, after warm-up, over the
rounds a role kept its process count (a scaling step is not a leak)."""

from __future__ import annotations

from benchmarks.soak_bench import growth_per_image


def _rows(memory: list[float], processes: list[int]) -> list[dict]:
    return [{"stored_images": 1000 * (i + 1), "memory_mb": {"StageWorker": mb},
             "processes": {"StageWorker": n}} for i, (mb, n) in enumerate(
                 zip(memory, processes, strict=True))]


def test_steady_growth_is_measured_per_stored_image() -> None:
    growth = growth_per_image(_rows([100, 110, 120, 130, 140], [3] * 5), warmup=1)
    assert abs(growth["StageWorker"] - 10 * 2**20 / 1000) < 1  # 10 MB per 1,000 images


def test_a_scaling_step_is_not_growth() -> None:
    rounds = _rows([100, 100, 400, 400, 400], [1, 1, 4, 4, 4])
    assert growth_per_image(rounds, warmup=1)["StageWorker"] == 0
    # only the last rounds with the final count are judged: one is not enough
    assert growth_per_image(_rows([100, 100, 100, 400], [1, 1, 1, 4]), warmup=1) == {
        "StageWorker": None}
