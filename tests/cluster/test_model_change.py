"""A model change through the real stack (issue 28): model A (the tiny model, random
weights, seed 0) indexes the images; a migration to B (seed 1) backfills them while a
client searches by text and by image every 100 ms and uploads 2 images/s; the backfill
actor is killed mid-way and resumed; cutover, rollback, cutover, finish.

Scaled down from the issue's 300 images to 24 so it fits CI's time on 2 cores. Runs
once on SQLite + LanceDB and once on PostgreSQL + the Weaviate stand-in.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from cluster.samples import jpeg_bytes, scene
from cluster.stack import LocalStack
from deeplens.broker import free_port
from deeplens.migration_settings import MigrationSettings
from deeplens.settings import (
    IngestionSettings,
    ModelSettings,
    ServeSettings,
    Settings,
    VectorStoreSettings,
)
from tests.cluster.test_end_to_end import wait_indexed

A = ModelSettings(name="deeplens-tiny", pretrained="random", random_seed=0)
B = A.model_copy(update={"random_seed": 1})
A_ID, B_ID = "deeplens-tiny/random-init-seed0", "deeplens-tiny/random-init-seed1"
IMAGES = 24


@pytest.fixture(scope="module", params=["sqlite-lancedb", "postgresql-weaviate"])
def stack(request, tmp_path_factory, broker, ray_session):
    from ray import serve

    from deeplens.kafka import admin_client
    from deeplens.settings import KafkaSettings
    from deeplens.topics import TopicNames, ensure_topics

    prefix = f"mig{uuid.uuid4().hex[:6]}."
    kafka = KafkaSettings(bootstrap_servers=broker, one_record_per_batch=True,
                          topic_prefix=prefix, poll_timeout_s=0.2, session_timeout_ms=6000,
                          batch_size=16)
    ensure_topics(admin_client(kafka), TopicNames(prefix))
    extra: dict = {}
    if request.param.startswith("postgresql"):
        from tests.postgres import fresh_database
        from tests.weaviate_standin import running_standin

        standin = running_standin()
        extra["catalog_url"] = fresh_database(request.getfixturevalue("postgres_server_url"))
        extra["vector_store"] = VectorStoreSettings(
            backend="weaviate", weaviate_url=standin.http_url,
            weaviate_grpc_port=standin.grpc_port)
    tenant = f"t{uuid.uuid4().hex[:8]}"  # the stand-in is shared: a tenant of our own
    settings = Settings(
        **extra, data_dir=tmp_path_factory.mktemp("migration"), kafka=kafka, model=A,
        api_keys=f"{tenant}:key-{tenant}-0123456789", ops={"admin_token": "admin-token-xyz"},
        serve=ServeSettings(port=free_port(), num_cpus=0.25, max_batch_size=16),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000),
        migration=MigrationSettings(backfill_page=4, backfill_share=0.25, finish_grace_s=0))
    serve.shutdown()
    try:
        with LocalStack(settings) as running:
            running.tenant = tenant
            yield running
    finally:
        from cluster.model_ops import stop_model_backfill

        stop_model_backfill()
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})


class Client:
    """Searches every 100 ms (text, then image, in turn) and uploads 2 images/s."""

    def __init__(self, http: httpx.Client, query: bytes) -> None:
        self.http, self.query = http, query
        self.failed: list[str] = []
        self.empty = 0
        self.models: list[str] = []
        self.uploaded: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._search, daemon=True),
                        threading.Thread(target=self._upload, daemon=True)]

    def __enter__(self) -> Client:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _search(self) -> None:
        turn = 0
        while not self.stop.wait(0.1):
            turn += 1
            try:
                if turn % 2:
                    answer = self.http.post("/v1/search", json={"text": "a red boat", "k": 5})
                else:
                    answer = self.http.post("/v1/search/image", data={"k": "5"},
                                            files={"file": ("q.jpg", self.query)})
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))
                continue
            if answer.status_code != 200:
                self.failed.append(f"{answer.status_code} {answer.text[:200]}")
                continue
            body = answer.json()
            self.models.append(body["model"])
            self.empty += not body["hits"]

    def _upload(self) -> None:
        seed = 5000
        while not self.stop.wait(0.5):
            seed += 1
            try:
                answer = self.http.post("/v1/images", files={
                    "file": (f"live{seed}.jpg", jpeg_bytes(scene(seed, size=96)))})
            except httpx.HTTPError as exc:  # the server may have taken it: not in `uploaded`
                self.failed.append(f"upload {exc!r}")
                continue
            if answer.status_code == 202:
                self.uploaded.append(answer.json()["image_id"])
            else:
                self.failed.append(f"upload {answer.status_code} {answer.text[:200]}")


def progress(settings: Settings) -> dict:
    from cluster.model_ops import describe

    return describe(settings)["migration"] or {}


def wait_for(predicate, timeout_s: float = 180, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s")


def model_of_answers(http: httpx.Client) -> str:
    return http.post("/v1/search", json={"text": "boat", "k": 3}).json()["model"]


def test_migrate_backfill_kill_resume_cutover_rollback_finish(stack) -> None:
    import ray

    from cluster import model_ops
    from cluster.model_backfill import ACTOR_NAME, ACTOR_NAMESPACE
    from deeplens.vectors.factory import make_vector_store

    settings, tenant = stack.settings, stack.tenant
    http = httpx.Client(base_url=stack.url, timeout=60,
                        headers={"Authorization": f"Bearer key-{tenant}-0123456789"})
    ids = [http.post("/v1/images", files={"file": (f"p{i}.jpg", jpeg_bytes(scene(i, size=96)))}
                     ).json()["image_id"] for i in range(IMAGES)]
    assert {r["status"] for r in wait_indexed(http, ids).values()} == {"indexed"}
    assert model_of_answers(http) == A_ID

    with Client(http, jpeg_bytes(scene(7, size=96))) as client:
        time.sleep(1)
        report = model_ops.start_remote(settings, B)
        assert report["active_model"] == A_ID
        assert report["migration"]["target_model"] == B_ID
        # Killed once some pages are in, before the last: a fresh actor resumes.
        wait_for(lambda: progress(settings).get("done", 0) >= 8)
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=ACTOR_NAMESPACE), no_restart=True)
        killed_at = progress(settings)
        assert killed_at["state"] == "backfilling", killed_at
        deleted = ids[-1]  # deleted mid-backfill: in neither collection at the end
        assert http.delete(f"/v1/images/{deleted}").status_code == 204
        resumed = httpx.post(stack.url + "/ops/model/migrations", json={"to": "deeplens-tiny/"
                             "random/1"}, headers={"Authorization": "Bearer admin-token-xyz"},
                             timeout=120)  # the same target again, over HTTP: resume
        assert resumed.status_code == 202, resumed.text
        assert resumed.json()["migration"]["migration_id"] == killed_at["migration_id"]
        info = http.get("/v1/model").json()
        assert info["model"] == A_ID and info["reindexing"]["target_model"] == B_ID
        ready = wait_for(lambda: progress(settings).get("state") == "ready" and
                         progress(settings))
        assert ready["percent"] == 100.0
        assert model_of_answers(http) == A_ID  # no auto-cutover: still A
        time.sleep(1)
    assert client.failed == [] and client.empty == 0
    assert set(client.models) == {A_ID}
    assert len(client.uploaded) >= 4

    live = wait_indexed(http, client.uploaded)
    assert {r["status"] for r in live.values()} == {"indexed"}
    store = make_vector_store(settings)
    alive = [i for i in ids if i != deleted] + client.uploaded
    # Every image, old and uploaded during the change, has a B vector; none is twice there.
    assert store.get_vector(B_ID, tenant, deleted) is None
    assert store.get_vector(A_ID, tenant, deleted) is None
    assert [i for i in alive if store.get_vector(B_ID, tenant, i) is None] == []
    # Each image once in each collection (ids are deterministic): B holds what A holds.
    assert store.count(B_ID, tenant) == store.count(A_ID, tenant) >= len(alive)
    row = next(r for r in progress(settings)["tenants"] if r["tenant"] == tenant)
    assert row["done"] <= len(ids) + len(client.uploaded) and row["failed"] == 0

    with Client(http, jpeg_bytes(scene(7, size=96))) as client:
        time.sleep(1)
        model_ops.cutover(settings)
        wait_for(lambda: model_of_answers(http) == B_ID, timeout_s=5)
        time.sleep(1.2)
        model_ops.rollback(settings)
        wait_for(lambda: model_of_answers(http) == A_ID, timeout_s=5)
        time.sleep(1.2)
        model_ops.cutover(settings)
        wait_for(lambda: model_of_answers(http) == B_ID, timeout_s=5)
        time.sleep(1.2)
    assert client.failed == [] and client.empty == 0
    assert B_ID in client.models and A_ID in client.models
    assert client.models[-1] == B_ID
    # Answers from B find the images B embedded: the query picture is among them.
    found = http.post("/v1/search/image", data={"k": "3"},
                      files={"file": ("q.jpg", jpeg_bytes(scene(7, size=96)))}).json()
    assert found["model"] == B_ID and found["hits"][0]["image_id"] == ids[7]

    finished = model_ops.finish(settings)
    assert finished["deleted_model"] == A_ID and finished["migration"] is None
    assert make_vector_store(settings).count(A_ID, tenant) == 0
    assert model_of_answers(http) == B_ID
    wait_for(lambda: http.get("/v1/model").json()["reindexing"] is None, timeout_s=5)
