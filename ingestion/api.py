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
from typing import Annotated

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from deeplens.auth import Authenticator, TenantDep
from deeplens.events import ImageDeleted, ImageStatus, ImageUploaded, utcnow
from deeplens.formats import hostile_trailer, sniff
from deeplens.kafka import DeliveryError, EventProducer, Outbound
from deeplens.settings import Settings
from deeplens.storage import Storage, make_storage, object_path
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
)

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the routes use; built once per app."""

    settings: Settings
    catalog: Catalog
    storage: Storage
    producer: EventProducer


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]
_NOT_FOUND = {404: {"model": Problem, "description": "no such image for this tenant"}}


def create_app(settings: Settings, producer: EventProducer | None = None) -> FastAPI:
    """The upload API over the given settings (broker, catalog, storage)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(app.state.services.producer.close)

    app = FastAPI(title="DeepLens", version="0.1.0", lifespan=lifespan,
                  description="Multi-tenant image ingestion and search")
    ack_ms = int(settings.ingestion.ack_timeout_s * 1000)
    app.state.services = Services(
        settings=settings,
        catalog=Catalog(settings.effective_catalog_url),
        storage=make_storage(settings),
        producer=producer or EventProducer(
            settings.kafka, prefix=settings.kafka.topic_prefix, **{"delivery.timeout.ms": ack_ms}),
    )
    app.state.auth = Authenticator(settings)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.ingestion.max_upload_bytes)
    add_routes(app)
    return app


WEB_PAGE = Path(__file__).parent / "web" / "index.html"


def add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def web_page() -> Response:
        """The search page: static HTML + JS calling this same API with the user's key."""
        return Response(WEB_PAGE.read_bytes(), media_type="text/html",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/v1/images", status_code=202, response_model=UploadOut, tags=["images"],
              responses={413: {"model": Problem}, 415: {"model": Problem},
                         422: {"model": Problem}, 503: {"model": Problem}})
    def upload_image(svc: ServicesDep, tenant: TenantDep,
                     file: Annotated[UploadFile, File(description="JPEG, PNG or WebP")]
                     ) -> UploadOut | JSONResponse:
        with metrics.UPLOAD_SECONDS.time():
            return _upload(svc, tenant, file)

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
        totals = UsageHour(hour=since, **{
            f: sum(getattr(r, f) for r in rows) for f in UsageHour.model_fields if f != "hour"})
        return UsageOut(tenant_id=tenant, hours=rows, totals=totals)

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

    @app.delete("/v1/images/{image_id}", status_code=204, tags=["images"], responses=_NOT_FOUND)
    def delete_image(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
        row = _owned(svc, tenant, image_id)
        deleted = ImageDeleted(tenant_id=tenant, image_id=image_id)
        try:  # tell the pipeline first: if the broker is down, nothing is removed
            svc.producer.send([Outbound(deleted.topic, image_id, deleted)])
        except DeliveryError as exc:
            raise HTTPException(503, f"event broker unavailable, nothing deleted: {exc}") from exc
        svc.storage.delete(row.storage_path)
        svc.catalog.delete(tenant, image_id)
        return Response(status_code=204)


def _owned(svc: Services, tenant: str, image_id: str) -> ImageRow:
    row = svc.catalog.get(tenant, image_id)
    if row is None:  # another tenant's image reads exactly like a missing one
        raise HTTPException(404, "image not found")
    return row


def _upload(svc: Services, tenant: str, file: UploadFile) -> UploadOut | JSONResponse:
    limit = svc.settings.ingestion.max_upload_bytes
    data = file.file.read(limit + 1)
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
    existing = svc.catalog.find_by_sha256(tenant, sha256)
    if existing is not None:
        return _duplicate(existing)
    image_id = uuid.uuid4().hex
    path = object_path(tenant, image_id, fmt.extension)
    event = ImageUploaded(
        tenant_id=tenant, image_id=image_id, original_file_name=(file.filename or "")[:512],
        storage_provider=svc.storage.provider, storage_path=path, file_size=len(data),
        mime_type=fmt.mime_type, sha256=sha256, uploaded_at=utcnow(),
    )
    svc.storage.put(path, data)
    clash = svc.catalog.insert(
        event.model_dump(include=set(ImageRow.__dataclass_fields__)) | {"status": "uploaded"})
    if clash is not None:  # the same bytes won a race from a concurrent request
        svc.storage.delete(path)
        return _duplicate(clash)
    try:
        svc.producer.send([Outbound(event.topic, image_id, event)])
    except DeliveryError as exc:
        # Leave nothing behind that no event will ever process.
        svc.catalog.delete(tenant, image_id)
        svc.storage.delete(path)
        metrics.UPLOADS.labels(outcome="unavailable").inc()
        log.error("upload %s not acknowledged by the broker: %s", image_id, exc)
        return JSONResponse({"detail": "event broker unavailable; the upload was not kept, "
                                       "retry later"}, status_code=503,
                            headers={"Retry-After": "5"})
    metrics.UPLOADS.labels(outcome="accepted").inc()
    metrics.UPLOAD_BYTES.inc(len(data))
    return UploadOut(image_id=image_id, tenant_id=tenant, status="uploaded", sha256=sha256)


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
