"""The upload API (the seed's "Image Ingestion API").

``create_app(settings)`` builds the FastAPI app from the module-level routers
(``routes_ops``, ``routes_upload``, ``routes_images``); uvicorn serves it alone in
tests, Ray Serve serves it in ``deeplens up`` and on a cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from deeplens.auth import AUTH_RESPONSES, Authenticator, AuthMiddleware
from deeplens.kafka import EventProducer
from deeplens.settings import Settings
from deeplens.storage import make_storage
from deeplens.tombstones import Tombstones
from ingestion import routes_images, routes_ops, routes_upload
from ingestion.catalog import Catalog
from ingestion.limits import BodyLimitMiddleware
from ingestion.services import Services

__all__ = ["Services", "create_app"]


def create_app(settings: Settings, producer: EventProducer | None = None) -> FastAPI:
    """The upload API over the given settings (broker, catalog, storage)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(app.state.services.producer.close)

    # /docs would load Swagger's assets from a public CDN: off unless asked for.
    docs = "/docs" if settings.ops.docs else None
    app = FastAPI(title="DeepLens", version="0.1.0", lifespan=lifespan, docs_url=docs,
                  redoc_url=None, description="Multi-tenant image ingestion and search")
    ack_ms = int(settings.ingestion.ack_timeout_s * 1000)
    app.state.services = Services(
        settings=settings,
        catalog=Catalog(settings.effective_catalog_url),
        storage=make_storage(settings),
        producer=producer or EventProducer(
            settings.kafka, prefix=settings.kafka.topic_prefix, **{"delivery.timeout.ms": ack_ms}),
        tombstones=Tombstones(settings.effective_catalog_url),
    )
    app.state.auth = Authenticator(settings)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.ingestion.max_upload_bytes)
    # Added last, so outermost: a request is authenticated before any body is read.
    app.add_middleware(AuthMiddleware, authenticator=app.state.auth)
    app.include_router(routes_ops.router)
    app.include_router(routes_upload.router, responses=AUTH_RESPONSES)
    app.include_router(routes_images.router, responses=AUTH_RESPONSES)
    return app
