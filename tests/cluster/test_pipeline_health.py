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


def test_a_gpu_embedder_waits_for_a_gpu_node() -> None:
    from cluster.pipeline_health import wanted_resources
    from deeplens.settings import ActorSettings, ServeSettings, Settings

    wanted = wanted_resources(Settings(serve=ServeSettings(num_gpus=1),
                                       actors=ActorSettings(resources={"cpu_pool": 1})))
    assert wanted == {"stage actors": {"cpu_pool": 1}, "Embedder": {"GPU": 1}}
    assert missing_resources(wanted["Embedder"], NODES) == ["GPU"], "only the dead node had one"
    assert wanted_resources(Settings())["Embedder"] == {}


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


class FakeWatch:
    def __init__(self, state: str) -> None:
        self.state = state

    def note(self) -> dict:
        return {"state": self.state, "reasons": []}

    def report(self) -> dict:
        reasons = [] if self.state == "ok" else ["no Embedder replica is running"]
        return {"state": self.state, "reasons": reasons, "embedder_replicas": 0,
                "stages": {"indexing": {"live": 1, "wanted": 1, "nodes": ["10.0.0.2/ab"]}}}


def test_readyz_answers_503_with_reasons_and_shows_nodes_to_the_operator_only() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from cluster.gateway import add_readiness
    from deeplens.settings import OpsSettings, Settings

    app = FastAPI()
    app.state.services = type("S", (), {"settings": Settings(
        ops=OpsSettings(metrics_token="op-token-0123456789"))})()
    watch = FakeWatch("degraded")
    add_readiness(app, watch)
    client = TestClient(app)
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "10"
    assert answer.json()["reasons"] == ["no Embedder replica is running"]
    assert "nodes" not in answer.json()["stages"]["indexing"]
    operator = client.get("/readyz", headers={"Authorization": "Bearer op-token-0123456789"})
    assert operator.json()["stages"]["indexing"]["nodes"] == ["10.0.0.2/ab"]
    watch.state = "ok"
    assert client.get("/readyz").status_code == 200
    assert app.state.services.pipeline() == {"state": "ok", "reasons": []}, \
        "upload answers read the same watch"


def test_actors_the_controller_added_count_as_live(ray_session) -> None:
    """Stage actors are found by name in the namespace, not by the configured count: an
    actor the scaling controller added (index 3 of a stage configured with 1) counts."""
    import uuid

    import ray

    from cluster.pipeline_health import PipelineWatch
    from deeplens.settings import KafkaSettings, Settings

    @ray.remote(num_cpus=0)
    class Stage:
        def stats(self) -> dict:
            return {"alive": True, "node": "n1"}

    prefix = f"ph{uuid.uuid4().hex[:6]}."
    added = Stage.options(name=f"{prefix}indexing-3").remote()
    other = Stage.options(name=f"{prefix}sweeper").remote()
    ray.get([added.stats.remote(), other.stats.remote()])
    watch = PipelineWatch(Settings(kafka=KafkaSettings(topic_prefix=prefix)),
                          {"indexing": 1, "dedup": 1})
    stages = watch.poll_stages()
    assert stages["indexing"].live == 1 and stages["indexing"].nodes == ["n1"]
    assert stages["dedup"].live == 0
    for actor in (added, other):
        ray.kill(actor)


def test_a_silent_actor_keeps_its_counters_and_a_restart_marks_them_reset() -> None:
    state = StageState(wanted=2)
    a, b = {"alive": True, "handled": 10, "started_at": 100.0}, \
        {"alive": True, "handled": 5, "started_at": 90.0}
    state.take({"s-0": a, "s-1": b}, {"s-0", "s-1"}, now=1.0)
    assert sum(s["handled"] for s in state.stats) == 15 and state.reset_at == 100.0
    state.take({"s-0": {**a, "handled": 12}}, {"s-0", "s-1"}, now=2.0)  # s-1 unreachable
    assert sum(s["handled"] for s in state.stats) == 17, "s-1's last counters are kept"
    assert state.answered_at == 1.0 and state.live == 1, "their age is the oldest answer's"
    state.take({"s-1": {"alive": True, "handled": 0, "started_at": 200.0}},
               {"s-0", "s-1"}, now=3.0)  # s-1 restarted: its counters start again
    assert state.reset_at == 200.0
    state.take({"s-1": {"alive": True, "handled": 1, "started_at": 200.0}}, {"s-1"}, now=4.0)
    assert state.reset_at > 200.0 and [s["handled"] for s in state.stats] == [1], \
        "a member gone from the namespace leaves the sum: a reset too"


def test_stage_counters_carry_when_they_restarted(tmp_path) -> None:
    from cluster.metrics import PipelineCollector
    from deeplens.settings import Settings

    collector = PipelineCollector(Settings(data_dir=tmp_path), None, {"indexing": 1})
    state = StageState(wanted=1)
    state.take({"i-0": {"alive": True, "handled": 3, "started_at": 1.7e9}}, {"i-0"}, now=1.0)
    collector.watch = type("W", (), {"poll_stages": lambda self: {"indexing": state},
                                     "poll_embedder": lambda self: 1})()
    samples = {s.name: s.value for family in collector._stages() for s in family.samples}
    assert samples["deeplens_stage_handled_total"] == 3
    assert samples["deeplens_stage_handled_created"] == 1.7e9
    assert samples["deeplens_embedder_replicas"] == 1


def test_upload_answers_get_the_last_verdict_without_waiting(tmp_path) -> None:
    import threading

    from cluster.pipeline_health import PipelineWatch
    from deeplens.settings import Settings

    release = threading.Event()

    class Watch(PipelineWatch):
        def poll_stages(self):  # type: ignore[no-untyped-def]
            release.wait(30)
            return {"indexing": StageState(wanted=1, dead_since=0.0)}

        def poll_embedder(self):  # type: ignore[no-untyped-def]
            return 0

        def missing(self):  # type: ignore[no-untyped-def]
            return {"Embedder": ["gpu_pool"]}

    watch = Watch(Settings(data_dir=tmp_path), {"indexing": 1})
    assert watch.note() is None, "the first poll runs in the background"
    release.set()
    for _ in range(600):  # the background poll finishes
        if watch.note() is not None:
            break
        threading.Event().wait(0.05)
    note = watch.note()
    assert note is not None and note["state"] == "degraded"
    assert "no Embedder replica is running" in note["reasons"]
    assert any(r.startswith("stage indexing has no live actor") for r in note["reasons"])


def test_deeplens_status_prints_the_verdict_per_stage_with_nodes(monkeypatch, capsys) -> None:
    import httpx

    from cluster import client_cli

    report = {"state": "degraded", "embedder_replicas": 0,
              "reasons": ["stage indexing has no live actor for 40 s",
                          "waiting for a node with resource gpu_pool (for the Embedder)"],
              "stages": {"indexing": {"live": 0, "wanted": 1, "nodes": []},
                         "dedup": {"live": 1, "wanted": 1, "nodes": ["10.0.0.1/ab"]}}}
    monkeypatch.setattr(client_cli.httpx, "get", lambda url, **kw: httpx.Response(
        503, json=report, request=httpx.Request("GET", url)))
    client_cli.print_pipeline("http://gw", {})
    out = capsys.readouterr().out
    assert "pipeline: DEGRADED; Embedder replicas: 0" in out
    assert "  - stage indexing has no live actor for 40 s" in out
    assert "  - waiting for a node with resource gpu_pool (for the Embedder)" in out
    assert "indexing     0/1 live on -" in out and "dedup        1/1 live on 10.0.0.1/ab" in out


def test_a_stage_whose_live_actors_hold_no_partition_for_long_is_degraded() -> None:
    """A consumer group that stopped assigning (on tansu, a member leaving mid-join
    wedges it) leaves live actors idle with work queued: readiness must say so."""
    state = StageState(wanted=2)
    held = {"alive": True, "assigned": [["images.processed", 0]]}
    idle = {"alive": True, "assigned": []}
    state.take({"i-0": held, "i-1": idle}, {"i-0", "i-1"}, now=100.0)
    assert state.unassigned_since is None, "one actor holding a partition is enough"
    state.take({"i-0": idle, "i-1": idle}, {"i-0", "i-1"}, now=110.0)
    state.take({"i-0": idle, "i-1": idle}, {"i-0", "i-1"}, now=125.0)
    assert verdict({"indexing": state}, 1, {}, 125.0, degraded_after_s=30) == ("ok", []), \
        "a rebalance or a recycle hold takes seconds: not yet"
    state.take({"i-0": idle, "i-1": idle}, {"i-0", "i-1"}, now=145.0)
    assert verdict({"indexing": state}, 1, {}, 145.0, degraded_after_s=30) == (
        "degraded", ["stage indexing has been assigned no partition for 35 s: its consumer "
                     "group is not assigning (on the local broker, restart the stack)"])
    state.take({"i-0": held, "i-1": idle}, {"i-0", "i-1"}, now=150.0)
    assert verdict({"indexing": state}, 1, {}, 150.0, degraded_after_s=30) == ("ok", [])
    state.take({"i-1": idle}, {"i-0", "i-1"}, now=151.0)  # the holder did not answer in time
    assert state.unassigned_since is None, "its last answer (holding a partition) still counts"
    state.take({"i-0": {"alive": True}, "i-1": idle}, {"i-0", "i-1"}, now=152.0)
    assert state.unassigned_since is None, "an answer without assignments is not idle"


def test_a_stage_with_no_live_actor_is_not_called_unassigned() -> None:
    state = StageState(wanted=1, live=0, dead_since=100.0, unassigned_since=50.0)
    assert verdict({"indexing": state}, 1, {}, 110.0, degraded_after_s=30) == ("ok", []), \
        "an actor restarting: neither reason yet (it has been dead only 10 s)"
