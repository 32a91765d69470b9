"""Parts of scaling that need no services: feeders spread a batch over the replicas, the
controller's report as metrics, and `deeplens status`'s scaling table from them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from actors.embedding_feeder import ReplicaCount, embed_spread, split
from cluster.client_cli import print_scaling
from cluster.metrics import EXPORTED, scaling_families


def test_a_batch_is_spread_over_the_replicas_in_order() -> None:
    items = [bytes([i]) for i in range(14)]
    assert split(items, 1) == [items]
    assert [len(c) for c in split(items, 3)] == [5, 5, 4]
    assert [x for c in split(items, 3) for x in c] == items
    assert [len(c) for c in split(items[:10], 3)] == [5, 5], "no call under 4 images"
    assert [len(c) for c in split(items[:6], 3)] == [6]
    assert [len(c) for c in split(items[:9], 8)] == [5, 4]


class FakeCall:
    def __init__(self, chunk: list[bytes]) -> None:
        self.chunk = chunk

    def result(self, timeout_s: float) -> list[bytes]:
        return [b"v" + x for x in self.chunk]


class FakeHandle:
    """A Serve handle's shape: ``embed_images.remote(chunk)`` returns a response."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.embed_images = self

    def remote(self, chunk: list[bytes]) -> FakeCall:
        self.calls.append(chunk)
        return FakeCall(chunk)


def test_free_actor_names_start_in_runs() -> None:
    from cluster.scaling_policy import runs

    assert runs([1, 2, 3, 5, 7, 8]) == [(1, 3), (5, 1), (7, 2)]
    assert runs([]) == []


def test_calls_in_flight_grow_with_the_replicas() -> None:
    items = [bytes([i]) for i in range(16)]
    one, three = FakeHandle(), FakeHandle()
    assert embed_spread(one, items, 1) == [b"v" + x for x in items]
    assert embed_spread(three, items, 3) == [b"v" + x for x in items]
    assert len(one.calls) == 1 and len(three.calls) == 3


def test_the_replica_count_is_asked_at_most_every_few_seconds() -> None:
    answers = iter([3, None, 2])
    asked: list[int] = []

    def ask() -> int | None:
        asked.append(1)
        return next(answers)

    count = ReplicaCount(ask)
    assert count() == 3 and count() == 3 and len(asked) == 1
    count._at -= 10
    assert count() == 1, "Serve could not say: one call, as before"


STATS = {
    "ticks": 7, "interval_s": 30.0, "last_error": "", "steps": [], "cold_starts_s": [12.5],
    "step_counts": {"indexing": 2, "embedder": 1},
    "scalers": {
        "indexing": {"min": 1, "max": 3, "pinned": None, "target": 3, "wanted": 3,
                     "action": "up", "cause": "lag above what the actors carry", "wait_s": 0.0,
                     "reason": "up 1 -> 3", "lag": 900, "rate": 41.5, "actors": 3,
                     "nodes": {"10.0.0.1/ab12cd34": 2, "10.0.0.2/ef56ab78": 1}},
        "validation": {"min": 1, "max": 3, "pinned": 2, "target": 2, "wanted": 2,
                       "action": "pinned", "cause": "pinned by deeplens scale", "wait_s": 0,
                       "reason": "pinned", "lag": 0, "rate": 0.0, "actors": 2,
                       "nodes": {"10.0.0.1/ab12cd34": 2}},
        "embedder": {"min": 1, "max": 3, "pinned": None, "target": 1, "wanted": 3,
                     "action": "waiting-up", "cause": "images queued for the Embedder",
                     "wait_s": 20.0, "reason": "...", "queued": 400, "busy": 0.9,
                     "running": 1, "target_": 1},
    },
}


def metrics_text() -> str:
    registry = CollectorRegistry()

    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            return scaling_families(STATS)

    registry.register(Collector())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_the_controller_report_is_exported_as_metrics() -> None:
    text = metrics_text()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    assert names <= EXPORTED | {"deeplens_scaling_steps_created"}, names - EXPORTED
    assert 'deeplens_scaling_actors{name="indexing",node="10.0.0.1/ab12cd34"} 2.0' in text
    assert 'deeplens_scaling_decision{action="waiting-up",cause="images queued for the ' \
           'Embedder",name="embedder"} 20.0' in text
    assert "deeplens_embedder_queued_images 400.0" in text
    assert "deeplens_embedder_cold_start_seconds 12.5" in text
    assert 'deeplens_scaling_steps_total{name="indexing"} 2.0' in text


def test_status_shows_each_stage_its_nodes_rate_and_the_decision(capsys) -> None:
    print_scaling(metrics_text())
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["scaling", "now", "wants", "range", "rate/s", "decision"]
    assert out[2].split()[:5] == ["embedder", "1", "3", "1-3", "-"]
    assert out[2].endswith("up to 3 in 20 s: images queued for the Embedder"), out[2]
    assert out[3].split()[:5] == ["indexing", "3", "3", "1-3", "41.5"]
    assert out[3].endswith("up: lag above what the actors carry")
    assert out[4].strip() == "on 10.0.0.1/ab12cd34 x2, 10.0.0.2/ef56ab78 x1"
    assert out[5].endswith("pinned: pinned by deeplens scale (pinned)")
    print_scaling("")
    assert capsys.readouterr().out == "", "no controller: no table"
