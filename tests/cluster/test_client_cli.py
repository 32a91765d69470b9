"""Client commands as a user runs them: plain errors, honest exit codes, a resume file
that knows which server and tenant it is for, and a local stack found from anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deeplens.broker import free_port
from ingestion.api import create_app
from tests import images
from tests.conftest import make_settings
from tests.http_server import serve_app

ROOT = Path(__file__).parent.parent.parent


def deeplens(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENS_")}
    return subprocess.run([sys.executable, "-m", "deeplens.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd or ROOT, env=base | (env or {}))


def no_traceback(run: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr


def test_missing_files_api_down_and_a_wrong_key_are_one_line_and_exit_2(api, tmp_path) -> None:
    missing = deeplens("ingest", str(tmp_path / "nothing-here"), "--api", api.url,
                       "--key", api.key_a)
    no_traceback(missing)
    assert missing.returncode == 2 and "nothing to ingest" in missing.stderr
    down = deeplens("search", "a cat", "--api", f"http://127.0.0.1:{free_port()}",
                    "--key", "some-key-0123456789")
    no_traceback(down)
    assert down.returncode == 2 and "no DeepLens answering" in down.stderr
    photo = tmp_path / "a.jpg"
    photo.write_bytes(images.jpeg(1))
    wrong = deeplens("ingest", str(photo), "--api", api.url, "--key", "wrong-key-0123456789",
                     "--state", str(tmp_path / "state.json"))
    no_traceback(wrong)
    assert wrong.returncode == 2 and "refused" in wrong.stderr
    no_image = deeplens("search", "--image", str(tmp_path / "gone.jpg"), "--api", api.url,
                        "--key", api.key_a)
    assert no_image.returncode == 2 and "no such file" in no_image.stderr


def test_exit_1_names_the_refused_file_and_no_http_log_lines(api, tmp_path) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "notes.jpg"
    good.write_bytes(images.jpeg(2))
    bad.write_bytes(b"plain text, not a picture")
    run = deeplens("ingest", str(tmp_path), "--api", api.url, "--key", api.key_a,
                   "--no-wait", "--state", str(tmp_path / "state.json"))
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{bad}: refused: 415" in run.stdout
    assert "HTTP Request" not in run.stdout + run.stderr


def test_resume_file_is_per_server_and_tenant_and_checked_with_the_server(
        api, tmp_path, kafka_settings, tenant) -> None:
    from cluster.ingest import IngestState, ingest

    photo = tmp_path / "p.jpg"
    photo.write_bytes(images.jpeg(3))
    state_path = tmp_path / "state.json"
    first = ingest(api.url, api.key_a, [photo], IngestState(state_path), 1, wait=False,
                   timeout_s=5, out=open(os.devnull, "w"))
    assert first["uploaded"] == 1
    again = ingest(api.url, api.key_a, [photo], IngestState(state_path), 1, wait=False,
                   timeout_s=5, out=open(os.devnull, "w"))
    assert again["skipped"] == 1 and again["uploaded"] == 0
    # A fresh server (another stack, same tenant and key): nothing is skipped.
    fresh = make_settings(tmp_path / "other", kafka_settings, tenant, tenant + "-b")
    with serve_app(create_app(fresh)) as other_url:
        elsewhere = ingest(other_url, api.key_a, [photo], IngestState(state_path), 1,
                           wait=False, timeout_s=5, out=open(os.devnull, "w"))
    assert elsewhere["uploaded"] == 1 and elsewhere["skipped"] == 0
    # The same server lost the image (deleted): the remembered id is checked, and sent again.
    image_id = json.loads(state_path.read_text())["targets"][f"{api.url}|{tenant}"]
    [(_, gone)] = image_id.items()
    assert httpx.delete(f"{api.url}/v1/images/{gone}",
                        headers={"Authorization": f"Bearer {api.key_a}"}).status_code == 204
    resent = ingest(api.url, api.key_a, [photo], IngestState(state_path), 1, wait=True,
                    timeout_s=3, out=open(os.devnull, "w"))
    assert resent["uploaded"] == 1 and resent["skipped"] == 0


def test_a_running_local_stack_is_found_from_any_folder(api, tmp_path) -> None:
    """No DEEPLENS_DATA_DIR in the shell: `deeplens up` left a pointer in the home."""
    from deeplens.runtime import write_runtime
    from deeplens.settings import Settings

    data_dir = tmp_path / "stack-data"
    data_dir.mkdir()
    (data_dir / "demo-api-key").write_text(api.key_a + "\n")
    home = tmp_path / "home"
    os.environ["DEEPLENS_HOME"] = str(home)
    try:
        write_runtime(Settings(data_dir=data_dir), {"url": api.url, "bootstrap_servers": "",
                                                    "local_broker": True}, announce=True)
    finally:
        del os.environ["DEEPLENS_HOME"]
    photo = tmp_path / "elsewhere" / "x.jpg"
    photo.parent.mkdir()
    photo.write_bytes(images.jpeg(4))
    run = deeplens("ingest", str(photo), "--no-wait", "--state", str(tmp_path / "s.json"),
                   env={"DEEPLENS_HOME": str(home)}, cwd=photo.parent)
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "new 1" in run.stdout


@pytest.mark.parametrize("old", [{"abc": "id1"}, "not json"])
def test_an_old_or_broken_resume_file_is_not_trusted(tmp_path, old) -> None:
    from cluster.ingest import IngestState

    path = tmp_path / "state.json"
    path.write_text(json.dumps(old) if isinstance(old, dict) else old)
    state = IngestState(path)
    state.bind("http://x", "acme")
    assert state.done == {}


def test_topics_list_finds_the_running_stack_too(tmp_path, kafka_settings) -> None:
    from deeplens.runtime import write_runtime
    from deeplens.settings import Settings

    data_dir = tmp_path / "stack-data"
    data_dir.mkdir()
    home = tmp_path / "home"
    os.environ["DEEPLENS_HOME"] = str(home)
    try:
        write_runtime(Settings(data_dir=data_dir), {
            "url": "http://127.0.0.1:1", "bootstrap_servers": kafka_settings.bootstrap_servers,
            "local_broker": True}, announce=True)
    finally:
        del os.environ["DEEPLENS_HOME"]
    run = deeplens("topics", "list", env={"DEEPLENS_HOME": str(home),
                                          "DEEPLENS_KAFKA__TOPIC_PREFIX":
                                          kafka_settings.topic_prefix}, cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 0, run.stderr
    assert kafka_settings.topic_prefix + "images.uploaded" in run.stdout


METRICS = """# TYPE deeplens_stage_handled_total counter
deeplens_stage_handled_total{stage="validation"} 40.0
# TYPE deeplens_stage_failed_total counter
deeplens_stage_failed_total{stage="validation"} 2.0
# TYPE deeplens_consumer_lag gauge
deeplens_consumer_lag{group="validation",topic="images.uploaded",partition="0"} 5.0
"""


@pytest.fixture
def metrics_url():
    """A /metrics endpoint answering a fixed exposition (what the gateway would)."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    app.get("/healthz")(lambda: {"ok": True})
    app.get("/metrics", response_class=PlainTextResponse)(lambda: METRICS)
    with serve_app(app) as url:
        yield url


def test_status_says_counters_restart_and_prints_no_alembic_lines(metrics_url, tmp_path) -> None:
    from ingestion.catalog import Catalog

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    Catalog(f"sqlite:///{data_dir / 'catalog.db'}")  # the schema, as `deeplens up` leaves it
    run = deeplens("status", "--api", metrics_url, env={"DEEPLENS_DATA_DIR": str(data_dir)},
                   cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "validation" in run.stdout and "tenant" in run.stdout, run.stdout
    assert "restart from 0 when an actor restarts" in run.stdout
    assert "alembic" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr


def test_status_from_the_stack_pointer_says_why_per_tenant_counts_are_left_out(
        metrics_url, tmp_path) -> None:
    """`deeplens up` ran with a PostgreSQL catalog; this shell has only the pointer."""
    from deeplens.runtime import write_runtime
    from deeplens.settings import Settings

    data_dir = tmp_path / "stack-data"
    data_dir.mkdir()
    home = tmp_path / "home"
    os.environ["DEEPLENS_HOME"] = str(home)
    try:
        write_runtime(Settings(data_dir=data_dir), {
            "url": metrics_url, "bootstrap_servers": "", "local_broker": True,
            "catalog": "postgresql+psycopg://deeplens:***@db/deeplens"}, announce=True)
    finally:
        del os.environ["DEEPLENS_HOME"]
    run = deeplens("status", env={"DEEPLENS_HOME": str(home)}, cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "per-tenant counts left out" in run.stdout, run.stdout
    assert "postgresql+psycopg://deeplens:***@db/deeplens" in run.stdout
    assert "DEEPLENS_CATALOG_URL" in run.stdout


def test_deeplens_up_records_its_catalog_without_the_password(tmp_path) -> None:
    from cluster.stack import LocalStack
    from deeplens.settings import Settings

    stack = LocalStack(Settings(data_dir=tmp_path,
                                catalog_url="postgresql+psycopg://deeplens:pw-123@db/deeplens"))
    stack._write_runtime()
    recorded = json.loads((tmp_path / "stack.json").read_text())
    assert recorded["catalog"] == "postgresql+psycopg://deeplens:***@db/deeplens"
