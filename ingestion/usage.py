"""The usage aggregator: ``tenant.usage`` events -> hourly totals per tenant in the catalog.

Idempotent by event id (uploads and embeddings carry ids derived from the image
id), so at-least-once delivery never bills twice. ``GET /v1/usage`` reads it.
Work done for an image after it was deleted (its embedding, say) is not billed;
the upload itself was accepted and is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from deeplens.consumer_loop import Envelope
from deeplens.events import TenantUsage
from deeplens.kafka import Outbound
from deeplens.settings import Settings
from deeplens.tombstones import Tombstones
from ingestion.catalog import Catalog

BILLED_EVEN_IF_DELETED = frozenset({"uploads", "upload_bytes", "searches"})

STAGE = "usage"
TOPICS = ("tenant.usage",)


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    catalog = Catalog(settings.effective_catalog_url)
    tombstones = Tombstones(settings.effective_catalog_url)

    def handle(batch: Sequence[Envelope]) -> list[Outbound]:
        events = [env.event for env in batch if isinstance(env.event, TenantUsage)]
        dead = tombstones.dead((e.tenant_id, e.image_id) for e in events
                               if e.image_id and e.metric not in BILLED_EVEN_IF_DELETED)
        for event in events:
            if (event.metric in BILLED_EVEN_IF_DELETED
                    or (event.tenant_id, event.image_id) not in dead):
                catalog.add_usage(str(event.event_id), event.tenant_id, event.occurred_at,
                                  event.metric, event.quantity)
        return []

    return handle
