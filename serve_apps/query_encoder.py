"""What search needs of an Embedder: a query encoder over a Serve handle, and one that
follows the catalog's active model (a model change's cutover and rollback).

``ActiveModelEncoder.pin`` answers the model a query runs on and the encoder of that
model together, so a switch between the two never pairs one model's vector with the
other's collection.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class QueryEncoder(Protocol):
    """What search needs of the Embedder (a Serve handle adapter in production)."""

    async def model_id(self) -> str: ...
    async def text(self, text: str) -> np.ndarray: ...
    async def image(self, data: bytes) -> np.ndarray: ...


class QueryError(ValueError):
    """The query cannot be encoded (an undecodable image)."""


class EmbedderUnavailable(RuntimeError):
    """No Embedder replica answered the query within its time (node gone, all busy)."""


class HandleEncoder:
    """A QueryEncoder over the Embedder's Serve handle. Every call has a deadline: with
    no replica to take it (its node gone) Serve would hold the request until one comes
    back, so a query gives up after ``timeout_s`` and search answers 503."""

    def __init__(self, handle: Any, timeout_s: float = 5.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s
        self._model_id: str | None = None

    async def _answer(self, response: Any) -> Any:
        import asyncio

        async def wait() -> Any:
            return await response

        from serve_apps.device_faults import DeviceFault

        try:
            return await asyncio.wait_for(wait(), self.timeout_s)
        except TimeoutError:
            response.cancel()
            raise EmbedderUnavailable(
                f"no Embedder replica answered within {self.timeout_s:g} s") from None
        except DeviceFault as exc:  # that replica's GPU is gone; Serve is replacing it
            raise EmbedderUnavailable(f"the Embedder replica failed: {exc}") from None

    async def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = await self._answer(self.handle.model_id.remote())
        return self._model_id

    async def text(self, text: str) -> np.ndarray:
        [vector] = await self._answer(self.handle.embed_text.remote([text]))
        return vector  # type: ignore[no-any-return]

    async def image(self, data: bytes) -> np.ndarray:
        result = await self._answer(self.handle.embed.remote(data))
        if not result.ok:
            raise QueryError(result.error or "undecodable image")
        return result.vector  # type: ignore[no-any-return]


class ActiveModelEncoder:
    """A QueryEncoder that follows the catalog's active model: the configured Embedder
    (``base``) until a model change cuts over, then that model's own application; back
    again on a rollback. The active model is re-read at most ``VIEW_TTL_S`` old."""

    def __init__(self, base: HandleEncoder, view: Any, timeout_s: float = 5.0,
                 handle_for: Any = None) -> None:
        from deeplens.serve_names import model_handle

        self.base = base
        self.view = view  # deeplens.model_view.CachedModelView
        self.timeout_s = timeout_s
        self.handle_for = handle_for or model_handle
        self._encoders: dict[str, HandleEncoder] = {}

    async def current_view(self) -> Any:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.view)

    async def pin(self) -> tuple[str, QueryEncoder]:
        """The active model and its encoder, read together."""
        base_model = await self.base.model_id()
        active = (await self.current_view()).active or base_model
        if active == base_model:
            return active, self.base
        encoder = self._encoders.get(active)
        if encoder is None:
            encoder = HandleEncoder(self.handle_for(active), self.timeout_s)
            encoder._model_id = active
            self._encoders[active] = encoder
        return active, encoder

    async def model_id(self) -> str:
        return (await self.pin())[0]

    async def reindexing(self, tenant: str) -> dict[str, Any] | None:
        """The model change under way and this tenant's progress (None: none)."""
        from starlette.concurrency import run_in_threadpool

        from deeplens.model_catalog import ModelCatalog
        from deeplens.model_view import summary

        migration = (await self.current_view()).migration
        if migration is None:
            return None
        progress = await run_in_threadpool(
            lambda: ModelCatalog(self.view.url).progress(migration.migration_id))
        return summary(migration, progress, tenant)

    async def text(self, text: str) -> np.ndarray:
        return await (await self.pin())[1].text(text)

    async def image(self, data: bytes) -> np.ndarray:
        return await (await self.pin())[1].image(data)
