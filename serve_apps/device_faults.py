"""Telling a fault of the accelerator from a fault of one image.

A dead or wedged GPU (an illegal memory access, a device-side assert, ECC, a card off
the bus) fails every later call of the process, whatever the image: no item may be
failed for it. The replica marks itself broken and refuses work, Serve replaces it,
and the caller retries elsewhere. Running out of device memory is not such a fault:
the batch is split, and an item that does not fit even alone is retried later.
"""

from __future__ import annotations

import re

# What torch, DALI, nvJPEG, cuBLAS and cuDNN put in their messages when the device or
# its context is gone. File paths in DALI's messages (".../cuda_stream.cc") do not match.
_FAULT = re.compile(
    r"cuda error|cuda (?:runtime|driver) api error|cudaerror\w+|cuda_error_\w+"
    r"|illegal (?:memory access|address|instruction)|device-side assert"
    r"|unspecified launch failure|uncorrectable ecc|fallen off the bus"
    r"|no cuda-capable device|cuda-capable device\(s\) (?:is|are) busy or unavailable"
    r"|(?:cublas|cudnn)_status_(?:execution_failed|internal_error|mapping_error)",
    re.IGNORECASE,
)
_OUT_OF_MEMORY = re.compile(
    r"out of memory|memoryallocation|cuda_error_out_of_memory|alloc_failed", re.IGNORECASE)


class DeviceFault(RuntimeError):
    """The accelerator failed: this replica is broken; retry the call on another."""


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a fault of the device."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DeviceFault):
            return True
        text = f"{type(current).__name__}: {current}"
        if _FAULT.search(text) and not _OUT_OF_MEMORY.search(text):
            return True
        current = current.__cause__ or current.__context__
    return False
