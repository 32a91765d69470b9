"""Prometheus metrics of the upload edge."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

UPLOADS = Counter("deeplens_uploads_total", "Upload requests by outcome", ["outcome"])
UPLOAD_BYTES = Counter("deeplens_upload_bytes_total", "Bytes accepted by the upload API")
UPLOAD_SECONDS = Histogram(
    "deeplens_upload_seconds", "Upload request time, through the broker's acknowledgement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
