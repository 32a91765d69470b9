"""A fault of the device fails the Embedder's call and breaks its replica; it fails no image.

No Ray here: the replica is the deployment's own class, built in this process, with a
decoder (or model, or thumbnail encoder) that fails as a dead GPU does.
"""

from __future__ import annotations

import pytest
import torch

from deeplens.settings import ModelSettings
from serve_apps.decode import DaliDecoder, PillowDecoder, make_decoder
from serve_apps.device_faults import DeviceFault, is_device_fault
from serve_apps.embed_batch import embed_isolated
from serve_apps.embedder import Embedder, EmbedderArgs
from serve_apps.model import load_clip
from tests import images

TINY = ModelSettings(name="deeplens-tiny", pretrained="random")
ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY, device="cpu")


class DeadDevice:
    """A decoder on a GPU that has failed: every call raises, as torch and DALI do."""

    name = "dead-device"

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, items: list[bytes]) -> list:
        self.calls += 1
        raise RuntimeError(ILLEGAL_ACCESS)


def batch() -> list[bytes]:
    return [images.jpeg(1), images.png(2), images.jpeg(3)]


@pytest.mark.parametrize("message", [
    ILLEGAL_ACCESS,
    "CUDA error: device-side assert triggered",
    "[/opt/dali/dali/core/cuda_event.cc:40] CUDA runtime API error "
    "cudaErrorIllegalAddress (700): an illegal memory access was encountered",
    "CUDA driver API error CUDA_ERROR_ECC_UNCORRECTABLE (214)",
    "CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, opa, opb, ...)`",
])
def test_device_faults_are_recognised(message) -> None:
    assert is_device_fault(RuntimeError(message))
    try:  # as a cause, too: a fault that another error was raised from
        try:
            raise RuntimeError(message)
        except RuntimeError as exc:
            raise ValueError("pipeline rebuild failed") from exc
    except ValueError as wrapped:
        assert is_device_fault(wrapped)


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA runtime API error cudaErrorMemoryAllocation (2): out of memory"),
    RuntimeError("[/opt/dali/dali/operators/decoder/cuda_decoder.cc:12] nvJPEG error "
                 "(6): NVJPEG_STATUS_BAD_JPEG"),
    OSError("image file is truncated (24 bytes not processed)"),
    MemoryError("a decoder defect"),
])
def test_bad_images_and_out_of_memory_are_no_device_fault(exc) -> None:
    assert not is_device_fault(exc)


def test_a_device_fault_in_decode_fails_the_call_and_no_item(clip) -> None:
    dead = DeadDevice()
    with pytest.raises(DeviceFault, match="illegal memory access"):
        embed_isolated(clip, dead, batch(), [True, True, True])
    assert dead.calls == 1, "not retried item by item, as a bad image would be"


@pytest.mark.parametrize("phase", ["model", "thumbnails"])
def test_a_device_fault_in_later_phases_fails_the_call_and_no_item(clip, monkeypatch,
                                                                    phase) -> None:
    from serve_apps import decode, model

    def dead(*args, **kwargs):
        raise RuntimeError(ILLEGAL_ACCESS)

    monkeypatch.setattr(*((model, "encode_images", dead) if phase == "model"
                          else (decode, "encode_thumbnails", dead)))
    with pytest.raises(DeviceFault):
        embed_isolated(clip, PillowDecoder(clip.preprocess), batch(), [True, True, True])


def test_dali_raises_a_device_fault_instead_of_rebuilding_around_it(clip, monkeypatch) -> None:
    """A DALI run (decode, resizes, the fingerprint's reductions) that faults is not
    rebuilt and retried item by item, nor handed to Pillow."""
    dali = make_decoder("dali", clip=clip, max_batch_size=4)
    assert isinstance(dali, DaliDecoder)
    builds: list[int] = []
    monkeypatch.setattr(dali, "_build", lambda: builds.append(1))

    def faulting_run(items, geometry):
        raise RuntimeError("CUDA runtime API error cudaErrorIllegalAddress (700): "
                           "an illegal memory access was encountered")

    monkeypatch.setattr(dali, "_run", faulting_run)
    with pytest.raises(RuntimeError, match="cudaErrorIllegalAddress"):
        dali.decode(batch())
    assert builds == [] and dali.fallbacks == 0


@pytest.fixture
def replica():
    """The Embedder deployment's class, built here (tiny model, Pillow, CPU)."""
    return Embedder.func_or_class(EmbedderArgs(model=TINY, decoder="pillow", device="cpu"))


def test_a_device_fault_breaks_the_replica_and_fails_no_image(replica) -> None:
    replica.check_health()  # healthy to begin with
    good = replica._run_batch([(data, True) for data in batch()])
    assert all(r.ok for r in good)

    dead = DeadDevice()
    replica.decoder = dead
    with pytest.raises(DeviceFault, match="illegal memory access"):
        replica._run_batch([(data, True) for data in batch()])
    with pytest.raises(DeviceFault, match="broken"):
        replica.check_health()  # Serve replaces the replica
    # Until then the replica refuses work, without touching the device again.
    with pytest.raises(DeviceFault):
        replica._run_batch([(images.jpeg(9), False)])
    assert dead.calls == 1


def test_a_bad_image_does_not_break_the_replica(replica) -> None:
    results = replica._run_batch([(images.jpeg(1), True), (b"not an image", True)])
    assert [r.ok for r in results] == [True, False] and results[1].error_kind == "decode"
    replica.check_health()
