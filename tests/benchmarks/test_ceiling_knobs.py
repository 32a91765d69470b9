"""ceiling_bench's knobs and figures without a stack: the grid, the settings objects the
stack starts with, and CPU per image net of the fixed cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import ceiling_bench


def test_grid_names_knobs_and_values() -> None:
    grid = ceiling_bench.parse_grid(["feeders=1,2", "max-batch-size=32,64", "wait=0.01,0.05"])
    assert grid == {"feeders": [1, 2], "max_batch_size": [32, 64], "wait": [0.01, 0.05]}
    with pytest.raises(SystemExit, match="KNOB=V1,V2"):
        ceiling_bench.parse_grid(["cores=4"])


def test_knobs_become_settings_not_environment(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """A variable for a knob's group does not leak into the run: the options decide."""
    monkeypatch.setenv("DEEPLENS_ACTORS__FEEDERS", "5")
    settings = ceiling_bench.settings_for(
        {"feeders": 2, "partitions": 6, "replicas": 2, "max_batch_size": 64,
         "in_flight": 4, "consumer_batch": 128, "wait": 0.05, "indexers": None}, tmp_path)
    assert settings.actors.feeders == 2 and settings.actors.feeder_batches_in_flight == 4
    assert settings.actors.indexers == 1  # None: the setting's default
    assert settings.kafka.min_partitions == 6 and settings.kafka.batch_size == 128
    assert settings.serve.replicas == 2 and settings.serve.max_batch_size == 64
    assert settings.serve.batch_wait_timeout_s == 0.05
    knobs = ceiling_bench.applied_knobs(settings)
    assert knobs["feeders"] == 2 and knobs["partitions"] == 6 and set(knobs) == set(
        ceiling_bench.KNOBS)


def test_cpu_per_image_net_of_the_fixed_cost() -> None:
    whole, net = ceiling_bench.per_image(
        {"stage dedup": 1.0, "broker": 0.5, "raylet": 0.05}, images=100,
        idle_per_s={"broker": 0.02, "raylet": 0.01}, elapsed_s=10.0)
    assert whole == {"stage dedup": 10.0, "broker": 5.0, "raylet": 0.5}
    # broker: (0.5 s - 0.02 s/s x 10 s) / 100 images = 3 ms; raylet never below 0
    assert net == {"stage dedup": 10.0, "broker": 3.0, "raylet": 0.0}
