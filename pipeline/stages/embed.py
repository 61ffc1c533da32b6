"""embed: a frozen backbone's features for every ingested sample (train, val, test and the pool).

The course's first way to transfer: the ConvNet as a fixed feature extractor (DeCAF; Razavian et
al. 2014, "CNN Features off-the-shelf"). The images are decoded again from the source, at the
backbone's input size (`backbone.image_size`, or the weights' own: 224 px for timm's ImageNet
models), not from ingest's <= 64 px store; array sources (digits, IDX) are resized from their
pixels. Decoding runs on `base.executor`'s workers; the forward passes run in batches on
`base.device`, channels-last, under bf16 autocast where `backbone.precision` says (auto: where
the hardware has bf16 units).

Writes `<out>/embeddings.npy` (N, D) float32 in the ingest manifest's order and
`<out>/samples.parquet` (`sample_id`); consumers read them with `artifacts.read_embeddings`.
With no `backbone.name` it writes (N, 0) features and nothing else runs: the pipeline learns
from scratch, as without this stage.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema, wiring
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.wiring import StageParams
from pipeline.sources.decode import decode_items
from pipeline.sources.readers import SOURCES, unlabeled

STAGE = wiring.Stage(
    "embed",
    reads=(wiring.Flag("--ingest", "ingest output"),),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "ingest", "backbone"),
    plots=False,
)


def source_items(params: StageParams, paths: pd.Series) -> list:
    """The source's items (files or in-memory pixels) for the manifest's `paths`, in their order."""
    cfg = params.ingest
    items, _ = SOURCES[cfg.source](cfg)
    if cfg.unlabeled_path is not None:
        items += unlabeled(cfg.unlabeled_path)
    by_path = {it.path: it for it in items}
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise PipelineError(
            f"embed: {missing[0]} ({len(missing)} of {len(paths)} samples) is in the ingest manifest but no longer "
            "in the source; re-run ingest"
        )
    return [by_path[p] for p in paths]


class Result(NamedTuple):
    features: np.ndarray  # (N, D) float32 in `df`'s order; (N, 0) without a backbone
    metrics: dict


def run(params: StageParams, df: pd.DataFrame, channels: int) -> Result:
    """(features (N, D) float32 in `df`'s order, metrics)."""
    cfg = params.backbone
    if cfg.name is None:
        return Result(np.zeros((len(df), 0), np.float32), {"backbone": None, "samples": len(df)})
    import torch

    from pipeline.learn import backbones, runtime

    dev = runtime.device(params.base.device)
    bf16 = runtime.bf16(cfg.precision, dev)
    loaded = backbones.load(cfg, channels)
    loaded.model.to(dev)
    size, ch = loaded.image_size, loaded.channels
    log.info("embed: %s (%s) at %d px, %s, %s", cfg.name, loaded.weights, size, dev, "bf16" if bf16 else "fp32")
    ing = params.ingest
    items = source_items(params, df[schema.PATH])
    decoded = decode_items(
        items, size, ch, ing.max_pixels, ing.min_side, ing.workers, params.base.executor, ing.background
    )
    out, batch, start = [], [], time.perf_counter()
    with contextlib.closing(decoded) as images:
        for d in progress(images, desc="embed", unit="img", total=len(items)):
            if d.reason is not None:
                raise PipelineError(f"embed: {d.item.path}: {d.reason}: {d.detail} (ingest decoded it: re-run ingest)")
            batch.append(d.pixels)
            if len(batch) == cfg.batch_size:
                out.append(backbones.features(loaded, np.stack(batch), dev, bf16))
                batch = []
        if batch:
            out.append(backbones.features(loaded, np.stack(batch), dev, bf16))
    seconds = time.perf_counter() - start
    emb = np.concatenate(out).astype(np.float32)
    if not np.isfinite(emb).all():
        raise PipelineError(f"embed: {cfg.name} gave non-finite features (try backbone.precision: fp32)")
    metrics = {
        "backbone": cfg.name,
        "weights": loaded.weights,
        "image_size": size,
        "channels": ch,
        "dim": int(emb.shape[1]),
        "samples": len(df),
        "device": str(dev),
        "precision": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "images_per_second": round(len(df) / max(seconds, 1e-9), 1),
    }
    return Result(emb, metrics)


def main(params: StageParams, args: argparse.Namespace) -> None:
    df, _ = schema.read(args.ingest, "ingest")
    channels = dataset.load_pixels(df.head(1)).shape[-1] if len(df) else 1
    emb, metrics = run(params, df, channels)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        np.save(tmp / artifacts.EMBEDDINGS, emb)
        df[[schema.SAMPLE_ID]].to_parquet(tmp / artifacts.EMBED_SAMPLES, index=False)
    dataset.write_json(args.metrics, metrics)
    if metrics["backbone"] is None:
        log.info("embed: no backbone.name: nothing to embed (the models learn from scratch)")
    else:
        log.info(
            "embed: %d samples -> %d features in %.0f s (%.1f img/s)",
            len(df),
            metrics["dim"],
            metrics["seconds"],
            metrics["images_per_second"],
        )
