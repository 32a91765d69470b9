"""`deeplens reconcile`: images whose events the in-memory broker lost end up indexed."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import httpx

from cluster.samples import jpeg_bytes, scene
from cluster.stack import LocalStack
from deeplens.broker import free_port
from deeplens.kafka import admin_client
from deeplens.settings import ModelSettings, ServeSettings
from deeplens.topics import TopicNames, ensure_topics
from ingestion.reconcile import reconcile


def test_lost_in_flight_images_are_restarted_and_indexed(api, no_serve) -> None:
    with api.client() as client:
        ids = [client.post("/v1/images", files={"file": (f"{i}.jpg", jpeg_bytes(scene(500 + i)))}
                           ).json()["image_id"] for i in range(3)]
        gone = client.post("/v1/images", files={"file": ("gone.jpg", jpeg_bytes(scene(599)))}
                           ).json()["image_id"]
    for path in api.settings.storage_root.rglob(f"{gone}.*"):
        path.unlink()  # this one also lost its bytes

    # The broker "restarts": a fresh set of topics, nothing of the old events survives.
    prefix = f"after{uuid.uuid4().hex[:6]}."
    kafka = api.settings.kafka.model_copy(update={"topic_prefix": prefix})
    ensure_topics(admin_client(kafka), TopicNames(prefix))
    settings = api.settings.model_copy(update={
        "kafka": kafka, "model": ModelSettings(name="deeplens-tiny", pretrained="random"),
        "serve": ServeSettings(port=free_port(), num_cpus=0.25)})

    dry = reconcile(settings, older_than=timedelta(0), dry_run=True)
    assert sorted(dry.republished) == sorted(ids) and dry.missing_bytes == [gone]
    with LocalStack(settings) as stack:
        report = reconcile(settings, older_than=timedelta(0))
        assert sorted(report.republished) == sorted(ids)
        client = httpx.Client(base_url=stack.url, timeout=30,
                              headers={"Authorization": f"Bearer {api.key_a}"})
        deadline = time.monotonic() + 120
        rows: dict = {}
        while time.monotonic() < deadline:
            rows = {i: client.get(f"/v1/images/{i}").json() for i in [*ids, gone]}
            if all(r["status"] in ("indexed", "failed") for r in rows.values()):
                break
            time.sleep(0.5)
        again = reconcile(settings, older_than=timedelta(0))
    assert {rows[i]["status"] for i in ids} == {"indexed"}
    assert rows[gone]["status"] == "failed" and rows[gone]["failure_reason"] == "missing_object"
    assert again.republished == [], "reconcile is idempotent: nothing left to restart"
