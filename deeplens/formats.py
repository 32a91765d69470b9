"""Image formats recognised by their bytes, and polyglot detection.

The upload edge and the validator both decide what a file is from its content,
never from its name or Content-Type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    name: str  # Pillow's format name
    mime_type: str
    extension: str


JPEG = ImageFormat("JPEG", "image/jpeg", "jpg")
PNG = ImageFormat("PNG", "image/png", "png")
WEBP = ImageFormat("WEBP", "image/webp", "webp")
ALLOWED = (JPEG, PNG, WEBP)
BY_NAME = {f.name: f for f in ALLOWED}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Signatures of content that must never ride behind an image we serve back.
_HOSTILE_TRAILERS = {
    b"PK\x03\x04": "a ZIP archive",
    b"PK\x05\x06": "a ZIP archive",
    b"Rar!\x1a\x07": "a RAR archive",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive",
    b"<?php": "PHP code",
    b"<script": "a script",
    b"<html": "HTML",
}


def sniff(data: bytes) -> ImageFormat | None:
    """The allowed format these bytes start with, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return JPEG
    if data[:8] == _PNG_MAGIC:
        return PNG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def image_end(data: bytes, fmt: ImageFormat) -> int | None:
    """Offset just past the image's own data (JPEG EOI, PNG IEND, RIFF size), if found."""
    if fmt is JPEG:
        return _jpeg_end(data)
    if fmt is PNG:
        return _png_end(data)
    size = int.from_bytes(data[4:8], "little") + 8
    return size + (size & 1) if size <= len(data) else None


def hostile_trailer(data: bytes, fmt: ImageFormat) -> str | None:
    """Describe an archive or script appended after the image (a polyglot), else None.

    Other trailing data (camera padding, motion-photo video) is allowed.
    """
    end = image_end(data, fmt)
    if end is None or end >= len(data):
        return None
    trailer = data[end:]
    lowered = trailer[:1 << 20].lower()
    for signature, what in _HOSTILE_TRAILERS.items():
        if signature.lower() in lowered:
            return what
    return None


def _png_end(data: bytes) -> int | None:
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos
    return None


_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length


def _jpeg_end(data: bytes) -> int | None:
    """Walk JPEG segments and entropy-coded scans to the EOI marker."""
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if marker == 0xDA:  # start of scan: skip entropy-coded data to the next marker
            pos = _skip_entropy(data, pos)
            if pos is None:
                return None
    return None


def _skip_entropy(data: bytes, pos: int) -> int | None:
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return None
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:  # stuffing, restart, fill
            pos += 1 if nxt == 0xFF else 2
            continue
        return pos
