"""Event contracts: one pydantic model per topic, shared by producers and consumers.

JSON is snake_case, as the seed's Python consumer reads ``storage_path``. Every
event has ``schema_version``; a consumer that meets a version it does not know,
or bytes that are not JSON, gets an :class:`EventDecodeError` with a reason code,
never an unhandled exception.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1

Stage = Literal[
    "ingestion", "validation", "embedding", "indexing", "dedup", "projection", "usage", "replay",
    "search",
]
ImageStatus = Literal["uploaded", "validated", "processed", "indexed", "failed"]

# Reason codes a failure may carry; decoding failures use the first three.
FailureReason = Literal[
    "malformed_json",
    "unknown_schema_version",
    "invalid_event",
    "corrupt",
    "truncated",
    "unsupported_format",
    "decompression_bomb",
    "too_small",
    "too_large",
    "missing_object",
    "embedding_error",
    "index_error",
    "transient_exhausted",
    "internal_error",
    "dedup_error",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event: versioned, immutable, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    topic: ClassVar[str]
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class ImageRef(Event):
    """Fields every per-image event carries."""

    tenant_id: str
    image_id: str


class ImageUploaded(ImageRef):
    topic: ClassVar[str] = "images.uploaded"
    original_file_name: str
    storage_provider: str
    storage_path: str
    file_size: int
    mime_type: str
    sha256: str
    uploaded_at: datetime


class ImageValidated(ImageUploaded):
    topic: ClassVar[str] = "images.validated"
    width: int
    height: int
    format: str
    validated_at: datetime


class ImageProcessed(ImageValidated):
    topic: ClassVar[str] = "images.processed"
    features: list[float]
    feature_model: str
    processed_at: datetime


class ImageIndexed(ImageRef):
    topic: ClassVar[str] = "images.indexed"
    collection: str
    feature_model: str
    uploaded_at: datetime | None = None
    indexed_at: datetime = Field(default_factory=utcnow)


class ImageFailed(Event):
    """A message that could not be handled, as a value (the seed's ImageFailedEvent).

    ``event`` is the failed event when it could be parsed, ``raw`` its text when not.
    Origin fields mirror Kafka Connect's DLQ headers.
    """

    topic: ClassVar[str] = "images.failed"
    tenant_id: str | None = None
    image_id: str | None = None
    event: dict[str, Any] | None = None
    event_type: str | None = None  # the topic whose model ``event`` is (for replay)
    raw: str | None = None
    reason: FailureReason
    message: str
    stage: Stage
    attempt: int = 1
    error_class: str = ""
    origin_topic: str = ""
    origin_partition: int = -1
    origin_offset: int = -1
    failed_at: datetime = Field(default_factory=utcnow)


DuplicateKind = Literal["exact", "near", "similar"]


class DuplicateMatch(BaseModel):
    model_config = ConfigDict(frozen=True)
    image_id: str
    kind: DuplicateKind
    score: float


class DuplicatesFound(ImageRef):
    topic: ClassVar[str] = "duplicates.found"
    matches: list[DuplicateMatch]
    tiers: list[DuplicateKind]
    found_at: datetime = Field(default_factory=utcnow)


UsageMetric = Literal["uploads", "upload_bytes", "images_embedded", "embedding_ms", "searches"]


class TenantUsage(Event):
    topic: ClassVar[str] = "tenant.usage"
    tenant_id: str
    metric: UsageMetric
    quantity: float
    image_id: str | None = None
    occurred_at: datetime = Field(default_factory=utcnow)


class ImageDeleted(ImageRef):
    topic: ClassVar[str] = "images.deleted"
    deleted_at: datetime = Field(default_factory=utcnow)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.topic: cls
    for cls in (
        ImageUploaded,
        ImageValidated,
        ImageProcessed,
        ImageIndexed,
        ImageFailed,
        DuplicatesFound,
        TenantUsage,
        ImageDeleted,
    )
}


E = TypeVar("E", bound=Event)


class EventDecodeError(ValueError):
    """Bytes on a topic that are not a valid event of that topic's type."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: FailureReason = reason
        self.message = message


def decode_event(model: type[E], raw: bytes | str | None) -> E:
    """Parse one message value as ``model``; raise EventDecodeError on any defect."""
    if raw is None:
        raise EventDecodeError("malformed_json", "message has no value (tombstone)")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventDecodeError("malformed_json", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventDecodeError("malformed_json", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EventDecodeError(
            "unknown_schema_version",
            f"{model.__name__} schema_version {version!r} is not supported (knows {SCHEMA_VERSION})",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "<root>" for e in exc.errors())
        raise EventDecodeError("invalid_event", f"{model.__name__} invalid fields: {fields}") from None
