"""On PostgreSQL (READ COMMITTED, row locks only), a delete that lands while the
projection links duplicates leaves no link to or from the deleted image.

Two real connections: the projection's transaction (``lifecycle.apply``) stops at a
statement of ``link`` while ``Catalog.delete`` runs on another connection, until the
delete has either committed or is waiting for a lock the projection holds. SQLite
serialises writers database-wide, so only PostgreSQL can interleave them."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from ingestion import lifecycle
from ingestion.catalog import Catalog
from ingestion.tables import duplicates, images
from tests.postgres import fresh_database

ROUNDS = 200
NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
ORPHANS = sa.select(sa.func.count()).select_from(duplicates).where(sa.or_(
    ~sa.exists().where(images.c.image_id == duplicates.c.image_id),
    ~sa.exists().where(images.c.image_id == duplicates.c.other_id)))
LOCK_WAITERS = sa.text("SELECT count(*) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND wait_event_type = 'Lock'")


def row(image_id: str) -> dict:
    return {"image_id": image_id, "tenant_id": "acme", "sha256": image_id.ljust(64, "0"),
            "original_file_name": f"{image_id}.jpg", "storage_provider": "local",
            "storage_path": f"acme/{image_id}.jpg", "file_size": 1,
            "mime_type": "image/jpeg", "status": "validated", "uploaded_at": NOW}


def delete_meanwhile(catalog: Catalog, watcher: sa.Connection, image_id: str) -> threading.Thread:
    """Start ``Catalog.delete`` and return once it committed or waits for a lock."""
    done = threading.Event()

    def delete() -> None:
        try:
            catalog.delete("acme", image_id)
        finally:
            done.set()

    thread = threading.Thread(target=delete)
    thread.start()
    deadline = time.monotonic() + 60
    while not done.is_set():
        if watcher.execute(LOCK_WAITERS).scalar():
            break  # the delete waits for the projection's transaction
        if time.monotonic() > deadline:
            pytest.fail("the delete neither finished nor waited for a lock")
        done.wait(0.002)
    return thread


def race(catalog: Catalog, watcher: sa.Connection, n: int) -> None:
    a, b = f"a{n:03d}", f"b{n:03d}"
    for image_id in (a, b):
        assert catalog.insert(row(image_id)) is None
    victim = (a, b)[n % 2]  # the image whose links are written, or the one it matches
    point = ("check", "write")[n // 2 % 2]  # at the liveness select, or at the insert
    changes = lifecycle.Changes(links=[("acme", a, ["exact"], [(b, "exact", 1.0)])])
    started: list[threading.Thread] = []

    def hook(conn, cursor, statement, parameters, context, executemany) -> None:
        text = " ".join(statement.split())
        at = (text.startswith("SELECT") and "FROM images" in text if point == "check"
              else text.startswith("INSERT INTO duplicates"))
        if at and not started:
            started.append(delete_meanwhile(catalog, watcher, victim))

    with catalog.engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", hook)
        with conn.begin():
            lifecycle.apply(conn, changes)  # the projection's path for a consumer batch
    assert started, f"link never reached its {point}"
    started[0].join()


def test_no_link_to_a_deleted_image_when_a_delete_races_the_projection(
        postgres_server_url) -> None:
    catalog = Catalog(fresh_database(postgres_server_url))
    with catalog.engine.connect() as watcher:
        watcher.execution_options(isolation_level="AUTOCOMMIT")
        for n in range(ROUNDS):
            race(catalog, watcher, n)
        orphans = watcher.execute(ORPHANS).scalar()
        alive = watcher.execute(sa.select(sa.func.count()).select_from(images)).scalar()
    assert alive == ROUNDS, "each round deleted exactly one of its two images"
    assert orphans == 0, f"{orphans} links to or from a deleted image over {ROUNDS} rounds"
