import json
import uuid
from datetime import UTC, datetime

import pytest

from deeplens.events import (
    EVENT_TYPES,
    DuplicateMatch,
    DuplicatesFound,
    EventDecodeError,
    ImageDeleted,
    ImageFailed,
    ImageIndexed,
    ImageProcessed,
    ImageUploaded,
    ImageValidated,
    TenantUsage,
    decode_event,
    encode_vector,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
UPLOAD = dict(
    tenant_id="alpha", image_id="img-1", original_file_name="../../cat.jpg",
    storage_provider="local", storage_path="alpha/img-1", file_size=1234,
    mime_type="image/jpeg", sha256="ab" * 32, uploaded_at=NOW,
)
VALID = UPLOAD | dict(width=640, height=480, format="JPEG", validated_at=NOW)

SAMPLES = [
    ImageUploaded(**UPLOAD),
    ImageValidated(**VALID),
    ImageProcessed(**VALID, schema_version=1, features=[0.25, -0.5],
                   feature_model="ViT-B-32/random-init", processed_at=NOW),
    ImageProcessed(**VALID, features_f32=encode_vector([0.25, -0.5]), phash="00ff00ff00ff00ff",
                   pixel_fingerprint="px1:" + "0" * 64, thumbnail_path="alpha/img-1.thumb.jpg",
                   feature_model="ViT-B-32/random-init", processed_at=NOW),
    ImageIndexed(tenant_id="alpha", image_id="img-1", collection="c", feature_model="m"),
    ImageFailed(tenant_id="alpha", image_id="img-1", event=UPLOAD | {"uploaded_at": "x"},
                reason="corrupt", message="bad", stage="validation", attempt=2,
                origin_topic="images.uploaded", origin_partition=1, origin_offset=7),
    DuplicatesFound(tenant_id="alpha", image_id="img-1", tiers=["exact", "near"],
                    matches=[DuplicateMatch(image_id="img-0", kind="exact", score=1.0)]),
    TenantUsage(tenant_id="alpha", metric="uploads", quantity=1),
    ImageDeleted(tenant_id="alpha", image_id="img-1"),
]


def test_every_topic_has_a_model() -> None:
    from deeplens.topics import TOPICS

    core = {n for n in TOPICS if ".retry." not in n}
    assert core == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_json_round_trip(event) -> None:
    raw = event.to_json()
    data = json.loads(raw)
    assert data["schema_version"] == getattr(event, "schema_version", 1)
    assert decode_event(type(event), raw) == event


def test_uploaded_json_is_snake_case_with_seed_fields() -> None:
    data = json.loads(SAMPLES[0].to_json())
    for name in ("tenant_id", "image_id", "original_file_name", "storage_provider",
                 "storage_path", "file_size", "mime_type", "uploaded_at"):
        assert name in data


def test_processed_carries_seed_fields() -> None:
    data = json.loads(SAMPLES[2].to_json())
    assert data["features"] == [0.25, -0.5]
    assert data["feature_model"] == "ViT-B-32/random-init"
    assert "processed_at" in data


def test_processed_version_2_is_compact_and_version_1_stays_readable() -> None:
    import numpy as np

    vector = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    v1 = SAMPLES[2].model_copy(update={"features": [float(x) for x in vector]})
    v2 = SAMPLES[3].model_copy(update={"features_f32": encode_vector(vector)})
    assert len(v2.to_json()) < len(v1.to_json()) / 2  # 2.7 KB of base64 vs 9+ KB of floats
    for event in (v1, v2):
        decoded = decode_event(ImageProcessed, event.to_json())
        assert decoded.vector().dtype == np.float32
        np.testing.assert_array_equal(decoded.vector(), vector)  # float32 exactly, both ways
    assert decode_event(ImageProcessed, v1.to_json()).phash is None  # v1: dedup hashes itself
    mixed = json.loads(v2.to_json()) | {"features": [1.0]}
    with pytest.raises(EventDecodeError) as info:
        decode_event(ImageProcessed, json.dumps(mixed))
    assert info.value.reason == "invalid_event"
    with pytest.raises(EventDecodeError) as info:
        decode_event(ImageProcessed, json.dumps(json.loads(v2.to_json()) | {"schema_version": 3}))
    assert info.value.reason == "unknown_schema_version"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (None, "malformed_json"),
        (json.dumps(UPLOAD | {"schema_version": 99}, default=str).encode(), "unknown_schema_version"),
        (json.dumps({"tenant_id": "a"}).encode().replace(b"}", b', "schema_version": 1}'),
         "invalid_event"),
    ],
)
def test_decode_errors_are_typed(raw, reason) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode_event(ImageUploaded, raw)
    assert info.value.reason == reason


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = json.loads(SAMPLES[0].to_json()) | {"added_later": True}
    event = decode_event(ImageUploaded, json.dumps(data))
    assert event.image_id == "img-1" and isinstance(event.event_id, uuid.UUID)
