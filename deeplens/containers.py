"""The containers' structure, read without decoding a pixel: JPEG segments and scans,
PNG chunks and their CRCs. Used by the format checks (``deeplens.formats``) and the
decoders (a JPEG's component count)."""

from __future__ import annotations

import zlib

import numpy as np


def walk_png(data: bytes) -> tuple[int | None, str | None]:
    """Chunk by chunk to IEND, checking every chunk's CRC (zlib's crc32: GB/s)."""
    view, pos, n = memoryview(data), 8, len(data)
    while pos + 12 <= n:
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        end = pos + 12 + length
        if end > n:
            return None, None  # the chunk runs past the data: truncated
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return None, f"CRC mismatch in the {kind.decode('latin-1')!r} chunk at byte {pos}"
        pos = end
        if kind == b"IEND":
            return pos, None
    return None, None


_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (baseline, progressive...)


def marker_positions(data: bytes) -> np.ndarray:
    """Offsets of every 0xFF that starts a marker (not stuffing, fill or a restart)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    nxt = arr[ff + 1]
    return ff[(nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))]


def walk_jpeg(data: bytes) -> tuple[int | None, str | None]:
    """Segments and scans to EOI, refusing what libjpeg refuses as fatal.

    Entropy-coded data is skipped with a vectorised search for the next marker. Garbage
    between segments is skipped as libjpeg does (it only warns). Defects found: a second
    SOI or frame header, a scan before any frame header, segment lengths that disagree
    with their contents (Huffman and quantisation tables, SOF, SOS, DRI), an EOI before
    any scan. Running out of bytes before EOI is truncation (``(None, None)``).
    """
    n = len(data)
    markers: np.ndarray | None = None
    pos, frames, scans = 2, 0, 0

    def next_marker(at: int) -> int | None:
        nonlocal markers
        if markers is None:
            markers = marker_positions(data)
        i = int(np.searchsorted(markers, at))
        return int(markers[i]) if i < len(markers) else None

    while pos + 1 < n:
        if data[pos] != 0xFF or data[pos + 1] == 0x00:
            found = next_marker(pos)
            if found is None:
                return None, None
            pos = found
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2, (None if scans else "an end-of-image marker before any scan")
        if marker == 0xD8:
            return None, f"a second start-of-image marker at byte {pos}"
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return None, None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if end > n:  # truncated, unless an end marker follows: then the length is bogus
            if data.rfind(b"\xff\xd9", pos + 4) < 0:
                return None, None
            return None, f"a segment length running past the end (marker 0xFF{marker:02X} at byte {pos})"
        problem = _segment_problem(marker, data[pos + 4 : end], length, frames)
        if problem:
            return None, f"{problem} (marker 0xFF{marker:02X} at byte {pos})"
        frames += marker in _SOF
        pos = end
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            scans += 1
            found = next_marker(pos)
            if found is None:
                return None, None
            pos = found
    return None, None


def _segment_problem(marker: int, body: bytes, length: int, frames: int) -> str | None:
    if length < 2:
        return f"a segment length of {length}"
    if marker in _SOF:
        if frames:
            return "a second frame header"
        if len(body) < 6 or len(body) != 6 + 3 * body[5]:
            return "a frame header whose length disagrees with its component count"
    elif marker == 0xC4:  # DHT: tables of 17 + sum(counts) bytes
        at = 0
        while at < len(body):
            if at + 17 > len(body):
                return "a Huffman table cut short"
            total = sum(body[at + 1 : at + 17])
            if total > 256:
                return "a Huffman table with more than 256 codes"
            at += 17 + total
        if at != len(body):
            return "a Huffman table segment whose length disagrees with its tables"
    elif marker == 0xDB:  # DQT: tables of 65 (8-bit) or 129 (16-bit) bytes
        at = 0
        while at < len(body):
            at += 129 if body[at] >> 4 else 65
        if at != len(body):
            return "a quantisation table segment whose length disagrees with its tables"
    elif marker == 0xDD and length != 4:
        return "a restart interval segment of the wrong length"
    elif marker == 0xDA:
        if not frames:
            return "a scan before any frame header"
        if not body or not 1 <= body[0] <= 4 or len(body) != 4 + 2 * body[0]:
            return "a scan header whose length disagrees with its component count"
    return None


def jpeg_components(data: bytes) -> int | None:
    """The colour components of a JPEG's frame header (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK),
    found by walking the segments before it; None if there is none."""
    pos, n = 2, len(data)
    while pos + 10 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF:
            return data[pos + 9]
        if marker in _STANDALONE or marker in (0xD8, 0xD9, 0xDA):
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None
