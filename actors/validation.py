"""Deciding whether stored bytes are an image DeepLens will embed.

Pure functions: no Kafka, no Ray, so the rules are tested directly.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from deeplens.events import FailureReason
from deeplens.formats import BY_NAME, sniff
from deeplens.settings import IngestionSettings


@dataclass(frozen=True)
class Valid:
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class Invalid:
    reason: FailureReason
    message: str


def validate_image(data: bytes, limits: IngestionSettings) -> Valid | Invalid:
    """Open with Pillow (allowed formats only), check size limits, decode every pixel."""
    if not data:
        return Invalid("corrupt", "the stored object is empty")
    if sniff(data) is None:
        return Invalid("unsupported_format", "not a JPEG, PNG or WebP file")
    formats = list(BY_NAME)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=formats) as probe:
                width, height, fmt = probe.width, probe.height, probe.format or "?"
    except UnidentifiedImageError:
        return Invalid("corrupt", "the header says JPEG/PNG/WebP but Pillow cannot parse it")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Invalid("decompression_bomb", str(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        return Invalid("corrupt", f"unreadable header: {exc}")

    if width * height > limits.max_image_pixels:
        return Invalid("decompression_bomb",
                       f"{width}x{height} = {width * height} pixels exceeds the limit of "
                       f"{limits.max_image_pixels} (DEEPLENS_INGESTION__MAX_IMAGE_PIXELS)")
    if min(width, height) < limits.min_side:
        return Invalid("too_small", f"{width}x{height}: a side is below {limits.min_side} px")
    if max(width, height) > limits.max_side:
        return Invalid("too_large", f"{width}x{height}: a side is above {limits.max_side} px")
    return _decode_fully(data, formats, Valid(width, height, fmt))


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
