"""The upload API (the seed's "Image Ingestion API").

``create_app(settings)`` builds the FastAPI app from the module-level routers
(``routes_ops``, ``routes_upload``, ``routes_images``); uvicorn serves it alone in
tests, Ray Serve serves it in ``deeplens up`` and on a cluster.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from deeplens.auth import AUTH_RESPONSES, PARAM_RESPONSES, Authenticator, AuthMiddleware
from deeplens.kafka import EventProducer
from deeplens.settings import Settings
from deeplens.storage import make_storage
from deeplens.tombstones import Tombstones
from ingestion import routes_batch, routes_images, routes_import, routes_ops, routes_upload
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
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.ingestion.max_upload_bytes,
                       per_path={"/v1/images/batch": routes_batch.MAX_BATCH_BYTES})
    # Added last, so outermost: a request is authenticated before any body is read.
    app.add_middleware(AuthMiddleware, authenticator=app.state.auth)
    # One error body everywhere: a validation failure is one sentence too.
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(405, _method_not_allowed)
    app.include_router(routes_ops.router)
    app.include_router(routes_import.router)
    app.include_router(routes_upload.router, responses=AUTH_RESPONSES)
    app.include_router(routes_batch.router, responses=AUTH_RESPONSES | PARAM_RESPONSES)
    app.include_router(routes_images.router, responses=AUTH_RESPONSES | PARAM_RESPONSES)
    return app


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 as ``{"detail": "<where>: <what>; ..."}``, the shape of every other error."""
    assert isinstance(exc, RequestValidationError)
    problems = ["{}: {}".format(".".join(str(part) for part in error.get("loc", ())),
                                error.get("msg", "is not valid")) for error in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems) or "the request is not valid"},
                        status_code=422)


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 whose ``Allow`` lists every method the API documents for the path; Starlette's
    own answer names only those of the first route that matched the path."""
    assert isinstance(exc, HTTPException)
    allowed = _documented_methods(request.app, request.url.path)
    headers = {"Allow": ", ".join(allowed)} if allowed else dict(exc.headers or {})
    return JSONResponse({"detail": f"method {request.method} is not allowed here"},
                        status_code=405, headers=headers)


def _documented_methods(app: FastAPI, path: str) -> list[str]:
    """The methods documented for the most literal path template that matches ``path``
    (``/v1/images/statuses`` before ``/v1/images/{image_id}``), as the spec reads."""
    paths = app.openapi()["paths"]
    for template in sorted(paths, key=lambda t: t.count("{")):
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods = {method.upper() for method in paths[template]}
            return sorted(methods | ({"HEAD"} if "GET" in methods else set()))
    return []
