"""Deleted photos stay out of search while every stage actor stalls (issue 23, item 0b).

Through the running stack on its embedded default (LanceDB behind the Gateway's
in-memory index): the newest images are indexed, then every stage actor stalls (an
indexer restart, a long rebalance) while some of them are deleted, one every 1.5 s.
The store keeps their vectors until the indexer catches up; meanwhile the Gateway's
index refreshes many times and a tenant is loaded for the first time. No deleted image
may be returned by search at any moment, nor after the stages resume.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from cluster.samples import jpeg_bytes, scene
from deeplens.settings import Settings

KEYS = {"acme": "key-acme-0123456789ab", "bravo": "key-bravo-0123456789ab"}
MARKER = "stall-every-stage"
MODEL = "deeplens-tiny/random-init-seed0"


def stalled(factory: str):  # type: ignore[no-untyped-def]
    """``factory``'s real handler, held before it touches anything while the marker
    exists in the data dir (stage actors load these by import path)."""

    def build(settings: Settings):  # type: ignore[no-untyped-def]
        from deeplens.stage_actor import load_factory

        handle = load_factory(factory)(settings)
        marker = settings.data_dir / MARKER

        def handler(batch):  # type: ignore[no-untyped-def]
            while marker.exists():
                time.sleep(0.05)
            return handle(batch)

        return handler

    build.factory = factory  # type: ignore[attr-defined]
    return build


stalled_validation = stalled("actors.validator:build_handler")
stalled_embedding = stalled("actors.embedding_feeder:build_handler")
stalled_indexing = stalled("actors.indexer:build_handler")
stalled_dedup = stalled("actors.dedup:build_handler")
stalled_projection = stalled("ingestion.projection:build_handler")
stalled_usage = stalled("ingestion.usage:build_handler")


def _stage_overrides() -> dict[str, dict[str, str]]:
    """Every stage of the table, held (a new stage fails here until it is added)."""
    from cluster.stages import STAGES

    for stage in STAGES:
        assert globals()[f"stalled_{stage.name}"].factory == stage.handler, stage.name
    return {s.name: {"handler_factory": f"{__name__}:stalled_{s.name}"} for s in STAGES}


@pytest.fixture
def stack(broker, ray_session, tmp_path):
    from ray import serve

    from cluster.stack import LocalStack
    from deeplens.broker import free_port
    from deeplens.kafka import admin_client
    from deeplens.settings import IngestionSettings, KafkaSettings, ModelSettings, ServeSettings
    from deeplens.topics import TopicNames, ensure_topics

    prefix = f"st{uuid.uuid4().hex[:6]}."
    kafka = KafkaSettings(bootstrap_servers=broker, one_record_per_batch=True,
                          topic_prefix=prefix, poll_timeout_s=0.2, session_timeout_ms=6000,
                          batch_size=8)
    ensure_topics(admin_client(kafka), TopicNames(prefix))
    settings = Settings(
        data_dir=tmp_path / "data", kafka=kafka,
        api_keys=",".join(f"{t}:{k}" for t, k in KEYS.items()),
        model=ModelSettings(name="deeplens-tiny", pretrained="random"),
        serve=ServeSettings(port=free_port(), num_cpus=0.25, max_batch_size=8),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000))
    serve.shutdown()
    try:
        with LocalStack(settings, stage_overrides=_stage_overrides()) as running:
            yield running
    finally:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})


def _upload(client: httpx.Client, count: int, seed: int) -> list[str]:
    ids = []
    for i in range(count):
        answer = client.post("/v1/images", files={"file": (f"{i}.jpg", jpeg_bytes(
            scene(seed + i, 96)))})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["image_id"])
    return ids


def _wait_indexed(client: httpx.Client, ids: list[str], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    statuses: dict = {}
    while time.monotonic() < deadline:
        statuses = client.post("/v1/images/statuses", json={"image_ids": ids}).json()["statuses"]
        if all(s in ("indexed", "failed") for s in statuses.values()):
            break
        time.sleep(0.5)
    assert set(statuses.values()) == {"indexed"}, statuses


def _found(client: httpx.Client) -> set[str]:
    answer = client.post("/v1/search", json={"text": "a photo", "k": 100})
    assert answer.status_code == 200, answer.text
    return {h["image_id"] for h in answer.json()["hits"]}


def _stored(data_dir, tenant: str) -> set[str]:
    from deeplens.vectors.lancedb import LanceStore

    store = LanceStore(data_dir / "vectors", Settings(data_dir=data_dir).vector_store)
    try:
        rows = store.rows(MODEL, tenant_id=tenant)
        return set(rows.column("image_id").to_pylist()) if rows is not None else set()
    finally:
        store.close()


def test_deleted_images_stay_out_of_search_while_every_stage_stalls(stack) -> None:
    data_dir = stack.settings.data_dir
    acme, bravo = (httpx.Client(base_url=stack.url, timeout=60,
                                headers={"Authorization": f"Bearer {KEYS[t]}"})
                   for t in ("acme", "bravo"))
    ids = {"bravo": _upload(bravo, 12, 9200)}
    ids["acme"] = _upload(acme, 40, 9100)  # the newest images
    _wait_indexed(acme, ids["acme"])
    _wait_indexed(bravo, ids["bravo"])
    assert _found(acme) == set(ids["acme"]), "acme loaded in the Gateway's index"
    # bravo is not searched before the stall: its first search loads it from the store
    # while the store still holds its deleted images' vectors.

    (data_dir / MARKER).write_text("x")  # every stage actor stalls from its next batch
    doomed = {"acme": ids["acme"][::4], "bravo": ids["bravo"][::4]}
    for tenant, client in (("bravo", bravo), ("acme", acme)):
        gone: list[str] = []
        for victim in doomed[tenant]:
            assert client.delete(f"/v1/images/{victim}").status_code == 204
            gone.append(victim)
            deadline = time.monotonic() + 30  # the Gateway applies it on a refresh
            while True:
                found = _found(client)
                came_back = found & set(gone[:-1])
                assert not came_back, f"{tenant}: deleted images back in search: {came_back}"
                if victim not in found:
                    break
                assert time.monotonic() < deadline, f"{tenant}: {victim} never left search"
                time.sleep(0.2)
            time.sleep(1.5)
    stall_ends = time.monotonic() + 10  # many more refreshes while the stages still stall
    while time.monotonic() < stall_ends:
        for tenant, client in (("acme", acme), ("bravo", bravo)):
            assert _found(client) == set(ids[tenant]) - set(doomed[tenant]), tenant
        time.sleep(0.5)
    for tenant in ("acme", "bravo"):  # the scenario: the store still had them all along
        assert set(doomed[tenant]) <= _stored(data_dir, tenant), "the indexer did not stall"

    (data_dir / MARKER).unlink()  # the stages resume and the indexer catches up
    deadline = time.monotonic() + 240
    while any(set(doomed[t]) & _stored(data_dir, t) for t in doomed):
        assert time.monotonic() < deadline, "the indexer never removed the deleted vectors"
        time.sleep(0.5)
    settle = time.monotonic() + 3  # a few refreshes after the indexer's deletes
    while time.monotonic() < settle:
        for tenant, client in (("acme", acme), ("bravo", bravo)):
            assert _found(client) == set(ids[tenant]) - set(doomed[tenant]), tenant
        time.sleep(0.5)
    for tenant, client in (("acme", acme), ("bravo", bravo)):
        for victim in doomed[tenant]:
            assert client.get(f"/v1/images/{victim}").status_code == 404
