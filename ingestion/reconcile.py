"""Finding images that were stored and catalogued but never finished, and restarting them.

The local broker keeps topics in memory: a restart with events in flight leaves
images at ``uploaded``/``validated``/``processed`` that nothing will advance. This
re-publishes their ``images.uploaded`` event (the same image id, so every sink
overwrites rather than duplicates) and fails those whose bytes are gone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from deeplens.events import ImageUploaded, utcnow
from deeplens.kafka import EventProducer, Outbound
from deeplens.lanes import BULK_SUFFIX, same_lane
from deeplens.settings import Settings
from deeplens.sources import is_reference
from deeplens.storage import make_storage
from ingestion.catalog import Catalog, ImageRow

STUCK = ("uploaded", "validated", "processed")
SEND_CHUNK = 5000


@dataclass
class ReconcileReport:
    republished: list[str] = field(default_factory=list)
    missing_bytes: list[str] = field(default_factory=list)


def stuck_images(catalog: Catalog, older_than: timedelta) -> list[ImageRow]:
    return list(catalog.stuck(STUCK, utcnow() - older_than))


def uploaded_event(row: ImageRow) -> ImageUploaded:
    """The upload event of a catalog row (the row holds every field the event carries)."""
    return ImageUploaded(**{name: getattr(row, name) for name in ImageUploaded.model_fields
                            if hasattr(row, name)})


def reconcile(settings: Settings, older_than: timedelta, dry_run: bool = False) -> ReconcileReport:
    return republish(settings, STUCK, utcnow() - older_than, dry_run=dry_run)


def republish(settings: Settings, statuses: tuple[str, ...], uploaded_before: datetime,
              keep: Callable[[ImageRow], bool] | None = None,
              dry_run: bool = False) -> ReconcileReport:
    """Re-publish the upload event of every image in ``statuses`` uploaded before the
    cut-off (and, if given, for which ``keep`` holds); fail those whose bytes are gone.
    Events go out ``SEND_CHUNK`` at a time, so memory stays bounded however many."""
    report = ReconcileReport()
    if not statuses:
        return report
    catalog = Catalog(settings.effective_catalog_url)
    storage = make_storage(settings)
    producer = None if dry_run else EventProducer(settings.kafka,
                                                  prefix=settings.kafka.topic_prefix)
    outbound: list[Outbound] = []
    try:
        for row in catalog.stuck(statuses, uploaded_before):
            if keep is not None and not keep(row):
                continue
            if not storage.exists(row.storage_path):
                report.missing_bytes.append(row.image_id)
                if not dry_run:
                    catalog.fail(row.image_id, "ingestion", "missing_object",
                                 "stored bytes are gone (found by reconcile)", utcnow())
                continue
            event = uploaded_event(row)
            # An imported image goes back on the bulk lane, never ahead of live work.
            lane = same_lane(event.topic, BULK_SUFFIX if is_reference(
                row.original_file_name) else "")
            outbound.append(Outbound(lane, row.image_id, event))
            report.republished.append(row.image_id)
            if producer is not None and len(outbound) >= SEND_CHUNK:
                producer.send(outbound)
                outbound.clear()
        if producer is not None and outbound:
            producer.send(outbound)
    finally:
        if producer is not None:
            producer.close()
    return report
