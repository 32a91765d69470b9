"""``POST /v1/images``: check, store, insert a pending row, publish, acknowledge.

Bytes the tenant already uploaded answer with that image, except where its upload
never got through: a failed image starts a new attempt, and a row still pending long
after its request is gone is published again. Both keep the image's id, so every
stage overwrites what an earlier attempt wrote (no second vector, hash or thumbnail)
and usage, counted by event ids derived from the image id, is billed once.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
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
from ingestion.reconcile import uploaded_event
from ingestion.schemas import UploadOut
from ingestion.services import Services, ServicesDep

log = logging.getLogger(__name__)
router = APIRouter()


@dataclass(frozen=True)
class Staged:
    """An upload event to publish: of a new image, or once more of an image these bytes
    already are (``previous``: its row before this request changed it)."""

    event: ImageUploaded
    previous: ImageRow | None = None


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
        if isinstance(staged, UploadOut):
            return staged.model_copy(update={"pipeline": svc.pipeline_note()})
        if not isinstance(staged, Staged):
            return staged
        event = staged.event
        try:
            await svc.producer.send_async([Outbound(event.topic, event.image_id, event)])
        except DeliveryError as exc:
            return await run_in_threadpool(_unstage, svc, staged, exc)
        await run_in_threadpool(svc.catalog.acknowledge, event.image_id)
        metrics.UPLOADS.labels(outcome="accepted").inc()
        metrics.UPLOAD_BYTES.inc(len(data))
        # Accepted even while the pipeline cannot move it (the log keeps it), but said so.
        return UploadOut(image_id=event.image_id, tenant_id=tenant, status="uploaded",
                         sha256=event.sha256, pipeline=svc.pipeline_note())


def _stage_upload(svc: Services, tenant: str, data: bytes,
                  filename: str) -> Staged | UploadOut | JSONResponse:
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
    existing = svc.catalog.find_by_sha256(tenant, sha256)
    if existing is not None:
        return _again(svc, existing, data, filename)
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
        return _again(svc, clash, data, filename)
    return Staged(event)


def _again(svc: Services, row: ImageRow, data: bytes,
           filename: str) -> Staged | UploadOut | JSONResponse:
    """The tenant's image of the same bytes: it, or what to publish where its upload
    never got through (a failure, or a request that died before it was settled)."""
    if row.status == "failed":
        return _reattempt(svc, row, data, filename)
    if not row.pending:
        return _duplicate(row)
    if row.status != "uploaded":  # the pipeline took its event; its request never said so
        svc.catalog.acknowledge(row.image_id)
        return _duplicate(row)
    ack_s = svc.settings.ingestion.ack_timeout_s
    age_s = (utcnow() - row.uploaded_at).total_seconds()
    if age_s <= 2 * ack_s + 30:  # another request still waits for the broker
        return _retry_soon(max(1, min(30, int(ack_s - age_s) + 1)))
    # Its request is long gone (a crashed replica, a failed acknowledge) and nothing shows
    # that the broker took its event: publish it again, under the same image id.
    svc.storage.put(row.storage_path, data)
    return Staged(uploaded_event(row), previous=row)


def _reattempt(svc: Services, row: ImageRow, data: bytes,
               filename: str) -> Staged | UploadOut | JSONResponse:
    """A new attempt at a failed image: its bytes stored again (a failure may have been
    their loss), its row back to pending ``uploaded``, its upload event published."""
    svc.storage.put(row.storage_path, data)
    at = utcnow()
    if not svc.catalog.reattempt(row.image_id, filename[:512], at):
        current = svc.catalog.get(row.tenant_id, row.image_id)  # another request was first
        if current is None or current.status == "failed":
            return _retry_soon()
        return _again(svc, current, data, filename)
    return Staged(uploaded_event(row).model_copy(
        update={"original_file_name": filename[:512], "uploaded_at": at}), previous=row)


def _unstage(svc: Services, staged: Staged, exc: DeliveryError) -> JSONResponse:
    """The broker did not acknowledge: leave nothing behind that no event will process.
    An image that existed before this request is left as it was."""
    event = staged.event
    if staged.previous is None:
        svc.catalog.delete(event.tenant_id, event.image_id)
        svc.storage.delete(event.storage_path)
    elif staged.previous.status == "failed":
        svc.catalog.restore(staged.previous)
    metrics.UPLOADS.labels(outcome="unavailable").inc()
    log.error("upload %s not acknowledged by the broker: %s", event.image_id, exc)
    return JSONResponse({"detail": "event broker unavailable; the upload was not kept, "
                                   "retry later"}, status_code=503, headers={"Retry-After": "5"})


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
