"""Run by ``test_fake_autoscaler.py`` in a process of its own (it needs its own Ray driver).

Starts a Ray head with the autoscaler on Ray's fake multi-node provider
(``tests/cluster/fake_cluster.py``): no node offers ``gpu_pool`` until the autoscaler
adds a ``gpu_worker``. Then the real Embedder deployment (``serve_apps.embedder``, the
``deeplens-tiny`` model with random weights) asking ``resources={"gpu_pool": 1}``, as
``DEEPLENS_SERVE__RESOURCES='{"gpu_pool": 1}'`` makes it: its replica cannot be placed,
so a node must be added; the replica is then lowered to 0 the way the scaling controller
does (Serve's external-scaler API), and the idle node must go. Prints one JSON line
(``RESULT {...}``) with what it saw; the cluster's processes are killed at the end.

Usage: ``python tests/cluster/fake_autoscaler_run.py TEMP_DIR`` (a short, empty path:
Ray's socket paths live under it).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cluster.fake_cluster import cluster_processes, kill_cluster, start_head  # noqa: E402

IDLE_TIMEOUT_MINUTES = 0.1
DEADLINE_S = 240.0  # for each step: a node to come, a node to go


class NodeSampler(threading.Thread):
    """Alive nodes offering ``gpu_pool``, sampled every half second; changes are kept."""

    def __init__(self, began: float) -> None:
        super().__init__(daemon=True)
        self.began, self.changes, self.count = began, [], -1
        self.node_ids: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stop.is_set():
            ids = sorted(n["NodeID"] for n in ray.nodes()
                         if n["Alive"] and n["Resources"].get("gpu_pool"))
            if len(ids) != self.count:
                self.count, self.node_ids = len(ids), ids
                self.changes.append([round(time.monotonic() - self.began, 1), len(ids)])
            self.stop.wait(0.5)

    def wait_for(self, count: int, deadline_s: float) -> float | None:
        """Seconds since ``began`` when ``count`` gpu nodes were first seen (None: never)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for at, seen in self.changes:
                if seen == count and at >= 0:
                    return at
            time.sleep(0.2)
        return None


def replica_nodes() -> list[str]:
    """Node ids of the live Embedder replicas (from the GCS actor table)."""
    import ray

    return [a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if a["ActorClassName"].startswith("ServeReplica:embedder") and a["State"] == "ALIVE"]


def embedder_settings(data_dir: Path):
    from deeplens.broker import free_port
    from deeplens.settings import ModelSettings, ServeSettings, Settings

    return Settings(data_dir=data_dir, model=ModelSettings(name="deeplens-tiny", pretrained="random"),
                    serve=ServeSettings(port=free_port(), proxy_location="HeadOnly", replicas=1,
                                        num_cpus=0.5, resources={"gpu_pool": 1}))


def scenario(address: str, data_dir: Path, temp_dir: Path) -> dict:
    import ray
    from ray import serve

    from cluster.samples import jpeg_bytes, scene
    from cluster.scaling_ops import set_embedder_replicas
    from deeplens.serve_names import EMBEDDER_APP, embedder_handle
    from serve_apps.embedder import build_embedder

    ray.init(address=address, log_to_driver=False)
    result: dict = {"head_has_gpu_pool": any(n["Resources"].get("gpu_pool") for n in ray.nodes())}
    time.sleep(5)  # a few autoscaler rounds with no demand: min_workers 0 adds nothing
    sampler = NodeSampler(time.monotonic())
    sampler.start()
    time.sleep(1)
    result["gpu_nodes_before"] = sampler.count
    settings = embedder_settings(data_dir)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1",
                                                         "port": settings.serve.port})
    asked = time.monotonic()
    # Blocks until the replica runs, which needs a node with gpu_pool: one the autoscaler adds.
    serve.run(build_embedder(settings), name=EMBEDDER_APP, route_prefix=None,
              external_scaler_enabled=True)
    result["replica_running_s"] = round(time.monotonic() - asked, 1)
    added_at = sampler.wait_for(1, DEADLINE_S)
    result["node_added_s"] = None if added_at is None else round(added_at - (asked - sampler.began), 1)
    result["gpu_node_ids"] = list(sampler.node_ids)
    result["replica_nodes"] = replica_nodes()
    vector = embedder_handle().embed.remote(jpeg_bytes(scene(1, 64))).result(timeout_s=120)
    result["embedded_dims"] = len(vector.vector)
    result["processes_with_node"] = sorted(cluster_processes(temp_dir).values())
    released = time.monotonic()
    set_embedder_replicas(0)  # what the controller does when the minimum is 0
    result["replicas_after_release"] = wait_replicas_gone(DEADLINE_S)
    gone_at = None
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and gone_at is None:
        gone_at = next((at for at, seen in sampler.changes
                        if seen == 0 and at > released - sampler.began), None)
        time.sleep(0.2)
    result["node_removed_s"] = None if gone_at is None else round(
        gone_at - (released - sampler.began), 1)
    sampler.stop.set()
    sampler.join()
    result["gpu_node_changes"] = sampler.changes
    result["idle_timeout_minutes"] = IDLE_TIMEOUT_MINUTES
    return result


def wait_replicas_gone(deadline_s: float) -> int:
    end = time.monotonic() + deadline_s
    while (left := len(replica_nodes())) and time.monotonic() < end:
        time.sleep(0.5)
    return left


def main() -> None:
    temp_dir = Path(sys.argv[1])
    # `ray start` in Ray 2.60 turns token authentication on; one token for the head, the
    # nodes the autoscaler adds (they inherit the monitor's environment) and this driver.
    # Set before Ray is imported.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    began = time.monotonic()
    address = start_head(temp_dir, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES)
    result: dict = {"gcs_address": address}
    try:
        result.update(scenario(address, temp_dir / "data", temp_dir))
    finally:
        import ray

        ray.shutdown()
        result["left_after_kill"] = sorted(kill_cluster(temp_dir).values())
        result["total_s"] = round(time.monotonic() - began, 1)
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
