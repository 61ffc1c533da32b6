"""lr-find: the learning-rate range test (Smith 2017, as fastai runs it).

Trains the `train` section's model and optimizer for `lr_find.steps` mini-batches while the
learning rate grows exponentially from `lr_find.min_lr` to `lr_find.max_lr`, and stops early
once the smoothed loss passes 4x its minimum. Writes the curve (`lr, loss, smoothed_loss`)
to a CSV and prints a suggested `train.lr`.

The suggestion is the learning rate at the steepest descent of the smoothed loss (the most
negative slope against log10(lr), looked for before the loss minimum); when the curve is too
short to have a slope (fewer than 5 points), it falls back to the minimum-loss LR / 10.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from pipeline.core import dataset, schema
from pipeline.core.console import log, progress
from pipeline.core.params import LrFind, Params, Train

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected
DIVERGE = 4.0  # stop once the smoothed loss passes this multiple of its minimum


def suggest(curve: pd.DataFrame) -> float:
    """Steepest descent of the smoothed loss before its minimum; else min-loss LR / 10."""
    lr, loss = curve["lr"].to_numpy(), curve["smoothed_loss"].to_numpy()
    stop = int(np.argmin(loss)) + 1
    if stop < 5:
        return float(lr[np.argmin(loss)] / 10)
    slope = np.gradient(loss[:stop], np.log10(lr[:stop]))
    return float(lr[int(np.argmin(slope))])


def lr_range_test(
    x: np.ndarray, y: np.ndarray, cfg: Train, num_classes: int, seed: int, lr_cfg: LrFind
) -> tuple[pd.DataFrame, float]:
    """(curve with columns lr, loss, smoothed_loss; suggested max LR) on uint8 NHWC pixels."""
    import torch
    import torch.nn.functional as F

    from pipeline.learn import fit, runtime, tensors

    runtime.set_threads(cfg)
    g = torch.Generator().manual_seed(seed)
    model = fit.new_model(x, cfg, num_classes, g)
    opt = fit.make_optimizer(model, cfg)
    x8, yt = tensors.to_tensor(x), torch.tensor(np.asarray(y, np.int64))
    bs = min(cfg.batch_size, len(yt))
    ratio = (lr_cfg.max_lr / lr_cfg.min_lr) ** (1 / (lr_cfg.steps - 1))
    rows, avg, best = [], 0.0, math.inf
    perm, pos = torch.randperm(len(yt), generator=g), 0
    model.train()
    with runtime.deterministic():
        for step in progress(range(lr_cfg.steps), desc="lr-find", unit="batch"):
            if pos + bs > len(yt):
                perm, pos = torch.randperm(len(yt), generator=g), 0
            idx = perm[pos : pos + bs]
            pos += bs
            lr = lr_cfg.min_lr * ratio**step
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(tensors.to_unit(x8[idx])), yt[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * value
            smoothed = avg / (1 - SMOOTHING ** (step + 1))
            rows.append({"lr": lr, "loss": value, "smoothed_loss": smoothed})
            best = min(best, smoothed)
            if smoothed > DIVERGE * best:
                break
    curve = pd.DataFrame(rows, columns=["lr", "loss", "smoothed_loss"])
    if curve.empty:
        return curve, lr_cfg.min_lr
    return curve, suggest(curve)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", default="data/assemble", help="training set (default: %(default)s)")
    p.add_argument("--out", default="plots/lr_find.csv", help="curve CSV (default: %(default)s)")


def main(params: Params, args: argparse.Namespace) -> None:
    df, classes = dataset.read_manifest(args.train)
    curve, lr = lr_range_test(
        dataset.load_pixels(df),
        df[schema.LABEL_ID].to_numpy(np.int64),
        params.train,
        len(classes),
        params.base.seed,
        params.lr_find,
    )
    dataset.write_csv(args.out, curve.map(lambda v: float(f"{v:.6g}")))
    log.info("lr-find: %d steps, curve in %s", len(curve), args.out)
    print(f"suggested train.lr (steepest descent, {params.train.optimizer}): {lr:.3g}")
