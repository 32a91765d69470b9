"""The usage aggregator: ``tenant.usage`` events -> hourly totals per tenant in the catalog.

Idempotent by event id (uploads and embeddings carry ids derived from the image
id), so at-least-once delivery never bills twice. ``GET /v1/usage`` reads it.
Work done for an image after it was deleted (its embedding, say) is not billed;
the upload itself was accepted and is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from deeplens.events import TenantUsage
from deeplens.kafka import Outbound
from deeplens.settings import Settings
from deeplens.stage_sdk import Envelope
from deeplens.tombstones import Tombstones
from deeplens.usage_batch import expand
from ingestion.catalog import Catalog

BILLED_EVEN_IF_DELETED = frozenset({"uploads", "upload_bytes", "searches"})

STAGE = "usage"
TOPICS = ("tenant.usage",)


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    catalog = Catalog(settings.effective_catalog_url)
    tombstones = Tombstones(settings.effective_catalog_url)

    def handle(batch: Sequence[Envelope]) -> list[Outbound]:
        events = [env.event for env in batch if isinstance(env.event, TenantUsage)]
        # A folded event (deeplens.usage_batch) counts each of its images by its own id.
        counted = [(e, *item) for e in events for item in expand(e)]
        dead = tombstones.dead((e.tenant_id, image_id) for e, _, image_id, _ in counted
                               if image_id and e.metric not in BILLED_EVEN_IF_DELETED)
        catalog.add_usage_batch([  # one transaction per consumer batch
            (usage_id, e.tenant_id, e.occurred_at, e.metric, quantity)
            for e, usage_id, image_id, quantity in counted
            if e.metric in BILLED_EVEN_IF_DELETED or (e.tenant_id, image_id) not in dead])
        return []

    return handle
