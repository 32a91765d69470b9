"""Import jobs in the catalog: what each import has done, where it resumes, and whether
it was asked to stop. Any process (the CLI, a Gateway replica) may read or cancel a
job; the one running it writes its counters after every chunk."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from deeplens.events import utcnow

_NS = uuid.UUID("0b5e3f5c-8a1e-4c51-9a55-7d1c0c6b2a11")
STALE_AFTER = timedelta(seconds=60)  # a running job with no heartbeat this long is dead

import_jobs = sa.Table(
    "import_jobs", sa.MetaData(),
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("copy", sa.Boolean, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("listed", sa.BigInteger, nullable=False),
    sa.Column("queued", sa.BigInteger, nullable=False),
    sa.Column("skipped", sa.BigInteger, nullable=False),
    sa.Column("refused", sa.BigInteger, nullable=False),
    sa.Column("cursor", sa.Text),
    sa.Column("listing_done", sa.Boolean, nullable=False),
    sa.Column("cancel", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_queued", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class ImportJob:
    """One import: counters since it began (``queued``: events published; ``skipped``:
    already imported or the same bytes as an image the tenant has; ``refused``: not an
    image, unreadable, or outside the roots) and the listing cursor it resumes after."""

    job_id: str
    tenant_id: str
    source: str
    copy: bool
    state: str  # running | done | cancelled | failed
    listed: int
    queued: int
    skipped: int
    refused: int
    cursor: str | None
    listing_done: bool
    cancel: bool
    error: str | None
    started_at: datetime
    heartbeat_at: datetime
    run_started_at: datetime
    run_queued: int

    def rate(self, now: datetime | None = None) -> float:
        """Images queued per second by the current run."""
        seconds = ((now or utcnow()) - self.run_started_at).total_seconds()
        return (self.queued - self.run_queued) / seconds if seconds > 0 else 0.0

    def eta_s(self, statuses: dict[str, int]) -> float | None:
        """Seconds until every listed image is indexed or failed, at this run's rate;
        None while the listing goes on (the total is not known yet)."""
        rate = self.rate()
        left = self.listed - self.skipped - self.refused - statuses.get("indexed", 0) \
            - statuses.get("failed", 0)
        return max(0.0, left / rate) if self.listing_done and rate > 0 else None

    def alive(self, now: datetime | None = None) -> bool:
        return self.state == "running" and (now or utcnow()) - self.heartbeat_at < STALE_AFTER


def job_id_of(tenant_id: str, source: str, copy: bool) -> str:
    """The same import (tenant, source, mode) is the same job: naming it again resumes it."""
    return uuid.uuid5(_NS, f"{tenant_id}|{source}|{'copy' if copy else 'ref'}").hex


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class JobStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, job_id: str) -> ImportJob | None:
        with self.engine.connect() as conn:
            row = conn.execute(import_jobs.select().where(
                import_jobs.c.job_id == job_id)).first()
        if row is None:
            return None
        return ImportJob(**{f.name: _aware(row._mapping[f.name]) for f in fields(ImportJob)})

    def start(self, tenant_id: str, source: str, copy: bool) -> ImportJob | None:
        """Begin (or resume) the job; None if another live process runs it now."""
        job_id = job_id_of(tenant_id, source, copy)
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(import_jobs.select().where(import_jobs.c.job_id == job_id)
                               .with_for_update()).first()
            if row is None:
                conn.execute(import_jobs.insert().values(
                    job_id=job_id, tenant_id=tenant_id, source=source, copy=copy,
                    state="running", listed=0, queued=0, skipped=0, refused=0, cursor=None,
                    listing_done=False, cancel=False, error=None, started_at=now,
                    heartbeat_at=now, run_started_at=now, run_queued=0))
            else:
                if row.state == "running" and now - _aware(row.heartbeat_at) < STALE_AFTER:
                    return None
                # An unfinished job resumes after its cursor, its counts going on; a
                # finished one lists the source again from the start (new objects are
                # imported, the others skipped by their ids).
                again = {"listed": 0, "queued": 0, "skipped": 0, "refused": 0,
                         "cursor": None, "listing_done": False} if row.listing_done else {}
                conn.execute(import_jobs.update().where(import_jobs.c.job_id == job_id)
                             .values(state="running", cancel=False, error=None,
                                     heartbeat_at=now, run_started_at=now,
                                     run_queued=0 if again else row.queued, **again))
        return self.get(job_id)

    def progress(self, job_id: str, **values: Any) -> bool:
        """Write counters (and the cursor) after a chunk; False if it was cancelled."""
        with self.engine.begin() as conn:
            conn.execute(import_jobs.update().where(import_jobs.c.job_id == job_id)
                         .values(heartbeat_at=utcnow(), **values))
            cancel = conn.execute(sa.select(import_jobs.c.cancel).where(
                import_jobs.c.job_id == job_id)).scalar()
        return not cancel

    def finish(self, job_id: str, state: str, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(import_jobs.update().where(import_jobs.c.job_id == job_id)
                         .values(state=state, error=error, heartbeat_at=utcnow()))

    def cancel(self, job_id: str) -> bool:
        """Ask the job to stop after its current chunk (or mark a dead one cancelled)."""
        job = self.get(job_id)
        if job is None:
            return False
        with self.engine.begin() as conn:
            conn.execute(import_jobs.update().where(import_jobs.c.job_id == job_id).values(
                cancel=True, **({} if job.alive() else {"state": "cancelled"})))
        return True
