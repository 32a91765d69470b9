"""With ``ray up``: an Embedder replica that no node can place makes Ray's autoscaler add
a ``gpu_worker`` node, and the node goes once idle. Ray's fake multi-node provider
(no Docker) on a cluster of its own (``tests/cluster/fake_autoscaler_run.py``), started
and killed without ``ray stop``: this session's Ray keeps running throughout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cluster.fake_cluster import cluster_processes, kill_cluster

ROOT = Path(__file__).parent.parent.parent
SCRIPT = ROOT / "tests" / "cluster" / "fake_autoscaler_run.py"


def run_fake_cluster() -> dict:
    # Short: Ray's unix socket paths live under it (at most 107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="dlfa-", dir="/tmp"))
    try:
        done = subprocess.run([sys.executable, str(SCRIPT), str(temp_dir)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, done.stderr[-4000:]
        result = json.loads(lines[-1][len("RESULT "):])
        result["rc"], result["stderr_tail"] = done.returncode, done.stderr[-4000:]
        return result
    finally:  # the script kills its cluster; again here in case it was killed first
        result_left = kill_cluster(temp_dir)
        assert not cluster_processes(temp_dir), result_left
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_pending_replica_adds_a_node_and_the_idle_node_goes(ray_session) -> None:
    import ray

    session_node = ray.get_runtime_context().get_node_id()
    result = run_fake_cluster()
    assert result["rc"] == 0, result["stderr_tail"]
    # No node offers gpu_pool at first, and min_workers 0 adds none without demand.
    assert result["head_has_gpu_pool"] is False and result["gpu_nodes_before"] == 0, result
    # The replica could not be placed: the autoscaler added one gpu_worker, the replica
    # runs there and embeds.
    assert result["node_added_s"] is not None, result
    assert len(result["gpu_node_ids"]) == 1, result
    assert result["replica_nodes"] == result["gpu_node_ids"], result
    assert result["embedded_dims"] > 0, result
    # The added node's raylet is this cluster's (killed at the end), beside the head's.
    assert result["processes_with_node"].count("raylet") == 2, result
    # Replicas lowered to 0 (as the scaling controller does): the idle node goes.
    assert result["replicas_after_release"] == 0, result
    assert result["node_removed_s"] is not None, result
    assert result["gpu_node_changes"][-1][1] == 0, result
    assert max(count for _, count in result["gpu_node_changes"]) == 1, result
    assert result["left_after_kill"] == [], result
    # This session's Ray was never stopped.
    assert ray.is_initialized()
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert session_node in alive
    assert ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60) == 42
