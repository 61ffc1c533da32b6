"""Keyed per-sample randomness (`(seed, tag, sample id)` -> a draw, so adding a sample reshuffles
nothing): random shifts, the curriculum's order."""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.core import dataset
from pipeline.core.params import Train


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array: a counter-based draw, vectorised (numpy's
    Generators are seeded one at a time, which cost 0.65 s an epoch on 37k images)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_draws(seed: int, tag: str):
    """(sample ids, epoch) -> one uint64 draw per sample: a key per sample (SHA-256 of seed, tag
    and id, once) mixed with the epoch by `splitmix64`. Vectorised per-sample randomness for the
    online transforms (numpy's Generators are seeded one at a time)."""
    keys: dict[str, int] = {}

    def draw(sample_ids, epoch: int) -> np.ndarray:
        for s in sample_ids:
            if s not in keys:
                keys[s] = dataset.sample_seed(seed, f"{tag}:{s}")
        z = np.array([keys[s] for s in sample_ids], np.uint64)
        return splitmix64(z ^ splitmix64(np.full(len(z), epoch, np.uint64)))

    return draw


def random_shift(fraction: float, seed: int):
    """An online transform (oof's fold models, pseudo's students): each image moved by up to
    `fraction` of its side (at least 1 px) each way, zero-filled, drawn per (seed, sample, epoch)
    by `sample_draws`. None when off."""
    if fraction <= 0:
        return None
    draws = sample_draws(seed, "shift")

    def transform(x: np.ndarray, sample_ids, epoch: int) -> np.ndarray:
        n, h, w = x.shape[:3]
        m = max(1, round(fraction * min(h, w)))
        z = draws(sample_ids, epoch)
        span = np.uint64(2 * m + 1)  # the modulo's bias is below 2**-29 at these spans
        dy, dx = ((z & np.uint64(0xFFFFFFFF)) % span).astype(np.int64), ((z >> np.uint64(32)) % span).astype(np.int64)
        pad = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
        rows, cols = dy[:, None] + np.arange(h), dx[:, None] + np.arange(w)
        return pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]

    return transform


def curriculum_order(
    difficulty: np.ndarray, cfg: Train, epoch: int, n_draw: int, g: torch.Generator, odds: torch.Tensor | None
) -> torch.Tensor:
    """The samples epoch `epoch` trains on under `cfg.curriculum`: `n_draw` draws from the easiest
    (easy_to_hard; hardest for hard_to_easy) share of the set that a linear pacing function
    allows (Hacohen & Weinshall 2019): `curriculum_start` at epoch 1, all of it from
    `curriculum_full` x epochs on. Each epoch keeps its number of steps, cycling through the
    share; with `odds` (the hardness sampler) the draws within it follow them."""
    n = len(difficulty)
    full = max(1.0, cfg.curriculum_full * cfg.epochs)
    share = min(1.0, cfg.curriculum_start + (1.0 - cfg.curriculum_start) * (epoch - 1) / full)
    key = difficulty if cfg.curriculum == "easy_to_hard" else -difficulty
    ranked = torch.from_numpy(np.lexsort((np.arange(n), key)))  # ties by position: reproducible
    allowed = ranked[: max(1, math.ceil(share * n))]
    if odds is not None:
        return allowed[torch.multinomial(odds[allowed], n_draw, replacement=True, generator=g)]
    reps = -(-n_draw // len(allowed))
    return torch.cat([allowed[torch.randperm(len(allowed), generator=g)] for _ in range(reps)])[:n_draw]
