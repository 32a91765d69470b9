"""DALI pipeline outputs as torch tensors: the model input batch (dense) and the
thumbnails (one shape each), on the device when DALI ran there."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_torch(tensor_list: Any) -> torch.Tensor:
    if hasattr(tensor_list, "as_cpu") and type(tensor_list).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        result = torch.empty(dense.shape(), dtype=torch.float32, device="cuda")
        feed_ndarray(dense, result)
        return result
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


def to_torch_each(tensor_list: Any) -> list[torch.Tensor]:
    """Samples of different shapes (thumbnails) of a GPU TensorList, as CUDA uint8 tensors."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    out = []
    for i in range(len(tensor_list)):
        sample = tensor_list[i]
        tensor = torch.empty(tuple(sample.shape()), dtype=torch.uint8, device="cuda")
        feed_ndarray(sample, tensor)
        out.append(tensor)
    return out
