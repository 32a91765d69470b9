"""Image formats recognised by their bytes, and polyglot detection.

The upload edge and the validator both decide what a file is from its content,
never from its name or Content-Type.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeplens.containers import walk_jpeg, walk_png


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
# Signatures of content that must never ride along with an image we serve back.
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
    return walk(data, fmt)[0]


def walk(data: bytes, fmt: ImageFormat) -> tuple[int | None, str | None]:
    """(offset past the image's data or None if it never ends, a structural defect or None).

    Reads the container only: JPEG segments and marker positions, PNG chunks and their
    CRCs, the RIFF size. No pixel is decoded, so it costs a scan of the bytes.
    """
    if fmt is JPEG:
        return walk_jpeg(data)
    if fmt is PNG:
        return walk_png(data)
    size = int.from_bytes(data[4:8], "little") + 8
    return (size + (size & 1) if size <= len(data) else None), None


def hostile_trailer(data: bytes, fmt: ImageFormat) -> str | None:
    """Describe what rides along with the image that is not image data (a polyglot), else
    None. Decided by structure, over the whole file, never by a window:

    - a file ``zipfile`` can open is refused, wherever the archive hides;
    - after the image's end only these may follow: more pictures of the same format (an
      MPO's, appended previews), each walked to its own end; padding (0x00 or 0xFF
      runs); and two trailers cameras write, a motion photo's video (ISO BMFF boxes to
      the last byte) and Samsung's SEF trailer, scanned whole for archives and scripts.
      Anything else after the image is refused, whatever its length;
    - PNG and WebP chunks the format does not define are scanned whole for archives and
      scripts.
    """
    if _opens_as_zip(data):
        return "a ZIP archive"
    end = image_end(data, fmt)
    if end is not None and end < len(data):
        trailer = _foreign_trailer(data, end, fmt)
        if trailer is not None:
            return trailer
    return _hostile_chunk(data, fmt)


def _opens_as_zip(data: bytes) -> bool:
    """What ``zipfile`` (and every unzip) does: the end record near the end, then a
    central directory it can read. Reads the tail and the directory, not the whole file."""
    if b"PK\x05\x06" not in data[-(65_536 + 22):]:
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return bool(archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        return False


def _foreign_trailer(data: bytes, pos: int, fmt: ImageFormat) -> str | None:
    """Walk what follows the image from ``pos``; describe the first part that is not a
    picture, padding or a camera trailer (see ``hostile_trailer``)."""
    view = np.frombuffer(data, dtype=np.uint8)
    n = len(data)
    while pos < n:
        if fmt is JPEG and data[pos : pos + 3] == b"\xff\xd8\xff":
            end, problem = walk_jpeg(data[pos:])
            if end is None or problem:
                return (f"{n - pos} bytes after the image that are not a whole picture "
                        f"({problem or 'it never ends'})")
            pos += end
            continue
        if _is_bmff(data, pos) or _is_samsung_trailer(data, pos):
            # Compressed video holds any 4 bytes by chance: ZIPs are found exactly instead.
            return _signature_in(data[pos:], skip_zip=True)
        rest = np.flatnonzero((view[pos:] != 0x00) & (view[pos:] != 0xFF))
        if not len(rest):
            return None  # padding to the end
        start = pos + int(rest[0])
        # Padding may run into what follows: a start-of-image marker's 0xFF, a box size's
        # leading zeros.
        if data[start - 1 : start + 2] == b"\xff\xd8\xff":
            start -= 1
        elif (box := data.find(b"ftyp", start, start + 5)) >= 0:
            start = box - 4
        if start <= pos:
            return _signature_in(data[pos:]) or f"{n - pos} bytes after the image that are not image data"
        pos = start
    return None


def _signature_in(part: bytes, skip_zip: bool = False) -> str | None:
    lowered = part.lower()
    for signature, what in _HOSTILE_TRAILERS.items():
        if skip_zip and signature.startswith(b"PK"):
            continue
        if signature.lower() in lowered:
            return what
    return None


def _is_bmff(data: bytes, pos: int) -> bool:
    """ISO BMFF boxes (an MP4: a motion photo's video) from ``pos`` exactly to the end,
    the first an ``ftyp``."""
    n, first = len(data), True
    while pos < n:
        if pos + 8 > n:
            return False
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if (first and kind != b"ftyp") or not kind.isalnum():
            return False
        if size == 1:
            if pos + 16 > n:
                return False
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = n - pos  # the last box runs to the end
        if size < 8 or pos + size > n:
            return False
        pos, first = pos + size, False
    return True


def _is_samsung_trailer(data: bytes, pos: int) -> bool:
    """Samsung's SEF trailer: data blocks, then a directory that starts ``SEFH``, its
    length (little-endian) and ``SEFT`` as the file's last eight bytes."""
    n = len(data)
    if n - pos < 20 or data[-4:] != b"SEFT":
        return False
    directory = n - 8 - int.from_bytes(data[-8:-4], "little")
    return pos <= directory and data[directory : directory + 4] == b"SEFH"


# Chunks the PNG specification (third edition, with APNG) and the WebP container define.
_PNG_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP",
               b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"tEXt", b"zTXt", b"iTXt",
               b"bKGD", b"hIST", b"pHYs", b"sPLT", b"eXIf", b"tIME", b"acTL", b"fcTL",
               b"fdAT"}
_WEBP_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF",
                b"XMP "}


def _hostile_chunk(data: bytes, fmt: ImageFormat) -> str | None:
    """An archive or script inside a chunk the format does not define (PNG, WebP)."""
    if fmt is JPEG:
        return None
    png = fmt is PNG
    pos, n = (8, len(data)) if png else (12, min(len(data), image_end(data, fmt) or len(data)))
    while pos + 8 <= n:
        if png:
            length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
            body, after = data[pos + 8 : pos + 8 + length], pos + 12 + length
        else:
            kind, length = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
            body, after = data[pos + 8 : pos + 8 + length], pos + 8 + length + (length & 1)
        if kind not in (_PNG_CHUNKS if png else _WEBP_CHUNKS):
            found = _signature_in(body)
            if found:
                return f"{found} in its {kind.decode('latin-1')!r} chunk"
        if png and kind == b"IEND":
            break
        pos = after
    return None


# Pillow's 16-bit greyscale modes (PNG); convert("RGB") would clip them, not scale them.
_WIDE_GREY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def upright_rgb(img: Any) -> Any:
    """The 8-bit RGB picture a Pillow image shows, turned upright by its EXIF orientation.

    Every mode the allowed formats yield: CMYK (Adobe's inverted JPEGs included), grey,
    palette, alpha (dropped, as DALI drops it), and 16-bit grey scaled as DALI scales it,
    round(v / 257), where Pillow's own conversion would clip it to white. An MPO gives
    its first picture.
    """
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_GREY:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
    return img.convert("RGB")
