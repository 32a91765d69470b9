"""Pillow decoders: the reference (open_clip's own transform on a full decode) and the
CPU decoder (a thread pool over the replica's cores, JPEGs decoded at a reduced DCT
scale). Pillow releases the GIL while it decodes and resizes, so threads scale."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from deeplens.formats import upright_rgb
from deeplens.image_hashes import HASH_SIDE, pillow_parts
from serve_apps.decode_common import (
    Decoded,
    DecodeError,
    content_print,
    draft_size,
    geometry_of,
    is_jpeg,
    replica_cpus,
)


def _undecodable(exc: Exception) -> DecodeError:
    from PIL import UnidentifiedImageError

    if isinstance(exc, DecodeError):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return DecodeError(f"undecodable image: {exc}")
    return DecodeError(f"undecodable image: {type(exc).__name__}: {exc}")


class PillowDecoder:
    """open_clip's own preprocessing on Pillow-decoded images (the reference path), one
    item at a time."""

    name = "pillow"

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def decode_one(self, data: bytes) -> Decoded:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:  # an MPO's first picture
                rgb = upright_rgb(img)
            grey, print_, thumb = pillow_parts(rgb, data)
            return Decoded(self.preprocess(rgb), grey, print_, np.asarray(thumb))
        except Exception as exc:  # noqa: BLE001 - bombs, truncation, parser bugs: this item only
            raise _undecodable(exc) from exc

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]:
        out: list[Decoded | DecodeError] = []
        for data in items:
            try:
                out.append(self.decode_one(data))
            except DecodeError as exc:
                out.append(exc)
        return out


class CpuDecoder:
    """Every output from one Pillow decode per item, items spread over ``threads``.

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the
    model input's shorter side, the thumbnail's longest side and the hash image at full
    quality: a 12 MP photo decodes at 500 x 375. Its fingerprint is of its coded data
    (``jc1``), so no full-resolution pixel is needed; PNG and WebP decode whole (``px1``).
    The model input is open_clip's transform (bicubic resize of the shorter side, centre
    crop, normalise) on the geometry of the full-resolution image.
    """

    def __init__(self, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 threads: int = 0, draft: bool = True) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.threads = threads or replica_cpus()
        self.draft = draft
        self.name = f"cpu-pool-{self.threads}"
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")

    def decode_one(self, data: bytes) -> Decoded:
        from PIL import Image

        size = self.image_size
        try:
            with Image.open(io.BytesIO(data)) as img:
                geometry = geometry_of(img, size)
                if self.draft and img.format == "JPEG":
                    img.draft("RGB", draft_size(img.size, size))
                rgb = upright_rgb(img)
            print_ = content_print(data, geometry.orientation,
                                   None if is_jpeg(data) else np.asarray(rgb))
            left, top = geometry.left, geometry.top
            model = rgb.resize((geometry.width, geometry.height), Image.Resampling.BICUBIC)
            model = model.crop((left, top, left + size, top + size))
            thumb = rgb.resize((geometry.thumb_w, geometry.thumb_h),
                               Image.Resampling.BILINEAR, reducing_gap=2.0)
            grey = thumb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR)
        except Exception as exc:  # noqa: BLE001 - bombs, truncation, parser bugs: this item only
            raise _undecodable(exc) from exc
        pixels = torch.from_numpy(np.array(model)).permute(2, 0, 1).float().div_(255)
        return Decoded(pixels.sub_(self.mean).div_(self.std), np.asarray(grey), print_,
                       np.asarray(thumb))

    def _safe(self, data: bytes) -> Decoded | DecodeError:
        try:
            return self.decode_one(data)
        except DecodeError as exc:
            return exc

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]:
        if len(items) == 1 or self.threads == 1:
            return [self._safe(data) for data in items]
        return list(self._pool.map(self._safe, items))
