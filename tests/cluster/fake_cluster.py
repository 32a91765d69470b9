"""A Ray cluster with the autoscaler and Ray's fake multi-node provider, started and
stopped without ``ray stop``.

``ray.cluster_utils.AutoscalingCluster`` does the same but runs ``ray stop --force`` when
it starts and when it shuts down, which would stop every Ray on the machine (a test
session's own included). Here the head is started with ``ray start --head`` on a free
port and a temporary directory of its own, and every process of this cluster carries
the environment variable ``MARKER`` set to that directory: the head's processes, the
monitor (the autoscaler), the fake worker nodes the monitor starts in its own process
and every worker process their raylets start. ``kill_cluster`` kills exactly those.

Ray 2.60's wheel does not ship the provider's ``example.yaml`` that
``AutoscalingCluster._generate_config`` reads; ``fake_config`` writes the same settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER = "DEEPLENS_FAKE_CLUSTER"
WORKER_TYPE = "gpu_worker"


def fake_config(gcs_address: str, head_cpus: int, idle_timeout_minutes: float) -> dict:
    """The autoscaling config: a head without ``gpu_pool``, and up to two ``gpu_worker``
    nodes of ``{"CPU": 1, "gpu_pool": 1}``, none kept without demand."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": 2,
        # gcs_address: the provider's worker nodes join this head (not :6379).
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                 "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1, "gpu_pool": 1}, "node_config": {},
                          "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {}, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


def start_head(temp_dir: Path, head_cpus: int = 2, idle_timeout_minutes: float = 0.1) -> str:
    """``ray start --head`` with the autoscaler on the fake provider; its GCS address."""
    import ray

    from deeplens.broker import free_port

    address = f"{ray.util.get_node_ip_address()}:{free_port()}"
    config = temp_dir / "autoscaling.json"
    config.write_text(json.dumps(fake_config(address, head_cpus, idle_timeout_minutes)))
    env = {**os.environ, MARKER: str(temp_dir), "RAY_FAKE_CLUSTER": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run([
        ray_cli, "start", "--head", f"--port={address.rsplit(':', 1)[1]}",
        f"--temp-dir={temp_dir}", f"--autoscaling-config={config}", f"--num-cpus={head_cpus}",
        "--include-dashboard=false", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}"],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    return address


def cluster_processes(temp_dir: Path) -> dict[int, str]:
    """pid -> process name of every live process carrying this cluster's marker."""
    found: dict[int, str] = {}
    wanted = f"{MARKER}={temp_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if wanted in environ:
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:  # gone, or not ours
            continue
    return found


def kill_cluster(temp_dir: Path, deadline_s: float = 20.0) -> dict[int, str]:
    """SIGKILL every process of this cluster (never ``ray stop``), until none is left;
    what is still alive afterwards (empty when all went)."""
    end = time.monotonic() + deadline_s
    while (alive := cluster_processes(temp_dir)) and time.monotonic() < end:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
    return cluster_processes(temp_dir)
