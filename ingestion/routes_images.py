"""The tenant's images: list, statuses, usage, one image, its duplicates, bytes, thumbnail,
delete."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from deeplens.auth import BODY_RESPONSES, TenantDep, problems
from deeplens.events import ImageDeleted, ImageStatus, utcnow
from deeplens.kafka import DeliveryError, Outbound
from deeplens.storage import ObjectMissing, thumbnail_path
from ingestion.catalog import Catalog, ImageRow
from ingestion.schemas import (
    DuplicateOut,
    DuplicatesOut,
    ImageOut,
    ImagePage,
    StageTimes,
    StatusAnswer,
    StatusQuery,
    UsageHour,
    UsageOut,
    UsageTotals,
)
from ingestion.services import NOT_FOUND, ServicesDep, owned

router = APIRouter()

_BINARY = {"schema": {"type": "string", "format": "binary"}}
CONTENT = {200: {"description": "the file as uploaded, under its detected type",
                 "content": {mime: _BINARY for mime in ("image/jpeg", "image/png",
                                                        "image/webp")}}}
THUMBNAIL = {200: {"description": "a JPEG of at most 320 px a side",
                   "content": {"image/jpeg": _BINARY}}}


class TenantCounts:
    """Each tenant's images per status, counted at most once per ``max_age_s`` per
    process: counting reads every row of the tenant (a million for a large one), and a
    client paging through them, or polling its first page, must not pay that per page."""

    def __init__(self, max_age_s: float = 1.0, max_tenants: int = 10_000) -> None:
        self.max_age_s, self.max_tenants = max_age_s, max_tenants
        self._counted: OrderedDict[tuple[int, str], tuple[float, dict[str, int]]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def get(self, catalog: Catalog, tenant: str) -> dict[str, int]:
        key = (id(catalog), tenant)
        with self._lock:
            held = self._counted.get(key)
        if held is not None and time.monotonic() - held[0] < self.max_age_s:
            return held[1]
        counts = catalog.counts(tenant)
        with self._lock:
            self._counted[key] = (time.monotonic(), counts)
            self._counted.move_to_end(key)
            while len(self._counted) > self.max_tenants:
                self._counted.popitem(last=False)
        return counts


COUNTS = TenantCounts()


@router.get("/v1/images", response_model=ImagePage, tags=["images"])
def list_images(svc: ServicesDep, tenant: TenantDep,
                status: Annotated[ImageStatus | None, Query()] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                after: Annotated[str | None, Query(max_length=64)] = None) -> ImagePage:
    """A page of the tenant's images, newest first, and its counts per status (as of at
    most ``TenantCounts.max_age_s`` ago)."""
    rows = svc.catalog.list(tenant, status=status, limit=limit, after=after)
    return ImagePage(items=[image_out(r) for r in rows],
                     next_after=rows[-1].image_id if len(rows) == limit else None,
                     counts=COUNTS.get(svc.catalog, tenant))


@router.post("/v1/images/statuses", response_model=StatusAnswer, tags=["images"],
             responses=BODY_RESPONSES)
def image_statuses(query: StatusQuery, svc: ServicesDep, tenant: TenantDep) -> StatusAnswer:
    """Statuses of up to 500 of the caller's images at once (bulk ingest progress)."""
    return StatusAnswer(statuses=svc.catalog.statuses(tenant, query.image_ids))


@router.get("/v1/usage", response_model=UsageOut, tags=["usage"])
def usage(svc: ServicesDep, tenant: TenantDep,
          hours: Annotated[int, Query(ge=1, le=24 * 90)] = 24) -> UsageOut:
    """The caller's usage per hour (uploads, bytes, images embedded, embedding time,
    searches), from the tenant.usage aggregation."""

    since = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = [UsageHour(hour=h, **m) for h, m in svc.catalog.usage(tenant, since).items()]
    totals = UsageTotals(**{f: sum(getattr(r, f) for r in rows)
                            for f in UsageTotals.model_fields})
    return UsageOut(tenant_id=tenant, since=since, hours=rows, totals=totals)


@router.get("/v1/images/{image_id}", response_model=ImageOut, tags=["images"],
         responses=NOT_FOUND)
def get_image(image_id: str, svc: ServicesDep, tenant: TenantDep) -> ImageOut:
    return image_out(owned(svc, tenant, image_id))


@router.get("/v1/images/{image_id}/duplicates", response_model=DuplicatesOut, tags=["images"],
         responses=NOT_FOUND)
def get_duplicates(image_id: str, svc: ServicesDep, tenant: TenantDep) -> DuplicatesOut:
    row = owned(svc, tenant, image_id)
    matches = [DuplicateOut(image_id=d.image_id, kind=d.kind, score=d.score)
               for d in svc.catalog.duplicates_of(tenant, image_id)]
    tiers = row.dedup_tiers.split(",") if row.dedup_tiers else []
    return DuplicatesOut(image_id=image_id, tiers=tiers, matches=matches)


@router.get("/v1/images/{image_id}/content", tags=["images"], response_class=Response,
            responses=NOT_FOUND | CONTENT)
def get_content(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
    row = owned(svc, tenant, image_id)
    data = svc.storage.get(row.storage_path)
    return Response(data, media_type=row.mime_type,
                    headers={"X-Content-Type-Options": "nosniff"})


@router.get("/v1/images/{image_id}/thumbnail", tags=["images"], response_class=Response,
            responses=NOT_FOUND | THUMBNAIL)
def get_thumbnail(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
    """A JPEG of at most 320 px a side, made by the Embedder from its one decode;
    404 until the image is embedded."""
    row = owned(svc, tenant, image_id)
    try:
        data = svc.storage.get(thumbnail_path(row.storage_path))
    except ObjectMissing:
        raise HTTPException(404, f"image {image_id} has no thumbnail (yet): it is "
                                 f"{row.status}") from None
    return Response(data, media_type="image/jpeg",
                    headers={"X-Content-Type-Options": "nosniff",
                             "Cache-Control": "private, max-age=86400"})


@router.delete("/v1/images/{image_id}", status_code=204, tags=["images"],
               response_class=Response,
               responses=NOT_FOUND | problems({503: "event broker unavailable; nothing "
                                                    "was deleted"}))
def delete_image(image_id: str, svc: ServicesDep, tenant: TenantDep) -> Response:
    row = owned(svc, tenant, image_id)
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


def image_out(row: ImageRow) -> ImageOut:
    """The API's view of a catalog row: its fields by name, the stage times grouped."""
    def pick(model: type) -> dict:
        return {name: getattr(row, name) for name in model.model_fields if hasattr(row, name)}

    return ImageOut(**pick(ImageOut), timestamps=StageTimes(**pick(StageTimes)))
