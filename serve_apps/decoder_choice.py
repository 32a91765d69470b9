"""Which decoder a replica uses, chosen once at start, said in the log and in ``stats()``.

On a GPU replica (``auto``): DALI ``mixed`` if it is installed and decodes a probe
image, then torchvision's nvJPEG path, then the CPU pool. A GPU replica that would
decode on its host (a card at a fraction of a percent of its speed) is refused with
``DecoderRefused`` unless ``allow_cpu_decode`` says so. On a CPU replica: the CPU pool
(Pillow with DCT-domain downscaling over every core). A kind named explicitly is built
as named, or refused with the reason.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

from serve_apps.decode_common import Decoded, Decoder
from serve_apps.pillow_decoder import CpuDecoder, PillowDecoder

log = logging.getLogger(__name__)

KINDS = ("auto", "dali", "torch", "cpu", "pillow")
CPU_KINDS = ("cpu", "pillow")


class DecoderRefused(RuntimeError):
    """No decoder this replica may use: the reasons name every one tried."""


def _dali(clip: Any, max_batch_size: int, threads: int) -> Decoder:
    from serve_apps.dali_decoder import DaliDecoder

    return DaliDecoder(image_size=clip.image_size, mean=clip.mean, std=clip.std,
                       max_batch_size=max_batch_size, device=clip.device.type,
                       fallback=PillowDecoder(clip.preprocess), num_threads=threads)


def _torch(clip: Any, max_batch_size: int, threads: int) -> Decoder:
    from serve_apps.torch_decoder import TorchDecoder

    return TorchDecoder(image_size=clip.image_size, mean=clip.mean, std=clip.std,
                        device=clip.device, threads=threads)


def _cpu(clip: Any, max_batch_size: int, threads: int) -> Decoder:
    return CpuDecoder(image_size=clip.image_size, mean=clip.mean, std=clip.std,
                      threads=threads)


def _pillow(clip: Any, max_batch_size: int, threads: int) -> Decoder:
    return PillowDecoder(clip.preprocess)


BUILDERS: dict[str, Callable[[Any, int, int], Decoder]] = {
    "dali": _dali, "torch": _torch, "cpu": _cpu, "pillow": _pillow}


def make_decoder(kind: str, *, clip: Any, max_batch_size: int, threads: int = 0) -> Decoder:
    """The decoder of that kind (``dali``, ``torch``, ``cpu``, ``pillow``), on the model's
    device where it has one; ``threads`` 0 means every core of the replica."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown decoder {kind!r}: one of {', '.join(KINDS)}")
    return BUILDERS[kind](clip, max_batch_size, threads)


def probe_image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def choose_decoder(kind: str, *, clip: Any, max_batch_size: int, threads: int = 0,
                   allow_cpu_decode: bool = False) -> tuple[Decoder, list[str]]:
    """(the decoder, what was tried and why it was passed over); see the module doc."""
    gpu = getattr(clip.device, "type", "cpu") == "cuda"
    if kind == "auto":
        order = ["dali", "torch", "cpu"] if gpu else ["cpu"]
    elif kind in BUILDERS:
        order = [kind]
    else:
        raise DecoderRefused(f"unknown decoder {kind!r}: one of {', '.join(KINDS)}")
    notes: list[str] = []
    for candidate in order:
        if gpu and candidate in CPU_KINDS and not allow_cpu_decode:
            notes.append(f"{candidate}: refused, a GPU replica decoding on its host runs the "
                         "card at a small fraction of its speed (DEEPLENS_SERVE__ALLOW_CPU_DECODE"
                         "=true allows it)")
            break
        try:
            decoder = make_decoder(candidate, clip=clip, max_batch_size=max_batch_size,
                                   threads=threads)
            [probe] = decoder.decode([probe_image()])
            if not isinstance(probe, Decoded):
                raise RuntimeError(f"probe image not decoded: {probe}")
        except Exception as exc:  # noqa: BLE001 - missing library, CUDA mismatch: next one
            notes.append(f"{candidate}: {type(exc).__name__}: {str(exc)[:200]}")
            log.warning("decoder %s unavailable on %s: %s", candidate, clip.device, notes[-1])
            continue
        level = logging.WARNING if gpu and candidate in CPU_KINDS else logging.INFO
        log.log(level, "decoder %s chosen on %s%s", decoder.name, clip.device,
                f" (passed over: {'; '.join(notes)})" if notes else "")
        return decoder, notes
    message = (f"no decoder for this {'GPU' if gpu else 'CPU'} replica ({clip.device}): "
               + "; ".join(notes))
    log.error(message)
    raise DecoderRefused(message)
