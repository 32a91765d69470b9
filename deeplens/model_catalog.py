"""Model changes in the catalog: the migration record, its per-tenant backfill
progress (with the cursor a restarted backfill resumes from), and the active model.

The active model is one row (``active_model``, slot ``search``): a cutover or a
rollback is one transaction that rewrites it with the migration's state, so every
reader sees either the old model or the new one. Gateways re-read it (``view``: two
primary-key-sized queries) at most ``VIEW_TTL_S`` old. Lives in the shared core:
the embedding feeders read it too, to embed new uploads with both models.

States: ``deploying`` (the target's Serve app starting) -> ``backfilling`` -> ``ready``
-> ``cut_over`` <-> ``rolled_back`` -> ``finished``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from deeplens.events import utcnow

metadata = sa.MetaData()
SLOT = "search"
VIEW_TTL_S = 1.0  # how old a Gateway's view of the active model may be
UNFINISHED = ("deploying", "backfilling", "ready", "cut_over", "rolled_back")

model_migrations = sa.Table(
    "model_migrations", metadata,
    sa.Column("migration_id", sa.String(64), primary_key=True),
    sa.Column("source_model", sa.String(128), nullable=False),
    sa.Column("target_model", sa.String(128), nullable=False),
    sa.Column("target_name", sa.String(128), nullable=False),
    sa.Column("target_pretrained", sa.String(512), nullable=False),
    sa.Column("target_seed", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("switched_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)
migration_tenants = sa.Table(
    "model_migration_tenants", metadata,
    sa.Column("migration_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("done", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("complete", sa.Boolean, nullable=False),
    sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("cursor_id", sa.String(64), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
active_model = sa.Table(
    "active_model", metadata,
    sa.Column("slot", sa.String(16), primary_key=True),
    sa.Column("model_id", sa.String(128), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


class MigrationRefused(ValueError):
    """The step does not apply to the migration's state (the message says why)."""


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:  # SQLite hands back naive
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class Migration:
    migration_id: str
    source_model: str
    target_model: str
    target_name: str
    target_pretrained: str
    target_seed: int
    state: str
    created_at: datetime
    updated_at: datetime
    switched_at: datetime | None
    error: str | None

    @property
    def models(self) -> tuple[str, str]:
        return self.source_model, self.target_model


@dataclass(frozen=True)
class TenantProgress:
    tenant_id: str
    done: int
    failed: int
    total: int
    complete: bool
    cursor: tuple[datetime, str] | None
    started_at: datetime
    updated_at: datetime

    @property
    def left(self) -> int:
        return 0 if self.complete else max(self.total - self.done - self.failed, 0)

    def rate(self) -> float:
        """Images re-embedded per second since this tenant's backfill began."""
        seconds = (self.updated_at - self.started_at).total_seconds()
        return self.done / seconds if seconds > 0 else 0.0

    def eta_s(self) -> float | None:
        if self.complete or self.left == 0:
            return 0.0
        rate = self.rate()
        return self.left / rate if rate > 0 else None

    def percent(self) -> float:
        if self.complete:
            return 100.0
        return 100.0 * (self.done + self.failed) / max(self.total, 1)


@dataclass(frozen=True)
class ModelView:
    """What a Gateway or a feeder needs: the active model (None: the configured one)
    and the unfinished migration, if any."""

    active: str | None
    migration: Migration | None

    def embed_with(self, primary: str) -> list[str]:
        """The models, besides ``primary`` (the configured one), that new uploads must be
        embedded with: both of a migration past deploying, and the active one."""
        wanted = {self.active} if self.active else set()
        if self.migration is not None and self.migration.state != "deploying":
            wanted |= set(self.migration.models)
        return sorted(wanted - {primary})


class ModelCatalog:
    def __init__(self, url: str) -> None:
        from deeplens.db import make_engine

        self.engine = make_engine(url)  # schema by deeplens/migrations (0008)

    def view(self) -> ModelView:
        with self.engine.connect() as conn:
            active = conn.execute(sa.select(active_model.c.model_id).where(
                active_model.c.slot == SLOT)).scalar()
            row = conn.execute(model_migrations.select().where(
                model_migrations.c.state.in_(UNFINISHED))
                .order_by(model_migrations.c.created_at.desc()).limit(1)).first()
        return ModelView(active, _migration(row) if row is not None else None)

    def get(self, migration_id: str) -> Migration | None:
        with self.engine.connect() as conn:
            row = conn.execute(model_migrations.select().where(
                model_migrations.c.migration_id == migration_id)).first()
        return _migration(row) if row is not None else None

    def current(self) -> Migration | None:
        return self.view().migration

    def start(self, source: str, target: str, name: str, pretrained: str, seed: int
              ) -> Migration:
        """Record a migration from ``source`` (the active model) to ``target``; refused
        while another one is unfinished or when they are the same model."""
        if source == target:
            raise MigrationRefused(f"{target} is already the active model")
        now = utcnow()
        migration_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            running = conn.execute(sa.select(model_migrations.c.migration_id).where(
                model_migrations.c.state.in_(UNFINISHED))).first()
            if running is not None:
                raise MigrationRefused(f"migration {running[0]} is not finished: cut it over "
                                       "and finish it, or roll it back and finish it")
            if conn.execute(sa.select(active_model.c.slot).where(
                    active_model.c.slot == SLOT)).first() is None:
                conn.execute(active_model.insert().values(slot=SLOT, model_id=source,
                                                          updated_at=now))
            conn.execute(model_migrations.insert().values(
                migration_id=migration_id, source_model=source, target_model=target,
                target_name=name, target_pretrained=pretrained, target_seed=seed,
                state="deploying", created_at=now, updated_at=now))
        found = self.get(migration_id)
        assert found is not None
        return found

    def progress(self, migration_id: str) -> list[TenantProgress]:
        with self.engine.connect() as conn:
            rows = conn.execute(migration_tenants.select().where(
                migration_tenants.c.migration_id == migration_id)
                .order_by(migration_tenants.c.tenant_id)).all()
        return [_progress(r) for r in rows]

    def advance(self, migration_id: str, tenant_id: str, *, done: int, failed: int,
                total: int, cursor: tuple[datetime, str] | None, complete: bool) -> None:
        """Record one backfill step of a tenant (its counts add; the cursor moves)."""
        now = utcnow()
        key = (migration_tenants.c.migration_id == migration_id,
               migration_tenants.c.tenant_id == tenant_id)
        values: dict[str, Any] = {"total": total, "complete": complete, "updated_at": now}
        if cursor is not None:
            values |= {"cursor_at": cursor[0], "cursor_id": cursor[1]}
        with self.engine.begin() as conn:
            updated = conn.execute(migration_tenants.update().where(*key).values(
                done=migration_tenants.c.done + done,
                failed=migration_tenants.c.failed + failed, **values)).rowcount
            if not updated:
                conn.execute(migration_tenants.insert().values(
                    migration_id=migration_id, tenant_id=tenant_id, done=done, failed=failed,
                    started_at=now, **{"cursor_at": None, "cursor_id": None} | values))

    def mark_deployed(self, migration_id: str) -> bool:
        """The target's own Serve app runs: feeders start embedding with both models."""
        return self._move(migration_id, ("deploying",), "backfilling")

    def mark_ready(self, migration_id: str) -> bool:
        return self._move(migration_id, ("backfilling",), "ready")

    def fail(self, migration_id: str, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(model_migrations.update().where(
                model_migrations.c.migration_id == migration_id).values(
                error=error[:2000], updated_at=utcnow()))

    def cutover(self, migration_id: str) -> Migration:
        """Make the target the active model: one transaction, one row every Gateway reads."""
        return self._switch(migration_id, ("ready", "rolled_back"), "cut_over", to_target=True)

    def rollback(self, migration_id: str) -> Migration:
        """Make the source the active model again; both models' vectors are kept."""
        return self._switch(migration_id, UNFINISHED, "rolled_back", to_target=False)

    def finish(self, migration_id: str, grace_s: float) -> tuple[Migration, str]:
        """End the migration; returns it and the model whose vectors may now be deleted
        (the source after a cutover, the target after a rollback)."""
        migration = self._require(migration_id)
        if migration.state not in ("cut_over", "rolled_back"):
            raise MigrationRefused(f"migration is {migration.state}: cut it over or roll it "
                                   "back first")
        since = (utcnow() - (migration.switched_at or migration.updated_at)).total_seconds()
        if since < grace_s:
            raise MigrationRefused(f"the grace period has {grace_s - since:.0f} s left "
                                   "(DEEPLENS_MIGRATION__FINISH_GRACE_S); rollback stays "
                                   "possible until then")
        if not self._move(migration_id, (migration.state,), "finished"):
            raise MigrationRefused("the migration changed state meanwhile; try again")
        old = migration.source_model if migration.state == "cut_over" else migration.target_model
        return self._require(migration_id), old

    def _require(self, migration_id: str) -> Migration:
        migration = self.get(migration_id)
        if migration is None:
            raise MigrationRefused(f"no migration {migration_id}")
        return migration

    def _move(self, migration_id: str, states: tuple[str, ...], state: str,
              conn: Any = None, **extra: Any) -> bool:
        query = model_migrations.update().where(
            model_migrations.c.migration_id == migration_id,
            model_migrations.c.state.in_(states)).values(state=state, updated_at=utcnow(),
                                                         **extra)
        if conn is not None:
            return bool(conn.execute(query).rowcount)
        with self.engine.begin() as own:
            return bool(own.execute(query).rowcount)

    def _switch(self, migration_id: str, states: tuple[str, ...], state: str,
                to_target: bool) -> Migration:
        migration = self._require(migration_id)
        if state == "cut_over" and migration.state in ("deploying", "backfilling"):
            raise MigrationRefused("the backfill is not complete for every tenant yet")
        model = migration.target_model if to_target else migration.source_model
        now = utcnow()
        with self.engine.begin() as conn:
            if not self._move(migration_id, states, state, conn, switched_at=now):
                raise MigrationRefused(f"migration is {migration.state}; cannot go to {state}")
            conn.execute(active_model.update().where(active_model.c.slot == SLOT)
                         .values(model_id=model, updated_at=now))
        return self._require(migration_id)


def _migration(row: Any) -> Migration:
    return Migration(**{k: _aware(v) for k, v in row._mapping.items()})


def _progress(row: Any) -> TenantProgress:
    m = {k: _aware(v) for k, v in row._mapping.items()}
    cursor = (m["cursor_at"], m["cursor_id"]) if m["cursor_at"] is not None else None
    return TenantProgress(m["tenant_id"], int(m["done"]), int(m["failed"]), int(m["total"]),
                          bool(m["complete"]), cursor, m["started_at"], m["updated_at"])
