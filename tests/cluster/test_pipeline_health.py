"""What makes the pipeline 'degraded', decided from observations (no Ray needed)."""

from __future__ import annotations

from cluster.pipeline_health import StageState, missing_resources, verdict

NODES = [
    {"Alive": True, "Resources": {"CPU": 4.0, "cpu_pool": 100.0}},
    {"Alive": False, "Resources": {"CPU": 8.0, "gpu_pool": 100.0, "GPU": 1.0}},  # killed
]


def test_a_resource_only_a_dead_node_had_is_missing() -> None:
    assert missing_resources({"gpu_pool": 1, "cpu_pool": 1}, NODES) == ["gpu_pool"]
    assert missing_resources({"cpu_pool": 0.5}, NODES) == []
    assert missing_resources({}, NODES) == []


def test_degraded_names_the_stage_the_embedder_and_the_resource() -> None:
    now = 1000.0
    stages = {"indexing": StageState(wanted=1, live=0, dead_since=now - 40),
              "dedup": StageState(wanted=1, live=1),
              "validation": StageState(wanted=1, live=0, dead_since=now - 5)}  # just restarted
    state, reasons = verdict(stages, 0, {"Embedder": ["gpu_pool"]}, now, degraded_after_s=30)
    assert state == "degraded"
    assert reasons == ["stage indexing has no live actor for 40 s",
                       "no Embedder replica is running",
                       "waiting for a node with resource gpu_pool (for the Embedder)"]


def test_ok_when_every_stage_has_an_actor_and_the_embedder_a_replica() -> None:
    stages = {"indexing": StageState(wanted=2, live=1), "dedup": StageState(wanted=1, live=1)}
    assert verdict(stages, 1, {}, 50.0) == ("ok", [])
    assert verdict(stages, None, {}, 50.0) == ("ok", []), "unknown replicas is not zero"
