"""Stop the local default in the middle of work and start it again on the same data
folder: its in-memory broker forgot every queued event, yet every image ends indexed,
once, without a manual command."""

from __future__ import annotations

import time

import httpx

from cluster.samples import jpeg_bytes, scene
from cluster.stack import LocalStack
from deeplens.broker import free_port
from deeplens.settings import (
    ActorSettings,
    IngestionSettings,
    KafkaSettings,
    ModelSettings,
    OpsSettings,
    ServeSettings,
    Settings,
)
from ingestion.catalog import Catalog

KEY = "key-acme-0123456789ab"
COUNT = 40


def _settings(data_dir, sweep_interval_s: float = 60, **kafka) -> Settings:
    return Settings(
        data_dir=data_dir, api_keys=f"acme:{KEY}",
        kafka=KafkaSettings(poll_timeout_s=0.2, session_timeout_ms=6000, batch_size=8, **kafka),
        model=ModelSettings(name="deeplens-tiny", pretrained="random"),
        serve=ServeSettings(port=free_port(), num_cpus=0.25, max_batch_size=8),
        actors=ActorSettings(num_cpus=0.1), ops=OpsSettings(sweep_interval_s=sweep_interval_s),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000))


def _statuses(data_dir) -> dict[str, str]:
    catalog = Catalog(f"sqlite:///{(data_dir / 'catalog.db').resolve()}")
    return {r.image_id: r.status for r in catalog.stuck(
        ("uploaded", "validated", "processed", "indexed", "failed"), _far_future())}


def _far_future():
    from datetime import timedelta

    from deeplens.events import utcnow

    return utcnow() + timedelta(days=1)


def test_a_restart_mid_ingest_resumes_every_image(tmp_path, no_serve, capsys) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "hold-indexing").write_text("x")  # indexing stalls: work piles up in flight
    held = {"indexing": {"before_commit": "tests.actors.hooks:hold_while_marked_indexing"}}
    with LocalStack(_settings(data_dir), stage_overrides=held) as stack:
        assert stack.broker is not None, "the local default: tansu, in memory"
        client = httpx.Client(base_url=stack.url, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"})
        ids = []
        for i in range(COUNT):
            answer = client.post("/v1/images", files={"file": (f"{i}.jpg", jpeg_bytes(
                scene(7100 + i, 96)))})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["image_id"])
        client.close()
    at_stop = _statuses(data_dir)
    left = [i for i in ids if at_stop[i] != "indexed"]
    assert left, f"the scenario needs images in flight at the stop: {at_stop}"

    (data_dir / "hold-indexing").unlink()
    # This time the broker also recycles drained topics, at 20 records: the pipeline
    # must carry on across a recycle (checked at the end). The periodic sweep runs
    # every second (with its 10-minute limit: nothing here is stuck that long).
    recycling = _settings(data_dir, sweep_interval_s=1.0, local_broker_recycle_messages=20,
                          local_broker_recycle_interval_s=1.0)
    with LocalStack(recycling) as stack:
        import ray

        pids = ray.get([actor.pid.remote() for actor in stack.actors])
        assert stack.resumed == len(left), (stack.resumed, len(left))
        capsys.readouterr()
        stack.print_banner()  # what `deeplens up` prints
        assert f"resuming {len(left)} images left in flight" in capsys.readouterr().out
        client = httpx.Client(base_url=stack.url, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"})
        deadline = time.monotonic() + 240
        statuses: dict = {}
        while time.monotonic() < deadline:
            statuses = client.post("/v1/images/statuses", json={"image_ids": ids}
                                   ).json()["statuses"]
            if all(s in ("indexed", "failed") for s in statuses.values()):
                break
            time.sleep(0.5)
        assert set(statuses.values()) == {"indexed"}, statuses
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stack.recycler.stats.recycled:
            time.sleep(0.5)
        assert "images.uploaded" in stack.recycler.stats.recycled, stack.recycler.stats
        later = [client.post("/v1/images", files={"file": (f"l{i}.jpg", jpeg_bytes(
            scene(7300 + i, 96)))}).json()["image_id"] for i in range(5)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = client.post("/v1/images/statuses", json={"image_ids": later}
                                   ).json()["statuses"]
            if all(s in ("indexed", "failed") for s in statuses.values()):
                break
            time.sleep(0.5)
        assert set(statuses.values()) == {"indexed"}, ("after a recycle", statuses)
        # Every stage actor let go of the broker for the recycle and came back: none of
        # them died (a consumer subscribed to a deleted topic crashes its process).
        assert ray.get([actor.pid.remote() for actor in stack.actors]) == pids, \
            ("a stage actor restarted across the recycles", stack.recycler.stats)
        ids += later
        client.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ray.get(stack.sweeper.stats.remote())[
                "sweeps"] < 2:
            time.sleep(0.5)
        sweeps = ray.get(stack.sweeper.stats.remote())
        assert sweeps["sweeps"] >= 2, ("the sweep runs by itself", sweeps)
        assert sweeps["republished"] == 0, ("the start resumed them, not the sweep", sweeps)
        metrics = httpx.get(stack.url + "/metrics", timeout=30).text
        assert "deeplens_reconcile_republished_total 0.0" in metrics, metrics[-2000:]
    catalog_rows = _statuses(data_dir)
    assert sorted(catalog_rows) == sorted(ids), "one catalog row per upload, no more"
    from deeplens.vectors.lancedb import LanceStore

    store = LanceStore(data_dir / "vectors", _settings(data_dir).vector_store)
    stored = store.rows("deeplens-tiny/random-init-seed0", tenant_id="acme")
    vectors = stored.column("image_id").to_pylist()
    store.close()
    assert sorted(vectors) == sorted(ids), "one vector per image, no duplicates"
    import sqlalchemy as sa

    from deeplens.db import make_engine

    engine = make_engine(f"sqlite:///{(data_dir / 'catalog.db').resolve()}")
    with engine.connect() as conn:
        links = conn.execute(sa.text("SELECT image_id, other_id FROM duplicates")).all()
    assert not [link for link in links if link[0] == link[1]], (
        "an image processed twice is no duplicate of itself", links)
