"""Sample pictures generated on the spot, so the demo needs no download."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """A smooth random picture: coloured waves plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.02, 0.2, 2).tolist()
        phase = rng.uniform(0, 6.28)
        channels.append(127 + 100 * np.sin(fx * x + fy * y + phase))
    arr = np.stack(channels, axis=-1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def scene(seed: int, size: int = 256) -> Image.Image:
    """A photo-like scene: sky gradient, ground, sun and a few shapes."""
    rng = np.random.default_rng(seed)
    img = photo(size, size, seed)
    draw = ImageDraw.Draw(img)
    horizon = int(size * rng.uniform(0.45, 0.75))
    ground = tuple(int(c) for c in rng.integers(20, 140, 3))
    draw.rectangle([0, horizon, size, size], fill=ground)
    r = int(size * rng.uniform(0.05, 0.12))
    cx, cy = int(rng.uniform(r, size - r)), int(rng.uniform(r, horizon - r))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 220, 90))
    for _ in range(int(rng.integers(2, 6))):
        w, h = (int(v) for v in rng.integers(size // 12, size // 4, 2))
        x0 = int(rng.integers(0, size - w))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.rectangle([x0, horizon - h, x0 + w, horizon], fill=colour)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def sample_set(count: int = 24) -> list[tuple[str, bytes]]:
    return [(f"sample-{i:02d}.jpg", jpeg_bytes(scene(i))) for i in range(count)]
