"""`deeplens up`'s stack: the upload API served by Ray Serve, stages as Ray actors."""

from __future__ import annotations

import time

import httpx
import pytest

from cluster.stack import LocalStack, ensure_demo_key
from deeplens.broker import free_port
from deeplens.settings import KafkaSettings, ModelSettings, ServeSettings, Settings
from tests import images


def test_stack_serves_uploads_through_ray_serve(tmp_path, kafka_settings, no_serve) -> None:
    settings = Settings(data_dir=tmp_path, kafka=kafka_settings,
                        model=ModelSettings(name="deeplens-tiny", pretrained="random"),
                        serve=ServeSettings(port=free_port(), num_cpus=0.25))
    with LocalStack(settings) as stack:
        assert stack.demo_key, "with no keys configured a demo tenant is created"
        headers = {"Authorization": f"Bearer {stack.demo_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            body = client.post("/v1/images", files={"file": ("a.jpg", images.jpeg(11))}).json()
            assert body["tenant_id"] == "demo"
            deadline = time.monotonic() + 60
            status = ""
            while status not in ("indexed", "failed") and time.monotonic() < deadline:
                status = client.get(f"/v1/images/{body['image_id']}").json()["status"]
                time.sleep(0.3)
            assert status == "indexed"
            assert client.get("/openapi.json").status_code == 200
        assert stack.ready_s is not None and stack.ready_s > 0
        report = stack.memory_report()
        assert "GB in all" in report and "deeplens (driver)" in report, report
    assert stack.actors == []


def test_footprint_counts_a_process_tree() -> None:
    """PSS of this process and a child it started, each under its role."""
    import subprocess
    import sys

    from cluster.footprint import describe, footprint

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(60 * 2**20); "
                              "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        total, roles = footprint()
        while time.monotonic() < deadline and total < 60 * 2**20:
            time.sleep(0.2)
            total, roles = footprint()
        assert total >= 60 * 2**20, roles
        assert "deeplens (driver)" in roles and sum(n for _, n in roles.values()) >= 2
        assert describe(total, roles).startswith(f"{total / 2**30:.2f} GB in all: ")
    finally:
        child.kill()


def test_demo_key_is_kept_across_restarts_and_only_without_keys(tmp_path) -> None:
    first, key = ensure_demo_key(Settings(data_dir=tmp_path))
    again, same = ensure_demo_key(Settings(data_dir=tmp_path))
    assert key and key == same and first.tenant_keys() == {key: "demo"}
    assert (tmp_path / "demo-api-key").stat().st_mode & 0o777 == 0o600
    configured, none = ensure_demo_key(Settings(data_dir=tmp_path, api_keys="acme:k1-0123456789abcd"))
    assert none is None and configured.tenant_keys() == {"k1-0123456789abcd": "acme"}


def test_deeplens_up_reports_readiness_and_stops_cleanly_on_ctrl_c(tmp_path) -> None:
    """What a user sees: the banner with time to ready and memory, then after Ctrl-C
    nothing but the shell prompt (no raylet task-failure lines, no traceback)."""
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENS_")} | {
        "DEEPLENS_MODEL__NAME": "deeplens-tiny", "DEEPLENS_MODEL__PRETRAINED": "random",
        "DEEPLENS_SERVE__PORT": str(free_port()), "DEEPLENS_SERVE__NUM_CPUS": "0.25",
        "DEEPLENS_HOME": str(tmp_path / "home"), "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen([sys.executable, "-m", "deeplens.cli", "up", "--data",
                                str(tmp_path / "data")], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        assert (tmp_path / "home" / "current-stack.json").exists(), "pointer for clients"
        process.send_signal(signal.SIGINT)
        after = process.stdout.read()
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    banner = "".join(lines)
    assert "ready in" in banner and "GB in all" in banner, banner
    assert code == 0
    assert "(raylet)" not in after and "Traceback" not in after, after
    assert not (tmp_path / "home" / "current-stack.json").exists(), "pointer removed on stop"


def test_a_multi_node_start_with_node_local_state_is_refused_naming_the_settings(
        tmp_path) -> None:
    from cluster.stack import shared_state_problems
    from deeplens.settings import StorageSettings, VectorStoreSettings

    local = Settings(data_dir=tmp_path)
    assert shared_state_problems(local, 1) == []
    problems = " ".join(shared_state_problems(local, 2))
    for name in ("DEEPLENS_CATALOG_URL", "DEEPLENS_STORAGE__PROVIDER",
                 "DEEPLENS_VECTOR_STORE__BACKEND"):
        assert name in problems
    shared = Settings(data_dir=tmp_path, catalog_url="postgresql+psycopg://db/deeplens",
                      kafka=KafkaSettings(bootstrap_servers="kafka-1:9092"),
                      storage=StorageSettings(provider="s3", s3_bucket="b"),
                      vector_store=VectorStoreSettings(backend="weaviate"))
    assert shared_state_problems(shared, 3) == []


def test_a_multi_node_start_without_a_broker_is_refused_before_a_local_one_starts(
        tmp_path, monkeypatch) -> None:
    """No KAFKA__BOOTSTRAP_SERVERS on a cluster would mean a broker on this node's
    127.0.0.1 that no other node reaches: refused, and no local broker is started."""
    import ray

    import cluster.stack as stack_module
    from cluster.stack import StackError
    from deeplens.settings import StorageSettings, VectorStoreSettings

    started: list[int] = []
    monkeypatch.setattr(stack_module, "start_local_broker",
                        lambda *a, **k: started.append(1) or pytest.fail("broker started"))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # joined: a two-node cluster
    # No Ray really runs here: the clean-up after the refusal has no backfill to stop
    # (asking Ray for it would fail the test when no other test started Ray first).
    monkeypatch.setattr(stack_module, "stop_model_backfill", lambda: None)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    settings = Settings(data_dir=tmp_path, ray_address="ray://head:10001",
                        catalog_url="postgresql+psycopg://db/deeplens",
                        storage=StorageSettings(provider="s3", s3_bucket="b"),
                        vector_store=VectorStoreSettings(backend="weaviate"))
    monkeypatch.setattr("cluster.preflight.preflight", lambda settings: [])  # no services
    with pytest.raises(StackError) as refused:
        with LocalStack(settings):
            pass
    assert "DEEPLENS_KAFKA__BOOTSTRAP_SERVERS" in str(refused.value)
    assert "127.0.0.1" in str(refused.value) and "2 nodes" in str(refused.value)
    assert started == []


def test_an_unreachable_weaviate_stops_deeplens_up_at_once_in_one_line(tmp_path) -> None:
    """Before anything starts (no Ray, no broker): one line naming the vector store, its
    address and the variable to fix; exit 1, no traceback."""
    import os
    import subprocess
    import sys

    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENS_")} | {
        "DEEPLENS_VECTOR_STORE__BACKEND": "weaviate",
        "DEEPLENS_VECTOR_STORE__WEAVIATE_URL": url,
        "DEEPLENS_VECTOR_STORE__WEAVIATE_GRPC_PORT": str(free_port()),
        "DEEPLENS_MODEL__NAME": "deeplens-tiny", "DEEPLENS_MODEL__PRETRAINED": "random",
        "DEEPLENS_SERVE__PORT": str(free_port()), "DEEPLENS_HOME": str(tmp_path / "home"),
        "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run([sys.executable, "-m", "deeplens.cli", "up", "--data",
                          str(tmp_path / "data")], env=env, capture_output=True, text=True,
                         timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "Traceback" not in out, out
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("deeplens up: the vector store (Weaviate)"), out
    assert url in lines[0] and "DEEPLENS_VECTOR_STORE__WEAVIATE_URL" in lines[0], out
    assert not (tmp_path / "data" / "broker.log").exists(), "nothing started"
    assert "Ray" not in out, out


def test_preflight_names_each_unreachable_service_and_its_setting(tmp_path) -> None:
    from cluster.preflight import preflight
    from deeplens.settings import StorageSettings, VectorStoreSettings

    closed = free_port()
    settings = Settings(
        data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed}"),
        catalog_url=f"postgresql+psycopg://deeplens:secret-pw@127.0.0.1:{closed}/deeplens",
        storage=StorageSettings(provider="s3", s3_bucket="b", s3_region="us-east-1",
                                s3_endpoint_url=f"http://127.0.0.1:{closed}",
                                s3_access_key_id="k", s3_secret_access_key="s"),
        vector_store=VectorStoreSettings(backend="weaviate",
                                         weaviate_url=f"http://127.0.0.1:{closed}"))
    problems = preflight(settings)
    assert len(problems) == 4, problems
    for line, variable in zip(problems, ("DEEPLENS_KAFKA__BOOTSTRAP_SERVERS",
                                         "DEEPLENS_CATALOG_URL", "DEEPLENS_STORAGE__S3_BUCKET",
                                         "DEEPLENS_VECTOR_STORE__WEAVIATE_URL"), strict=True):
        assert variable in line and "\n" not in line, line
    assert "secret-pw" not in " ".join(problems)
    assert preflight(Settings(data_dir=tmp_path)) == [], "the embedded defaults need nothing"


def test_the_memory_figure_says_it_is_this_node_only_on_a_cluster(tmp_path) -> None:
    cluster = LocalStack(Settings(data_dir=tmp_path, ray_address="auto"))
    assert "this node only" in cluster.memory_report()
    local = LocalStack(Settings(data_dir=tmp_path))
    local._ray_started = True  # the local Ray it started: its processes are all children
    assert "this node only" not in local.memory_report()
