"""A model change's backfill: every stored image of every tenant re-embedded from its
original in storage by the target model, into the target model's collection.

- Resumable: each tenant's cursor (``uploaded_at``, ``image_id``) is committed in the
  catalog with its counts after each page's vectors are stored; a restarted worker
  goes on from there (a page cut short is done again: the vectors' ids are
  deterministic, so a write twice overwrites, never adds).
- Per-image failure isolated: an original gone from storage or undecodable counts as
  failed and the page goes on; a fault of the Embedder or the store retries the page.
- Deletes: tombstones are checked before and after the write, as the indexer does, and
  a late delete undoes the write (a delete event removes the image from every collection).
- Bounded share: after a page that took ``t`` s it rests ``t*(1-share)/share``.

``backfill_step`` is pure over its parts (tests run it without Ray); ``ModelBackfill``
is the detached Ray actor that deploys the target app and runs the loop on a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from deeplens.model_catalog import VIEW_TTL_S, ModelCatalog, TenantProgress
from deeplens.settings import Settings
from deeplens.storage import ObjectMissing
from deeplens.vectors.base import VectorRecord
from ingestion.tables import images

log = logging.getLogger(__name__)

ACTOR_NAME = "deeplens-model-backfill"
ACTOR_NAMESPACE = "deeplens"  # one actor whoever starts it (the CLI, a Gateway replica)
Embed = Callable[[Sequence[bytes]], list[Any]]  # -> Embedding-like (.ok, .vector, .model_id)


@dataclass(frozen=True)
class StepResult:
    done: int
    failed: int
    complete: bool


def _eligible(tenant_id: str) -> Any:
    return sa.and_(images.c.tenant_id == tenant_id, images.c.status != "failed")


def tenants_of(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(images.c.tenant_id).distinct()).scalars())


def backfill_step(catalog: ModelCatalog, migration_id: str, target: str,
                  progress: TenantProgress | None, tenant_id: str, *, store: Any,
                  storage: Any, tombstones: Any, embed: Embed, page: int) -> StepResult:
    """Re-embed the tenant's next ``page`` images after its cursor; record the step."""
    where = _eligible(tenant_id)
    cursor = progress.cursor if progress else None
    if cursor is not None:
        where = sa.and_(where, sa.or_(images.c.uploaded_at > cursor[0], sa.and_(
            images.c.uploaded_at == cursor[0], images.c.image_id > cursor[1])))
    with catalog.engine.connect() as conn:
        rows = conn.execute(sa.select(
            images.c.image_id, images.c.uploaded_at, images.c.storage_path,
            images.c.original_file_name).where(where)
            .order_by(images.c.uploaded_at, images.c.image_id).limit(page)).all()
        total = conn.execute(sa.select(sa.func.count()).select_from(images)
                             .where(_eligible(tenant_id))).scalar() or 0
    alive = [r for r in rows if (tenant_id, r.image_id) not in
             tombstones.dead((tenant_id, r.image_id) for r in rows)]
    data: list[tuple[Any, bytes]] = []
    failed = 0
    for row in alive:
        try:
            data.append((row, storage.get(row.storage_path)))
        except ObjectMissing:
            failed += 1
    results = embed([blob for _, blob in data]) if data else []
    records = []
    for (row, _), result in zip(data, results, strict=True):
        if not result.ok or result.model_id != target:
            failed += 1
            continue
        records.append(VectorRecord(tenant_id, row.image_id, result.vector,
                                    row.original_file_name, _aware(row.uploaded_at)))
    late: set[tuple[str, str]] = set()
    if records:
        store.upsert(target, records)  # raises unless all taken: the page is retried
        late = tombstones.dead((tenant_id, r.image_id) for r in records)
        for gone_tenant, gone_id in late:
            store.delete(gone_tenant, gone_id)  # deleted meanwhile: in neither collection
    last = (_aware(rows[-1].uploaded_at), rows[-1].image_id) if rows else None
    complete = len(rows) < page
    done = len(records) - len(late)
    catalog.advance(migration_id, tenant_id, done=done, failed=failed, total=total,
                    cursor=last, complete=complete)
    return StepResult(done, failed, complete)


def _aware(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def run_backfill(catalog: ModelCatalog, migration_id: str, step: Callable[..., StepResult],
                 share: float = 1.0, auto_cutover: bool = False,
                 stop: threading.Event | None = None) -> str:
    """Every tenant's pages until each is complete; then ``ready`` (and, by setting, the
    cutover). Returns the migration's state when it stopped."""
    stop = stop or threading.Event()
    while not stop.is_set():
        migration = catalog.get(migration_id)
        if migration is None or migration.state != "backfilling":
            return migration.state if migration else "missing"
        known = {p.tenant_id: p for p in catalog.progress(migration_id)}
        pending = [t for t in tenants_of(catalog.engine)
                   if t not in known or not known[t].complete]
        if not pending:
            catalog.mark_ready(migration_id)
            if auto_cutover:
                catalog.cutover(migration_id)
            return catalog.get(migration_id).state  # type: ignore[union-attr]
        for tenant in pending:
            if stop.is_set():
                break
            started = time.monotonic()
            result = step(known.get(tenant), tenant)
            while not result.complete and not stop.is_set():
                _rest(time.monotonic() - started, share, stop)
                started = time.monotonic()
                progress = {p.tenant_id: p for p in catalog.progress(migration_id)}
                result = step(progress.get(tenant), tenant)
    return "stopped"


def _rest(worked_s: float, share: float, stop: threading.Event) -> None:
    if share < 1:
        stop.wait(worked_s * (1 - share) / share)


def make_step(settings: Settings, catalog: ModelCatalog, migration_id: str, target: str,
              embedder: Any) -> Callable[..., StepResult]:
    from deeplens.storage import make_storage
    from deeplens.tombstones import Tombstones
    from deeplens.vectors.factory import make_vector_store

    store, storage = make_vector_store(settings), make_storage(settings)
    tombstones = Tombstones(settings.effective_catalog_url)

    def embed(items: Sequence[bytes]) -> list[Any]:
        return embedder.embed_vectors.remote(list(items)).result(timeout_s=300)  # type: ignore[no-any-return]

    def step(progress: TenantProgress | None, tenant: str) -> StepResult:
        return backfill_step(catalog, migration_id, target, progress, tenant, store=store,
                             storage=storage, tombstones=tombstones, embed=embed,
                             page=settings.migration.backfill_page)

    return step


class ModelBackfill:
    """The Ray actor (detached, one per cluster): deploys the target app, then backfills."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.state = "idle"

    def start(self, migration_id: str) -> str:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, args=(migration_id,), daemon=True,
                                           name="model-backfill")
            self.thread.start()
        return self.state

    def status(self) -> str:
        return self.state

    def _run(self, migration_id: str) -> None:
        from deeplens.serve_names import model_handle
        from serve_apps.model_apps import deploy_model_app, target_settings

        catalog = ModelCatalog(self.settings.effective_catalog_url)
        cfg = self.settings.migration
        try:
            migration = catalog.get(migration_id)
            assert migration is not None, migration_id
            self.state = "deploying"
            deploy_model_app(self.settings, target_settings(self.settings, migration),
                             cfg.target_replicas)
            if catalog.mark_deployed(migration_id):
                # Feeders see "backfilling" within VIEW_TTL_S and embed new uploads with
                # both models from then on; an upload before that is backfilled.
                time.sleep(2 * VIEW_TTL_S)
            self.state = "backfilling"
            step = make_step(self.settings, catalog, migration_id, migration.target_model,
                             model_handle(migration.target_model))
            self.state = run_backfill(catalog, migration_id, step, cfg.backfill_share,
                                      cfg.auto_cutover, self.stop)
        except Exception as exc:  # noqa: BLE001 - recorded; `deeplens model migrate` resumes
            log.exception("model backfill failed")
            catalog.fail(migration_id, f"{type(exc).__name__}: {exc}")
            self.state = "error"


def launch_backfill(settings: Settings, migration_id: str) -> Any:
    """Start (or find) the backfill actor and set it on ``migration_id``."""
    import ray

    actor = ray.remote(ModelBackfill).options(
        name=ACTOR_NAME, namespace=ACTOR_NAMESPACE, get_if_exists=True,
        lifetime="detached", max_concurrency=4, num_cpus=settings.actors.num_cpus
    ).remote(settings)
    ray.get(actor.start.remote(migration_id), timeout=60)
    return actor
