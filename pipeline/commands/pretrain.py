"""pretrain: train the configured backbone on the current train split and write a checkpoint that
`backbone.weights` accepts, so that a team transfers from its own large labeled set (and so that
transfer is measurable where no hub is reachable).

The network is `backbone.name` (a timm architecture or the project's own small_cnn / resnet),
from random weights, trained by the `train` section's recipe (optimizer, schedule, early stopping
on val) on the split's train samples, at `backbone.image_size` when set (the model resizes the
stored images itself) or the images' own size. The file is a pipeline model file: its
architecture, normalisation, input size and classes travel with the weights.

    python -m pipeline pretrain --split data/split --out models/backbone.pt [--epochs 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.core import dataset, schema
from pipeline.core.console import log
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="data/split", help="split output (default: %(default)s)")
    p.add_argument("--out", required=True, help="the checkpoint to write (set backbone.weights to it)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs for this run (default: train.epochs)")


def run(params: Params, df, classes: list[str], epochs: int | None = None):
    """(FitResult, metrics) of the backbone trained on `df`'s train split, early-stopped on val."""
    from pipeline.learn import fit, runtime

    name = params.backbone.name
    if name is None:
        raise PipelineError("backbone.name: pretrain trains the configured backbone; set backbone.name")
    cfg = params.train.model_copy(update={"model": name} | ({"epochs": epochs} if epochs else {}))
    labeled = df[schema.LABEL_ID].to_numpy() >= 0
    train, val = df[(df[schema.SPLIT] == "train") & labeled], df[(df[schema.SPLIT] == "val") & labeled]
    if len(train) == 0:
        raise PipelineError("pretrain: the split has no labeled train samples")
    x, y = dataset.load_pixels(train), train[schema.LABEL_ID].to_numpy(np.int64)
    xv, yv = dataset.load_pixels(val) if len(val) else x[:0], val[schema.LABEL_ID].to_numpy(np.int64)
    size = params.backbone.image_size
    dev = runtime.device(params.base.device)
    result = fit.fit(
        fit.Inputs(x, y, xv, yv, len(classes), input_size=size),
        cfg,
        params.base.seed,
        device=dev,
        desc=f"pretrain {name}",
    )
    metrics = {"backbone": name, "train": len(train), "val": len(val), "classes": len(classes)}
    metrics["best_epoch"] = result.best_epoch
    if result.best_epoch:
        metrics["val_accuracy"] = result.history[result.best_epoch - 1]["val_accuracy"]
    return result, metrics


def main(params: Params, args: argparse.Namespace) -> None:
    from pipeline.learn import checkpoints

    df, classes = schema.read(args.split, "samples")
    result, metrics = run(params, df, classes, args.epochs)
    checkpoints.save_model(Path(args.out), result.model, result.config, classes)
    log.info(
        "pretrain: %s on %d samples of %d classes: %s",
        metrics["backbone"],
        metrics["train"],
        metrics["classes"],
        metrics,
    )
    print(f"wrote {args.out}: set backbone.name: {metrics['backbone']} and backbone.weights: {args.out}")
