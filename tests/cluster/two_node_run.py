"""Running the two-node scenario (``tests/cluster/two_nodes.py``) from a parent process:
its shared state (an S3-protocol server, the Weaviate stand-in, a PostgreSQL database, a
topic prefix on a broker), the child process, and what the stand-in holds afterwards.

Shared by ``tests/cluster/test_two_nodes.py`` (which asserts behaviour) and
``benchmarks/node_loss_bench.py`` (which records the figures: how long each part took).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent.parent
TENANT = "acme"


@contextmanager
def s3_server() -> Iterator[tuple[str, str]]:
    """A moto S3 server on loopback with one fresh bucket: (endpoint, bucket)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from deeplens.broker import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"two-nodes-{uuid.uuid4().hex[:6]}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test-secret",
                     ).create_bucket(Bucket=bucket)
        yield endpoint, bucket
    finally:
        server.stop()


def scenario_config(data_dir: Path, kafka: Any, catalog_url: str, s3: tuple[str, str],
                    standin: Any) -> dict:
    """The child's one argument: where the shared state is."""
    endpoint, bucket = s3
    return {
        "data_dir": str(data_dir), "catalog_url": catalog_url,
        "s3_endpoint": endpoint, "bucket": bucket, "weaviate_url": standin.http_url,
        "weaviate_grpc_port": standin.grpc_port,
        "kafka": kafka.model_dump(mode="json", exclude={"sasl_password"}),
    }


class ScenarioFailed(AssertionError):
    """The child exited non-zero or printed no result (its output's tails attached)."""


def run_scenario(config: dict, timeout_s: float = 600) -> dict:
    """Run ``python -m tests.cluster.two_nodes`` (its own Ray driver) with no DEEPLENS_*
    variable inherited; its RESULT line as a dict."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENS_")}
    run = subprocess.run([sys.executable, "-m", "tests.cluster.two_nodes", json.dumps(config)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise ScenarioFailed(f"exit {run.returncode}\nstdout: {run.stdout[-3000:]}\n"
                             f"stderr: {run.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def indexed_ids(standin: Any, tenant: str = TENANT) -> list[str]:
    """The image id of every object the stand-in holds for the tenant (one per indexing:
    an image indexed twice is there twice)."""
    return [o.properties["image_id"] for c in standin.state.collections.values()
            for o in c.objects.get(tenant, {}).values()]
