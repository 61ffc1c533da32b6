"""Targets and losses: one-hot with smoothing, soft targets from oof probabilities, soft cross-entropy."""

from __future__ import annotations

import numpy as np
import torch


def one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets: 1 - smoothing on the class, smoothing spread evenly over all classes."""
    out = torch.full((len(y), num_classes), smoothing / num_classes)
    out.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + smoothing / num_classes)
    return out


def soft_targets(y: np.ndarray, probs: np.ndarray, k: int, share: float, smoothing: float) -> np.ndarray:
    """(N, K) float32 targets: (1 - share) x the smoothed one-hot label + share x a teacher's
    probabilities `probs` (N, K); the one-hot label alone in rows of `probs` that hold a NaN (no
    teacher prediction there)."""
    hard = np.full((len(y), k), smoothing / k)
    hard[np.arange(len(y)), np.asarray(y, np.int64)] += 1.0 - smoothing
    probs = np.asarray(probs, np.float64).reshape(len(y), k)
    teacher = np.where(np.isnan(probs).any(1, keepdims=True), hard, probs)
    return ((1.0 - share) * hard + share * teacher).astype(np.float32)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum(target * log_softmax(logits)): `F.cross_entropy(reduction="none")` for
    soft targets (weight and average it as the hard-label loss is)."""
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)
