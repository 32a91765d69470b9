"""What every decoder shares: its answer (``Decoded``), its protocol, the model input's
geometry read from the header, and the pixel fingerprint of an item.

Geometry is torchvision's ``Resize(size)`` + ``CenterCrop(size)`` arithmetic on the
upright full-resolution size, computed once on the host, so every decoder samples the
same grid whatever it decodes with (DALI, nvJPEG through torchvision, Pillow at a
reduced DCT scale).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from deeplens.image_hashes import (
    HASH_SIDE,
    THUMB_SIDE,
    exif_orientation,
    fingerprint_of,
    jpeg_fingerprint,
    thumb_size,
)


class DecodeError(ValueError):
    """This item is not an image the decoder (or its fallback) can read."""


@dataclass(frozen=True)
class Decoded:
    """What one decode of one image yields."""

    pixels: torch.Tensor  # the model input, C x S x S float32 (on the decoder's device)
    hash_image: np.ndarray  # HASH_SIDE x HASH_SIDE uint8 grey levels
    fingerprint: str  # deeplens.image_hashes: jc1 (JPEG, coded data) or px1 (pixel sums)
    thumbnail: Any  # H x W x 3 uint8, longest side <= THUMB_SIDE (numpy, or a CUDA tensor)


class Decoder(Protocol):
    name: str

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]: ...


class Geometry(NamedTuple):
    """Resized width and height and crop_pos_x/y of the model input (DALI's convention);
    the thumbnail's size; the upright full-resolution size; the EXIF orientation; the
    crop's integer left and top."""

    width: int
    height: int
    pos_x: float
    pos_y: float
    thumb_w: int
    thumb_h: int
    full_w: int
    full_h: int
    orientation: int = 1
    left: int = 0
    top: int = 0


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def center_crop_geometry(data: bytes, size: int) -> Geometry:
    """``geometry_of`` the image these bytes hold, from its header alone."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return geometry_of(img, size)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, bombs: this item only
        raise DecodeError(f"undecodable image: {type(exc).__name__}: {exc}") from exc


def geometry_of(img: Any, size: int) -> Geometry:
    """torchvision's Resize(size) + CenterCrop(size) arithmetic for an opened (not yet
    decoded) Pillow image, turned upright by its orientation tag as every decoder does."""
    from PIL import Image

    width, height = img.size
    orientation = exif_orientation(img)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    budget = Image.MAX_IMAGE_PIXELS
    if budget and width * height > budget:  # never hand a bomb to a decoder
        raise DecodeError(f"{width}x{height} exceeds the pixel limit of {budget}")
    if width <= 0 or height <= 0:
        raise DecodeError(f"undecodable image: {width}x{height}")
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    # DALI places the window at crop_pos * (extent - crop); a quarter pixel of slack keeps
    # float error from moving it off the integer anchor torchvision uses.
    pos_x = (left + 0.25) / (new_w - size) if new_w > size else 0.5
    pos_y = (top + 0.25) / (new_h - size) if new_h > size else 0.5
    return Geometry(new_w, new_h, min(pos_x, 1.0), min(pos_y, 1.0), *thumb_size(width, height),
                    width, height, orientation, max(left, 0), max(top, 0))


def draft_size(stored: tuple[int, int], model_side: int) -> tuple[int, int]:
    """The smallest size (stored orientation) a JPEG may be decoded at in the DCT domain
    and still give every output at full quality: the model input's shorter side, the
    thumbnail's longest side, the hash image."""
    width, height = stored
    short = max(model_side, HASH_SIDE)
    long = min(max(THUMB_SIDE, short), max(width, height))
    return (long, short) if width >= height else (short, long)


def content_print(data: bytes, orientation: int, rgb: np.ndarray | None) -> str:
    """The item's exact-tier fingerprint: of the coded picture for a JPEG (no pixels
    needed), of the full-resolution upright pixels otherwise."""
    if is_jpeg(data):
        return jpeg_fingerprint(data, orientation)
    if rgb is None:
        raise ValueError("a PNG or WebP fingerprint needs its full-resolution pixels")
    return fingerprint_of(rgb)


def replica_cpus() -> int:
    """The cores this process may run on (its affinity), for decode thread pools."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
