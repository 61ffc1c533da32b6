"""adversarial: FGSM / PGD examples of train samples, as a derived dataset with lineage.

Writes `<out>/manifest.parquet` + `<out>/images/` (one row per adversarial example:
`parent_id`, `attack`, `eps`, `norm`, `steps`, `source_model`, `flipped`, `pred_label`),
`metrics/adversarial.json` and a PNG grid (originals, amplified perturbations, adversarial
images with predictions). Only train samples are attacked; a child inherits its parent's
split and label. When `adversarial.enabled` is false the stage writes an empty manifest.

The source model is trained here on the train split (`source_model: own`, so the DAG has
no cycle through the train stage), or read from a model file path (e.g. a previous run's
`models/model.pt`). Pixels are stored as uint8, so `flipped` is measured on the rounded
image that training will actually see.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core import dataset, schema, wiring
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.executor import ordered_map
from pipeline.core.params import RECIPE_KEYS, Adversarial
from pipeline.core.wiring import StageParams
from pipeline.render import gallery

COLUMNS = schema.columns("attack", "eps", "norm", "steps", "source_model", "flipped", "pred_label")


def select(df: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Train samples chosen by a per-sample draw from (seed, sample_id): stable under additions."""
    train = schema.real_train(df)
    u = np.array([dataset.sample_seed(seed, f"adversarial:{s}") / 2**64 for s in train[schema.SAMPLE_ID]])
    return train[u < fraction]


# The train params the own source model uses (dvc.yaml lists them as this stage's params):
# the recipe and early stopping, not the length or the online options of the train stage.
SOURCE_TRAIN_KEYS = (*RECIPE_KEYS, "patience")


def source_train_config(params: StageParams):
    """A plain training recipe for the own source model: no mixing, no adversarial training."""
    from pipeline.core.params import Train

    recipe = {k: getattr(params.train, k) for k in SOURCE_TRAIN_KEYS}
    return Train(**recipe, epochs=params.adversarial.source_epochs)


def source_model(params: StageParams, split_df: pd.DataFrame, classes: list[str]):
    """(model, id): trained here on train (early-stopped on val), or loaded from a path."""
    import torch

    from pipeline.learn import checkpoints, fit, runtime

    cfg = params.adversarial
    if cfg.source_model != "own":
        path = Path(cfg.source_model)
        if not path.exists():
            raise PipelineError(f"adversarial.source_model: {path}: no such model file")
        model, config, model_classes = checkpoints.load_model(path)
        model = model.to(runtime.device(params.base.device))
        if model_classes != classes:
            raise PipelineError(f"adversarial.source_model: {path} was trained on other classes")
        return model, hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    tr, va = split_df[split_df[schema.SPLIT] == "train"], split_df[split_df[schema.SPLIT] == "val"]
    train_cfg = source_train_config(params)
    result = fit.fit(
        fit.Inputs(
            dataset.load_pixels(tr),
            tr[schema.LABEL_ID].to_numpy(),
            dataset.load_pixels(va),
            va[schema.LABEL_ID].to_numpy(),
            len(classes),
        ),
        train_cfg,
        params.base.seed,
        device=runtime.device(params.base.device),
        desc="adversarial source model",
    )
    weights = [t for t in result.model.state_dict().values() if isinstance(t, torch.Tensor)]
    state = b"".join(t.cpu().numpy().tobytes() for t in weights)
    return result.model, hashlib.sha256(state).hexdigest()[:16]


def _attack(job: tuple, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker: the adversarial uint8 pixels of one batch and the model's predictions on them."""
    import torch

    from pipeline.learn import attacks, tensors

    model, x, y, attack, acfg, seed, batch = job
    adv = attacks.attack_batches(
        model, x[start : start + batch], y[start : start + batch], attack, acfg, seed=seed + start
    )
    adv8 = torch.round(adv * 255).to(torch.uint8)
    with torch.no_grad():
        pred = model((adv8.float() / 255).to(tensors.device_of(model))).argmax(1).cpu().numpy()
    return adv8.permute(0, 2, 3, 1).numpy(), pred


def generate(
    model,
    pixels: np.ndarray,
    labels: np.ndarray,
    cfg: Adversarial,
    seed: int,
    num_classes: int,
    executor: str = "local",
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Adversarial uint8 pixels and the model's predictions on them. Each batch draws from its own
    seed, so batches run anywhere: here (local), or one a task on Ray's workers, each with this
    process's `threads` torch threads (the float kernels' bits depend on the count: the same bytes)."""
    import functools

    import torch

    from pipeline.learn import attacks, tensors

    x = tensors.to_float(pixels)
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    if cfg.targeted:  # a random other class per sample, drawn apart from the attack
        g = torch.Generator().manual_seed(seed)
        y = (y + torch.randint(1, num_classes, y.shape, generator=g)) % num_classes
    acfg = attacks.AttackConfig(
        eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, random_start=cfg.random_start, targeted=cfg.targeted
    )
    model.eval()
    if executor == "ray":  # Ray's workers attack on their CPUs; here, on the model's device
        model = model.cpu()
    starts = range(0, len(x), cfg.batch_size)
    job = (model, x, y, cfg.attack, acfg, seed, cfg.batch_size)
    init = functools.partial(torch.set_num_threads, threads)
    results = ordered_map(_attack, starts, job, 1 if executor == "local" else 0, executor, initializer=init)
    out, preds = [], []
    for adv8, pred in progress(results, desc=f"adversarial {cfg.attack}", unit="batch", total=len(starts)):
        out.append(adv8)
        preds.append(pred)
    if not out:
        return np.zeros((0, *pixels.shape[1:]), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(out), np.concatenate(preds)


class Result(NamedTuple):
    examples: pd.DataFrame  # manifest rows; `store` and `row` are filled when the pixels are written
    pixels: np.ndarray  # (N, H, W, C) uint8, one image per row
    metrics: dict
    picture: Image.Image | None  # originals, perturbations, adversarial images (None: no examples)


def run(params: StageParams, split_df: pd.DataFrame, classes: list[str]) -> Result:
    """Adversarial copies of a `adversarial.fraction` of the train samples, made against a source
    model trained here; with `keep: successful`, only those that flip its prediction."""
    cfg = params.adversarial
    chosen = select(split_df, cfg.fraction, params.base.seed) if cfg.enabled else split_df.iloc[:0]
    metrics = {"enabled": cfg.enabled, "executor": params.base.executor, "attack": cfg.attack, "eps": cfg.eps}
    metrics["attacked"] = len(chosen)
    if len(chosen) == 0:
        metrics.update(kept=0, flip_rate=0.0)
        return Result(pd.DataFrame(columns=COLUMNS), np.zeros((0, 1, 1, 1), np.uint8), metrics, None)
    from pipeline.learn import runtime

    runtime.set_threads(params.train)
    model, model_id = source_model(params, split_df, classes)
    clean = dataset.load_pixels(chosen)
    labels = chosen[schema.LABEL_ID].to_numpy()
    executor = params.base.executor
    adv, pred = generate(
        model, clean, labels, cfg, params.base.seed, len(classes), executor, runtime.threads(params.train)
    )
    flipped = pred != labels
    keep = flipped if cfg.keep == "successful" else np.ones(len(adv), bool)
    parents = chosen[keep]
    df = schema.derived_rows(
        parents,
        schema.ADVERSARIAL,
        [
            dataset.sample_id(p, "adversarial", cfg.attack, cfg.eps, cfg.steps, model_id)
            for p in parents[schema.SAMPLE_ID]
        ],
        own={
            "attack": cfg.attack,
            "eps": cfg.eps,
            "norm": "l2" if cfg.attack == "pgd_l2" else "linf",
            "steps": cfg.steps,
            "source_model": model_id,
            "flipped": flipped[keep],
            "pred_label": [classes[int(p)] for p in pred[keep]],
        },
        weight=cfg.weight,
        storage={
            "pixel_sha256": [dataset.pixel_hash(px) for px in adv[keep]],
            "store": None,
            "row": -1,
        },
    )
    metrics.update(
        kept=len(df),
        flip_rate=round(float(flipped.mean()), 6),
        source_model=model_id,
        mean_linf=round(float(np.abs(adv.astype(int) - clean).max(axis=(1, 2, 3)).mean() / 255), 6),
    )
    return Result(df, adv[keep], metrics, _examples(clean, adv, labels, pred, classes))


def _examples(clean, adv, labels, pred, classes, n: int = 8):
    """Three rows: originals, perturbations amplified around grey, adversarial images."""
    n = min(n, len(clean))
    delta = adv[:n].astype(np.int16) - clean[:n]
    scale = 127 / max(1, int(np.abs(delta).max()))
    amplified = np.clip(128 + delta * scale, 0, 255).astype(np.uint8)
    images = np.concatenate([clean[:n], amplified, adv[:n]])
    caps = [f"{classes[y]}" for y in labels[:n]] + ["perturbation"] * n + [f"-> {classes[p]}" for p in pred[:n]]
    return gallery.grid(images, caps, cols=n, title="original / perturbation (amplified) / adversarial")


STAGE = wiring.Stage(
    "adversarial",
    reads=(wiring.Flag("--clean", "clean output: the train samples"),),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "adversarial", *(f"train.{k}" for k in SOURCE_TRAIN_KEYS)),
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    split_df, classes = schema.read(args.clean, "samples")
    out, plots = Path(args.out), Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    df, pixels, metrics, picture = run(params, split_df, classes)
    with dataset.staged_dir(out) as tmp:
        df = dataset.store_pixels(df, pixels, tmp / "images", out / "images")
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
    if picture is not None:
        gallery.save(picture, plots / "examples.png")
    dataset.write_json(args.metrics, metrics)
    log.info(
        "adversarial: %d examples kept of %d attacked (flip rate %.3f)",
        metrics["kept"],
        metrics["attacked"],
        metrics["flip_rate"],
    )
