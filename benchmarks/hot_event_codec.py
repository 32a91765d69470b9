"""What the event codec costs per image: every hot topic's event encoded once (by the
stage that writes it) and decoded by every stage that reads it.

    python -m benchmarks.hot_event_codec [--events 3000]

For each event an image sends through the pipeline (``images.uploaded`` ..
``duplicates.found``, the 640x480 JPEG shape of ``ceiling_bench``: a 512-d vector,
window hashes, fingerprint, thumbnail path), the microseconds of ``to_json`` and of what
a consumer loop does per message before its handler (``decode_event`` +
``envelope_of``), times the number of stages reading the topic (``cluster.stages``).
The sum is what a faster codec (msgspec or the like) could cut, at most, per image:
issue 25 asks to measure it before replacing pydantic. CPU time of this process.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import numpy as np


def events() -> dict:
    from deeplens.events import (
        DuplicateMatch,
        DuplicatesFound,
        ImageIndexed,
        ImageProcessed,
        ImageUploaded,
        ImageValidated,
        encode_vector,
    )

    now = datetime.now(UTC)
    uploaded = dict(tenant_id="bench", image_id="0" * 32, original_file_name="p.jpg",
                    storage_provider="local", storage_path="bench/00/" + "0" * 32 + ".jpg",
                    file_size=50_000, mime_type="image/jpeg", sha256="0" * 64, uploaded_at=now)
    validated = dict(uploaded, width=640, height=480, format="JPEG", validated_at=now)
    vector = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    windows = np.arange(5, dtype=np.uint64).astype(">u8").tobytes()
    processed = dict(validated, features_f32=encode_vector(vector / np.linalg.norm(vector)),
                     feature_model="ViT-B-32/openai", processed_at=now, phash="0123456789abcdef",
                     window_hashes=base64.b64encode(windows).decode(),
                     pixel_fingerprint="jc1:" + "a" * 60,
                     thumbnail_path="bench/00/" + "0" * 32 + ".thumb.jpg")
    return {
        "images.uploaded": ImageUploaded(**uploaded),
        "images.validated": ImageValidated(**validated),
        "images.processed": ImageProcessed(**processed),
        "images.indexed": ImageIndexed(tenant_id="bench", image_id="0" * 32, collection="c",
                                       feature_model="ViT-B-32/openai", uploaded_at=now),
        "duplicates.found": DuplicatesFound(
            tenant_id="bench", image_id="0" * 32, tiers=["exact", "near", "similar"],
            matches=[DuplicateMatch(image_id="1" * 32, kind="near", score=0.95)]),
    }


def readers(topic: str) -> int:
    """Stages reading the topic (or its bulk lane: one image takes one lane)."""
    from cluster.stages import STAGES

    return sum(1 for s in STAGES if topic in s.inputs or f"{topic}.bulk" in s.inputs)


def measure(n: int) -> dict:
    from deeplens.events import decode_event
    from deeplens.stage_sdk import envelope_of

    now = datetime.now(UTC)
    rows = {}
    for topic, event in events().items():
        start = time.process_time()
        for _ in range(n):
            raw = event.to_json()
        encode_us = (time.process_time() - start) / n * 1e6
        start = time.process_time()
        for i in range(n):
            envelope_of(decode_event(type(event), raw), topic=topic, partition=0, offset=i,
                        key=event.image_id, timestamp=now, headers={})
        decode_us = (time.process_time() - start) / n * 1e6
        count = readers(topic)
        rows[topic] = {"bytes": len(raw), "encode_us": round(encode_us, 1),
                       "decode_us": round(decode_us, 1), "readers": count,
                       "us_per_image": round(encode_us + count * decode_us, 1)}
    return {"topics": rows,
            "us_per_image": round(sum(r["us_per_image"] for r in rows.values()), 1)}


def main() -> None:
    from benchmarks.common import BenchParser, machine, record

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    measure(200)  # warm-up: pydantic's validators and the imports
    figures = measure(args.events)
    print(f"machine: {machine()}; pydantic codec, {args.events} events each")
    print("| topic | bytes | encode us | decode + envelope us | readers | us per image |")
    print("|---|---|---|---|---|---|")
    for topic, r in figures["topics"].items():
        print(f"| {topic} | {r['bytes']} | {r['encode_us']} | {r['decode_us']} | "
              f"{r['readers']} | {r['us_per_image']} |")
    print(f"per image, all hot events: {figures['us_per_image']} us")
    print(f"recorded in {record('hot_event_codec', figures)}")


if __name__ == "__main__":
    main()
