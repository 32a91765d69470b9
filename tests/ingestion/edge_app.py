"""The real upload app, served in-process (ASGI), with a recording producer.

For tests of the edge itself (auth, budgets, the API contract): the broker plays no
part in what they check, so its acknowledgement is a recording instead of a network
round trip. Everything else (middleware, routes, catalog, storage) is the real app's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from deeplens.kafka import Outbound
from deeplens.settings import IngestionSettings, Settings
from ingestion.api import create_app

KEY_A = "acme-key-0123456789ab"
KEY_B = "bravo-key-0123456789ab"


class RecordingProducer:
    """Acknowledges every event at once and keeps it."""

    def __init__(self) -> None:
        self.sent: list[Outbound] = []

    def send(self, messages: Iterable[Outbound], timeout_s: float | None = None) -> list[Any]:
        batch = list(messages)
        self.sent.extend(batch)
        return batch

    async def send_async(self, messages: Iterable[Outbound],
                         timeout_s: float | None = None) -> list[Any]:
        return self.send(messages, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        pass


def edge_settings(tmp_path: Path, **ingestion: Any) -> Settings:
    """Settings with two tenants (acme, bravo) and the given ingestion limits; every
    other limit at its default."""
    return Settings(data_dir=tmp_path / "data", api_keys=f"acme:{KEY_A},bravo:{KEY_B}",
                    ingestion=IngestionSettings(**ingestion))


def edge_app(settings: Settings) -> FastAPI:
    """``create_app`` as production builds it, with the recording producer."""
    return create_app(settings, producer=RecordingProducer())  # type: ignore[arg-type]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
