"""A real two-node Ray cluster on this machine: the pipeline with its state shared
(PostgreSQL catalog, S3-protocol storage, Weaviate stand-in, the broker), stage actors
and the Embedder on the second node, and a refusal when state would stay on one node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.postgres import fresh_database
from tests.weaviate_standin import running_standin

ROOT = Path(__file__).parent.parent.parent


@pytest.fixture
def s3_bucket():
    boto3 = pytest.importorskip("boto3", reason="pip install -e '.[cluster]'")
    server_mod = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    from deeplens.broker import free_port

    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"two-nodes-{uuid.uuid4().hex[:6]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test-secret").create_bucket(Bucket=bucket)
    yield endpoint, bucket
    server.stop()


def test_pipeline_on_two_ray_nodes_with_shared_state(tmp_path, kafka_settings,
                                                     postgres_server_url, s3_bucket) -> None:
    endpoint, bucket = s3_bucket
    standin = running_standin()
    config = {
        "data_dir": str(tmp_path / "data"), "catalog_url": fresh_database(postgres_server_url),
        "s3_endpoint": endpoint, "bucket": bucket, "weaviate_url": standin.http_url,
        "weaviate_grpc_port": standin.grpc_port,
        "kafka": kafka_settings.model_dump(mode="json", exclude={"sasl_password"}),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENS_")}
    run = subprocess.run([sys.executable, "-m", "tests.cluster.two_nodes", json.dumps(config)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (run.stdout[-3000:], run.stderr[-3000:])
    result = json.loads(lines[-1][len("RESULT "):])
    refused = result["refused"] or ""
    assert "2 nodes" in refused and "DEEPLENS_CATALOG_URL" in refused, refused
    assert "DEEPLENS_STORAGE__PROVIDER" in refused and "DEEPLENS_VECTOR_STORE__BACKEND" in refused
    assert "DEEPLENS_KAFKA__BOOTSTRAP_SERVERS" in (result["refused_broker"] or ""), result
    assert not result["local_broker_started"] and result["auth_mode"] == "token", result
    assert result["statuses"] == ["indexed"] * 4, result
    assert result["top_hit_is_itself"], result
    placed = result["placed"]
    assert placed["StageWorker"] and set(placed["StageWorker"]) == {"worker"}, placed
    assert placed["Embedder"] == ["worker"], placed
    # 3. The second node dies mid-stream, then a replacement joins.
    assert result["upload_status_during"] == [202] * 4, result
    during = result["readyz_during"]
    assert during["status"] == 503, during
    text = " ".join(during["reasons"])
    assert "indexing" in during["stages"], during
    for stage in during["stages"]:  # every stage ran on the lost node: each is named
        assert f"stage {stage} has no live actor" in text, during
    assert "no Embedder replica is running" in text, during
    assert "waiting for a node with resource worker_node" in text, during
    status = result["status_during"]  # deeplens status prints the same
    assert "pipeline: DEGRADED" in status and "stage indexing has no live actor" in status
    assert "resource worker_node" in status, status
    assert result["upload_pipeline_during"]["state"] == "degraded", result
    assert "resource worker_node" in " ".join(result["upload_pipeline_during"]["reasons"])
    for search in result["search_during"]:  # the bound: query_timeout_s=3, and margin
        assert search["status"] == 503 and search["retry_after"], search
        assert search["seconds"] < 30, search
    assert result["statuses_after"] == ["indexed"] * len(result["all_ids"]), result
    assert len(set(result["all_ids"])) == len(result["all_ids"]) >= 13, result
    assert result["readyz_after"] == 200
    objects = [o.properties["image_id"] for c in standin.state.collections.values()
               for o in c.objects.get("acme", {}).values()]
    assert sorted(objects) == sorted(result["all_ids"]), "every image indexed exactly once"
