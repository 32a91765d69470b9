"""Content hashes of decoded pixels: the exact and near tiers of dedup.

The Embedder computes them from the one full decode it makes of every image
(``serve_apps/decode.py``) and sends them on ``images.processed``; dedup reads
them from the event and never touches the image. Two inputs are enough:

- the **pixel fingerprint**, the exact tier: equal only for pixel-identical pictures.
  PNG and WebP (``px1``): sha256 over the image's size and the integer sums of every
  pixel column (per channel) and every row, exact integer arithmetic on any device;
  one changed pixel changes its row's and its column's sum, and a re-save that keeps
  the pixels (PNG recompression, stripped metadata) keeps them all. JPEG (``jc1``):
  sha256 over the coded picture itself (quantisation and Huffman tables, frame and
  scan headers, Adobe colour transform, entropy-coded data) and the EXIF orientation,
  not over decoded pixels: the same coded data decodes to the same pixels, and every
  decoder then agrees (nvJPEG and libjpeg-turbo round differently; a decoder that
  downscales in the DCT domain never sees full-resolution pixels at all). Stripped
  or edited metadata keeps it; a JPEG and a PNG of its decoded pixels differ (the near
  tier links them), as does a lossless re-optimisation of the Huffman tables;
- the **hash image**: the picture reduced to ``HASH_SIDE`` x ``HASH_SIDE`` grey
  levels (by the decoder, from its thumbnail). The 64-bit pHash (the DCT of
  its 32x32 reduction, bits above the median of the 8x8 lowest frequencies, as
  ``imagehash.phash`` defines it) is computed from it;
- the **window hashes**: the same pHash of ``len(WINDOWS)`` sub-windows of the hash
  image (the whole image first, then 85 % and 70 % of each side, left, centred and
  right, top, centred and bottom), so a copy cropped by up to 15 % a side is,
  whole, close to one window of its original. All windows come from two matrix
  products per image (area resampling and the DCT folded into per-axis matrices):
  ~0.1 ms on a CPU.

Pure numpy: no torch, no Pillow, so every stage can import it.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

import numpy as np

HASH_SIDE = 64
THUMB_SIDE = 320
FINGERPRINT_SCHEME = "px1"  # pixel sums: PNG, WebP
CODED_SCHEME = "jc1"  # the coded JPEG picture
# APP1-13, APP15 and COM never change the pixels libjpeg decodes (EXIF, ICC, XMP...);
# APP0 (JFIF) and APP14 (Adobe) can decide the colour transform, so they are hashed.
_METADATA = {*range(0xE1, 0xEE), 0xEF, 0xFE}


def thumb_size(width: int, height: int) -> tuple[int, int]:
    """The thumbnail's size: longest side THUMB_SIDE, aspect kept, never enlarged."""
    scale = min(1.0, THUMB_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def pillow_parts(rgb: Any, data: bytes | None = None) -> tuple[np.ndarray, str, Any]:
    """(hash image, fingerprint, thumbnail) of an upright RGB Pillow image: what the
    Embedder's Pillow path yields besides the model input, and how dedup hashes a
    version-1 event. With ``data`` (the encoded bytes), a JPEG's fingerprint is of its
    coded picture, as every decoder gives it. Pillow is imported by the caller, not here."""
    from PIL import Image

    thumb = rgb.resize(thumb_size(*rgb.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    grey = thumb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR)
    if data is not None and data[:3] == b"\xff\xd8\xff":
        import io

        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(grey), jpeg_fingerprint(data, exif_orientation(img)), thumb
    return np.asarray(grey), fingerprint_of(np.asarray(rgb)), thumb


def exif_orientation(img: Any) -> int:
    """A Pillow image's EXIF orientation, 1-8 (1 when absent or invalid)."""
    value = img.getexif().get(0x0112, 1)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def fingerprint(width: int, height: int, column_sums: np.ndarray, row_sums: np.ndarray) -> str:
    """``px1:<sha256>`` of the size and the column (W x 3) and row (H) sums."""
    digest = hashlib.sha256()
    digest.update(np.array([width, height], dtype="<u4").tobytes())
    digest.update(np.ascontiguousarray(column_sums, dtype="<u8").tobytes())
    digest.update(np.ascontiguousarray(row_sums, dtype="<u8").tobytes())
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def fingerprint_of(rgb: np.ndarray) -> str:
    """The fingerprint of an H x W x 3 uint8 image (the CPU path: ~1 ms per megapixel)."""
    height, width = rgb.shape[:2]
    flat = rgb.reshape(height, -1)
    return fingerprint(width, height, flat.sum(axis=0, dtype=np.uint32),
                       flat.sum(axis=1, dtype=np.uint32))


def jpeg_fingerprint(data: bytes, orientation: int) -> str:
    """``jc1:<sha256>`` of a JPEG's coded picture (see the module doc) to its EOI (an
    MPO's later pictures and other trailers are not hashed) and its EXIF orientation.
    ~1.5 ms per 1.5 MB on one core."""
    from deeplens.containers import walk_jpeg

    end = walk_jpeg(data)[0]
    digest = hashlib.sha256(np.array([orientation], dtype="<u4").tobytes())
    view, pos, n = memoryview(data), 2, len(data) if end is None else end
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # the first scan: everything from here is the picture
            break
        length = int.from_bytes(view[pos + 2 : pos + 4], "big")
        if marker not in _METADATA:
            digest.update(view[pos : pos + 2 + length])
        pos += 2 + length
    digest.update(view[pos:n])
    return f"{CODED_SCHEME}:{digest.hexdigest()}"


@cache
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))  # scipy's unnormalised DCT-II


def phash(hash_image: np.ndarray) -> int:
    """64-bit perceptual hash of a ``HASH_SIDE``-square grey image (bit 63 = DCT[0, 0])."""
    grey = np.asarray(hash_image, dtype=np.float64).reshape(HASH_SIDE, HASH_SIDE)
    small = grey.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    dct = _dct_matrix(32)
    low = (dct @ small @ dct.T)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hex64(value: int) -> str:
    return f"{value & 0xFFFFFFFFFFFFFFFF:016x}"


def _axis_windows() -> list[tuple[float, float]]:
    """(start, size) along one axis, as fractions: whole, then 85 % and 70 % placed at
    the start, centre and end."""
    out = [(0.0, 1.0)]
    for size in (0.85, 0.7):
        out.extend((pos * (1 - size), size) for pos in (0.0, 0.5, 1.0))
    return out


AXIS_WINDOWS = _axis_windows()
# Window k covers x-window k // 7 and y-window k % 7; window 0 is the whole image.
WINDOWS = [(x, y) for x in AXIS_WINDOWS for y in AXIS_WINDOWS]
CENTRED = [i * len(AXIS_WINDOWS) + i for i in (2, 5)]  # 85 % and 70 %, centred both ways


def _area_matrix(start: float, size: float, n_in: int = HASH_SIDE, n_out: int = 32) -> np.ndarray:
    """n_out x n_in weights: output k is the mean of the input over its share of the
    window (exact area integration, so the whole window reduces like a 2x2 mean)."""
    out = np.zeros((n_out, n_in))
    for k in range(n_out):
        lo = (start + size * k / n_out) * n_in
        hi = (start + size * (k + 1) / n_out) * n_in
        for p in range(int(np.floor(lo)), int(np.ceil(hi))):
            out[k, p] = max(0.0, min(hi, p + 1) - max(lo, p))
        out[k] /= hi - lo
    return out


@cache
def _window_dct() -> np.ndarray:
    """(len(AXIS_WINDOWS) * 8) x HASH_SIDE: the 8 lowest DCT rows of each axis window."""
    dct = _dct_matrix(32)
    return np.concatenate([(dct @ _area_matrix(start, size))[:8] for start, size in AXIS_WINDOWS])


def window_hashes(hash_image: np.ndarray) -> np.ndarray:
    """The pHash of every window in WINDOWS (uint64), whole image first."""
    grey = np.asarray(hash_image, dtype=np.float64).reshape(HASH_SIDE, HASH_SIDE)
    m = _window_dct()
    n = len(AXIS_WINDOWS)
    low = (m @ grey @ m.T).reshape(n, 8, n, 8).transpose(2, 0, 1, 3)  # [x-win, y-win, 8, 8]
    low = low.reshape(n * n, 64)  # rows of window k = (x k//n, y k%n): vertical freq first
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
