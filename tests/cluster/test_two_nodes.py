"""A real two-node Ray cluster on this machine: the pipeline with its state shared
(PostgreSQL catalog, S3-protocol storage, Weaviate stand-in, the broker), stage actors
and the Embedder on the second node, and a refusal when state would stay on one node."""

from __future__ import annotations

import pytest

from tests.cluster.two_node_run import indexed_ids, run_scenario, s3_server, scenario_config
from tests.postgres import fresh_database
from tests.weaviate_standin import running_standin


@pytest.fixture
def s3_bucket():
    pytest.importorskip("boto3", reason="pip install -e '.[cluster]'")
    pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    with s3_server() as endpoint_bucket:
        yield endpoint_bucket


def test_pipeline_on_two_ray_nodes_with_shared_state(tmp_path, kafka_settings,
                                                     postgres_server_url, s3_bucket) -> None:
    standin = running_standin()
    result = run_scenario(scenario_config(tmp_path / "data", kafka_settings,
                                          fresh_database(postgres_server_url), s3_bucket,
                                          standin))
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
    # Search answers instead of hanging: with query_timeout_s=3 and a client timeout of
    # 60 s, a hang shows as timed_out with no status. How fast: benchmarks/node_loss_bench.
    assert [s["route"] for s in result["search_during"]] == ["/v1/search", "/v1/search/image"]
    for search in result["search_during"]:
        assert not search["timed_out"] and search["status"] == 503, search
        assert int(search["retry_after"]) >= 1, search
        assert "search is unavailable" in search["detail"], search
    assert result["statuses_after"] == ["indexed"] * len(result["all_ids"]), result
    assert len(set(result["all_ids"])) == len(result["all_ids"]) >= 13, result
    assert result["readyz_after"] == 200
    assert result["accepted"] == len(result["all_ids"]), result
    assert sorted(indexed_ids(standin)) == sorted(result["all_ids"]), "every image indexed exactly once"
