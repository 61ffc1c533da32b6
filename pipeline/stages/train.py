"""train: fit the model on the assembled training set, early-stopping on the val split.

Writes the model file (state_dict + config + classes, see `checkpoints.save_model`),
`metrics/train.json` (best_epoch, epochs_run, val_accuracy, val_loss, n_train, n_val,
parameters; wall time is logged, not written, so outputs stay byte-identical) and
`plots/train/curves.csv` (one row per epoch).
Sample weights come from the training set's `weight` column.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import dataset, schema, wiring
from pipeline.core.console import Estimate, log
from pipeline.core.errors import PipelineError
from pipeline.core.wiring import StageParams


def seed(params: StageParams) -> int:
    """The training run's seed: `base.seed` moved by `train.seed`, which no data stage reads."""
    return params.base.seed + params.train.seed


def manifest_soft_targets(
    train_df: pd.DataFrame, probs: pd.Series, k: int, share: float, smoothing: float
) -> np.ndarray:
    """(1 - share) x the smoothed one-hot label + share x the oof ensemble's probabilities of each
    sample, looked up by its own id (real samples: out-of-fold, so not memorised) or its parent's
    (augmented, adversarial and pseudo-labeled copies); the one-hot label alone where there is none
    (synthetic samples)."""
    from pipeline.learn import losses

    own = train_df[schema.SAMPLE_ID].map(probs)
    key = own.where(own.notna(), train_df[schema.PARENT_ID].map(probs)) if schema.PARENT_ID in train_df else own
    found = key.notna().to_numpy()
    teacher = np.full((len(train_df), k), np.nan)
    if found.any():
        teacher[found] = np.stack(key[found].to_numpy())
    return losses.soft_targets(train_df[schema.LABEL_ID].to_numpy(), teacher, k, share, smoothing)


class Result(NamedTuple):
    fit: object  # fit.FitResult: the model (best val epoch), its config and history
    metrics: dict


def run(
    params: StageParams,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    classes: list[str],
    online=None,
    oof_probs=None,
    unlabeled=None,
) -> Result:
    """(FitResult, metrics) for a training manifest and a val manifest; `oof_probs`: the oof
    ensemble's probabilities by sample id (for `train.soft_labels`); `unlabeled`: the pool, a
    `fixmatch.Unlabeled` (train.unlabeled)."""
    from pipeline.augment import mixing
    from pipeline.learn import fit, models, runtime

    weight = train_df[schema.WEIGHT].to_numpy(np.float64) if schema.WEIGHT in train_df else None
    # the schedule follows the labeled rows: pseudo-labeled pool rows add to their passes, never
    # take passes away (1,000 labeled Fashion-MNIST images: 30 epochs over 4,300 pseudo rows
    # more, augmented online, scored 0.840, below the labeled rows alone; docs/labeling.md)
    pseudo = train_df[schema.ORIGIN].eq(schema.PSEUDO).sum() if schema.ORIGIN in train_df else 0
    n_schedule = len(train_df) - int(pseudo)
    cfg = fit.schedule(params.train, n_schedule)
    x_train = dataset.load_pixels(train_df)
    init = None
    if cfg.init == "backbone":  # fine-tuning: the backbone's weights and a new head
        import torch

        from pipeline.learn import backbones

        g = torch.Generator().manual_seed(seed(params))
        init, width = backbones.for_training(params.backbone, x_train.shape[-1], len(classes), g)
        cfg = cfg.model_copy(update={"model": params.backbone.name, "width": width})
    start = time.perf_counter()
    estimate = Estimate("train", cfg.epochs, len(train_df), more=" at most (early stopping ends it sooner)")
    result = fit.fit(
        fit.Inputs(
            x_train,
            train_df[schema.LABEL_ID].to_numpy(np.int64),
            dataset.load_pixels(val_df),
            val_df[schema.LABEL_ID].to_numpy(np.int64),
            len(classes),
            sample_weight=weight,
            sample_ids=train_df[schema.SAMPLE_ID].tolist(),
            difficulty=_difficulty(train_df, cfg),
            soft_targets=manifest_soft_targets(train_df, oof_probs, len(classes), cfg.soft_labels, cfg.label_smoothing)
            if cfg.soft_labels > 0
            else None,
            unlabeled=unlabeled,
            online=online,
            mix=mixing.make_batch_transform(cfg, seed(params)),
            init=init,
        ),
        cfg,
        seed(params),
        device=runtime.device(params.base.device),
        on_epoch_end=lambda _, epoch: estimate.epoch_done(epoch),
    )
    best = result.history[result.best_epoch - 1]
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "epochs_planned": cfg.epochs,
        "patience": cfg.patience,
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "n_train": len(train_df),
        "n_schedule": n_schedule,  # the rows the size-aware schedule counted: all but pseudo rows
        "n_val": len(val_df),
        "parameters": models.count_parameters(result.model),
        "threads": runtime.threads(cfg),
        "seed": seed(params),
        "world_size": runtime.world()[1],
    }
    if unlabeled is not None:  # FixMatch: the pool and the last epoch's figures
        last = result.history[-1]
        stats = {k: last[k] for k in ("unlabeled_loss", "mask_rate", "mask_precision") if k in last}
        metrics["unlabeled"] = {"pool": len(unlabeled.x), "epoch": len(result.history), **stats}
    log.info("train: %.1f s", time.perf_counter() - start)
    return Result(result, metrics)


def _difficulty(train_df: pd.DataFrame, cfg) -> np.ndarray | None:
    if cfg.curriculum == "none":
        return None
    if schema.HARDNESS not in train_df:
        raise PipelineError(
            f"train.curriculum {cfg.curriculum}: the training set has no hardness column (re-run mine and assemble)"
        )
    return train_df[schema.HARDNESS].to_numpy(np.float64)


def pool(params: StageParams, split_df: pd.DataFrame, classes: list[str], path: str):
    """The unlabeled pool as FixMatch's `fixmatch.Unlabeled` (train.unlabeled), or None when it
    is off or the pool is empty. Split's duplicate rules already removed pool images that are
    duplicates of val or test images. `hidden_label` (ingest.keep_labels) gives the truth."""
    cfg = params.train.unlabeled
    if cfg.weight <= 0:
        return None
    pool_df = split_df[split_df[schema.SPLIT] == schema.POOL]
    if not len(pool_df):
        log.warning("train: train.unlabeled.weight is %s but the pool is empty: supervised training", cfg.weight)
        return None
    t = params.train
    if t.label_smoothing > 0 or t.soft_labels > 0:
        log.warning(
            "train: label_smoothing %s and soft_labels %s hold the model's confidence near train.unlabeled.threshold "
            "%s, so few pool targets may count: set train.label_smoothing=0 and train.soft_labels=0 (docs/train.md)",
            t.label_smoothing,
            t.soft_labels,
            cfg.threshold,
        )
    from pipeline.augment import mixing, policy
    from pipeline.learn import fixmatch

    _, strong = policy.load_path(path)
    truth = None
    if schema.HIDDEN_LABEL in pool_df and pool_df[schema.HIDDEN_LABEL].notna().any():
        truth = pool_df[schema.HIDDEN_LABEL].map({c: i for i, c in enumerate(classes)}).fillna(-1).to_numpy(np.int64)
    log.info("train: FixMatch on a pool of %d, %d per labeled image in a step (at most all)", len(pool_df), cfg.ratio)
    return fixmatch.make(
        dataset.load_pixels(pool_df),
        pool_df[schema.SAMPLE_ID].tolist(),
        mixing.make_online_policy(strong, seed(params)),
        seed(params),
        cfg.weight,
        cfg.ratio,
        cfg.threshold,
        cutout=cfg.cutout,
        truth=truth,
    )


def online_policy(params: StageParams, path: str, n: int):
    """The per-batch augmentation of `augment.mode` online, or auto on `n` < online_below labeled
    training images; or None."""
    from pipeline.augment import mixing, policy

    if not policy.trains_online(params.augment, n):
        return None
    log.info("train: %s applied per batch (augment.mode %s, %d labeled images)", path, params.augment.mode, n)

    cfg = params.augment
    _, p = policy.load_path(path, num_ops=cfg.num_ops, magnitude=cfg.magnitude)
    return mixing.make_online_policy(p, seed(params))


STAGE = wiring.Stage(
    "train",
    reads=(
        wiring.Flag("--assemble", "assemble output: the training set"),
        wiring.Flag("--split", "split output, for val"),
        wiring.Flag("--oof", "oof output: the fold ensemble's probabilities, for train.soft_labels"),
        wiring.Flag("--policy", "the policy file augment.policy names, for augment.mode online"),
        wiring.Flag("--unlabeled-policy", "the policy file train.unlabeled.policy names: FixMatch's strong view"),
    ),
    writes=(wiring.Flag("--model", "model file to write"),),
    params=(
        "base",
        "backbone",
        "train",
        *(f"augment.{k}" for k in ("enabled", "mode", "online_below", "policy", "num_ops", "magnitude")),
    ),
)


def launch(params: StageParams, args: argparse.Namespace) -> None:
    """`train.nproc` > 1: run this stage in that many processes under torch's own launcher
    (`torch.distributed.run --standalone`); each is a DDP worker, and process 0 writes the outputs.
    For several nodes, start the launcher yourself with its rendezvous flags (docs/scale.md)."""
    import subprocess
    import sys

    n = params.train.nproc
    if params.train.batch_size % n:
        raise PipelineError(f"train.batch_size {params.train.batch_size} must be a multiple of train.nproc {n}")
    flags = [a for f in STAGE.flags() for a in (f.name, str(getattr(args, f.dest)))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    cmd += ["-m", "pipeline", "train", "--params", args.params, *(["--quiet"] * args.quiet), *flags]
    log.info("train: %d DDP processes", n)
    if subprocess.run(cmd).returncode:
        raise PipelineError(f"a DDP process failed (train.nproc {n}); its error is above")


def main(params: StageParams, args: argparse.Namespace) -> None:
    if params.train.nproc > 1 and params.train.unlabeled.weight > 0:
        raise PipelineError("train.unlabeled (FixMatch) runs in one process: set train.nproc 1 or unlabeled.weight 0")
    if params.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch(params, args)
    if "LOCAL_RANK" in os.environ:  # a worker of torch.distributed.run: nccl between GPUs, else gloo
        import torch
        import torch.distributed as dist

        from pipeline.learn import runtime

        dev = runtime.device(params.base.device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        _main(params, args)
    finally:
        if "LOCAL_RANK" in os.environ:
            dist.destroy_process_group()


def _main(params: StageParams, args: argparse.Namespace) -> None:
    from pipeline.learn import checkpoints, runtime

    train_df, classes = schema.read(args.assemble, "training set")
    split_df, split_classes = schema.read(args.split, "samples")
    if split_classes != classes:
        raise PipelineError(f"{args.assemble}: class list differs from {args.split}'s")
    val_df = split_df[split_df[schema.SPLIT] == "val"]
    log.info("train: %s on %d samples, %d val", params.train.model, len(train_df), len(val_df))
    probs = None
    if params.train.soft_labels > 0:
        from pipeline.core import artifacts

        oof_df = artifacts.read_oof(args.oof)[0]
        probs = oof_df.set_index(schema.SAMPLE_ID)[artifacts.PROBS].dropna()
    unlabeled = pool(params, split_df, classes, args.unlabeled_policy)
    if unlabeled is not None and schema.ORIGIN in train_df and (train_df[schema.ORIGIN] == "pseudo").any():
        log.warning(
            "train: the pool trains twice, as %d pseudo-labeled rows (fixed labels) and as FixMatch's draws "
            "(the model's own targets); pseudo.enabled=false leaves it to FixMatch",
            int((train_df[schema.ORIGIN] == "pseudo").sum()),
        )
    online = online_policy(params, args.policy, len(schema.real_train(train_df)))
    result, metrics = run(params, train_df, val_df, classes, online, probs, unlabeled)
    if runtime.world()[0] != 0:
        return  # every DDP process holds the same model: process 0 writes it
    checkpoints.save_model(args.model, result.model, result.config, classes)
    dataset.write_csv(Path(args.plots) / "curves.csv", pd.DataFrame(result.history))
    dataset.write_json(args.metrics, metrics)
    log.info(
        "train: best epoch %d of %d, val accuracy %s",
        metrics["best_epoch"],
        metrics["epochs_run"],
        metrics["val_accuracy"],
    )
