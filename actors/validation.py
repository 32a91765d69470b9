"""Deciding whether stored bytes are an image DeepLens will embed.

Pure functions: no Kafka, no Ray, so the rules are tested directly. Nothing here
decodes pixels: format by content, dimensions, side limits and the pixel budget
from the header, truncation and structural damage from the container (JPEG
segments, PNG chunk CRCs, RIFF size). The one full decode of an image is the
Embedder's; damage only that decode finds fails there, with reason ``corrupt``.
"""

from __future__ import annotations

from deeplens.image_checks import Invalid, Valid, check_image
from deeplens.settings import IngestionSettings

__all__ = ["Invalid", "Valid", "validate_image"]


def validate_image(data: bytes, limits: IngestionSettings) -> Valid | Invalid:
    """Header checks (format, sides, pixel budget), then the container's structure."""
    return check_image(data, limits)
