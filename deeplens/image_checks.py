"""Header-level checks every image passes before anything decodes its pixels.

Shared by the validation stage (uploads) and the search route (query images), so
a query image is refused for the same reasons, with the same codes, as an upload.
Pure functions: no Kafka, no Ray. Nothing here decodes pixel data, so a
decompression bomb is refused from its header alone.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from deeplens.events import FailureReason
from deeplens.formats import BY_NAME, sniff, walk
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


# The HTTP status an edge answers for each refusal (search-by-image, uploads).
HTTP_STATUS: dict[str, int] = {
    "unsupported_format": 415, "decompression_bomb": 413, "too_large": 413,
    "too_small": 422, "corrupt": 422, "truncated": 422,
}


def check_header(data: bytes, limits: IngestionSettings) -> Valid | Invalid:
    """Format by content, then dimensions and pixel count from the header only."""
    if not data:
        return Invalid("corrupt", "the image is empty")
    container = sniff(data)
    if container is None:
        return Invalid("unsupported_format", "not a JPEG, PNG or WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow names some JPEGs after their content ("MPO": a multi-picture file);
            # the format reported is the container's, the one the bytes were sniffed as.
            with Image.open(io.BytesIO(data), formats=list(BY_NAME)) as probe:
                width, height, fmt = probe.width, probe.height, container.name
    except UnidentifiedImageError:
        return Invalid("corrupt", "the header says JPEG/PNG/WebP but Pillow cannot parse it")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Invalid("decompression_bomb", str(exc))
    except Exception as exc:  # noqa: BLE001 - any parser failure is this image's fault alone
        return Invalid("corrupt", f"unreadable header: {type(exc).__name__}: {exc}")
    if width * height > limits.max_image_pixels:
        return Invalid("decompression_bomb",
                       f"{width}x{height} = {width * height} pixels exceeds the limit of "
                       f"{limits.max_image_pixels} (DEEPLENS_INGESTION__MAX_IMAGE_PIXELS)")
    if min(width, height) < limits.min_side:
        return Invalid("too_small", f"{width}x{height}: a side is below {limits.min_side} px")
    if max(width, height) > limits.max_side:
        return Invalid("too_large", f"{width}x{height}: a side is above {limits.max_side} px")
    return Valid(width, height, fmt)


def check_structure(data: bytes, fmt: str) -> Invalid | None:
    """The container's structure without decoding pixels: truncation and fatal defects.

    JPEG: segments to EOI, tables and headers consistent (an MPO's first picture: the
    ones after it are checked at the edge, ``deeplens.formats.hostile_trailer``). PNG:
    every chunk's CRC, to IEND. WebP: the RIFF size. Corruption inside compressed pixel
    data that leaves the structure intact is found by the Embedder's decode (reason
    ``corrupt``) or, where every decoder accepts it with a warning (libjpeg), embedded as
    decoded. ``fmt`` names the container for messages; the bytes decide which it is.
    """
    container = sniff(data)
    if container is None:
        return Invalid("unsupported_format", f"not a JPEG, PNG or WebP file ({fmt})")
    end, problem = walk(data, container)
    if problem:
        return Invalid("corrupt", f"damaged {fmt}: {problem}")
    if end is None:
        return Invalid("truncated", f"the {fmt} data ends before its end marker")
    return None


def check_image(data: bytes, limits: IngestionSettings) -> Valid | Invalid:
    """Everything decided without decoding a pixel: header, limits, structure."""
    verdict = check_header(data, limits)
    if isinstance(verdict, Invalid):
        return verdict
    return check_structure(data, verdict.format) or verdict
