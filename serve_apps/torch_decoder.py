"""A decoder that needs no DALI: torchvision's ``decode_jpeg`` (batched nvJPEG on CUDA,
libjpeg-turbo on the CPU) and every transform on the decoder's device.

JPEGs are decoded in one batched call onto the device; the model input (bicubic,
antialiased resize of the shorter side, centre crop, normalise), the thumbnail and the
hash image are made there, grouped by size so a batch of same-sized photos is a few
kernels. PNG, WebP, CMYK JPEGs and any JPEG the device refuses are decoded by Pillow in
a thread pool over the replica's cores and uploaded. An item neither can decode fails
alone; a fault of the device itself is raised (``serve_apps.device_faults``).

Fingerprints agree with every other decoder: a JPEG's is of its coded data (hashed on
the host pool while the device decodes), a PNG's or WebP's is of the pixels Pillow
decoded. Model inputs, thumbnails and hash images agree within resampling tolerance.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deeplens.containers import jpeg_components
from deeplens.formats import upright_rgb
from deeplens.image_hashes import HASH_SIDE, exif_orientation
from serve_apps.decode_common import (
    Decoded,
    DecodeError,
    Geometry,
    center_crop_geometry,
    content_print,
    is_jpeg,
    replica_cpus,
)
from serve_apps.device_faults import is_device_fault

log = logging.getLogger(__name__)

GROUP_PIXELS = 64_000_000  # pixels transformed at once: bounds the float copies' memory
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A C x H x W image turned as EXIF ``orientation`` says (Pillow's exif_transpose)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


class TorchDecoder:
    def __init__(self, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 device: str | torch.device = "cpu", threads: int = 0) -> None:
        self.image_size = image_size
        self.device = torch.device(device)
        self.name = f"torchvision-{self.device.type}"
        self.mean = torch.tensor([m * 255 for m in mean], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor([s * 255 for s in std], device=self.device).view(1, 3, 1, 1)
        self.grey = torch.tensor(_GREY, device=self.device).view(1, 3, 1, 1)
        self.threads = threads or replica_cpus()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        self.fallbacks = 0  # JPEGs the device refused that Pillow decoded

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]:
        out: list[Decoded | DecodeError | None] = [None] * len(items)
        geometry: dict[int, Geometry] = {}
        on_device: list[int] = []
        for index, data in enumerate(items):
            try:
                geometry[index] = center_crop_geometry(data, self.image_size)
            except DecodeError as exc:
                out[index] = exc  # not even a readable header
                continue
            if is_jpeg(data) and jpeg_components(data) in (1, 3):
                on_device.append(index)
        prints = {i: self._pool.submit(content_print, items[i], geometry[i].orientation, None)
                  for i in on_device}
        images = self._device_jpegs(on_device, items)
        for i in on_device:
            if i in images:
                images[i] = upright(images[i], geometry[i].orientation)
        on_host = [i for i in geometry if i not in images]
        self.fallbacks += len([i for i in on_host if i in prints])
        for i, done in zip(on_host, self._pool.map(self._host, [items[i] for i in on_host]),
                           strict=True):
            if isinstance(done, DecodeError):
                out[i] = done
                continue
            rgb, print_ = done
            images[i] = torch.from_numpy(rgb).permute(2, 0, 1).to(self.device)
            prints[i] = _Ready(print_)
        for index, decoded in self._transform(images, geometry).items():
            out[index] = Decoded(decoded[0], decoded[1], prints[index].result(), decoded[2])
        return out  # type: ignore[return-value] - every index was filled above

    def _device_jpegs(self, indexes: list[int], items: list[bytes]) -> dict[int, torch.Tensor]:
        """One batched decode; should it raise (one bad item spoils it), item by item.
        Items the device cannot decode are left out (the host pool tries them)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not indexes:
            return {}
        encoded = [torch.frombuffer(bytearray(items[i]), dtype=torch.uint8) for i in indexes]
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            return dict(zip(indexes, decoded, strict=True))
        except Exception as exc:  # noqa: BLE001
            if is_device_fault(exc):
                raise
        out = {}
        for index, data in zip(indexes, encoded, strict=True):
            try:
                out[index] = decode_jpeg([data], mode=ImageReadMode.RGB, device=self.device)[0]
            except Exception as exc:  # noqa: BLE001
                if is_device_fault(exc):
                    raise
                log.info("%s could not decode an item (%s); trying Pillow", self.name,
                         str(exc)[:120])
        return out

    @staticmethod
    def _host(data: bytes) -> tuple[np.ndarray, str] | DecodeError:
        """Upright RGB pixels and fingerprint by Pillow (in the pool), or why not."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                orientation = exif_orientation(img)
                rgb = np.array(upright_rgb(img))  # writable: torch shares it
            return rgb, content_print(data, orientation, None if is_jpeg(data) else rgb)
        except Exception as exc:  # noqa: BLE001 - bombs, truncation, parser bugs: this item only
            return DecodeError(f"undecodable image: {type(exc).__name__}: {exc}")

    def _transform(self, images: dict[int, torch.Tensor], geometry: dict[int, Geometry]
                   ) -> dict[int, tuple[torch.Tensor, np.ndarray, Any]]:
        """Model input, hash image and thumbnail of every image, same-sized ones at once."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, image in images.items():
            groups.setdefault((tuple(image.shape), geometry[index]), []).append(index)
        out = {}
        for (shape, g), members in groups.items():
            step = max(1, GROUP_PIXELS // (shape[1] * shape[2]))
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                model, grey, thumbs = self._finish(torch.stack([images[i] for i in chunk]), g)
                greys = grey.cpu().numpy()
                for k, index in enumerate(chunk):
                    out[index] = (model[k], greys[k], thumbs[k])
        return out

    def _finish(self, batch: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, torch.Tensor, Any]:
        size = self.image_size
        pixels = batch.float()
        height, width = pixels.shape[-2:]
        if (g.thumb_h, g.thumb_w) == (height, width):
            thumb = pixels
        else:
            shrink = int(min(height / g.height, height / g.thumb_h) // 2)
            if shrink >= 2:
                # Down to ~2-3x the outputs by area first: CUDA's antialiased kernels refuse
                # large factors (shared memory), and the float copy shrinks early.
                pixels = F.avg_pool2d(pixels, shrink, ceil_mode=True)
            thumb = F.interpolate(pixels, size=(g.thumb_h, g.thumb_w), mode="bilinear",
                                  antialias=True, align_corners=False).round_().clamp_(0, 255)
        model = F.interpolate(pixels, size=(g.height, g.width), mode="bicubic", antialias=True,
                              align_corners=False).round_().clamp_(0, 255)
        model = model[:, :, g.top : g.top + size, g.left : g.left + size]
        model = ((model - self.mean) / self.std).contiguous()
        grey = (thumb * self.grey).sum(1, keepdim=True).round_()
        grey = F.interpolate(grey, size=(HASH_SIDE, HASH_SIDE), mode="bilinear", antialias=True,
                             align_corners=False).round_().clamp_(0, 255)
        thumbs = thumb.to(torch.uint8).permute(0, 2, 3, 1)
        if self.device.type == "cpu":
            thumbs = thumbs.numpy()
        return model, grey.to(torch.uint8)[:, 0], thumbs


class _Ready:
    """A fingerprint already known, read like the pool's futures."""

    def __init__(self, value: str) -> None:
        self.value = value

    def result(self) -> str:
        return self.value
