"""Running an import: list the source, and per chunk read, check, catalogue and publish.

Each image becomes one ``images.uploaded`` event with the seed's shape, on the bulk
lane (``images.uploaded.bulk``), and one catalog row as an upload makes; no byte
crosses HTTP. An image's id is derived from the tenant, the object's address and its
version (ETag, or size and mtime), so a second run of the same import finds every id
already catalogued and adds nothing, and a run killed mid-chunk is finished by the
next: rows left pending (inserted, event not acknowledged) are published again.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from deeplens.events import ImageUploaded, utcnow
from deeplens.formats import sniff
from deeplens.kafka import EventProducer, Outbound
from deeplens.settings import Settings
from deeplens.sources import Source, parse_source
from deeplens.storage import Storage, object_path
from ingestion.catalog import Catalog
from ingestion.import_jobs import ImportJob, JobStore
from ingestion.import_listing import Listed, list_source
from ingestion.reconcile import uploaded_event
from ingestion.tables import ImageRow, images

log = logging.getLogger(__name__)

_PATH_WIDTH = images.c.storage_path.type.length  # where a referenced object's path is kept
BULK_TOPIC = "images.uploaded.bulk"
_NS = uuid.UUID("3c0a7a52-5d7e-4b0e-8f3b-0f6f7b8f9e21")
_ROW_FIELDS = set(ImageRow.__dataclass_fields__)


def image_id_of(tenant_id: str, listed: Listed) -> str:
    """Deterministic: the same object at the same version is the same image."""
    return uuid.uuid5(_NS, f"{tenant_id}|{listed.reference}|{listed.version}").hex


@dataclass
class ChunkResult:
    queued: int = 0
    skipped: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Importer:
    """What an import uses; ``run`` drives one job to its end, a cancel, or an error."""

    settings: Settings
    catalog: Catalog
    storage: Storage
    producer: EventProducer
    jobs: JobStore

    def run(self, job: ImportJob, on_chunk: Callable[[ImportJob], None] | None = None
            ) -> ImportJob:
        try:
            source = parse_source(job.source, self.settings.imports.allowed_roots)
            self._run(job, source, on_chunk)
        except Exception as exc:
            log.exception("import %s failed", job.job_id)
            self.jobs.finish(job.job_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        final = self.jobs.get(job.job_id)
        assert final is not None
        return final

    def _run(self, job: ImportJob, source: Source,
             on_chunk: Callable[[ImportJob], None] | None) -> None:
        counts = {"listed": job.listed, "queued": job.queued, "skipped": job.skipped,
                  "refused": job.refused}
        listing = list_source(source, self.settings, after=job.cursor)
        for chunk in _chunks(listing, self.settings.imports.chunk):
            result = self.import_chunk(job, chunk)
            counts["listed"] += len(chunk)
            for name in ("queued", "skipped", "refused"):
                counts[name] += getattr(result, name)
            going_on = self.jobs.progress(job.job_id, cursor=chunk[-1].key, **counts)
            if on_chunk is not None:
                current = self.jobs.get(job.job_id)
                assert current is not None
                on_chunk(current)
            if not going_on:
                self.jobs.finish(job.job_id, "cancelled")
                return
        self.jobs.progress(job.job_id, listing_done=True)
        self.jobs.finish(job.job_id, "done")

    def import_chunk(self, job: ImportJob, chunk: list[Listed]) -> ChunkResult:
        """Catalogue and publish one chunk; idempotent, so a chunk may be run again."""
        result = ChunkResult()
        wanted = {image_id_of(job.tenant_id, item): item for item in chunk if not item.refusal}
        result.refused = len(chunk) - len(wanted)
        existing = self._existing(list(wanted))
        events: list[ImageUploaded] = []
        fresh = [(image_id, item) for image_id, item in wanted.items() if image_id not in existing]
        for image_id, pending in existing.items():
            if pending:  # catalogued by a run that died before the broker acknowledged
                row = self.catalog.get(job.tenant_id, image_id)
                if row is not None:
                    events.append(uploaded_event(row))
            else:
                result.skipped += 1
        with ThreadPoolExecutor(self.settings.imports.readers) as pool:
            staged = list(pool.map(lambda pair: self._stage(job, *pair), fresh))
        for event, problem in staged:
            if event is None:
                result.refused += 1
                result.problems.append(problem)
            else:
                events.append(event)
        inserted, duplicates = self._insert([e for e in events if e.image_id not in existing])
        result.skipped += duplicates
        publish = [e for e in events if e.image_id in existing or e.image_id in inserted]
        self.producer.send([Outbound(BULK_TOPIC, e.image_id, e) for e in publish])
        self._acknowledge([e.image_id for e in publish])
        result.queued = len(publish)
        return result

    def _existing(self, image_ids: list[str]) -> dict[str, bool]:
        """Of these ids, those catalogued: id -> still pending."""
        if not image_ids:
            return {}
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(sa.select(images.c.image_id, images.c.pending)
                                .where(images.c.image_id.in_(image_ids)))
            return {image_id: bool(pending) for image_id, pending in rows}

    def _stage(self, job: ImportJob, image_id: str,
               item: Listed) -> tuple[ImageUploaded | None, str]:
        """Read one object: its upload event, or why it is refused. Copied into our
        storage when the job asks; otherwise referenced where it lies."""
        try:
            data = self.storage.get(item.reference)
        except Exception as exc:  # noqa: BLE001 - one unreadable object fails alone
            return None, f"{item.key}: unreadable ({type(exc).__name__}: {exc})"
        limit = self.settings.ingestion.max_upload_bytes
        fmt = sniff(data)
        if fmt is None or not data or len(data) > limit:
            why = "not JPEG, PNG or WebP" if fmt is None else f"over {limit} bytes"
            return None, f"{item.key}: {why}"
        path, provider = item.reference, item.reference.partition(":")[0]
        if not job.copy and len(path) > _PATH_WIDTH:
            return None, (f"{item.key}: its reference is {len(path)} characters, over the "
                          f"catalog's {_PATH_WIDTH}: import this source with --copy")
        if job.copy:
            path, provider = object_path(job.tenant_id, image_id, fmt.extension), \
                self.storage.provider
            self.storage.put(path, data)
        return ImageUploaded(
            tenant_id=job.tenant_id, image_id=image_id,
            original_file_name=item.reference[:512], storage_provider=provider,
            storage_path=path, file_size=len(data), mime_type=fmt.mime_type,
            sha256=hashlib.sha256(data).hexdigest(), uploaded_at=utcnow()), ""

    def _insert(self, events: list[ImageUploaded]) -> tuple[set[str], int]:
        """Catalogue a chunk's new images in one transaction (pending until published).
        The same bytes as an image the tenant has (or twice in the chunk) are skipped."""
        rows, seen = [], set()
        for event in events:
            if (event.tenant_id, event.sha256) not in seen:
                seen.add((event.tenant_id, event.sha256))
                rows.append(event.model_dump(include=_ROW_FIELDS)
                            | {"status": "uploaded", "pending": True})
        if rows:
            taken = self._taken_hashes(rows[0]["tenant_id"], [r["sha256"] for r in rows])
            rows = [r for r in rows if r["sha256"] not in taken]
        try:
            with self.catalog.engine.begin() as conn:
                if rows:
                    conn.execute(images.insert(), rows)
            inserted = {r["image_id"] for r in rows}
        except IntegrityError:  # a concurrent upload took some of these bytes: one by one
            inserted = {r["image_id"] for r in rows if self.catalog.insert(r) is None}
        return inserted, len(events) - len(inserted)

    def _taken_hashes(self, tenant_id: str, hashes: list[str]) -> set[str]:
        with self.catalog.engine.connect() as conn:
            return {h for (h,) in conn.execute(sa.select(images.c.sha256).where(
                images.c.tenant_id == tenant_id, images.c.sha256.in_(hashes)))}

    def _acknowledge(self, image_ids: list[str]) -> None:
        if image_ids:
            with self.catalog.engine.begin() as conn:
                conn.execute(images.update().where(images.c.image_id.in_(image_ids))
                             .values(pending=None))


def _chunks(items: Iterable[Listed], size: int) -> Iterator[list[Listed]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def pipeline_counts(catalog: Catalog, job: ImportJob) -> dict[str, int]:
    """The job's images per catalog status (imports name each by its source address)."""
    prefix = job.source.rstrip("/")
    prefix = prefix if prefix.startswith("s3://") else f"%://{prefix}"
    query = (sa.select(images.c.status, sa.func.count())
             .where(images.c.tenant_id == job.tenant_id,
                    images.c.original_file_name.like(prefix + "%"))
             .group_by(images.c.status))
    with catalog.engine.connect() as conn:
        return {status: n for status, n in conn.execute(query)}
