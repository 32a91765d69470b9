"""Event contracts: one pydantic model per topic, shared by producers and consumers.

JSON is snake_case, as the seed's Python consumer reads ``storage_path``. Every
event has ``schema_version``; a consumer that meets a version it does not know,
or bytes that are not JSON, gets an :class:`EventDecodeError` with a reason code,
never an unhandled exception.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1  # every event's, except where a model lists more ``versions``

Stage = Literal["ingestion", "validation", "embedding", "indexing", "dedup", "projection", "usage"]
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
    versions: ClassVar[tuple[int, ...]] = (SCHEMA_VERSION,)  # readable; the last is written
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


def encode_vector(vector: Any) -> str:
    """A vector on the wire: base64 of little-endian float32 (2.7 KB for 512 dims, where
    JSON floats take 6.3 KB and cost ~20x more to parse)."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


class ImageProcessed(ImageValidated):
    """An embedded image.

    Version 2 (written now) carries the vector as ``features_f32`` (see
    ``encode_vector``) and what the Embedder's decode yielded besides: the dedup hashes
    and where the thumbnail is stored. Version 1 (``features`` as JSON floats, no
    hashes) stays readable; dedup then computes the hashes itself.
    """

    topic: ClassVar[str] = "images.processed"
    versions: ClassVar[tuple[int, ...]] = (1, 2)
    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]
    features: list[float] | None = None  # version 1
    features_f32: str | None = None  # version 2
    feature_model: str
    processed_at: datetime
    phash: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")  # 64-bit pHash, hex
    window_hashes: str | None = None  # base64 of big-endian u64 pHashes of image_hashes.WINDOWS
    pixel_fingerprint: str | None = None  # deeplens.image_hashes.fingerprint
    thumbnail_path: str | None = None
    # During a model change: the same image by the other model(s), model id -> base64
    # float32 (as features_f32); the indexer writes each to its model's collection.
    shadow_vectors: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_a_vector(self) -> ImageProcessed:
        if self.schema_version == 1 and (self.features is None or self.features_f32):
            raise ValueError("a version-1 event carries its vector as features")
        if self.schema_version == 2 and (self.features_f32 is None or self.features):
            raise ValueError("a version-2 event carries its vector as features_f32")
        return self

    def vector(self) -> Any:
        """The feature vector as a float32 numpy array, whichever encoding carried it."""
        import numpy as np

        if self.features_f32 is not None:
            return np.frombuffer(base64.b64decode(self.features_f32), dtype="<f4")
        return np.asarray(self.features, dtype=np.float32)


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


class UsageItem(BaseModel):
    """One image's share of a folded usage event (``deeplens.usage_batch``)."""

    model_config = ConfigDict(frozen=True)
    event_id: uuid.UUID  # the id its own per-image event would have had
    image_id: str
    quantity: float


class TenantUsage(Event):
    topic: ClassVar[str] = "tenant.usage"
    tenant_id: str
    metric: UsageMetric
    quantity: float  # with items: their sum
    image_id: str | None = None
    occurred_at: datetime = Field(default_factory=utcnow)
    items: list[UsageItem] | None = None  # a consumer batch's images, each counted once


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
# A lane topic (topics.toml) carries the events of its live topic, in the seed's shape.
EVENT_TYPES[f"{ImageUploaded.topic}.bulk"] = ImageUploaded
EVENT_TYPES[f"{ImageValidated.topic}.bulk"] = ImageValidated


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
    if version not in model.versions or isinstance(version, bool):
        raise EventDecodeError(
            "unknown_schema_version",
            f"{model.__name__} schema_version {version!r} is not supported "
            f"(knows {', '.join(map(str, model.versions))})",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "<root>" for e in exc.errors())
        raise EventDecodeError("invalid_event", f"{model.__name__} invalid fields: {fields}") from None
