"""A process's view of the active model and the model change under way, re-read from
the catalog at most ``VIEW_TTL_S`` old: a cutover or a rollback reaches every Gateway
and every feeder within that time, at the cost of one small query a second each."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from deeplens.model_catalog import VIEW_TTL_S, ModelCatalog, ModelView

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
