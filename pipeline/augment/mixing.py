"""Online augmentation inside the training loop: batch-level mixing and per-batch policies.

`make_batch_transform(train_cfg, seed)` returns None when mixing and erasing are off, so the
training loop does not change (torchvision's `get_mixup_cutmix` shape, STYLE 8); otherwise a
callable `(x, y_soft, generator) -> (x, y_soft)` over a float NCHW batch of pixels in [0, 1]
and its soft targets (rows summing to 1):

- random erasing (Zhong et al. 2017): each image, with probability `random_erasing`, gets one
  rectangle of 2-33 % of its area, aspect ratio 0.3-3.3, filled with uniform noise;
- then, with probability `mix_prob`, the batch is mixed with itself rolled by one:
  mixup (Zhang et al. 2017, lambda ~ Beta(mixup_alpha, mixup_alpha)) or CutMix (Yun et al.
  2019, a box of area 1 - lambda, lambda ~ Beta(cutmix_alpha, cutmix_alpha), then lambda
  recomputed from the clipped box). With both alphas > 0, CutMix is chosen with probability
  `switch_prob` (timm's convention).

The knobs are read from `train_cfg` by name (`mixup_alpha`, `cutmix_alpha`, `mix_prob`,
`switch_prob`, `random_erasing`); a missing one counts as off. `losses.soft_cross_entropy` is
the matching per-sample loss and `losses.one_hot` makes (label-smoothed) soft targets from class ids.

`make_online_policy(policy, seed)` applies an augmentation policy to each training batch
instead of storing copies (`augment.mode: online`): image `i` of epoch `e` draws from
`(seed, "augment-online:<sample_id>:<e>")`, so a run is reproducible whatever the batch order.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pipeline.augment import policy as pol
from pipeline.core import dataset


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of area about (1 - lam) * h * w at a uniform centre, clipped."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (max(cy - ch // 2, 0), min(cy + ch - ch // 2, h), max(cx - cw // 2, 0), min(cx + cw - cw // 2, w))


class MixBatch:
    """Random erasing, then mixup or CutMix of a batch with itself rolled by one."""

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        random_erasing: float = 0.0,
        seed: int = 0,
    ):
        for name, v in [("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)]:
            if v < 0:
                raise ValueError(f"{name}: expected >= 0, got {v}")
        for name, v in [("mix_prob", mix_prob), ("switch_prob", switch_prob), ("random_erasing", random_erasing)]:
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {v}")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.mix_prob, self.switch_prob, self.random_erasing = mix_prob, switch_prob, random_erasing
        self.generator = torch.Generator().manual_seed(seed)
        self.last: dict = {}  # what the last call did: {"mode", "lam", "box"}, for logs and tests

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = generator if generator is not None else self.generator
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        x = x.clone()
        if self.random_erasing > 0:
            self._erase(x, rng, g)
        self.last = {"mode": "none", "lam": 1.0, "box": None}
        if len(x) < 2 or rng.random() >= self.mix_prob or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return x, y
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        x_other, y_other = x.roll(1, 0), y.roll(1, 0)
        if use_cutmix:
            h, w = x.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
            x[..., y0:y1, x0:x1] = x_other[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
            self.last = {"mode": "cutmix", "lam": lam, "box": (y0, y1, x0, x1)}
        else:
            x = lam * x + (1.0 - lam) * x_other
            self.last = {"mode": "mixup", "lam": lam, "box": None}
        return x, lam * y + (1.0 - lam) * y_other

    def _erase(self, x: torch.Tensor, rng: np.random.Generator, g: torch.Generator) -> None:
        n, c, h, w = x.shape
        for i in np.flatnonzero(rng.random(n) < self.random_erasing):
            for _ in range(10):  # rejection-sample a box that fits, as torchvision does
                area = rng.uniform(0.02, 1 / 3) * h * w
                ratio = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
                eh, ew = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
                if 0 < eh < h and 0 < ew < w:
                    y0, x0 = int(rng.integers(h - eh + 1)), int(rng.integers(w - ew + 1))
                    x[i, :, y0 : y0 + eh, x0 : x0 + ew] = torch.rand((c, eh, ew), generator=g)
                    break


def make_batch_transform(train_cfg, seed: int = 0) -> MixBatch | None:
    """The batch transform `train_cfg` asks for, or None when mixing and erasing are all off."""
    get = lambda name, default: float(getattr(train_cfg, name, default))  # noqa: E731
    mixup, cutmix, erase = get("mixup_alpha", 0.0), get("cutmix_alpha", 0.0), get("random_erasing", 0.0)
    mix_prob = get("mix_prob", 1.0)
    if (mixup <= 0 and cutmix <= 0 or mix_prob <= 0) and erase <= 0:
        return None
    return MixBatch(mixup, cutmix, mix_prob, get("switch_prob", 0.5), erase, seed)


def make_online_policy(policy, seed: int) -> Callable[[np.ndarray, "list[str]", int], np.ndarray] | None:
    """A per-batch transform applying `policy` (None -> None) to uint8 NHWC pixels.

    SamplePairing partners come from the same batch, as in the AutoAugment paper.
    """
    if policy is None:
        return None

    def transform(x: np.ndarray, sample_ids, epoch: int) -> np.ndarray:
        if len(x) != len(sample_ids):
            raise ValueError(f"expected one sample id per image, got {len(sample_ids)} for {len(x)}")
        out = np.empty_like(x)
        for i, (img, sid) in enumerate(zip(x, sample_ids)):
            rng = np.random.default_rng(dataset.sample_seed(seed, f"augment-online:{sid}:{epoch}"))
            drawn = pol.draw(policy, rng, img.shape, pool_size=len(x))
            out[i] = pol.apply(img, drawn, pool=x, policy=policy)
        return out

    return transform
