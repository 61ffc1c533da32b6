"""Batched inference: probabilities, logits and embeddings, in batches sized to stay in cache."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from pipeline.learn import tensors

# Inference batches hold about this many pixels per channel: small enough that a batch's
# activations stay in cache: on the 2-core dev machine, the 28x28 small CNN inferred 1.6x faster
# in batches of 128 than of 512 (docs/train.md). 8x8 digits get 1024, 64x64 images 32.
INFERENCE_PIXELS = 100_000


def inference_batch(shape: tuple[int, ...]) -> int:
    """The inference batch size for images of `shape` (H, W, ...): a power of 2 in [16, 1024]."""
    return int(np.clip(2 ** round(math.log2(INFERENCE_PIXELS / max(1, shape[0] * shape[1]))), 16, 1024))


def _batches(model: nn.Module, x: np.ndarray, batch_size: int | None, fn) -> list[torch.Tensor]:
    """`fn` of each batch on the model's device; the results back on the CPU."""
    x8, dev = tensors.to_tensor(x), tensors.device_of(model)
    model.eval()
    batch_size = batch_size or inference_batch(x.shape[1:3])
    with torch.inference_mode():
        return [fn(tensors.to_unit(x8[i : i + batch_size], dev)).cpu() for i in range(0, len(x8), batch_size)]


def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, K) float32 for uint8 NHWC pixels."""
    out = _batches(model, x, batch_size, lambda xb: torch.softmax(model(xb), dim=1))
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.num_classes), np.float32)


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Logits (N, K) float32 for uint8 NHWC pixels (for temperature scaling)."""
    out = _batches(model, x, batch_size, model)
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.num_classes), np.float32)


def predict_embed(model: nn.Module, x: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(`predict_proba`, `embed`) of uint8 NHWC pixels from one forward pass."""

    def both(xb: torch.Tensor) -> torch.Tensor:
        e = model.features(xb)
        return torch.cat([torch.softmax(model.head(e), dim=1), e], dim=1)

    out = _batches(model, x, batch_size, both)
    if not out:
        return np.zeros((0, model.num_classes), np.float32), np.zeros((0, model.embed_dim), np.float32)
    joined = torch.cat(out).numpy().astype(np.float32)
    return np.ascontiguousarray(joined[:, : model.num_classes]), np.ascontiguousarray(joined[:, model.num_classes :])


def embed(model: nn.Module, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Penultimate embeddings (N, D) float32 (`model.features`) for uint8 NHWC pixels."""
    out = _batches(model, x, batch_size, model.features)
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.embed_dim), np.float32)
