"""Deciding whether stored bytes are an image DeepLens will embed.

Pure functions: no Kafka, no Ray, so the rules are tested directly.
"""

from __future__ import annotations

import io

from PIL import Image

from deeplens.formats import BY_NAME
from deeplens.image_checks import Invalid, Valid, check_header
from deeplens.settings import IngestionSettings

__all__ = ["Invalid", "Valid", "validate_image"]


def validate_image(data: bytes, limits: IngestionSettings) -> Valid | Invalid:
    """Header checks (format, sides, pixel budget), then decode every pixel."""
    verdict = check_header(data, limits)
    if isinstance(verdict, Invalid):
        return verdict
    return _decode_fully(data, list(BY_NAME), verdict)


def _decode_fully(data: bytes, formats: list[str], ok: Valid) -> Valid | Invalid:
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            img.verify()  # checksums (PNG CRCs) and structure
        with Image.open(io.BytesIO(data), formats=formats) as img:
            img.load()  # every pixel: catches truncation that a header read misses
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "not enough data" in text or "premature end" in text.lower():
            return Invalid("truncated", f"image data ends early: {text}")
        return Invalid("corrupt", f"decoding failed: {text}")
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return Invalid("corrupt", f"decoding failed: {exc}")
    return ok
