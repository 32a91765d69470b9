"""What the HTTP routes use, built once per app, and the look-up every image route starts with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from deeplens.kafka import EventProducer
from deeplens.settings import Settings
from deeplens.storage import Storage
from deeplens.tombstones import Tombstones
from ingestion.catalog import Catalog, ImageRow
from ingestion.schemas import PipelineNote, Problem


@dataclass
class Services:
    """What the routes use; built once per app."""

    settings: Settings
    catalog: Catalog
    storage: Storage
    producer: EventProducer
    tombstones: Tombstones
    # The pipeline's last known state ({"state", "reasons"}) without waiting, set by the
    # Gateway (cluster.pipeline_health); None where nothing watches the pipeline.
    pipeline: Callable[[], dict[str, Any] | None] | None = None

    def pipeline_note(self) -> PipelineNote | None:
        note = self.pipeline() if self.pipeline is not None else None
        return None if note is None else PipelineNote.model_validate(note)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such image for this tenant"}}


def owned(svc: Services, tenant: str, image_id: str) -> ImageRow:
    row = svc.catalog.get(tenant, image_id)
    if row is None:  # another tenant's image reads exactly like a missing one
        raise HTTPException(404, "image not found")
    return row
