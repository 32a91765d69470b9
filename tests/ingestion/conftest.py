from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from deeplens.settings import Settings
from ingestion.api import create_app
from tests.http_server import serve_app


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
    return Settings(
        data_dir=tmp_path / "data",
        api_keys=f"{tenant_a}:key-{tenant_a},{tenant_b}:key-{tenant_b}",
        kafka=kafka_settings,
        **extra,
    )


@pytest.fixture
def api(tmp_path, kafka_settings, tenant) -> Iterator[Api]:
    tenant_b = tenant + "-b"
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant_b)
    with serve_app(create_app(settings)) as url:
        yield Api(url, settings, f"key-{tenant}", f"key-{tenant_b}", tenant, tenant_b)
