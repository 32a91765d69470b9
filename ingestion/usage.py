"""The usage aggregator: ``tenant.usage`` events -> hourly totals per tenant in the catalog.

Idempotent by event id (uploads and embeddings carry ids derived from the image
id), so at-least-once delivery never bills twice. ``GET /v1/usage`` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from deeplens.consumer_loop import Envelope
from deeplens.events import TenantUsage
from deeplens.kafka import Outbound
from deeplens.settings import Settings
from ingestion.catalog import Catalog

STAGE = "usage"
TOPICS = ("tenant.usage",)


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    catalog = Catalog(settings.effective_catalog_url)

    def handle(batch: Sequence[Envelope]) -> list[Outbound]:
        for env in batch:
            event = env.event
            if isinstance(event, TenantUsage):
                catalog.add_usage(str(event.event_id), event.tenant_id, event.occurred_at,
                                  event.metric, event.quantity)
        return []

    return handle
