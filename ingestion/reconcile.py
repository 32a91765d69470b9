"""Finding images that were stored and catalogued but never finished, and restarting them.

The local broker keeps topics in memory: a restart with events in flight leaves
images at ``uploaded``/``validated``/``processed`` that nothing will advance. This
re-publishes their ``images.uploaded`` event (the same image id, so every sink
overwrites rather than duplicates) and fails those whose bytes are gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from deeplens.events import ImageUploaded, utcnow
from deeplens.kafka import EventProducer, Outbound
from deeplens.settings import Settings
from deeplens.storage import make_storage
from ingestion.catalog import Catalog, ImageRow, images

STUCK = ("uploaded", "validated", "processed")


@dataclass
class ReconcileReport:
    republished: list[str] = field(default_factory=list)
    missing_bytes: list[str] = field(default_factory=list)


def stuck_images(catalog: Catalog, older_than: timedelta) -> list[ImageRow]:
    cutoff = utcnow() - older_than
    query = images.select().where(images.c.status.in_(STUCK), images.c.uploaded_at < cutoff)
    with catalog.engine.connect() as conn:
        return [catalog._row(r) for r in conn.execute(query.order_by(images.c.uploaded_at))]


def uploaded_event(row: ImageRow) -> ImageUploaded:
    return ImageUploaded(
        tenant_id=row.tenant_id, image_id=row.image_id, original_file_name=row.original_file_name,
        storage_provider=row.storage_provider, storage_path=row.storage_path,
        file_size=row.file_size, mime_type=row.mime_type, sha256=row.sha256,
        uploaded_at=row.uploaded_at)


def reconcile(settings: Settings, older_than: timedelta, dry_run: bool = False) -> ReconcileReport:
    catalog = Catalog(settings.effective_catalog_url)
    storage = make_storage(settings)
    report = ReconcileReport()
    outbound: list[Outbound] = []
    for row in stuck_images(catalog, older_than):
        if not storage.exists(row.storage_path):
            report.missing_bytes.append(row.image_id)
            if not dry_run:
                catalog.fail(row.image_id, "ingestion", "missing_object",
                             "stored bytes are gone (found by reconcile)", utcnow())
            continue
        event = uploaded_event(row)
        outbound.append(Outbound(event.topic, row.image_id, event))
        report.republished.append(row.image_id)
    if outbound and not dry_run:
        producer = EventProducer(settings.kafka, prefix=settings.kafka.topic_prefix)
        producer.send(outbound)
        producer.close()
    return report



