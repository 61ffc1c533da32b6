"""Accuracy under attack for a list of eps: the robustness curve evaluate reports."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.console import progress
from pipeline.learn import attacks
from pipeline.learn.tensors import device_of, to_float


def robust_accuracy(
    model,
    pixels: np.ndarray,
    labels: np.ndarray,
    attack_names: list[str],
    eps_list: list[float],
    steps: int,
    seed: int,
    batch_size: int = 256,
) -> list[dict]:
    """Rows of (attack, eps, accuracy, n) for uint8 NHWC `pixels`; eps 0 is clean accuracy."""
    x = to_float(pixels)
    y, dev = torch.from_numpy(np.array(labels, dtype=np.int64)), device_of(model)
    model.eval()
    rows = []
    for name in attack_names:
        for eps in progress(eps_list, desc=f"robustness {name}", unit="eps"):
            if eps == 0:
                adv = x
            else:
                cfg = attacks.AttackConfig(eps=eps, steps=1 if name == "fgsm" else steps)
                adv = attacks.attack_batches(model, x, y, name, cfg, seed=seed, batch_size=batch_size)
            with torch.no_grad():
                pred = torch.cat([model(b.to(dev)).argmax(1).cpu() for b in adv.split(batch_size)]) if len(adv) else y
            rows.append(
                {
                    "attack": name,
                    "eps": float(eps),
                    "accuracy": round(float((pred == y).float().mean()) if len(y) else 0.0, 6),
                    "n": int(len(y)),
                }
            )
    return rows
