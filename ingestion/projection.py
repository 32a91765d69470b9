"""The catalog projection: lifecycle events -> image status in the catalog.

Idempotent (an event applied twice changes nothing more) and order-tolerant (a
late ``validated`` never moves an ``indexed`` image back), so at-least-once
delivery from several partitions is safe. A consumer batch is written in one
transaction (``ingestion/lifecycle.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from deeplens.events import (
    DuplicatesFound,
    ImageFailed,
    ImageIndexed,
    ImageProcessed,
    ImageValidated,
)
from deeplens.kafka import Outbound
from deeplens.settings import Settings
from deeplens.stage_sdk import Envelope
from ingestion.catalog import Catalog
from ingestion.lifecycle import Changes

STAGE = "projection"
TOPICS = ("images.validated", "images.processed", "images.indexed", "images.failed",
          "duplicates.found", "images.validated.bulk")


def changes_of(batch: Sequence[Envelope]) -> Changes:
    """The catalog writes a batch of lifecycle events asks for."""
    changes = Changes()
    for envelope in batch:
        event = envelope.event
        # Subclasses first: ImageProcessed is an ImageValidated.
        if isinstance(event, ImageProcessed):
            changes.advance(event.image_id, "processed", event.processed_at,
                            feature_model=event.feature_model)
        elif isinstance(event, ImageValidated):
            changes.advance(event.image_id, "validated", event.validated_at,
                            width=event.width, height=event.height, format=event.format)
        elif isinstance(event, ImageIndexed):
            seconds = ((event.indexed_at - event.uploaded_at).total_seconds()
                       if event.uploaded_at else None)
            changes.advance(event.image_id, "indexed", event.indexed_at, pipeline_seconds=seconds)
        elif isinstance(event, DuplicatesFound):
            changes.links.append((event.tenant_id, event.image_id, list(event.tiers),
                                  [(m.image_id, m.kind, m.score) for m in event.matches]))
        elif isinstance(event, ImageFailed) and event.image_id and event.stage == "dedup":
            changes.dedup_failed.append(event.image_id)  # recorded, never a demotion
        elif isinstance(event, ImageFailed) and event.image_id:
            changes.fail(event.image_id, event.stage, event.reason, event.message,
                         event.failed_at)
    return changes


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    catalog = Catalog(settings.effective_catalog_url)

    def handle(batch: Sequence[Envelope]) -> list[Outbound]:
        catalog.apply(changes_of(batch))  # one transaction per consumer batch
        return []

    return handle
