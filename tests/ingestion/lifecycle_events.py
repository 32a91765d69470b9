"""Lifecycle events of one image as the pipeline writes them, and the projection's
own path to apply them (``projection.changes_of`` -> ``Catalog.apply`` ->
``lifecycle.apply``), for tests that need no broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from deeplens.events import (
    DuplicateMatch,
    DuplicatesFound,
    Event,
    ImageFailed,
    ImageIndexed,
    ImageProcessed,
    ImageUploaded,
    ImageValidated,
    encode_vector,
)
from deeplens.stage_sdk import Envelope
from ingestion.catalog import Catalog
from ingestion.projection import changes_of

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
MODEL = "test/model"


def envelope(event: Event) -> Envelope:
    return Envelope(topic=event.topic, partition=0, offset=0,
                    key=getattr(event, "image_id", "") or "", timestamp=None, event=event)


def project(catalog: Catalog, *events: Event) -> None:
    """One consumer batch of the projection."""
    catalog.apply(changes_of([envelope(e) for e in events]))


def uploaded(image_id: str, tenant: str = "acme", at: datetime = NOW) -> ImageUploaded:
    return ImageUploaded(tenant_id=tenant, image_id=image_id,
                         original_file_name=f"{image_id}.jpg", storage_provider="local",
                         storage_path=f"{tenant}/{image_id}.jpg", file_size=1,
                         mime_type="image/jpeg", sha256=image_id.ljust(64, "0"),
                         uploaded_at=at)


def validated(upload: ImageUploaded, seconds: float = 1, size: int = 8) -> ImageValidated:
    return ImageValidated(**upload.model_dump(exclude={"event_id", "schema_version"}),
                          width=size, height=size, format="JPEG",
                          validated_at=upload.uploaded_at + timedelta(seconds=seconds))


def processed(upload: ImageUploaded, seconds: float = 2,
              vector: np.ndarray | None = None) -> ImageProcessed:
    fields = validated(upload).model_dump(exclude={"event_id", "schema_version"})
    return ImageProcessed(**fields, feature_model=MODEL,
                          features_f32=encode_vector(np.ones(4) if vector is None else vector),
                          processed_at=upload.uploaded_at + timedelta(seconds=seconds))


def indexed(upload: ImageUploaded, seconds: float = 3) -> ImageIndexed:
    return ImageIndexed(tenant_id=upload.tenant_id, image_id=upload.image_id,
                        feature_model=MODEL, collection="c", uploaded_at=upload.uploaded_at,
                        indexed_at=upload.uploaded_at + timedelta(seconds=seconds))


def failed(upload: ImageUploaded, seconds: float = 1, stage: str = "validation",
           reason: str = "internal_error", message: str = "KeyError: 'MPO'") -> ImageFailed:
    return ImageFailed(tenant_id=upload.tenant_id, image_id=upload.image_id, reason=reason,
                       message=message, stage=stage,
                       failed_at=upload.uploaded_at + timedelta(seconds=seconds))


def duplicates(tenant: str, image_id: str, tiers: list[str],
               matches: list[tuple[str, str, float]]) -> DuplicatesFound:
    return DuplicatesFound(tenant_id=tenant, image_id=image_id, tiers=tiers, matches=[
        DuplicateMatch(image_id=i, kind=kind, score=score) for i, kind, score in matches])
