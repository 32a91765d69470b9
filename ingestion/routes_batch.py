"""``POST /v1/images/batch``: up to 100 files (100 MB) in one multipart request.

Each file goes through exactly what a single upload does (``routes_upload``: checks,
storage, a pending row; the same bytes answer with the tenant's image), so the same
file sent again is the same image. The events of the request are published in one
broker wait and acknowledged in one transaction. Results come per file, in order; a
bad file fails alone. ``?lane=bulk`` puts the batch on the bulk lane, behind live work.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from deeplens.auth import BODY_RESPONSES, IMAGE_PART, TenantDep, problems
from deeplens.events import ImageStatus
from deeplens.kafka import DeliveryError, Outbound
from ingestion import metrics
from ingestion.bulk_import import BULK_TOPIC
from ingestion.routes_upload import Staged, _stage_upload, _unstage
from ingestion.schemas import PIPELINE_DOC, PipelineNote, UploadOut
from ingestion.services import Services, ServicesDep
from ingestion.tables import images

log = logging.getLogger(__name__)
router = APIRouter()
MAX_FILES = 100
MAX_BATCH_BYTES = 100 * 1024 * 1024


class BatchItemOut(BaseModel):
    """One file's answer: ``status_code`` as a single upload of it would have had."""

    index: int
    file_name: str
    status_code: int
    image_id: str | None = None
    status: ImageStatus | None = None
    sha256: str | None = None
    duplicate_of: str | None = None
    detail: str | None = None


class BatchOut(BaseModel):
    accepted: int
    results: list[BatchItemOut]
    pipeline: PipelineNote | None = Field(None, description=PIPELINE_DOC)


# The body is parsed here, not by FastAPI: a part that is not a file fails alone (in
# its result), not the whole request. The spec says what FastAPI would have said.
_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "minItems": 1, "maxItems": MAX_FILES,
        "items": {"type": "string", "format": "binary"},
        "description": f"JPEG, PNG or WebP files, up to {MAX_FILES} and "
                       f"{MAX_BATCH_BYTES} bytes in all"}}},
    "encoding": {"files": IMAGE_PART["requestBody"]["content"]["multipart/form-data"][
        "encoding"]["file"]}}}}}


@router.post("/v1/images/batch", response_model=BatchOut, tags=["images"],
             openapi_extra=_BODY, responses=BODY_RESPONSES | problems({
                 413: f"more than {MAX_FILES} files or {MAX_BATCH_BYTES} bytes"}))
async def upload_batch(request: Request, svc: ServicesDep, tenant: TenantDep,
                       lane: Annotated[Literal["live", "bulk"], Query(
                           description="bulk: processed behind live work")] = "live",
                       ) -> BatchOut:
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    except MultiPartException as exc:
        raise HTTPException(413 if "Too many" in exc.message else 400, exc.message) from None
    try:
        return await _upload_all(request, svc, tenant, lane, form.getlist("files"))
    finally:
        await form.close()


async def _upload_all(request: Request, svc: Services, tenant: str, lane: str,
                      files: list[Any]) -> BatchOut:
    if not files:
        raise HTTPException(422, "files: at least one file part is required")
    limit = svc.settings.ingestion.max_upload_bytes
    results: list[BatchItemOut | None] = [None] * len(files)
    staged: dict[int, tuple[Staged, int]] = {}
    first_of: dict[str, int] = {}  # sha256 -> the file of this batch that carries it
    copies: dict[int, int] = {}
    for index, upload in enumerate(files):
        if not isinstance(upload, UploadFile):
            results[index] = _problem(index, "", 422, "this part is not a file (no filename)")
            continue
        name = upload.filename or ""
        if index and (wait := _charge(request, tenant)):  # the first was charged at the door
            results[index] = _problem(index, name, 429, f"rate limit reached; retry after "
                                                         f"{wait:.0f}s")
            continue
        data = await upload.read(limit + 1)
        sha = hashlib.sha256(data).hexdigest()
        if sha in first_of:  # the same bytes twice in one batch: one image
            copies[index] = first_of[sha]
            continue
        first_of[sha] = index
        answer = await run_in_threadpool(_stage_one, svc, tenant, data, name)
        if isinstance(answer, Staged):
            staged[index] = (answer, len(data))
        else:
            results[index] = _answer(index, name, answer)
    names = [getattr(f, "filename", None) or "" for f in files]
    await _publish(svc, staged, results, BULK_TOPIC if lane == "bulk" else "images.uploaded",
                   names)
    for index, first in copies.items():
        same = results[first]
        assert same is not None
        results[index] = same.model_copy(update={
            "index": index, "file_name": names[index],
            "duplicate_of": same.image_id if same.status_code == 202 else None})
    done = [r for r in results if r is not None]
    return BatchOut(accepted=sum(r.status_code == 202 for r in done), results=done,
                    pipeline=svc.pipeline_note())


def _charge(request: Request, tenant: str) -> float:
    """Each file of a batch spends the tenant's write budget, as its own upload would."""
    return float(request.app.state.auth.limiters["write"].acquire(tenant))


def _stage_one(svc: Services, tenant: str, data: bytes, name: str) -> Any:
    try:
        return _stage_upload(svc, tenant, data, name)
    except HTTPException as exc:  # this file only
        return exc
    except Exception as exc:  # noqa: BLE001 - a storage or catalog error fails this file
        log.exception("batch upload of %r failed", name)
        return HTTPException(503, f"not stored ({type(exc).__name__}); retry this file")


def _problem(index: int, name: str, code: int, detail: str) -> BatchItemOut:
    return BatchItemOut(index=index, file_name=name, status_code=code, detail=detail)


def _answer(index: int, name: str, answer: Any) -> BatchItemOut:
    if isinstance(answer, UploadOut):  # the tenant's image of the same bytes
        return BatchItemOut(index=index, file_name=name, status_code=202,
                            **answer.model_dump(exclude={"tenant_id"}))
    if isinstance(answer, HTTPException):
        return _problem(index, name, answer.status_code, str(answer.detail))
    assert isinstance(answer, JSONResponse)
    import json

    return _problem(index, name, answer.status_code, json.loads(bytes(answer.body))["detail"])


async def _publish(svc: Services, staged: dict[int, tuple[Staged, int]],
                   results: list[BatchItemOut | None], topic: str, names: list[str]) -> None:
    """One broker wait for the whole batch; not acknowledged: every staged file 503s
    and leaves nothing behind, as a single upload would."""
    if not staged:
        return
    events = [s.event for s, _ in staged.values()]
    try:
        await svc.producer.send_async([Outbound(topic, e.image_id, e) for e in events])
    except DeliveryError as exc:
        for index, (one, _) in staged.items():
            answer = await run_in_threadpool(_unstage, svc, one, exc)
            results[index] = _answer(index, names[index], answer)
        return
    await run_in_threadpool(_acknowledge, svc, [e.image_id for e in events])
    for index, (one, size) in staged.items():
        metrics.UPLOADS.labels(outcome="accepted").inc()
        metrics.UPLOAD_BYTES.inc(size)
        event = one.event
        results[index] = BatchItemOut(index=index, file_name=names[index], status_code=202,
                                      image_id=event.image_id, status="uploaded",
                                      sha256=event.sha256)


def _acknowledge(svc: Services, image_ids: list[str]) -> None:
    """``Catalog.acknowledge`` for a batch: one transaction."""
    with svc.catalog.engine.begin() as conn:
        conn.execute(images.update().where(images.c.image_id.in_(image_ids))
                     .values(pending=None))
