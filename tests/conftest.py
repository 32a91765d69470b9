"""Session-wide real parts: one broker, one Ray; per-test topics and tenants.

Set DEEPLENS_TEST_BOOTSTRAP=host:port to run against an existing Kafka instead
of the local tansu broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deeplens.broker import LocalBroker, start_local_broker  # noqa: E402
from deeplens.kafka import admin_client  # noqa: E402
from deeplens.settings import (
    KafkaSettings,  # noqa: E402
    Settings,  # noqa: E402
)
from deeplens.topics import TopicNames, ensure_topics  # noqa: E402
from ingestion.api import create_app  # noqa: E402
from tests.http_server import serve_app  # noqa: E402


@pytest.fixture(scope="session")
def broker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The local tansu process (fault tests pause it); one per session."""
    log_path = str(tmp_path_factory.mktemp("broker") / "tansu.log")
    local: LocalBroker = start_local_broker(log_path=log_path)
    try:
        yield local
    finally:
        # Producers left open by tests would log every failed reconnect until exit.
        import logging

        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
        local.stop()


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> str:
    external = os.environ.get("DEEPLENS_TEST_BOOTSTRAP")
    if external:
        return external
    return request.getfixturevalue("broker_process").bootstrap


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_settings(broker: str, prefix: str) -> KafkaSettings:
    """Kafka settings with a fresh topic prefix, every table topic created."""
    settings = KafkaSettings(
        bootstrap_servers=broker, one_record_per_batch=True, topic_prefix=prefix, poll_timeout_s=0.2,
        session_timeout_ms=6000, batch_size=16,
    )
    report = ensure_topics(admin_client(settings), TopicNames(prefix))
    assert report.ok, report.drift
    return settings


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A real PostgreSQL server for the session; skipped (or failed, where
    DEEPLENS_REQUIRE_POSTGRES is set, as in CI) when the package is missing."""
    from tests.postgres import INSTALL_HINT, pg_bin, postgres_server

    if pg_bin() is None:
        if os.environ.get("DEEPLENS_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL missing: {INSTALL_HINT}")
        pytest.skip(f"PostgreSQL not installed: {INSTALL_HINT}")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path) -> str:
    """The catalog database, once on SQLite (the default) and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.db"
    from tests.postgres import fresh_database

    return fresh_database(request.getfixturevalue("postgres_server_url"))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray
    from ray import serve

    from deeplens.broker import free_port

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    # Serve's HTTP proxy on a free port, never the default 8000 of the machine.
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def no_serve(ray_session) -> Iterator[None]:
    """Serve shut down, so a stack under test starts it with its own HTTP port."""
    from ray import serve

    from deeplens.broker import free_port

    serve.shutdown()
    try:
        yield
    finally:
        serve.shutdown()
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})



@dataclass
class Api:
    url: str
    settings: Settings
    key_a: str
    key_b: str
    tenant_a: str
    tenant_b: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key_a}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def make_settings(tmp_path, kafka_settings, tenant_a: str, tenant_b: str, **extra) -> Settings:
    from deeplens.settings import IngestionSettings

    # Tests poll status often: a generous rate limit unless a test sets its own.
    extra.setdefault("ingestion", IngestionSettings(rate_limit_per_minute=100_000,
                                                    rate_limit_burst=10_000))
    return Settings(
        data_dir=tmp_path / "data",
        api_keys=f"{tenant_a}:key-{tenant_a}-0123456789ab,{tenant_b}:key-{tenant_b}-0123456789ab",
        kafka=kafka_settings,
        **extra,
    )


@pytest.fixture
def api(tmp_path, kafka_settings, tenant, catalog_url) -> Iterator[Api]:
    """The upload API over a real broker, its catalog on SQLite and on PostgreSQL."""
    tenant_b = tenant + "-b"
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant_b,
                             catalog_url=catalog_url)
    with serve_app(create_app(settings)) as url:
        yield Api(url, settings, f"key-{tenant}-0123456789ab", f"key-{tenant_b}-0123456789ab",
                  tenant, tenant_b)
