"""A process's view of the active model and the model change under way, re-read from
the catalog at most ``VIEW_TTL_S`` old: a cutover or a rollback reaches every Gateway
and every feeder within that time, at the cost of one small query a second each."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from deeplens.model_catalog import VIEW_TTL_S, Migration, ModelCatalog, ModelView, TenantProgress

log = logging.getLogger(__name__)


class CachedModelView:
    def __init__(self, url: str, ttl_s: float = VIEW_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.clock = clock
        self._catalog: ModelCatalog | None = None
        self._view: ModelView | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> ModelView:
        with self._lock:
            if self._view is not None and self.clock() - self._at < self.ttl_s:
                return self._view
            try:
                if self._catalog is None:
                    self._catalog = ModelCatalog(self.url)
                self._view = self._catalog.view()
                self._at = self.clock()
            except Exception:
                if self._view is None:
                    raise
                log.warning("model view not refreshed; keeping the last one", exc_info=True)
            return self._view


def tenant_row(p: TenantProgress) -> dict[str, Any]:
    eta = p.eta_s()
    return {"tenant": p.tenant_id, "done": p.done, "left": p.left, "failed": p.failed,
            "percent": round(p.percent(), 1), "rate_per_s": round(p.rate(), 2),
            "eta_s": None if eta is None else round(eta), "complete": p.complete}


def summary(migration: Migration, progress: list[TenantProgress],
            tenant: str | None = None) -> dict[str, Any]:
    """A migration and its progress as plain data (the API, ``deeplens model status``):
    every tenant's row, or with ``tenant`` only that tenant's. The percent is of every
    image re-embedded so far; 100 once every tenant's backfill is complete."""
    rows = [p for p in progress if tenant is None or p.tenant_id == tenant]
    done = sum(p.done + p.failed for p in rows)
    left = sum(p.left for p in rows)
    complete = migration.state not in ("deploying", "backfilling")
    percent = 100.0 if complete else 100.0 * done / max(done + left, 1)
    if not complete and not rows:
        percent = 0.0
    return {"migration_id": migration.migration_id, "state": migration.state,
            "source_model": migration.source_model, "target_model": migration.target_model,
            "percent": round(min(percent, 100.0), 1), "done": done, "left": left,
            "error": migration.error, "tenants": [tenant_row(p) for p in rows]}
