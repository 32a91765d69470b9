"""The catalog writes of the image lifecycle, on a caller's connection.

Every write is idempotent and order-tolerant, so any number of projector actors may
apply events of one image at once, in any order, more than once:

- ``advance``: two conditional UPDATEs, no read-then-write. The step's own fields (its
  timestamp, dimensions...) always land, and the row is no longer ``pending`` (the
  pipeline has its upload event, whatever became of the request that sent it); the
  status moves only if the row's current rank is lower, or it failed earlier than this
  step (a replay that succeeded).
- ``fail``: unless the image was indexed after the failure; the row is settled too.
- ``dedup_failed``: recorded, never a demotion.
- ``link``: matches in both directions; a stronger kind replaces a weaker one (an
  upsert whose update only applies to a stronger kind); links to or from an image no
  longer catalogued are not written. The liveness check locks the rows it found
  (``FOR KEY SHARE`` on PostgreSQL), and ``Catalog.delete`` removes the image row
  before its links, so a delete either commits before the check (and the image is
  not linked) or waits until the links are committed (and removes them).

Statements are built once with bind parameters and run as ``executemany`` over a
consumer batch (the projection's cost was mostly statement building; see
benchmarks/RESULTS.md). Rows are written in image-id order, so two projectors'
transactions take row locks in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa

from ingestion.tables import duplicates, images

# How far along each status is; the projection never moves an image backwards.
STATUS_RANK = {"uploaded": 0, "validated": 1, "processed": 2, "indexed": 3}
STAGE_OF_STATUS = {"uploaded": "ingestion", "validated": "validation",
                   "processed": "embedding", "indexed": "indexing"}
KIND_RANK = {"exact": 0, "near": 1, "similar": 2}
_ID, _AT = sa.bindparam("b_image_id"), sa.bindparam("b_at")


@dataclass
class Changes:
    """A consumer batch's lifecycle writes, applied in one transaction."""

    advances: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    failures: list[dict[str, Any]] = field(default_factory=list)
    dedup_failed: list[str] = field(default_factory=list)
    links: list[tuple[str, str, list[str], list[tuple[str, str, float]]]] = field(
        default_factory=list)

    def advance(self, image_id: str, status: str, at: datetime, **fields: Any) -> None:
        self.advances[status].append({"image_id": image_id, "at": at, **fields})

    def fail(self, image_id: str, stage: str, reason: str, message: str, at: datetime) -> None:
        self.failures.append(failure_row(image_id, stage, reason, message, at))


IN_CHUNK = 5_000  # ids per IN (...): far below SQLite's and PostgreSQL's limits


def failure_row(image_id: str, stage: str, reason: str, message: str,
                at: datetime) -> dict[str, Any]:
    return {"image_id": image_id, "stage": stage, "reason": reason, "message": message[:2000],
            "at": at}


def _bound(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{f"b_{k}": v for k, v in row.items()} for row in
            sorted(rows, key=lambda r: r["image_id"])]


def _run(conn: sa.Connection, statement: Any, rows: list[dict[str, Any]]) -> int:
    """One row: its rowcount; several: executemany (rowcount as the driver reports it)."""
    bound = _bound(rows)
    return conn.execute(statement, bound[0] if len(bound) == 1 else bound).rowcount


@cache
def _stamp(status: str, fields: tuple[str, ...]) -> Any:
    # A step of the pipeline proves the broker took the upload event: the row is settled
    # (``pending`` cleared), even if the request that published it never said so.
    return images.update().where(images.c.image_id == _ID).values(
        {f"{status}_at": _AT, "pending": None, **{f: sa.bindparam(f"b_{f}") for f in fields}})


@cache
def _move(status: str) -> Any:
    current_rank = sa.case(STATUS_RANK, value=images.c.status, else_=99)
    return images.update().where(images.c.image_id == _ID, sa.or_(
        sa.and_(images.c.status != "failed", current_rank < STATUS_RANK[status]),
        sa.and_(images.c.status == "failed",
                sa.or_(images.c.failed_at.is_(None), images.c.failed_at <= _AT)))).values(
        status=status, stage=STAGE_OF_STATUS[status], failure_reason=None, failure_message=None)


_FAIL = images.update().where(
    images.c.image_id == _ID, sa.or_(images.c.indexed_at.is_(None), images.c.indexed_at < _AT),
).values(status="failed", stage=sa.bindparam("b_stage"), failure_reason=sa.bindparam("b_reason"),
         failure_message=sa.bindparam("b_message"), failed_at=_AT, pending=None)
_DEDUP_FAILED = images.update().where(images.c.image_id == _ID).values(dedup_tiers="failed")
_TIERS = images.update().where(images.c.image_id == _ID,
                               images.c.tenant_id == sa.bindparam("b_tenant_id")).values(
    dedup_tiers=sa.bindparam("b_tiers"))


def advance(conn: sa.Connection, status: str, rows: list[dict[str, Any]]) -> int:
    """Rows of ``image_id``, ``at`` and the step's fields (the same fields in every row)."""
    fields = tuple(sorted(set(rows[0]) - {"image_id", "at"}))
    _run(conn, _stamp(status, fields), rows)
    return _run(conn, _move(status), [{"image_id": r["image_id"], "at": r["at"]} for r in rows])


def fail(conn: sa.Connection, rows: list[dict[str, Any]]) -> int:
    return _run(conn, _FAIL, rows)


def dedup_failed(conn: sa.Connection, image_ids: list[str]) -> int:
    return _run(conn, _DEDUP_FAILED, [{"image_id": i} for i in image_ids])


def _upsert_links(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert links; where one exists, a stronger kind replaces a weaker one (one
    ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` for the whole batch)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(duplicates)
    new, old = statement.excluded, duplicates.c
    statement = statement.on_conflict_do_update(
        index_elements=[old.image_id, old.other_id],
        set_={"kind": new.kind, "score": new.score},
        where=sa.case(KIND_RANK, value=new.kind, else_=9)
        < sa.case(KIND_RANK, value=old.kind, else_=9))
    conn.execute(statement, sorted(rows, key=lambda r: (r["image_id"], r["other_id"])))


def link(conn: sa.Connection, links: list[tuple[str, str, list[str], list[tuple[str, str, float]]]]
         ) -> None:
    """Record each image's dedup tiers and its matches, both directions; links to or from
    an image no longer catalogued are not written."""
    # Write first: the transaction then holds the write lock (SQLite) before it reads
    # which images still exist, so a delete cannot slip in between. PostgreSQL locks
    # rows only: the check takes a key-share lock on each row it finds, in image-id
    # order, which a DELETE waits for (and an UPDATE of other projectors does not).
    _run(conn, _TIERS, [{"image_id": i, "tenant_id": t, "tiers": ",".join(tiers)}
                        for t, i, tiers, _ in links])
    involved = {(t, i) for t, i, _, matches in links if matches} | {
        (t, other) for t, _, _, matches in links for other, _, _ in matches}
    if not involved:
        return
    ids = sorted({i for _, i in involved})
    alive = {(t, i) for start in range(0, len(ids), IN_CHUNK)  # in order: locks too
             for t, i in conn.execute(
                 sa.select(images.c.tenant_id, images.c.image_id)
                 .where(images.c.image_id.in_(ids[start:start + IN_CHUNK]))
                 .order_by(images.c.image_id).with_for_update(read=True, key_share=True))}
    rows = [{"tenant_id": t, "image_id": a, "other_id": b, "kind": kind, "score": score}
            for t, image_id, _, matches in links if (t, image_id) in alive
            for other, kind, score in matches if (t, other) in alive
            for a, b in ((image_id, other), (other, image_id))]
    if rows:
        _upsert_links(conn, rows)


def apply(conn: sa.Connection, changes: Changes) -> None:
    """Every write of a batch: steps in pipeline order, then failures, then links."""
    for status in sorted(changes.advances, key=STATUS_RANK.__getitem__):
        by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for row in changes.advances[status]:
            by_fields[tuple(sorted(row))].append(row)
        for rows in by_fields.values():
            advance(conn, status, rows)
    if changes.failures:
        fail(conn, changes.failures)
    if changes.dedup_failed:
        dedup_failed(conn, changes.dedup_failed)
    if changes.links:
        link(conn, changes.links)
