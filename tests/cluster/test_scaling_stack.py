"""The scaling controller on the real stack (tiny model, test-sized delays): a backlog
before the Embedder adds a replica and a slow stage grows to its partitions, idle gives
both back, `deeplens scale` pins and releases live, a stage actor removed by the
controller mid-batch loses and doubles nothing; every image indexed exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cluster.samples import jpeg_bytes, scene
from deeplens.settings import Settings

KEY = "key-acme-0123456789ab"
SLOW_S = 0.6  # each indexing batch takes this long: the stage falls behind the uploads


def held(factory: str, stage: str, slow_s: float = 0.0):  # type: ignore[no-untyped-def]
    """``factory``'s real handler, made slow, and held while ``hold-<stage>`` exists in
    the data dir (stage actors load these by import path)."""

    def build(settings: Settings):  # type: ignore[no-untyped-def]
        from deeplens.stage_actor import load_factory

        handle = load_factory(factory)(settings)
        marker = settings.data_dir / f"hold-{stage}"

        def handler(batch):  # type: ignore[no-untyped-def]
            time.sleep(slow_s)
            while marker.exists():
                time.sleep(0.05)
            return handle(batch)

        return handler

    return build


slow_indexer = held("actors.indexer:build_handler", "indexing", SLOW_S)
held_feeder = held("actors.embedding_feeder:build_handler", "embedding")


@pytest.fixture(scope="module")
def stack(broker, ray_session, tmp_path_factory):
    import uuid

    from ray import serve

    from cluster.stack import LocalStack
    from deeplens.broker import free_port
    from deeplens.kafka import admin_client
    from deeplens.scaling_settings import ScalingSettings
    from deeplens.settings import IngestionSettings, KafkaSettings, ModelSettings, ServeSettings
    from deeplens.topics import TopicNames, ensure_topics

    prefix = f"sc{uuid.uuid4().hex[:6]}."
    kafka = KafkaSettings(bootstrap_servers=broker, one_record_per_batch=True,
                          topic_prefix=prefix, poll_timeout_s=0.2, session_timeout_ms=6000,
                          batch_size=4)
    ensure_topics(admin_client(kafka), TopicNames(prefix))  # images.processed: 3 partitions
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("scaling"), kafka=kafka, api_keys=f"acme:{KEY}",
        model=ModelSettings(name="deeplens-tiny", pretrained="random"),
        serve=ServeSettings(port=free_port(), num_cpus=0.25, max_batch_size=8,
                            autoscale_max_replicas=2),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000),
        scaling=ScalingSettings(interval_s=0.5, lag_per_actor=4, drain_target_s=0,
                                queued_images_per_replica=8, upscale_delay_s=2,
                                downscale_delay_s=3))
    serve.shutdown()
    slow = {"indexing": {"handler_factory": "tests.cluster.test_scaling_stack:slow_indexer"},
            "embedding": {"handler_factory": "tests.cluster.test_scaling_stack:held_feeder"}}
    try:
        with LocalStack(settings, stage_overrides=slow) as running:
            import ray

            # Only indexing (and the Embedder) scale by themselves here: the other stages
            # are pinned at 1, so two cores are not spent on actors this test ignores.
            for stage in ("validation", "embedding", "dedup", "projection", "usage"):
                ray.get(running.controller.pin.remote(stage, 1), timeout=60)
            yield running
    finally:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})


def controller(stack) -> dict:  # type: ignore[no-untyped-def]
    import ray

    return ray.get(stack.controller.stats.remote(), timeout=30)


def upload(stack, count: int, seed: int) -> list[str]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.url, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        def one(i: int) -> str:
            answer = client.post("/v1/images", files={
                "file": (f"{i}.jpg", jpeg_bytes(scene(seed + i, 96)))})
            assert answer.status_code == 202, answer.text
            return str(answer.json()["image_id"])

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, range(count)))


def wait_for(what, timeout_s: float = 120, every_s: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every_s)
    return what()


def exactly_once(stack, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Every id indexed: one catalog row, one vector, one images.indexed event each."""
    from deeplens.vectors.factory import make_vector_store
    from ingestion.catalog import Catalog
    from tests.kafka_helpers import read_topic

    catalog = Catalog(stack.settings.effective_catalog_url)

    def settled() -> bool:
        rows = [catalog.get("acme", i) for i in ids]
        return all(r is not None and r.status == "indexed" for r in rows)

    assert wait_for(settled, timeout_s=180), "every image indexed"
    events = read_topic(stack.settings.kafka, "images.indexed", expect=10**9, timeout_s=4,
                        until=lambda got: False)
    mine = Counter(e.image_id for e in events if e.image_id in set(ids))  # type: ignore[attr-defined]
    assert set(mine) == set(ids), "0 lost on images.indexed"
    assert max(mine.values()) == 1, f"0 doubled on images.indexed: {mine.most_common(3)}"
    store = make_vector_store(stack.settings)
    stored = store.rows("deeplens-tiny/random-init-seed0", tenant_id="acme")  # type: ignore[attr-defined]
    vectors = Counter(v for v in stored.column("image_id").to_pylist() if v in set(ids))
    store.close()  # type: ignore[attr-defined]
    assert set(vectors) == set(ids) and max(vectors.values()) == 1, "one vector per image"


def test_a_backlog_grows_replicas_and_stage_actors_and_idle_shrinks_them(stack) -> None:
    from deeplens.serve_names import running_embedder_replicas

    assert controller(stack)["scalers"]["indexing"]["min"] == 1
    hold_embedding = stack.settings.data_dir / "hold-embedding"
    hold_indexing = stack.settings.data_dir / "hold-indexing"
    hold_embedding.write_text("x")  # images wait for the Embedder: its queue piles up
    hold_indexing.write_text("x")  # and then for the indexing stage
    ids = upload(stack, 36, seed=1000)
    # The embedding stage (pinned at 1) is held until a second replica runs: released
    # earlier, the tiny model would drain the queue within the test's delays.
    assert wait_for(lambda: controller(stack)["scalers"]["embedder"].get("target") == 2,
                    every_s=0.1), json.dumps(controller(stack), indent=1)
    assert wait_for(lambda: running_embedder_replicas() == 2), "a second replica, live"
    hold_embedding.unlink()
    # Indexing is released once the controller wants the partitions' worth of actors,
    # before they start (UPSCALE_DELAY_S): a held batch would outlast a rebalance's wait.
    assert wait_for(lambda: controller(stack)["scalers"]["indexing"].get("wanted") == 3,
                    every_s=0.1), json.dumps(controller(stack), indent=1)
    hold_indexing.unlink()
    grown = wait_for(lambda: controller(stack)["scalers"]["indexing"].get("actors") == 3)
    assert grown, json.dumps(controller(stack), indent=1)
    row = controller(stack)["scalers"]["indexing"]
    assert row["max"] == 3, "bounded by images.processed's partitions"
    exactly_once(stack, ids)
    back = wait_for(lambda: controller(stack)["scalers"]["indexing"].get("actors") == 1, 60)
    assert back, controller(stack)["scalers"]["indexing"]
    steps = [(s["from"], s["to"]) for s in controller(stack)["steps"] if s["name"] == "indexing"]
    assert steps[0][1] > steps[0][0] and steps[-1][1] == 1, steps
    # The Embedder: the second replica's cold start was timed, and idle gave it back.
    assert wait_for(lambda: controller(stack)["cold_starts_s"], 30), controller(stack)
    embedder = [(s["from"], s["to"]) for s in controller(stack)["steps"]
                if s["name"] == "embedder"]
    assert embedder[0] == (1, 2), embedder
    assert wait_for(lambda: controller(stack)["scalers"]["embedder"]["target"] == 1, 60)
    assert wait_for(lambda: running_embedder_replicas() == 1, 60), "idle: back to 1 replica"


def test_a_stage_actor_removed_mid_batch_loses_and_doubles_nothing(stack) -> None:
    import ray

    from deeplens.stage_actor import stage_actor_name

    ray.get(stack.controller.pin.remote("indexing", 3), timeout=120)
    ids = upload(stack, 24, seed=2000)
    removed = [ray.get_actor(stage_actor_name(stack.settings, "indexing", i)) for i in (1, 2)]

    def mid_batch() -> bool:
        return any(s["in_flight"] > 0 for s in ray.get([a.stats.remote() for a in removed],
                                                       timeout=10))

    assert wait_for(mid_batch, every_s=0.05), "an actor to remove is in the middle of a batch"
    report = ray.get(stack.controller.pin.remote("indexing", 1), timeout=120)
    assert report["scalers"]["indexing"]["actors"] == 1
    exactly_once(stack, ids)
    ray.get(stack.controller.pin.remote("indexing", None), timeout=60)


def test_deeplens_scale_pins_live_and_auto_releases(stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENS_")} | {
        "DEEPLENS_DATA_DIR": str(stack.settings.data_dir),
        "DEEPLENS_KAFKA__TOPIC_PREFIX": stack.settings.kafka.topic_prefix,
        "RAY_USAGE_STATS_ENABLED": "0"}

    def scale(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "deeplens.cli", "scale", *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = scale("indexing", "2")
    assert out.startswith("indexing: 2 actor(s) on ") and "pinned at 2" in out, out
    time.sleep(2 * stack.settings.scaling.interval_s + stack.settings.scaling.downscale_delay_s)
    assert controller(stack)["scalers"]["indexing"]["actors"] == 2, "the pin holds while idle"
    out = scale("embedder", "2")
    assert "embedder: 2 replica(s) wanted" in out, out
    from deeplens.serve_names import running_embedder_replicas

    assert wait_for(lambda: running_embedder_replicas() == 2), "a second replica, no restart"
    refused = subprocess.run([sys.executable, "-m", "deeplens.cli", "scale", "indexing", "9"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "at most 3 actor(s)" in refused.stderr, refused.stderr
    scale("indexing", "auto")
    scale("embedder", "auto")
    assert wait_for(lambda: controller(stack)["scalers"]["indexing"]["actors"] == 1, 60)
    assert wait_for(lambda: running_embedder_replicas() == 1, 60), "idle: back to SERVE__REPLICAS"
    row = controller(stack)["scalers"]["embedder"]
    assert row["pinned"] is None and row["target"] == 1 and controller(stack)["cold_starts_s"]
