"""FixMatch (Sohn et al. 2020): the unlabeled pool as a consistency loss inside training.

Each optimizer step draws `ratio` x the batch size pool images. The model (in training mode, no
gradient) predicts a weak view of each, a random shift; where its confidence is at least
`threshold`, that prediction is the hard target of a strong view of the same image (the
augmentation policy, then Cutout), and the strong views' cross-entropy, averaged over all drawn
images (a masked image counts as 0), is added to the labeled loss with `weight`.

The offline pseudo-label rounds (the pseudo stage) fix a teacher's labels before the student
trains; here the labels follow the model as it learns, and every pool image is seen under strong
noise. The course's recipe (an ensemble labels the pool) is the pseudo stage; this is the
consistency-regularisation branch of semi-supervised learning that the papers after it took.

Draws are reproducible: the epoch's pool order comes from fit's generator, the views from
(seed, sample id, view key) keys, as the online policy's are; the view key is the epoch, or,
when a small pool is drawn in several passes an epoch, one per pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import PipelineError
from pipeline.learn.draws import random_shift, sample_draws
from pipeline.learn.tensors import device_of, to_float

# (uint8 NHWC images, their sample ids, epoch) -> uint8 NHWC images, as fit's online transforms
View = Callable[[np.ndarray, list, int], np.ndarray]


def random_cutout(fraction: float, seed: int, fill: int = 127) -> View:
    """Cutout (DeVries & Taylor 2017) as FixMatch's strong augmentation ends: a square of side up
    to `fraction` of the image's shorter side, at a random centre (it may hang over an edge),
    filled with grey; drawn per (seed, sample, epoch) like `draws.random_shift`, vectorised."""
    draws = sample_draws(seed, "cutout")

    def transform(x: np.ndarray, sample_ids, epoch: int) -> np.ndarray:
        n, h, w = x.shape[:3]
        z = draws(sample_ids, epoch)
        side = ((z & np.uint64(0xFFFF)).astype(np.float64) / 65536.0 * fraction * min(h, w)).round().astype(np.int64)
        cy = ((z >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64) % h
        cx = ((z >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64) % w
        top, left = cy - side // 2, cx - side // 2
        rows, cols = np.arange(h)[None, :], np.arange(w)[None, :]
        inside_r = (rows >= top[:, None]) & (rows < (top + side)[:, None])
        inside_c = (cols >= left[:, None]) & (cols < (left + side)[:, None])
        out = x.copy()
        out[inside_r[:, :, None] & inside_c[:, None, :]] = fill
        return out

    return transform


@dataclass
class Unlabeled:
    """The pool and FixMatch's settings; `truth`: the pool's known classes (-1 unknown), so that
    each epoch reports how often the confident targets are right (benchmarks, tests)."""

    x: np.ndarray  # uint8 NHWC pool images
    ids: list[str]
    weak: View
    strong: View
    weight: float = 1.0
    ratio: int = 7
    threshold: float = 0.95
    truth: np.ndarray | None = None
    stats: Counter = field(default_factory=Counter)  # the running epoch's sums

    def labeled_view(self, online: View | None) -> View:
        """The labeled images' transform: the weak view, then `online` (the augmentation policy)
        if any. FixMatch's targets are the model's predictions of weak views, so the labeled
        images must teach it those views (without, a 1-pixel shift of 8x8 digits took the
        targets' accuracy from 0.87 to 0.38)."""

        def transform(x: np.ndarray, sample_ids, epoch: int) -> np.ndarray:
            x = self.weak(x, sample_ids, epoch)
            return x if online is None else online(x, sample_ids, epoch)

        return transform

    def per_step(self, batch_size: int) -> int:
        """Pool images a step draws: `ratio` per labeled image, at most the whole pool (a pool
        smaller than that is not drawn several times a step)."""
        return min(self.ratio * batch_size, len(self.x))

    def order(self, n_draw: int, g: torch.Generator, epoch: int) -> torch.Tensor:
        """An epoch's `n_draw` draws as (pool index, view key) rows: whole random permutations of
        the pool, as many as it takes. Each permutation (pass) has a view key of its own, so an
        image drawn twice in an epoch gets new views; with one pass a draw's key is the epoch."""
        n = len(self.x)
        reps = -(-n_draw // n)
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:n_draw]
        return torch.stack([idx, (epoch - 1) * reps + torch.arange(n_draw) // n + 1], dim=1)

    def loss(self, model: nn.Module, draws: torch.Tensor) -> torch.Tensor:
        """The weighted consistency loss of `draws` (rows of `order`): a scalar with a gradient."""
        rows, keys = draws[:, 0].numpy(), draws[:, 1].numpy()
        xb, ids, dev = self.x[rows], [self.ids[i] for i in rows], device_of(model)
        with torch.no_grad():
            probs = torch.softmax(model(to_float(_views(self.weak, xb, ids, keys)).to(dev)), dim=1)
        conf, target = probs.max(1)
        mask = (conf >= self.threshold).float()
        logits = model(to_float(_views(self.strong, xb, ids, keys)).to(dev))
        per_image = F.cross_entropy(logits, target, reduction="none") * mask
        s = self.stats
        s["n"] += len(rows)
        s["loss"] += float(per_image.detach().sum())
        s["confident"] += int(mask.sum())
        if self.truth is not None:
            truth = torch.from_numpy(self.truth[rows])
            known = (truth >= 0) & mask.bool().cpu()
            s["known"] += int(known.sum())
            s["right"] += int((target.cpu()[known] == truth[known]).sum())
        return self.weight * per_image.mean()

    def epoch_stats(self) -> dict:
        """The epoch's figures for fit's history (and a reset): the mean unlabeled loss, the share of
        draws whose target was confident enough, and how many of those were right where known."""
        s, self.stats = self.stats, Counter()
        n = max(1, s["n"])
        row = {"unlabeled_loss": s["loss"] / n, "mask_rate": s["confident"] / n}
        if self.truth is not None:
            row["mask_precision"] = s["right"] / s["known"] if s["known"] else None
        return row


def _views(view: View, x: np.ndarray, ids: list[str], keys: np.ndarray) -> np.ndarray:
    """`view` of each image under its draw's key (a step holds one pass, or the seam of two)."""
    if (keys == keys[0]).all():
        return view(x, ids, int(keys[0]))
    out = np.empty_like(x)
    for k in np.unique(keys):
        m = keys == k
        out[m] = view(x[m], [i for i, keep in zip(ids, m) if keep], int(k))
    return out


def make(
    x: np.ndarray,
    ids: list[str],
    strong_policy: View,
    seed: int,
    weight: float,
    ratio: int,
    threshold: float,
    shift: float = 0.125,
    cutout: float = 0.5,
    truth: np.ndarray | None = None,
) -> Unlabeled:
    """FixMatch's views: weak = a random shift by up to `shift` of a side (no flip: it is not
    label-preserving for every dataset); strong = `strong_policy`, then Cutout up to `cutout`."""
    if not len(x):
        raise PipelineError("FixMatch: the unlabeled pool is empty")
    weak = random_shift(shift, seed)
    cut = random_cutout(cutout, seed)

    def strong(xb: np.ndarray, sample_ids, epoch: int) -> np.ndarray:
        return cut(strong_policy(xb, sample_ids, epoch), sample_ids, epoch)

    return Unlabeled(x, list(ids), weak, strong, weight, ratio, threshold, truth)
