"""Request and response models of the upload API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from deeplens.auth import ErrorBody
from deeplens.events import ImageStatus

Problem = ErrorBody
"""Every error answer, whatever its status or route: ``{"detail": "<one sentence>"}``."""


class PipelineNote(BaseModel):
    """The pipeline's state as the Gateway last saw it (``GET /readyz`` has the detail)."""

    state: Literal["ok", "degraded"]
    reasons: list[str] = []


PIPELINE_DOC = ("The pipeline's state when the upload was accepted: `degraded` means the "
                "image is safe in the event log but will wait until the reasons are gone "
                "(a stage or the Embedder with nowhere to run). Absent where unknown.")


class UploadOut(BaseModel):
    image_id: str
    tenant_id: str
    status: ImageStatus
    sha256: str
    duplicate_of: str | None = None
    pipeline: PipelineNote | None = Field(None, description=PIPELINE_DOC)


class StageTimes(BaseModel):
    uploaded_at: datetime
    validated_at: datetime | None = None
    processed_at: datetime | None = None
    indexed_at: datetime | None = None
    failed_at: datetime | None = None


class ImageOut(BaseModel):
    image_id: str
    tenant_id: str
    status: ImageStatus
    stage: str | None
    failure_reason: str | None
    failure_message: str | None
    original_file_name: str
    mime_type: str
    file_size: int
    sha256: str
    width: int | None
    height: int | None
    feature_model: str | None
    timestamps: StageTimes


class ImagePage(BaseModel):
    items: list[ImageOut]
    next_after: str | None = None
    counts: dict[str, int]


class DuplicateOut(BaseModel):
    image_id: str
    kind: str
    score: float


class DuplicatesOut(BaseModel):
    image_id: str
    tiers: list[str]
    matches: list[DuplicateOut]


class StatusQuery(BaseModel):
    image_ids: list[str] = Field(min_length=1, max_length=500)


class StatusAnswer(BaseModel):
    statuses: dict[str, str]  # image_id -> status; ids not found (or not yours) are absent


class UsageTotals(BaseModel):
    uploads: int = 0
    upload_bytes: int = 0
    images_embedded: int = 0
    embedding_ms: float = 0
    searches: int = 0


class UsageHour(UsageTotals):
    hour: datetime


class UsageOut(BaseModel):
    tenant_id: str
    since: datetime = Field(description="start of the first hour counted")
    hours: list[UsageHour] = Field(description="hours with any usage, oldest first")
    totals: UsageTotals
