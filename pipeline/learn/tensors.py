"""uint8 NHWC pixels as tensors: uint8 NCHW (`to_tensor`) and float in [0, 1] (`to_float`, `to_unit`)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.errors import PipelineError


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> uint8 NCHW tensor (converted to float per batch, to keep memory low)."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise PipelineError(f"expected uint8 images of shape (N, H, W, C), got {x.dtype} {x.shape}")
    x = np.ascontiguousarray(x) if x.flags.writeable else x.copy()  # torch wants writable memory
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def to_float(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW tensor in [0, 1] (a permuted view's strides, as the kernels always had)."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)


def to_unit(x8: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 NCHW -> float in [0, 1], channels-last, on `device` (moved as uint8: a quarter of the bytes)."""
    return x8.to(device).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def device_of(model: torch.nn.Module) -> torch.device:
    """The device `model`'s parameters are on: where its inputs go."""
    return next(model.parameters()).device
