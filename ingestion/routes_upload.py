"""``POST /v1/images``: check, store, insert a pending row, publish, acknowledge."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from deeplens.auth import BODY_RESPONSES, IMAGE_PART, TenantDep, problems
from deeplens.events import ImageUploaded, utcnow
from deeplens.formats import hostile_trailer, sniff
from deeplens.kafka import DeliveryError, Outbound
from deeplens.storage import object_path
from ingestion import metrics
from ingestion.catalog import ImageRow
from ingestion.schemas import UploadOut
from ingestion.services import Services, ServicesDep

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/images", status_code=202, response_model=UploadOut, tags=["images"],
          openapi_extra=IMAGE_PART,
          responses=BODY_RESPONSES | problems({
              415: "not JPEG, PNG or WebP by its content, or it carries other data",
              503: "the event broker did not acknowledge, or the same file is being "
                   "accepted by another request: retry after Retry-After"}))
async def upload_image(svc: ServicesDep, tenant: TenantDep,
                       file: Annotated[UploadFile, File(description="JPEG, PNG or WebP",
                                                        json_schema_extra={"minLength": 1})]
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
