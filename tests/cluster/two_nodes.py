"""Run by ``test_two_nodes.py`` in a process of its own (it needs its own Ray driver).

Starts a real two-node Ray cluster on this machine (Ray's ``cluster_utils``: a head and
a second raylet, each its own processes), the second node carrying a custom resource
``worker_node``; then DeepLens on it the way ``deeplens up --ray-address`` does, with
the catalog on PostgreSQL, bytes on an S3-protocol server, vectors in Weaviate (the
stand-in) and Kafka on the local broker, all given by the test as arguments. Prints
one JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import httpx


def main() -> None:
    config = json.loads(sys.argv[1])
    # As ray-cluster.yaml does: token authentication on every node, one token for all
    # (Ray 2.60 refuses a node whose mode or token differs from the head's). Set before
    # Ray is imported; every node and worker process started below inherits both.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    from ray.cluster_utils import Cluster

    from cluster.samples import jpeg_bytes, scene
    from cluster.stack import LocalStack, StackError
    from deeplens.broker import free_port
    from deeplens.settings import (
        ActorSettings,
        KafkaSettings,
        ModelSettings,
        OpsSettings,
        ServeSettings,
        Settings,
        StorageSettings,
        VectorStoreSettings,
    )

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head_node": 100}})
    worker = cluster.add_node(num_cpus=2, resources={"worker_node": 100})
    cluster.wait_for_nodes()
    result: dict = {"worker_node_id": worker.node_id}
    kafka = KafkaSettings(**config["kafka"])
    try:
        base = dict(data_dir=config["data_dir"], kafka=kafka, ray_address=cluster.address,
                    api_keys="acme:acme-key-0123456789ab",
                    model=ModelSettings(name="deeplens-tiny", pretrained="random"))
        # 1. Node-local state on a two-node cluster: refused, naming the settings.
        try:
            with LocalStack(Settings(**base)):
                result["refused"] = None
        except StackError as exc:
            result["refused"] = str(exc)
        # 1b. Shared state but no broker configured: a local broker on this node's loopback
        # would be unreachable from the other; refused before one starts.
        shared = dict(
            catalog_url=config["catalog_url"],
            storage=StorageSettings(provider="s3", s3_bucket=config["bucket"],
                                    s3_endpoint_url=config["s3_endpoint"], s3_region="us-east-1",
                                    s3_access_key_id="test", s3_secret_access_key="test-secret"),
            vector_store=VectorStoreSettings(backend="weaviate",
                                             weaviate_url=config["weaviate_url"],
                                             weaviate_grpc_port=config["weaviate_grpc_port"]))
        try:
            with LocalStack(Settings(**{**base, "kafka": KafkaSettings()}, **shared)):
                result["refused_broker"] = None
        except StackError as exc:
            result["refused_broker"] = str(exc)
        result["local_broker_started"] = (Path(config["data_dir"]) / "broker.log").exists()
        result["auth_mode"] = os.environ["RAY_AUTH_MODE"]
        # 2. Shared state: the whole pipeline, stages and Embedder on the second node.
        settings = Settings(
            **base, **shared,
            actors=ActorSettings(num_cpus=0.1, resources={"worker_node": 1}),
            serve=ServeSettings(port=free_port(), num_cpus=0.25, proxy_location="HeadOnly",
                                resources={"worker_node": 1}, query_timeout_s=3,
                                gateway_resources={"head_node": 1}),
            ops=OpsSettings(stage_down_after_s=5))
        result["scenario"] = {"stage_down_after_s": settings.ops.stage_down_after_s,
                              "query_timeout_s": settings.serve.query_timeout_s}
        with LocalStack(settings) as stack:
            client = httpx.Client(base_url=stack.url, timeout=60,
                                  headers={"Authorization": "Bearer acme-key-0123456789ab"})
            ids = [client.post("/v1/images", files={"file": (f"{i}.jpg", jpeg_bytes(scene(
                800 + i, 160)))}).json()["image_id"] for i in range(4)]
            statuses = wait_settled(client, ids, deadline_s=180)
            result["statuses"] = sorted(statuses.values())
            hits = client.post("/v1/search/image", data={"k": "1"}, files={
                "file": ("q.jpg", jpeg_bytes(scene(800, 160)))}).json()["hits"]
            result["top_hit_is_itself"] = bool(hits) and hits[0]["image_id"] == ids[0]
            from ray.util.state import list_actors

            placed: dict[str, list[str]] = {}
            for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
                name = actor.class_name
                if name.startswith("ServeReplica:embedder"):
                    name = "Embedder"
                placed.setdefault(name, []).append(
                    "worker" if actor.node_id == worker.node_id else "head")
            result["placed"] = placed
            result.update(lose_the_worker_node(cluster, worker, client, ids))
    finally:
        cluster.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


def lose_the_worker_node(cluster, worker, client: httpx.Client, ids: list[str]) -> dict:
    """Kill every process of the second node while uploads go on; readiness, upload
    answers and search must say so; a replacement node with the same resources brings
    everything back with no manual command. The ``*_s`` figures are for
    benchmarks/node_loss_bench.py; the test asserts behaviour only."""
    from cluster.samples import jpeg_bytes, scene

    answers: list[int] = []

    def upload(name: str, seed: int) -> httpx.Response:
        answer = client.post("/v1/images", files={"file": (name, jpeg_bytes(scene(seed, 160)))})
        answers.append(answer.status_code)
        return answer

    out: dict = {}
    # Mid-stream: these are uploaded and the node dies without waiting for them.
    in_flight = [upload(f"f{i}.jpg", 700 + i).json()["image_id"] for i in range(4)]
    cluster.remove_node(worker, allow_graceful=False)
    killed = time.monotonic()
    at_kill = client.post("/v1/images/statuses", json={"image_ids": in_flight}).json()
    out["in_flight_unfinished_at_kill"] = sum(
        s not in ("indexed", "failed") for s in at_kill["statuses"].values())
    during = list(in_flight)
    for i in range(4):  # the broker still takes events: uploads are accepted
        answer = upload(f"d{i}.jpg", 900 + i)
        during.append(answer.json().get("image_id"))
        out.setdefault("upload_status_during", []).append(answer.status_code)
    out.update(wait_degraded(client, killed))
    out["status_during"] = deeplens_status_pipeline(client)
    for i in range(10):  # the upload answer says so too (the Gateway's last verdict)
        answer = upload(f"s{i}.jpg", 950 + i)
        during.append(answer.json().get("image_id"))
        out["upload_pipeline_during"] = answer.json().get("pipeline")
        if (out["upload_pipeline_during"] or {}).get("state") == "degraded":
            break
        time.sleep(1)
    out["search_during"] = search_without_embedder(client, killed)
    replaced = time.monotonic()
    cluster.add_node(num_cpus=2, resources={"worker_node": 100})
    cluster.wait_for_nodes()
    everything = [*ids, *during]
    statuses = wait_settled(client, everything, deadline_s=300)
    out["indexed_after_replacement_s"] = round(time.monotonic() - replaced, 2)
    out["statuses_after"] = sorted(statuses.values())
    out["all_ids"] = everything
    out["accepted"] = len(ids) + answers.count(202)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and client.get("/readyz").status_code != 200:
        time.sleep(1)
    out["readyz_after"] = client.get("/readyz").status_code
    return out


def wait_degraded(client: httpx.Client, killed: float) -> dict:
    """Poll /readyz (every 0.5 s, up to 120 s) until it names the resource, the Embedder
    and every stage; the last report, and the seconds from the kill when it did."""
    deadline = time.monotonic() + 120
    report: dict = {}
    after: float | None = None
    while time.monotonic() < deadline:
        ready = client.get("/readyz")
        report = {"status": ready.status_code, **ready.json()}
        text = " ".join(report.get("reasons", []))
        if ready.status_code == 503 and "resource worker_node" in text and \
                "no Embedder replica" in text and \
                all(f"stage {stage} " in text for stage in report.get("stages", {})):
            after = round(time.monotonic() - killed, 2)
            break
        time.sleep(0.5)
    return {"readyz_during": {"status": report.get("status"), "reasons": report.get("reasons"),
                              "stages": sorted(report.get("stages", {}))},
            "degraded_after_kill_s": after}


def search_without_embedder(client: httpx.Client, killed: float) -> list[dict]:
    """A text and an image search with the Embedder gone, each with a generous client
    timeout (60 s, the bound is query_timeout_s=3): a hang is recorded as
    ``timed_out`` with no status, so the test fails on it without timing anything."""
    from cluster.samples import jpeg_bytes, scene

    found = []
    for route, kwargs in (("/v1/search", {"json": {"text": "a photo", "k": 3}}),
                          ("/v1/search/image", {"data": {"k": "3"}, "files": {
                              "file": ("q.jpg", jpeg_bytes(scene(800, 160)))}})):
        began = time.monotonic()
        row: dict = {"route": route, "after_kill_s": round(began - killed, 2)}
        try:
            search = client.post(route, timeout=60, **kwargs)
        except httpx.TimeoutException:
            row.update(status=None, timed_out=True, retry_after=None, detail="")
        else:
            row.update(status=search.status_code, timed_out=False,
                       retry_after=search.headers.get("Retry-After"),
                       detail=search.text[:300])
        row["seconds"] = round(time.monotonic() - began, 2)
        found.append(row)
    return found


def wait_settled(client: httpx.Client, image_ids: list[str], deadline_s: float) -> dict:
    """Each image's status once every one is indexed or failed (or at the deadline)."""
    deadline = time.monotonic() + deadline_s
    statuses: dict = {}
    while time.monotonic() < deadline:
        statuses = client.post("/v1/images/statuses", json={"image_ids": image_ids}
                               ).json()["statuses"]
        if len(statuses) == len(image_ids) and all(
                s in ("indexed", "failed") for s in statuses.values()):
            break
        time.sleep(0.5)
    return statuses


def deeplens_status_pipeline(client: httpx.Client) -> str:
    """What ``deeplens status`` prints about the pipeline, from this Gateway."""
    import contextlib
    import io

    from cluster.client_cli import print_pipeline

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_pipeline(str(client.base_url).rstrip("/"),
                       {"Authorization": client.headers["Authorization"]})
    return printed.getvalue()


if __name__ == "__main__":
    main()
