"""The upload API (the seed's "Image Ingestion API").

``create_app(settings)`` builds the FastAPI app; uvicorn serves it alone in tests,
Ray Serve serves it in ``deeplens up`` and on a cluster.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from deeplens.auth import Authenticator, AuthMiddleware, TenantDep, declare_auth_responses
from deeplens.events import ImageDeleted, ImageStatus, ImageUploaded, utcnow
from deeplens.formats import hostile_trailer, sniff
from deeplens.kafka import DeliveryError, EventProducer, Outbound
from deeplens.settings import Settings
from deeplens.storage import ObjectMissing, Storage, make_storage, object_path, thumbnail_path
from deeplens.tombstones import Tombstones
from ingestion import metrics
from ingestion.catalog import Catalog, ImageRow
from ingestion.limits import BodyLimitMiddleware
from ingestion.schemas import (
    DuplicateOut,
    DuplicatesOut,
    ImageOut,
    ImagePage,
    Problem,
    StageTimes,
    StatusAnswer,
    StatusQuery,
    UploadOut,
    UsageHour,
    UsageOut,
    UsageTotals,
)

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the routes use; built once per app."""

    settings: Settings
    catalog: Catalog
    storage: Storage
    producer: EventProducer
    tombstones: Tombstones


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such image for this tenant"}}


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
    add_routes(app)
    declare_auth_responses(app)
    return app


WEB_PAGE = Path(__file__).parent / "web" / "index.html"
WEB_SCRIPT = Path(__file__).parent / "web" / "app.js"
# The page runs only its own script, talks only to this origin, is never framed.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def web_page() -> Response:
        """The search page: static HTML + JS calling this same API with the user's key."""
        return Response(WEB_PAGE.read_bytes(), media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/app.js", include_in_schema=False)
    def web_script() -> Response:
        return Response(WEB_SCRIPT.read_bytes(), media_type="text/javascript",
                        headers=PAGE_HEADERS)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], responses={403: {"model": Problem}})
    def prometheus_metrics(request: Request) -> Response:
        """Fleet-wide figures for operators: with ``DEEPLENS_OPS__METRICS_TOKEN`` set, only
        for that bearer token; without it, only for clients on this host."""
        _require_operator(request, request.app.state.services.settings)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/v1/images", status_code=202, response_model=UploadOut, tags=["images"],
              responses={413: {"model": Problem}, 415: {"model": Problem},
                         422: {"model": Problem}, 503: {"model": Problem}})
    async def upload_image(svc: ServicesDep, tenant: TenantDep,
                           file: Annotated[UploadFile, File(description="JPEG, PNG or WebP")]
                           ) -> UploadOut | JSONResponse:
        # Checks, storage and catalog run on the thread pool; the broker's acknowledgement
        # is awaited on the event loop, so a request waiting for it holds no thread.
        with metrics.UPLOAD_SECONDS.time():
            data = await file.read(svc.settings.ingestion.max_upload_bytes + 1)
            staged = await run_in_threadpool(_stage_upload, svc, tenant, data,
                                             file.filename or "")
            if not isinstance(staged, ImageUploaded):
                return staged
            try:
                await svc.producer.send_async([Outbound(staged.topic, staged.image_id, staged)])
            except DeliveryError as exc:
                return await run_in_threadpool(_unstage, svc, staged, exc)
            await run_in_threadpool(svc.catalog.acknowledge, staged.image_id)
            metrics.UPLOADS.labels(outcome="accepted").inc()
            metrics.UPLOAD_BYTES.inc(len(data))
            return UploadOut(image_id=staged.image_id, tenant_id=tenant, status="uploaded",
                             sha256=staged.sha256)

    @app.get("/v1/images", response_model=ImagePage, tags=["images"])
    def list_images(svc: ServicesDep, tenant: TenantDep,
                    status: Annotated[ImageStatus | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 100,
                    after: Annotated[str | None, Query(max_length=64)] = None) -> ImagePage:
        rows = svc.catalog.list(tenant, status=status, limit=limit, after=after)
        return ImagePage(items=[image_out(r) for r in rows],
                         next_after=rows[-1].image_id if len(rows) == limit else None,
                         counts=svc.catalog.counts(tenant))

    @app.post("/v1/images/statuses", response_model=StatusAnswer, tags=["images"])
    def image_statuses(query: StatusQuery, svc: ServicesDep, tenant: TenantDep) -> StatusAnswer:
        """Statuses of up to 500 of the caller's images at once (bulk ingest progress)."""
        return StatusAnswer(statuses=svc.catalog.statuses(tenant, query.image_ids))

    @app.get("/v1/usage", response_model=UsageOut, tags=["usage"])
    def usage(svc: ServicesDep, tenant: TenantDep,
              hours: Annotated[int, Query(ge=1, le=24 * 90)] = 24) -> UsageOut:
        """The caller's usage per hour (uploads, bytes, images embedded, embedding time,
        searches), from the tenant.usage aggregation."""
        from datetime import timedelta

        since = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
        rows = [UsageHour(hour=h, **m) for h, m in svc.catalog.usage(tenant, since).items()]
        totals = UsageTotals(**{f: sum(getattr(r, f) for r in rows)
                                for f in UsageTotals.model_fields})
        return UsageOut(tenant_id=tenant, since=since, hours=rows, totals=totals)

    @app.get("/v1/images/{image_id}", response_model=ImageOut, tags=["images"],
             responses=_NOT_FOUND)
    def get_image(image_id: str, svc: ServicesDep, tenant: TenantDep) -> ImageOut:
        return image_out(_owned(svc, tenant, image_id))

    @app.get("/v1/images/{image_id}/duplicates", response_model=DuplicatesOut, tags=["images"],
             responses=_NOT_FOUND)
    def get_duplicates(image_id: str, svc: ServicesDep, tenant: TenantDep) -> DuplicatesOut:
        row = _owned(svc, tenant, image_id)
        matches = [DuplicateOut(image_id=d.image_id, kind=d.kind, score=d.score)
                   for d in svc.catalog.duplicates_of(tenant, image_id)]
        tiers = row.dedup_tiers.split(",") if row.dedup_tiers else []
        return DuplicatesOut(image_id=image_id, tiers=tiers, matches=matches)

    @app.get("/v1/images/{image_id}/content", tags=["images"], responses=_NOT_FOUND)
    def get_content(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
        row = _owned(svc, tenant, image_id)
        data = svc.storage.get(row.storage_path)
        return Response(data, media_type=row.mime_type,
                        headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/v1/images/{image_id}/thumbnail", tags=["images"], responses=_NOT_FOUND)
    def get_thumbnail(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
        """A JPEG of at most 320 px a side, made by the Embedder from its one decode;
        404 until the image is embedded."""
        row = _owned(svc, tenant, image_id)
        try:
            data = svc.storage.get(thumbnail_path(row.storage_path))
        except ObjectMissing:
            raise HTTPException(404, f"image {image_id} has no thumbnail (yet): it is "
                                     f"{row.status}") from None
        return Response(data, media_type="image/jpeg",
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "private, max-age=86400"})

    @app.delete("/v1/images/{image_id}", status_code=204, tags=["images"], responses=_NOT_FOUND)
    def delete_image(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
        row = _owned(svc, tenant, image_id)
        deleted = ImageDeleted(tenant_id=tenant, image_id=image_id)
        # The tombstone first: from now on no stage writes anything for this image, and
        # whatever it wrote before is removed by the delete event or by its own re-check.
        svc.tombstones.bury(tenant, image_id)
        try:  # tell the pipeline next: if the broker is down, nothing is removed
            svc.producer.send([Outbound(deleted.topic, image_id, deleted)])
        except DeliveryError as exc:
            svc.tombstones.unbury(tenant, image_id)
            raise HTTPException(503, f"event broker unavailable, nothing deleted: {exc}") from exc
        svc.storage.delete(row.storage_path)
        svc.storage.delete(thumbnail_path(row.storage_path))  # a later write undoes itself
        svc.catalog.delete(tenant, image_id)
        return Response(status_code=204)


def _require_operator(request: Request, settings: Settings) -> None:
    import hmac

    token = settings.ops.metrics_token.get_secret_value()
    if token:
        given = request.headers.get("authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(403, "metrics need the operator token (Authorization: Bearer)")
    elif (request.client.host if request.client else "") not in _LOOPBACK:
        raise HTTPException(403, "metrics are served to this host only; set "
                                 "DEEPLENS_OPS__METRICS_TOKEN to scrape from elsewhere")


def _owned(svc: Services, tenant: str, image_id: str) -> ImageRow:
    row = svc.catalog.get(tenant, image_id)
    if row is None:  # another tenant's image reads exactly like a missing one
        raise HTTPException(404, "image not found")
    return row


def _stage_upload(svc: Services, tenant: str, data: bytes,
                  filename: str) -> ImageUploaded | UploadOut | JSONResponse:
    """Check the bytes, store them and insert a pending row: the event to publish, or the
    answer when there is nothing to publish (a duplicate, a request to retry)."""
    limit = svc.settings.ingestion.max_upload_bytes
    if len(data) > limit:
        raise HTTPException(413, f"file exceeds the upload limit ({limit} bytes)")
    if not data:
        raise HTTPException(422, "the file is empty")
    fmt = sniff(data)
    if fmt is None:
        metrics.UPLOADS.labels(outcome="rejected").inc()
        raise HTTPException(415, "unsupported file type: JPEG, PNG and WebP are accepted, "
                                 "recognised by their content")
    trailer = hostile_trailer(data, fmt)
    if trailer is not None:
        metrics.UPLOADS.labels(outcome="rejected").inc()
        raise HTTPException(415, f"{fmt.name} file carries {trailer} after the image data")

    sha256 = hashlib.sha256(data).hexdigest()
    existing = _settled(svc, svc.catalog.find_by_sha256(tenant, sha256))
    if isinstance(existing, JSONResponse):
        return existing
    if existing is not None:
        return _duplicate(existing)
    image_id = uuid.uuid4().hex
    path = object_path(tenant, image_id, fmt.extension)
    event = ImageUploaded(
        tenant_id=tenant, image_id=image_id, original_file_name=filename[:512],
        storage_provider=svc.storage.provider, storage_path=path, file_size=len(data),
        mime_type=fmt.mime_type, sha256=sha256, uploaded_at=utcnow(),
    )
    svc.storage.put(path, data)
    # The row is "pending" until the broker acknowledges the event: a retry of the same
    # bytes meanwhile is told to wait, never pointed at a row that may yet be removed.
    clash = svc.catalog.insert(event.model_dump(include=set(ImageRow.__dataclass_fields__))
                               | {"status": "uploaded", "pending": True})
    if clash is not None:  # the same bytes won a race from a concurrent request
        svc.storage.delete(path)
        settled = _settled(svc, clash)
        if isinstance(settled, ImageRow):
            return _duplicate(settled)
        return settled or _retry_soon()
    return event


def _unstage(svc: Services, event: ImageUploaded, exc: DeliveryError) -> JSONResponse:
    """The broker did not acknowledge: leave nothing behind that no event will process."""
    svc.catalog.delete(event.tenant_id, event.image_id)
    svc.storage.delete(event.storage_path)
    metrics.UPLOADS.labels(outcome="unavailable").inc()
    log.error("upload %s not acknowledged by the broker: %s", event.image_id, exc)
    return JSONResponse({"detail": "event broker unavailable; the upload was not kept, "
                                   "retry later"}, status_code=503, headers={"Retry-After": "5"})


def _settled(svc: Services, row: ImageRow | None) -> ImageRow | JSONResponse | None:
    """An existing row of the same bytes, if its upload is settled; a 503 asking to retry
    while another request still waits for the broker; None if that request died."""
    if row is None or not row.pending:
        return row
    ack_s = svc.settings.ingestion.ack_timeout_s
    age_s = (utcnow() - row.uploaded_at).total_seconds()
    if age_s > 2 * ack_s + 30:  # its request is long gone (a crashed replica): start over
        svc.catalog.delete(row.tenant_id, row.image_id)
        return None
    return _retry_soon(max(1, min(30, int(ack_s - age_s) + 1)))


def _retry_soon(seconds: int = 1) -> JSONResponse:
    metrics.UPLOADS.labels(outcome="in_progress").inc()
    return JSONResponse({"detail": "the same file is being accepted by another request; "
                                   "retry shortly"}, status_code=503,
                        headers={"Retry-After": str(seconds)})


def _duplicate(existing: ImageRow) -> UploadOut:
    metrics.UPLOADS.labels(outcome="duplicate").inc()
    return UploadOut(image_id=existing.image_id, tenant_id=existing.tenant_id,
                     status=existing.status,  # type: ignore[arg-type]
                     sha256=existing.sha256, duplicate_of=existing.image_id)


def image_out(row: ImageRow) -> ImageOut:
    return ImageOut(
        image_id=row.image_id, tenant_id=row.tenant_id, status=row.status,  # type: ignore[arg-type]
        stage=row.stage, failure_reason=row.failure_reason, failure_message=row.failure_message,
        original_file_name=row.original_file_name, mime_type=row.mime_type,
        file_size=row.file_size, sha256=row.sha256, width=row.width, height=row.height,
        feature_model=row.feature_model,
        timestamps=StageTimes(uploaded_at=row.uploaded_at, validated_at=row.validated_at,
                              processed_at=row.processed_at, indexed_at=row.indexed_at,
                              failed_at=row.failed_at),
    )
